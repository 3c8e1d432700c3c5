"""embedding: lookups and gradients against numpy indexing and scatter-add."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import nn


def _key(seed=0):
    # The layers take any typed key; "rbg" keys compile much faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("ids_shape", [(5,), (3, 4), (2, 3, 2)])
def test_lookup_matches_numpy_indexing(ids_shape):
    layer = nn.embedding(11, 6)
    out_shape, params, state = layer.init(_key(), ids_shape)
    assert out_shape == (*ids_shape, 6) and state == {}
    assert params["table"].shape == (11, 6)
    ids = np.random.default_rng(0).integers(0, 11, ids_shape)
    y, _ = jax.jit(layer.apply)(params, state, jnp.asarray(ids))
    assert y.shape == out_shape
    np.testing.assert_array_equal(y, np.asarray(params["table"])[ids])


def test_default_table_is_standard_normal():
    _, params, _ = nn.embedding(500, 200).init(_key(), (1,))
    assert abs(float(jnp.mean(params["table"]))) < 0.01
    assert abs(float(jnp.std(params["table"])) - 1.0) < 0.01


def test_gradient_adds_into_the_rows_used():
    layer = nn.embedding(7, 3)
    _, params, state = layer.init(_key(), (6,))
    ids = np.array([0, 2, 2, 5, 0, 2])
    upstream = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    grads = jax.grad(lambda p: jnp.sum(layer.apply(p, state, jnp.asarray(ids))[0] * upstream))(
        params
    )
    expected = np.zeros((7, 3), np.float32)
    np.add.at(expected, ids, upstream)
    np.testing.assert_allclose(grads["table"], expected, rtol=1e-6)


def test_gradient_matches_finite_differences_in_float64(x64):
    model = nn.serial(nn.embedding(5, 3), nn.tanh, nn.dense(2))
    _, params, state = model.init(_key(), (2, 4))
    ids = jnp.asarray([[0, 1, 1, 4], [3, 3, 2, 0]])
    assert params["embedding_0"]["table"].dtype == jnp.float64
    loss = lambda p: jnp.sum(jnp.sin(model.apply(p, state, ids)[0]))
    fn.diff.check_grads(jax.jit(loss), params)


def test_bad_ids_are_refused():
    layer = nn.embedding(4, 2)
    _, params, state = layer.init(_key(), (3,))
    with pytest.raises(nn.LayerError, match=r"embedding: expected integer ids, got dtype float32"):
        layer.apply(params, state, jnp.zeros(3))
    with pytest.raises(nn.LayerError, match=r"ids must lie in \[0, 4\), got values in \[0, 4\]"):
        layer.apply(params, state, jnp.array([0, 4, 1]))
    with pytest.raises(ValueError, match="positive"):
        nn.embedding(0, 3)
