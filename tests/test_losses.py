"""Losses and metrics against optax, numpy, scipy and torch references."""

import functools

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
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-6
    )
    one_hot = jax.nn.one_hot(labels, 5)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, one_hot), ref.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        losses.nll(jax.nn.log_softmax(logits), labels, reduction="sum"), ref.sum(), rtol=1e-5
    )


def test_softmax_cross_entropy_is_finite_at_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    labels = jnp.array([1, 2])
    value = losses.softmax_cross_entropy(logits, labels, reduction="none")
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
    ref = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=1)
    np.testing.assert_allclose(
        losses.binary_cross_entropy(logits, labels, reduction="none"), ref, rtol=1e-5
    )
    extreme = jnp.array([1e4, -1e4, 1e4])
    value = losses.binary_cross_entropy(extreme, jnp.array([0.0, 1.0, 1.0]), reduction="none")
    np.testing.assert_allclose(value, [1e4, 1e4, 0.0])
    grad = jax.grad(lambda z: losses.binary_cross_entropy(z, jnp.array([0.0, 1.0, 1.0])))(extreme)
    np.testing.assert_allclose(grad, [1 / 3, -1 / 3, 0.0], atol=1e-7)


def test_binary_cross_entropy_refuses_labels_outside_0_1():
    # ±1 labels would make softplus(z) − y·z negative: −0.19 for z = 0.5, y = −1.
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 1\].*logistic_loss"):
        losses.binary_cross_entropy(jnp.array([0.5, 2.0]), jnp.array([-1.0, 1.0]))
    with pytest.raises(ValueError, match=r"got values in \[0.0, 2.0\]"):
        losses.binary_cross_entropy(jnp.zeros(2), jnp.array([0.0, 2.0]))
    soft = losses.binary_cross_entropy(jnp.zeros(2), jnp.array([0.0, 0.3]))  # probabilities
    np.testing.assert_allclose(soft, np.log(2), rtol=1e-6)


def test_logistic_loss_is_the_margin_form_of_logistic_regression():
    z = jnp.array([0.5, -2.0, 3.0, 0.0])
    y = jnp.array([-1.0, 1.0, 1.0, -1.0])
    expected = np.log1p(np.exp(-np.asarray(y) * np.asarray(z)))  # log(1 + e^(−yz))
    np.testing.assert_allclose(losses.logistic_loss(z, y, reduction="none"), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.logistic_loss(z, y), expected.mean(), rtol=1e-6)
    # The same loss as binary cross-entropy with labels (y + 1)/2.
    np.testing.assert_allclose(
        losses.logistic_loss(z, y), losses.binary_cross_entropy(z, (y + 1) / 2), rtol=1e-6
    )
    # Stable at large margins: log(1 + e^1000) = 1000 and log(1 + e^−1000) = e^−1000 → 0.
    big = losses.logistic_loss(jnp.array([1e3, 1e3]), jnp.array([-1.0, 1.0]), reduction="none")
    np.testing.assert_allclose(big, [1e3, 0.0])
    grad = jax.grad(lambda z: losses.logistic_loss(z, jnp.array([-1.0, 1.0])))(
        jnp.array([1e3, 1e3])
    )
    np.testing.assert_allclose(grad, [0.5, 0.0])  # −y·σ(−yz)/2 per element
    with pytest.raises(ValueError, match="logistic_loss: labels must be −1 or \\+1"):
        losses.logistic_loss(z, (y + 1) / 2)


def test_penalties_can_leave_out_biases_and_norm_parameters():
    params = {
        "dense_0": {"w": jnp.array([[1.0, -2.0], [3.0, 0.5]]), "b": jnp.array([4.0, -1.0])},
        "batch_norm_1": {"scale": jnp.array([2.0, 2.0]), "offset": jnp.array([1.0, 0.0])},
    }
    everything = np.array([1.0, -2.0, 3.0, 0.5, 4.0, -1.0, 2.0, 2.0, 1.0, 0.0])
    weights = np.array([1.0, -2.0, 3.0, 0.5])
    np.testing.assert_allclose(losses.l2_penalty(params), 0.5 * np.sum(everything**2))
    np.testing.assert_allclose(losses.l2_penalty(params, biases=False), 0.5 * np.sum(weights**2))
    np.testing.assert_allclose(losses.l1_penalty(params), np.sum(np.abs(everything)))
    np.testing.assert_allclose(losses.l1_penalty(params, biases=False), np.sum(np.abs(weights)))
    # The ½ makes the gradient θ itself; the left-out leaves get a zero gradient.
    grads = jax.grad(lambda p: losses.l2_penalty(p, biases=False))(params)
    np.testing.assert_array_equal(grads["dense_0"]["w"], params["dense_0"]["w"])
    np.testing.assert_array_equal(grads["dense_0"]["b"], 0.0)
    assert losses.l2_penalty({"b": jnp.ones(3)}, biases=False) == 0.0


