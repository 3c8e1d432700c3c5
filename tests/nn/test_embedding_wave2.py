"""embedding: out-of-range ids under jit give NaN rows (never wrapped, never clamped), and
padding_idx against torch.nn.Embedding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train
from funcnet.nn.embedding import embedding

torch = pytest.importorskip("torch")


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def test_out_of_range_ids_under_jit_give_nan_rows_and_no_gradient():
    layer = embedding(5, 3)
    _, params, state = layer.init(_key(), (6,))
    table = np.asarray(params["table"])
    ids = jnp.asarray([0, -1, 4, 5, -3, 2])
    apply = jax.jit(lambda p, i: layer.apply(p, state, i)[0])
    y = np.asarray(apply(params, ids))
    bad = np.array([False, True, False, True, True, False])
    assert np.all(np.isnan(y[bad]))  # −1 is not row 4 and −3 not row 0 or row 2
    np.testing.assert_array_equal(y[~bad], table[[0, 4, 2]])
    mapped = jax.vmap(lambda i: layer.apply(params, state, i)[0])(ids.reshape(2, 3))
    np.testing.assert_array_equal(np.isnan(mapped).reshape(6, 3), np.isnan(y))
    # The NaN rows send nothing into the table; the rows used get their gradient.
    grads = jax.grad(lambda p: jnp.nansum(apply(p, ids)))(params)["table"]
    np.testing.assert_array_equal(grads, np.isin(np.arange(5), [0, 2, 4])[:, None] * np.ones(3))
    with pytest.raises(nn.LayerError, match=r"ids must lie in \[0, 5\), got values in \[-3, 5\]"):
        layer.apply(params, state, ids)  # concrete ids are still refused


@pytest.mark.parametrize(
    "dtype, ids, bad", [("int8", [-1, 7, 127], [1, 0, 0]), ("uint8", [3, 200, 255], [0, 1, 1])]
)
def test_narrow_id_dtypes_are_bounded_without_wrapping(dtype, ids, bad):
    size = 300 if dtype == "int8" else 100  # beyond int8's range; within uint8's
    layer = embedding(size, 2)
    _, params, state = layer.init(_key(), (3,))
    y = jax.jit(lambda i: layer.apply(params, state, i)[0])(jnp.asarray(ids, dtype))
    np.testing.assert_array_equal(np.isnan(y).all(axis=1), np.asarray(bad, bool))
    good = ~np.asarray(bad, bool)
    np.testing.assert_array_equal(y[good], np.asarray(params["table"])[np.asarray(ids)[good]])


def test_fit_stops_on_an_out_of_range_id():
    model = nn.serial(embedding(6, 3), nn.flatten(), nn.dense(2))
    x = np.random.default_rng(0).integers(0, 6, (16, 2)).astype(np.int32)
    x[5, 1] = 6  # one id past the table
    y = np.arange(16) % 2
    with pytest.raises(train.NonFiniteLossError, match="epoch 0"):
        train.fit(
            model,
            optim.sgd(0.1),
            (jnp.asarray(x), jnp.asarray(y)),
            loss_fn=losses.softmax_cross_entropy,
            epochs=1,
            batch_size=16,
            key=_key(),
            progress=False,
        )


@pytest.mark.parametrize("padding_idx", [2, -1])
def test_padding_idx_matches_torch(padding_idx, x64):
    num, features = 5, 3
    layer = embedding(num, features, padding_idx=padding_idx)
    ids = np.array([[0, 2, 4, 2], [1, 4, 3, 2]])
    out_shape, params, state = layer.init(_key(), ids.shape)
    assert out_shape == (2, 4, features)
    row = padding_idx % num
    np.testing.assert_array_equal(params["table"][row], 0.0)
    assert np.all(np.asarray(params["table"])[np.arange(num) != row] != 0)

    ref = torch.nn.Embedding(num, features, padding_idx=padding_idx).double()
    np.testing.assert_array_equal(ref.weight.detach()[row], 0.0)  # torch zeroes it too
    table = np.random.default_rng(1).normal(size=(num, features))  # padding row nonzero
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(table))
    cotangent = np.random.default_rng(2).normal(size=(2, 4, features))
    want = ref(torch.tensor(ids))
    (want_grad,) = torch.autograd.grad(want, ref.weight, torch.tensor(cotangent))

    got, vjp = jax.vjp(
        jax.jit(lambda p: layer.apply(p, state, jnp.asarray(ids))[0]), {"table": jnp.asarray(table)}
    )
    (grads,) = vjp(jnp.asarray(cotangent))
    np.testing.assert_array_equal(got, want.detach())  # the padding row's own value
    np.testing.assert_allclose(grads["table"], want_grad, rtol=1e-14)
    np.testing.assert_array_equal(grads["table"][row], 0.0)


def test_padding_idx_is_checked():
    with pytest.raises(ValueError, match=r"padding_idx must lie in \[-4, 4\), got 4"):
        embedding(4, 2, padding_idx=4)
    with pytest.raises(ValueError, match=r"padding_idx must lie in \[-4, 4\), got -5"):
        embedding(4, 2, padding_idx=-5)
