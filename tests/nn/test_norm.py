"""Normalisation layers against numpy statistics; running statistics; weight norm."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import nn


def _key(seed=0):
    # The layers take any typed key; "rbg" keys compile much faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, dtype=np.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _affine(rng, channels):
    return {
        "scale": jnp.asarray(rng.uniform(0.5, 2.0, channels), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=channels), jnp.float32),
    }


def _np_normalize(x, axes, params, eps=1e-5):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased
    return (x - mean) / np.sqrt(var + eps) * np.asarray(params["scale"]) + np.asarray(
        params["bias"]
    )


# --- batch norm -------------------------------------------------------------------------------


@pytest.mark.parametrize("in_shape", [(16, 3), (4, 5, 6, 3), (3, 7, 3)])
def test_batch_norm_training_uses_batch_statistics_and_updates_the_running_ones(in_shape):
    layer = nn.batch_norm(momentum=0.2)
    out_shape, params, state = layer.init(_key(), in_shape)
    assert out_shape == in_shape
    chex.assert_trees_all_equal(state, {"mean": jnp.zeros(3), "var": jnp.ones(3)})
    rng = np.random.default_rng(0)
    params = _affine(rng, 3)
    state = {"mean": jnp.asarray(rng.normal(size=3), jnp.float32), "var": jnp.ones(3)}
    x = jnp.asarray(rng.normal(2.0, 3.0, size=in_shape), jnp.float32)

    y, new_state = jax.jit(layer.apply, static_argnames="train")(params, state, x, train=True)
    axes = tuple(range(len(in_shape) - 1))
    np.testing.assert_allclose(y, _np_normalize(x, axes, params), rtol=1e-4, atol=1e-4)

    flat = np.asarray(x, np.float64).reshape(-1, 3)
    expected_mean = 0.8 * np.asarray(state["mean"]) + 0.2 * flat.mean(axis=0)
    expected_var = 0.8 * 1.0 + 0.2 * flat.var(axis=0, ddof=1)  # unbiased, as PyTorch
    np.testing.assert_allclose(new_state["mean"], expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_state["var"], expected_var, rtol=1e-5)


def test_batch_norm_evaluation_uses_running_statistics_and_keeps_state():
    layer = nn.batch_norm()
    _, params, _ = layer.init(_key(), (8, 4))
    rng = np.random.default_rng(1)
    params = _affine(rng, 4)
    state = {
        "mean": jnp.asarray(rng.normal(size=4), jnp.float32),
        "var": jnp.asarray(rng.uniform(0.5, 2, 4), jnp.float32),
    }
    x = _normal(8, 4)
    y, same = layer.apply(params, state, x)
    assert same is state
    expected = (np.asarray(x) - state["mean"]) / np.sqrt(state["var"] + 1e-5)
    expected = expected * params["scale"] + params["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
    # A single example is fine at evaluation time, and the output does not depend on the batch.
    y0, _ = layer.apply(params, state, x[:1])
    np.testing.assert_allclose(y0, y[:1], rtol=1e-6)


def test_batch_norm_running_statistics_converge_to_the_data_mean_and_variance():
    true_mean = np.array([-2.0, 0.5, 3.0], np.float32)
    true_std = np.array([0.5, 1.0, 2.0], np.float32)
    layer = nn.batch_norm(momentum=0.1)
    _, params, state = layer.init(_key(), (128, 4, 3))

    @jax.jit
    def run(state, key):
        def step(state, key):
            x = true_mean + true_std * jax.random.normal(key, (128, 4, 3))
            _, state = layer.apply(params, state, x, train=True)
            return state, None

        return jax.lax.scan(step, state, jax.random.split(key, 200))[0]

    state = run(state, _key(3))
    np.testing.assert_allclose(state["mean"], true_mean, atol=0.03)
    np.testing.assert_allclose(state["var"], true_std**2, rtol=0.05)


def test_batch_norm_in_a_model_threads_state_under_jit_and_grad():
    model = nn.serial(nn.dense(6), nn.batch_norm(), nn.relu, nn.dense(2), nn.batch_norm())
    _, params, state = model.init(_key(), (10, 4))
    assert set(state) == {"batch_norm_1", "batch_norm_4"}
    x = _normal(10, 4)

    def loss(params, state):
        y, state = model.apply(params, state, x, train=True)
        return jnp.sum(y**2), state

    (_, new_state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, state)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert not np.allclose(new_state["batch_norm_1"]["mean"], 0)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # After batch norm each output channel has zero mean, so scale·x̂ + bias sums to 10·bias.
    y, _ = model.apply(params, state, x, train=True)
    np.testing.assert_allclose(jnp.mean(y, axis=0), params["batch_norm_4"]["bias"], atol=1e-5)


def test_batch_norm_axis_name_pools_statistics_over_a_vmapped_batch():
    layer = nn.batch_norm(axis_name="batch")
    _, params, state = layer.init(_key(), (6, 5, 3))
    params = _affine(np.random.default_rng(2), 3)
    x = _normal(6, 5, 3)
    y, new_state = nn.batch_norm().apply(params, state, x, train=True)
    per_example = jax.vmap(
        lambda xi: layer.apply(params, state, xi[None], train=True),
        axis_name="batch",
    )
    y_vmapped, states = per_example(x)
    np.testing.assert_allclose(y_vmapped[:, 0], y, rtol=1e-5, atol=1e-5)
    for name in ("mean", "var"):
        np.testing.assert_allclose(states[name][0], new_state[name], rtol=1e-5)


def test_batch_norm_refuses_training_on_one_value_per_channel():
    layer = nn.batch_norm()
    _, params, state = layer.init(_key(), (1, 4))
    with pytest.raises(nn.LayerError, match=r"more than one value per channel.*\(1, 4\)"):
        layer.apply(params, state, jnp.ones((1, 4)), train=True)


# --- layer, group and instance norm ------------------------------------------------------------


CASES = {
    # name: (layer, in_shape, numpy normalisation of x of shape (batch, *spatial, channels))
    "layer_norm": (nn.layer_norm(), (3, 5, 6), lambda x, p: _np_normalize(x, (-1,), p)),
    "instance_norm": (
        nn.instance_norm(),
        (2, 4, 5, 6),
        lambda x, p: _np_normalize(x, (1, 2), p),
    ),
    "group_norm": (
        nn.group_norm(3),
        (2, 4, 5, 6),
        lambda x, p: _np_group_norm(x, 3, p),
    ),
    "group_norm-1d": (nn.group_norm(2), (2, 7, 6), lambda x, p: _np_group_norm(x, 2, p)),
}


def _np_group_norm(x, groups, params, eps=1e-5):
    x = np.asarray(x, np.float64)
    out = np.empty_like(x)
    size = x.shape[-1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            block = x[n, ..., g * size : (g + 1) * size]
            out[n, ..., g * size : (g + 1) * size] = (block - block.mean()) / np.sqrt(
                block.var() + eps
            )
    return out * np.asarray(params["scale"]) + np.asarray(params["bias"])


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_per_example_norms_match_numpy_in_train_and_eval(case):
    layer, in_shape, reference = case
    out_shape, params, state = layer.init(_key(), in_shape)
    assert out_shape == in_shape and state == {}
    chex.assert_trees_all_equal(params, {"scale": jnp.ones(6), "bias": jnp.zeros(6)})
    params = _affine(np.random.default_rng(3), 6)
    x = 2.0 + 3.0 * _normal(*in_shape)
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, reference(x, params), rtol=1e-4, atol=1e-4)
    y_train, _ = layer.apply(params, state, x, train=True)
    np.testing.assert_array_equal(y_train, y)
    per_example = jax.vmap(lambda xi: layer.apply(params, state, xi[None])[0][0])(x)
    np.testing.assert_allclose(per_example, y, rtol=1e-5, atol=1e-5)


def test_group_norm_with_one_group_per_channel_is_instance_norm():
    x = _normal(2, 3, 4, 6)
    _, params, _ = nn.instance_norm().init(_key(), x.shape)
    a, _ = nn.group_norm(6).apply(params, {}, x)
    b, _ = nn.instance_norm().apply(params, {}, x)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_norm_errors_name_the_layer_and_shapes():
    with pytest.raises(nn.LayerError, match=r"group_norm: num_groups=4 does not divide the 6"):
        nn.group_norm(4).init(_key(), (2, 3, 6))
    with pytest.raises(nn.LayerError, match=r"instance_norm: .*spatial axis.*\(2, 6\)"):
        nn.instance_norm().init(_key(), (2, 6))
    model = nn.serial(nn.dense(4), nn.layer_norm())
    _, params, state = model.init(_key(), (2, 3))
    params["layer_norm_1"] = {"scale": jnp.ones(5), "bias": jnp.zeros(5)}
    with pytest.raises(nn.LayerError, match=r"^layer_norm_1: .*5 channels.*\(2, 4\)"):
        model.apply(params, state, jnp.ones((2, 3)))
    _, params, state = nn.batch_norm().init(_key(), (2, 3))
    with pytest.raises(nn.LayerError, match=r"batch_norm: .*floating-point.*int32"):
        nn.batch_norm().apply(params, state, jnp.ones((2, 3), jnp.int32))


# --- weight norm -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inner", "in_shape"),
    [(nn.dense(5), (4, 3)), (nn.conv(4, (3, 2)), (2, 5, 5, 3)), (nn.conv(3, 3), (2, 6, 2))],
    ids=["dense", "conv-2d", "conv-1d"],
)
def test_weight_norm_starts_at_the_wrapped_layer_and_computes_g_v_over_norm(inner, in_shape):
    layer = nn.weight_norm(inner)
    out_shape, params, state = layer.init(_key(4), in_shape)
    inner_shape, inner_params, _ = inner.init(_key(4), in_shape)
    assert out_shape == inner_shape
    assert set(params) == {"v", "g", "b"}
    assert params["g"].shape == (inner_params["w"].shape[-1],)
    x = _normal(*in_shape)
    y, _ = layer.apply(params, state, x)
    y_inner, _ = inner.apply(inner_params, {}, x)
    np.testing.assert_allclose(y, y_inner, rtol=1e-5, atol=1e-5)

    rng = np.random.default_rng(5)
    v = np.asarray(params["v"], np.float64) * rng.uniform(0.5, 2, params["v"].shape)
    g = rng.uniform(0.5, 2, params["g"].shape)
    norms = np.sqrt(np.sum(v**2, axis=tuple(range(v.ndim - 1))))
    w = g * v / norms
    np.testing.assert_allclose(np.sqrt(np.sum(w**2, axis=tuple(range(w.ndim - 1)))), g)
    new = {"v": jnp.asarray(v, jnp.float32), "g": jnp.asarray(g, jnp.float32), "b": params["b"]}
    y, _ = layer.apply(new, state, x)
    y_inner, _ = inner.apply({"w": jnp.asarray(w, jnp.float32), "b": params["b"]}, {}, x)
    np.testing.assert_allclose(y, y_inner, rtol=1e-5, atol=1e-5)
    # Only the direction of v matters.
    y_scaled, _ = layer.apply({**new, "v": 3.0 * new["v"]}, state, x)
    np.testing.assert_allclose(y_scaled, y, rtol=1e-5, atol=1e-5)


def test_weight_norm_refuses_a_layer_without_kernel():
    with pytest.raises(nn.LayerError, match=r"weight_norm: .*kernel w"):
        nn.weight_norm(nn.layer_norm()).init(_key(), (2, 3))


# --- gradients ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "in_shape", "train"),
    [
        (nn.batch_norm(), (4, 2, 3), True),
        (nn.batch_norm(), (4, 3), False),
        (nn.layer_norm(), (2, 3, 4), False),
        (nn.group_norm(2), (2, 3, 4), False),
        (nn.instance_norm(), (2, 3, 2, 2), False),
        (nn.weight_norm(nn.dense(3)), (2, 4), False),
        (nn.weight_norm(nn.conv(2, 2)), (2, 3, 3, 2), False),
    ],
    ids=[
        "batch_norm-train",
        "batch_norm-eval",
        "layer",
        "group",
        "instance",
        "wn-dense",
        "wn-conv",
    ],
)
def test_gradients_match_finite_differences_in_float64(x64, layer, in_shape, train):
    _, params, state = layer.init(_key(), in_shape)
    params = jax.tree.map(lambda p: p + 0.1 * _normal(*p.shape, dtype=np.float64, seed=7), params)
    x = _normal(*in_shape, dtype=np.float64)
    apply = functools.partial(layer.apply, train=train)
    weights = _normal(*layer.init(_key(), in_shape)[0], dtype=np.float64, seed=8)

    def loss(args):
        p, x = args
        return jnp.sum(weights * jnp.tanh(apply(p, state, x)[0]))

    fn.diff.check_grads(jax.jit(loss), (params, x))