def test_regression_losses_match_references():
    rng = np.random.default_rng(2)
    pred = rng.normal(size=(10, 4)) * 2
    target = rng.normal(size=(10, 4))
    p, t = jnp.asarray(pred), jnp.asarray(target)
    np.testing.assert_allclose(losses.mse(p, t), np.mean((pred - target) ** 2), rtol=1e-6)
    np.testing.assert_allclose(losses.mae(p, t), np.mean(np.abs(pred - target)), rtol=1e-6)
    np.testing.assert_allclose(
        losses.mse(p, t, reduction="none"), np.mean((pred - target) ** 2, axis=1), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses.huber(p, t, delta=0.7), optax.huber_loss(p, t, delta=0.7).mean(), rtol=1e-6
    )


def test_hinge_losses():
    scores = jnp.array([2.0, 0.5, -0.3, -2.0])
    labels = jnp.array([1.0, 1.0, 1.0, -1.0])
    np.testing.assert_allclose(losses.hinge(scores, labels, reduction="none"), [0.0, 0.5, 1.3, 0.0])
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
    np.testing.assert_allclose(
        per, losses.softmax_cross_entropy(logits, labels, reduction="none"), rtol=1e-6
    )


LOW_PRECISION_CASES = {
    "softmax_cross_entropy": lambda z: losses.softmax_cross_entropy(z, jnp.array([1, 0])),
    "binary_cross_entropy": lambda z: losses.binary_cross_entropy(z, jnp.eye(2, 3, dtype=z.dtype)),
    "nll": lambda z: losses.nll(jax.nn.log_softmax(z.astype(jnp.float32)), jnp.array([2, 0])),
    "hinge": lambda z: losses.hinge(z, 2 * jnp.eye(2, 3, dtype=z.dtype) - 1),
    "logistic_loss": lambda z: losses.logistic_loss(z, 2 * jnp.eye(2, 3, dtype=z.dtype) - 1),
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


# Every loss, its inputs and its value per element in float64 numpy. An "element" is one
# entry of an elementwise loss's inputs and one class vector of a class loss's logits.
BATCH, CLASSES, DELTA, MARGIN = 5, 4, 0.7, 0.8
REDUCTIONS = ("mean", "sum", "none")
EXAMPLE_SHAPES = {"1d": (), "2d": (3,), "3d": (2, 3)}  # elements of one example


def _take(values, labels):
    return np.take_along_axis(values, labels[..., None], axis=-1)[..., 0]


def _multiclass_hinge(scores, labels):
    margins = np.maximum(0.0, MARGIN - _take(scores, labels)[..., None] + scores)
    own = np.arange(CLASSES) == labels[..., None]
    return np.where(own, 0.0, margins).sum(axis=-1) / CLASSES


def _huber(p, t):
    r = np.abs(p - t)
    return np.where(r <= DELTA, 0.5 * r**2, DELTA * (r - 0.5 * DELTA))


def _regression(rng, shape):
    return rng.normal(size=shape) * 2, rng.normal(size=shape)


def _logits_and_classes(rng, shape):
    return rng.normal(size=(*shape, CLASSES)) * 3, rng.integers(0, CLASSES, size=shape)


def _log_probs_and_classes(rng, shape):
    logits, labels = _logits_and_classes(rng, shape)
    return special.log_softmax(logits, axis=-1), labels


def _logits_and_probabilities(rng, shape):
    logits, _ = _logits_and_classes(rng, shape)
    return logits, special.softmax(rng.normal(size=logits.shape), axis=-1)


# name: (funcnet loss, inputs(rng, shape of the batch's elements), value per element)
CASES = {
    "mse": (losses.mse, _regression, lambda p, t: (p - t) ** 2),
    "mae": (losses.mae, _regression, lambda p, t: np.abs(p - t)),
    "huber": (functools.partial(losses.huber, delta=DELTA), _regression, _huber),
    "binary_cross_entropy": (
        losses.binary_cross_entropy,
        lambda rng, shape: (rng.normal(size=shape) * 3, rng.integers(0, 2, size=shape) * 1.0),
        lambda z, y: -y * np.log(special.expit(z)) - (1 - y) * np.log(special.expit(-z)),
    ),
    "logistic_loss": (
        losses.logistic_loss,
        lambda rng, shape: (rng.normal(size=shape) * 3, rng.choice([-1.0, 1.0], size=shape)),
        lambda z, y: np.log1p(np.exp(-y * z)),
    ),
    "hinge": (
        losses.hinge,
        lambda rng, shape: (rng.normal(size=shape), rng.choice([-1.0, 1.0], size=shape)),
        lambda s, y: np.maximum(0.0, 1.0 - y * s),
    ),
    "softmax_cross_entropy": (
        losses.softmax_cross_entropy,
        _logits_and_classes,
        lambda z, y: -_take(special.log_softmax(z, axis=-1), y),
    ),
    "softmax_cross_entropy_probabilities": (
        losses.softmax_cross_entropy,
        _logits_and_probabilities,
        lambda z, p: -np.sum(p * special.log_softmax(z, axis=-1), axis=-1),
    ),
    "nll": (losses.nll, _log_probs_and_classes, lambda lp, y: -_take(lp, y)),
    "multiclass_hinge": (
        functools.partial(losses.multiclass_hinge, margin=MARGIN),
        _logits_and_classes,
        _multiclass_hinge,
    ),
}


def _case(name, example_shape, seed=0):
    """The loss, its two inputs as float64/int numpy arrays and its values per element."""
    loss, make_inputs, per_element = CASES[name]
    a, b = make_inputs(np.random.default_rng(seed), (BATCH, *example_shape))
    return loss, a, b, per_element(a, b)


def _jax(x):
    return jnp.asarray(x, jnp.float32 if np.issubdtype(x.dtype, np.floating) else jnp.int32)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("example_shape", EXAMPLE_SHAPES.values(), ids=EXAMPLE_SHAPES.keys())
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_loss_reduces_by_the_one_rule(name, example_shape, reduction):
    loss, a, b, per_element = _case(name, example_shape)
    assert per_element.shape == (BATCH, *example_shape)
    per_example = per_element.reshape(BATCH, -1).mean(axis=1)  # ℓ_i = mean_j v_ij
    expected = {"mean": per_example.mean(), "sum": per_example.sum(), "none": per_example}
    value = loss(_jax(a), _jax(b), reduction=reduction)
    assert value.shape == np.shape(expected[reduction])
    np.testing.assert_allclose(value, expected[reduction], rtol=2e-5, atol=1e-6)
    if reduction == "mean":  # the mean over all elements, as torch's reduction="mean"
        np.testing.assert_allclose(value, per_element.mean(), rtol=2e-5, atol=1e-6)


def _torch_losses(F):
    """Torch's version of each case, ``(a, b, reduction) -> tensor``; the class axis moves to
    position 1, where torch wants it."""

    def classes_first(x):
        return x.movedim(-1, 1) if x.ndim > 2 else x

    return {
        "mse": F.mse_loss,
        "mae": F.l1_loss,
        "huber": lambda a, b, reduction: F.huber_loss(a, b, reduction=reduction, delta=DELTA),
        "binary_cross_entropy": F.binary_cross_entropy_with_logits,
        "logistic_loss": F.soft_margin_loss,
        "softmax_cross_entropy": lambda z, y, reduction: F.cross_entropy(
            classes_first(z), y, reduction=reduction
        ),
        "softmax_cross_entropy_probabilities": lambda z, p, reduction: F.cross_entropy(
            classes_first(z), classes_first(p), reduction=reduction
        ),
        "nll": lambda lp, y, reduction: F.nll_loss(classes_first(lp), y, reduction=reduction),
        "multiclass_hinge": lambda s, y, reduction: F.multi_margin_loss(
            s, y, margin=MARGIN, reduction=reduction
        ),
    }


TORCH_CASES = [
    pytest.param(name, shape, id=f"{name}-{shape_id}")
    for name in sorted(CASES)
    for shape_id, shape in EXAMPLE_SHAPES.items()
    # torch has no plain binary hinge (optax's is checked above), and its multi_margin_loss
    # takes (batch, classes) only.
    if name != "hinge" and (name != "multiclass_hinge" or shape == ())
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "example_shape"), TORCH_CASES)
def test_losses_match_torch(name, example_shape, reduction):
    torch = pytest.importorskip("torch")
    loss, a, b, _ = _case(name, example_shape, seed=3)
    reference = _torch_losses(torch.nn.functional)[name]
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    elements = int(np.prod(example_shape))
    if reduction == "mean":
        expected = reference(ta, tb, reduction="mean").numpy()
    elif reduction == "sum":  # torch sums every element; funcnet sums per-example means
        expected = reference(ta, tb, reduction="sum").numpy() / elements
    else:  # torch keeps every element; funcnet averages each example's
        expected = reference(ta, tb, reduction="none").numpy().reshape(BATCH, -1).mean(axis=1)
    np.testing.assert_allclose(loss(_jax(a), _jax(b), reduction=reduction), expected, rtol=2e-5)


