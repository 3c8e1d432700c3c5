"""Losses and metrics against optax, numpy and scipy references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import special

from funcnet import losses


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(16, 5)) * 3
    labels = rng.integers(0, 5, size=16)
    return jnp.asarray(logits, jnp.float32), jnp.asarray(labels)


def test_softmax_cross_entropy_matches_optax_with_integer_and_one_hot_labels(batch):
    logits, labels = batch
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels, "none"), ref, rtol=1e-6)
    one_hot = jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, one_hot), ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        losses.nll(jax.nn.log_softmax(logits), labels, "sum"), ref.sum(), rtol=1e-5
    )


def test_softmax_cross_entropy_is_finite_at_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    labels = jnp.array([1, 2])
    value = losses.softmax_cross_entropy(logits, labels, "none")
    np.testing.assert_allclose(value, [2e4, np.log(3)], rtol=1e-6)
    grad = jax.grad(lambda z: losses.softmax_cross_entropy(z, labels))(logits)
    assert np.all(np.isfinite(grad))
    # d/dz of mean CE = (softmax(z) − onehot) / batch
    expected = (special.softmax(np.asarray(logits, np.float64), -1) - np.eye(3)[labels]) / 2
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_binary_cross_entropy_matches_optax_and_is_stable():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.normal(size=(8, 3)) * 4, jnp.float32)
    labels = jnp.asarray(rng.integers(0, 2, size=(8, 3)), jnp.float32)
    ref = optax.sigmoid_binary_cross_entropy(logits, labels).sum(axis=1)
    np.testing.assert_allclose(losses.binary_cross_entropy(logits, labels, "none"), ref, rtol=1e-5)
    extreme = jnp.array([1e4, -1e4, 1e4])
    value = losses.binary_cross_entropy(extreme, jnp.array([0.0, 1.0, 1.0]), "none")
    np.testing.assert_allclose(value, [1e4, 1e4, 0.0])
    grad = jax.grad(lambda z: losses.binary_cross_entropy(z, jnp.array([0.0, 1.0, 1.0])))(extreme)
    np.testing.assert_allclose(grad, [1 / 3, -1 / 3, 0.0], atol=1e-7)


def test_regression_losses_match_references():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(10, 4)) * 2
    target = rng.normal(size=(10, 4))
    p, t = jnp.asarray(pred), jnp.asarray(target)
    np.testing.assert_allclose(losses.mse(p, t), np.mean((pred - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses.mae(p, t), np.mean(np.abs(pred - target)), rtol=1e-6)
    np.testing.assert_allclose(
        losses.mse(p, t, "none"), np.mean((pred - target) ** 2, axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.huber(p, t, delta=0.7), optax.huber_loss(p, t, delta=0.7).mean(), rtol=1e-6
    )


def test_hinge_losses():
    scores = jnp.array([2.0, 0.5, -0.3, -2.0])
    labels = jnp.array([1.0, 1.0, 1.0, -1.0])
    np.testing.assert_allclose(losses.hinge(scores, labels, "none"), [0.0, 0.5, 1.3, 0.0])
    np.testing.assert_allclose(
        losses.hinge(scores, labels), optax.hinge_loss(scores, labels).mean()
    )
    s = jnp.array([[0.1, 0.2, 0.4, 0.8]])
    # torch.nn.MultiMarginLoss docs example: x = [0.1, 0.2, 0.4, 0.8], y = 3 -> 0.3250
    np.testing.assert_allclose(losses.multiclass_hinge(s, jnp.array([3])), 0.325, rtol=1e-6)


def test_penalties():
    params = {"a": {"w": jnp.array([[1.0, -2.0]]), "b": jnp.array([3.0])}, "relu": {}}
    np.testing.assert_allclose(losses.l1_penalty(params), 6.0)
    np.testing.assert_allclose(losses.l2_penalty(params), 0.5 * 14.0)
    grad = jax.grad(losses.l2_penalty)(params)
    np.testing.assert_allclose(grad["a"]["w"], params["a"]["w"])


def test_accuracy_with_integer_and_one_hot_labels(batch):
    logits, labels = batch
    expected = np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels))
    np.testing.assert_allclose(losses.accuracy(logits, labels), expected)
    np.testing.assert_allclose(losses.accuracy(logits, jax.nn.one_hot(labels, 5)), expected)


def test_bad_inputs_are_refused(batch):
    logits, labels = batch
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*\[0, 7\]"):
        losses.softmax_cross_entropy(logits, labels.at[0].set(7))
    with pytest.raises(ValueError, match=r"labels of shape \(15,\)"):
        losses.softmax_cross_entropy(logits, labels[:15])
    with pytest.raises(TypeError, match="integers"):
        losses.softmax_cross_entropy(logits, labels.astype(jnp.float32))
    with pytest.raises(ValueError, match="broadcasting them is refused"):
        losses.mse(jnp.ones((4, 1)), jnp.ones((4,)))
    with pytest.raises(ValueError, match="reduction"):
        losses.mse(jnp.ones(3), jnp.ones(3), reduction="avg")


def test_losses_under_jit_and_vmap(batch):
    logits, labels = batch
    jitted = jax.jit(losses.softmax_cross_entropy)(logits, labels)
    np.testing.assert_allclose(jitted, losses.softmax_cross_entropy(logits, labels), rtol=1e-6)
    per = jax.vmap(lambda z, y: losses.softmax_cross_entropy(z[None], y[None]))(logits, labels)
    np.testing.assert_allclose(per, losses.softmax_cross_entropy(logits, labels, "none"), rtol=1e-6)


LOW_PRECISION_CASES = {
    "softmax_cross_entropy": lambda z: losses.softmax_cross_entropy(z, jnp.array([1, 0])),
    "binary_cross_entropy": lambda z: losses.binary_cross_entropy(z, jnp.eye(2, 3, dtype=z.dtype)),
    "nll": lambda z: losses.nll(jax.nn.log_softmax(z.astype(jnp.float32)), jnp.array([2, 0])),
    "hinge": lambda z: losses.hinge(z, 2 * jnp.eye(2, 3, dtype=z.dtype) - 1),
    "multiclass_hinge": lambda z: losses.multiclass_hinge(z, jnp.array([1, 2])),
    "mse": lambda z: losses.mse(z, jnp.zeros_like(z)),
    "mae": lambda z: losses.mae(z, jnp.ones_like(z)),
    "huber": lambda z: losses.huber(z, jnp.zeros_like(z), reduction="sum"),
}


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("name", sorted(LOW_PRECISION_CASES))
def test_losses_stay_finite_at_logits_of_1e4_in_every_float_dtype(name, dtype):
    # (1e4)² overflows float16; the loss is computed and returned in float32 instead.
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 3.0]], dtype)
    value, grad = jax.value_and_grad(LOW_PRECISION_CASES[name])(logits)
    assert value.dtype == jnp.float32
    assert grad.dtype == dtype
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    reference = LOW_PRECISION_CASES[name](logits.astype(jnp.float32))
    np.testing.assert_allclose(float(value), float(reference), rtol=1e-6)
