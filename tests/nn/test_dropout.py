"""dropout and alpha_dropout: training statistics, evaluation identity, keys and gradients."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import nn

SELU_FLOOR = -1.0507009873554804934193349852946 * 1.6732632423543772848170429916717


def _key(seed=0):
    # The layers take any typed key; "rbg" keys compile much faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, dtype=np.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _binomial_tolerance(n, p):
    return 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("layer", [nn.dropout(0.3), nn.alpha_dropout(0.3)], ids=["plain", "alpha"])
def test_evaluation_is_the_identity_and_needs_no_key(layer):
    out_shape, params, state = layer.init(_key(), (4, 5))
    assert out_shape == (4, 5) and params == {} and state == {}
    x = _normal(4, 5)
    y, _ = layer.apply(params, state, x)
    assert y is x
    y, _ = jax.jit(layer.apply, static_argnames="train")(params, state, x, key=_key(), train=False)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_drops_a_rate_fraction_and_scales_the_rest(rate):
    x = 1.0 + jnp.abs(_normal(200, 100))
    y, _ = jax.jit(nn.dropout(rate).apply, static_argnames="train")(
        {}, {}, x, key=_key(1), train=True
    )
    dropped = np.asarray(y == 0)
    assert abs(dropped.mean() - rate) < _binomial_tolerance(x.size, rate)
    np.testing.assert_allclose(
        np.asarray(y)[~dropped], np.asarray(x)[~dropped] / (1 - rate), rtol=1e-6
    )
    # Inverted scaling keeps the expectation: E[y] = x.
    ones, _ = nn.dropout(rate).apply({}, {}, jnp.ones(20_000), key=_key(2), train=True)
    assert abs(float(jnp.mean(ones)) - 1.0) < 5 * math.sqrt(rate / (1 - rate) / 20_000)


def test_masks_depend_on_the_key_and_only_on_it():
    layer = nn.dropout(0.5)
    x = jnp.ones((8, 16))
    a, _ = layer.apply({}, {}, x, key=_key(1), train=True)
    b, _ = layer.apply({}, {}, x, key=_key(1), train=True)
    c, _ = layer.apply({}, {}, x, key=_key(2), train=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # Two dropout layers in one model draw different masks.
    model = nn.serial(nn.dropout(0.5), nn.fanout(2), nn.parallel(nn.dropout(0.5), nn.dropout(0.5)))
    _, params, state = model.init(_key(), x.shape)
    (left, right), _ = model.apply(params, state, x, key=_key(3), train=True)
    assert not np.array_equal(left == 0, right == 0)


def test_alpha_dropout_keeps_zero_mean_and_unit_variance():
    rate = 0.2
    x = _normal(400, 250)
    y, _ = nn.alpha_dropout(rate).apply({}, {}, x, key=_key(4), train=True)
    q = 1 - rate
    a = 1 / math.sqrt(q + SELU_FLOOR**2 * q * (1 - q))
    b = -a * SELU_FLOOR * (1 - q)
    dropped = np.isclose(np.asarray(y), a * SELU_FLOOR + b, rtol=0, atol=1e-6)
    assert abs(dropped.mean() - rate) < _binomial_tolerance(x.size, rate)
    np.testing.assert_allclose(
        np.asarray(y)[~dropped], a * np.asarray(x)[~dropped] + b, rtol=1e-5, atol=1e-6
    )
    assert abs(float(jnp.mean(y))) < 0.01
    assert abs(float(jnp.var(y)) - 1.0) < 0.02


def test_alpha_dropout_in_a_selu_network_stays_normalised():
    layers = []
    for _ in range(4):
        layers += [nn.dense(256), nn.selu, nn.alpha_dropout(0.1)]
    model = nn.serial(*layers)
    _, params, state = model.init(_key(), (512, 256))
    y, _ = jax.jit(model.apply, static_argnames="train")(
        params, state, _normal(512, 256), key=_key(5), train=True
    )
    assert abs(float(jnp.mean(y))) < 0.1
    assert abs(float(jnp.std(y)) - 1.0) < 0.1


@pytest.mark.parametrize(
    "layer", [nn.dropout(0.25), nn.alpha_dropout(0.25)], ids=["plain", "alpha"]
)
def test_training_without_a_key_is_refused_naming_the_layer(layer):
    model = nn.serial(nn.dense(3), layer)
    _, params, state = model.init(_key(), (2, 3))
    with pytest.raises(nn.LayerError, match=r"^\w*dropout_1: train=True .*needs a key"):
        model.apply(params, state, jnp.ones((2, 3)), train=True)
    model.apply(params, state, jnp.ones((2, 3)), train=False)


def test_rate_zero_is_the_identity_even_in_training():
    x = _normal(3, 4)
    y, _ = nn.dropout(0.0).apply({}, {}, x, train=True)
    assert y is x


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5])
def test_rates_outside_zero_one_are_refused(rate):
    with pytest.raises(ValueError, match="probability of dropping"):
        nn.dropout(rate)
    with pytest.raises(ValueError, match="probability of dropping"):
        nn.alpha_dropout(rate)


@pytest.mark.parametrize("layer", [nn.dropout(0.4), nn.alpha_dropout(0.4)], ids=["plain", "alpha"])
def test_gradients_with_a_fixed_key_match_finite_differences_in_float64(x64, layer):
    model = nn.serial(nn.dense(4), nn.tanh, layer, nn.dense(2))
    _, params, state = model.init(_key(), (3, 5))
    x = _normal(3, 5, dtype=np.float64)

    def loss(args):
        p, x = args
        y, _ = model.apply(p, state, x, key=_key(6), train=True)
        return jnp.sum(jnp.sin(y))

    fn.diff.check_grads(jax.jit(loss), (params, x))


def test_dropout_under_vmap_draws_per_example_masks():
    keys = jax.random.split(_key(7), 6)
    y = jax.vmap(lambda k: nn.dropout(0.5).apply({}, {}, jnp.ones(32), key=k, train=True)[0])(keys)
    assert y.shape == (6, 32)
    assert len({tuple(row) for row in np.asarray(y == 0)}) == 6