@pytest.mark.parametrize("example_shape", EXAMPLE_SHAPES.values(), ids=EXAMPLE_SHAPES.keys())
@pytest.mark.parametrize("name", sorted(CASES))
def test_default_is_the_mean_of_the_losses_of_batches_of_one(name, example_shape):
    # funcnet.train weights examples by ℓ_i = loss_fn(o[None], t[None]) and needs the
    # default loss to be mean_i ℓ_i.
    loss, a, b, _ = _case(name, example_shape, seed=4)
    a, b = _jax(a), _jax(b)
    singles = jax.vmap(lambda x, y: loss(x[None], y[None]))(a, b)
    np.testing.assert_allclose(singles, loss(a, b, reduction="none"), rtol=1e-6)
    np.testing.assert_allclose(jnp.mean(singles), loss(a, b), rtol=1e-6)
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(loss(a[:1], b[:1], reduction=reduction), singles[:1].sum())


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_unbatched_example_gives_its_value_under_every_reduction(name):
    loss, a, b, per_element = _case(name, ())
    for reduction in REDUCTIONS:
        value = loss(_jax(a[0]), _jax(b[0]), reduction=reduction)
        assert value.shape == ()
        np.testing.assert_allclose(value, per_element[0], rtol=2e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_loss_refuses_an_unknown_reduction(name):
    loss, a, b, _ = _case(name, ())
    owner = name.removesuffix("_probabilities")
    message = f"{owner}: reduction must be 'mean', 'sum' or 'none', got 'avg'"
    with pytest.raises(ValueError, match=message):
        loss(_jax(a), _jax(b), reduction="avg")


@pytest.mark.parametrize("loss", [losses.softmax_cross_entropy, losses.nll])
def test_class_losses_take_one_hot_labels_as_integer_labels(loss, batch):
    logits, labels = batch
    one_hot = jax.nn.one_hot(labels, 5)
    for reduction in REDUCTIONS:
        np.testing.assert_allclose(
            loss(logits, one_hot, reduction=reduction),
            loss(logits, labels, reduction=reduction),
            rtol=1e-6,
        )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32])
def test_multiclass_hinge_refuses_one_hot_labels(batch, dtype):
    scores, labels = batch
    one_hot = jax.nn.one_hot(labels, 5, dtype=dtype)
    message = (
        rf"multiclass_hinge: labels must be integer classes of shape \(16,\) for logits of "
        rf"shape \(16, 5\); got labels of shape \(16, 5\) and dtype {jnp.dtype(dtype)}"
    )
    with pytest.raises(ValueError, match=message):
        losses.multiclass_hinge(scores, one_hot)
    with pytest.raises(ValueError, match=message):
        jax.jit(losses.multiclass_hinge)(scores, one_hot)


@pytest.mark.parametrize(
    "loss, what",
    [
        (losses.softmax_cross_entropy, "logits"),
        (losses.nll, "log_probs"),
        (losses.multiclass_hinge, "scores"),
    ],
)
def test_class_losses_refuse_logits_without_a_class_axis(loss, what):
    with pytest.raises(ValueError, match=f"{loss.__name__}: {what} need a class axis"):
        loss(jnp.float32(1.0), jnp.int32(0))
