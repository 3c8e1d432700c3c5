"""multi_head_attention against an explicit numpy softmax(QKᵀ/√d)V; transformer_block."""

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


def _np_attention(params, x, num_heads, mask=None, causal=False):
    """Explicit per-example, per-head softmax(Q Kᵀ/√d + M) V, then the output projection."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    batch, time, _ = x.shape
    d = p["q"]["w"].shape[1] // num_heads
    out = np.zeros((batch, time, num_heads * d))
    for b in range(batch):
        q, k, v = (x[b] @ p[n]["w"] + p[n]["b"] for n in "qkv")
        for h in range(num_heads):
            cols = slice(h * d, (h + 1) * d)
            scores = q[:, cols] @ k[:, cols].T / np.sqrt(d)
            for i in range(time):
                for j in range(time):
                    hidden = (mask is not None and not mask[b, j]) or (causal and j > i)
                    if hidden:
                        scores[i, j] = -np.inf
            scores[np.all(np.isinf(scores), axis=1)] = 0.0  # nothing visible: uniform weights
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
            out[b, :, cols] = weights @ v[:, cols]
    return out @ p["o"]["w"] + p["o"]["b"]


def _perturbed(params, seed=2):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        tree, [leaf + 0.3 * rng.normal(size=leaf.shape).astype(leaf.dtype) for leaf in leaves]
    )


MASK = np.array([[True, True, True, True, False, False], [True] * 6, [False, True] * 3])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(("num_heads", "head_dim"), [(1, None), (2, None), (3, 5)])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_explicit_softmax_attention(num_heads, head_dim, causal, masked):
    layer = nn.multi_head_attention(num_heads, head_dim=head_dim, causal=causal)
    x = _normal(3, 6, 6)
    in_shape = ((3, 6, 6), (3, 6)) if masked else (3, 6, 6)
    out_shape, params, state = layer.init(_key(), in_shape)
    assert out_shape == in_shape and state == {}
    width = num_heads * (head_dim or 6 // num_heads)
    assert jax.tree.map(jnp.shape, params) == {
        "q": {"w": (6, width), "b": (width,)},
        "k": {"w": (6, width), "b": (width,)},
        "v": {"w": (6, width), "b": (width,)},
        "o": {"w": (width, 6), "b": (6,)},
    }
    params = _perturbed(params)
    apply = jax.jit(layer.apply)
    if masked:
        (y, mask), _ = apply(params, state, (x, jnp.asarray(MASK)))
        np.testing.assert_array_equal(mask, MASK)
    else:
        y, _ = apply(params, state, x)
    assert y.shape == (3, 6, 6)
    expected = _np_attention(params, x, num_heads, MASK if masked else None, causal)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_padded_keys_and_future_positions_have_no_influence():
    layer = nn.multi_head_attention(2, causal=True)
    _, params, state = layer.init(_key(), (1, 5, 4))
    x = _normal(1, 5, 4)
    mask = jnp.asarray([[True, True, True, False, False]])
    (y, _), _ = layer.apply(params, state, (x, mask))
    changed = x.at[0, 3:].set(100.0)  # padding
    (y2, _), _ = layer.apply(params, state, (changed, mask))
    np.testing.assert_allclose(y2[0, :3], y[0, :3], rtol=1e-6)
    y3, _ = layer.apply(params, state, x.at[0, 4].set(-50.0))  # the future, causally
    y4, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y3[0, :4], y4[0, :4], rtol=1e-6)


def test_a_fully_masked_sequence_gives_finite_outputs_and_gradients():
    layer = nn.multi_head_attention(2)
    _, params, state = layer.init(_key(), (1, 3, 4))
    x, mask = _normal(1, 3, 4), jnp.zeros((1, 3), bool)
    loss = lambda p: jnp.sum(layer.apply(p, state, (x, mask))[0][0] ** 2)
    assert np.isfinite(float(loss(params)))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(jax.grad(loss)(params)))


def test_transformer_block_matches_its_equations():
    block = nn.transformer_block(num_heads=2, mlp_dim=8, causal=True)
    x = _normal(2, 5, 4)
    out_shape, params, state = block.init(_key(), x.shape)
    assert out_shape == x.shape and state == {}
    assert set(params) == {"norm_1", "attention", "norm_2", "mlp"}
    assert list(params["mlp"]) == ["dense_0", "gelu_1", "dropout_2", "dense_3", "dropout_4"]
    params = _perturbed(params)
    y, _ = jax.jit(block.apply)(params, state, x)

    def np_layer_norm(p, z):
        z = np.asarray(z, np.float64)
        mean, var = z.mean(-1, keepdims=True), z.var(-1, keepdims=True)
        return (z - mean) / np.sqrt(var + 1e-5) * np.asarray(p["scale"]) + np.asarray(p["bias"])

    def np_gelu(z):  # exact GELU, z·Φ(z)
        from scipy.special import erf

        return 0.5 * z * (1 + erf(z / np.sqrt(2)))

    def np_dense(p, z):
        return z @ np.asarray(p["w"], np.float64) + np.asarray(p["b"], np.float64)

    h = np.asarray(x, np.float64)
    h = h + _np_attention(params["attention"], np_layer_norm(params["norm_1"], h), 2, causal=True)
    mlp = params["mlp"]
    u = np_dense(
        mlp["dense_3"], np_gelu(np_dense(mlp["dense_0"], np_layer_norm(params["norm_2"], h)))
    )
    np.testing.assert_allclose(y, h + u, rtol=1e-4, atol=1e-4)


def test_transformer_blocks_stack_in_serial_with_a_mask_and_dropout():
    model = nn.serial(
        nn.transformer_block(2, 16, dropout_rate=0.1), nn.transformer_block(2, 16, dropout_rate=0.1)
    )
    x, mask = _normal(3, 6, 8), jnp.asarray(MASK)
    out_shape, params, state = model.init(_key(), (x.shape, mask.shape))
    assert out_shape == (x.shape, mask.shape)
    apply = jax.jit(model.apply, static_argnames="train")
    (y_eval, _), _ = apply(params, state, (x, mask))
    (y_a, _), _ = apply(params, state, (x, mask), key=_key(1), train=True)
    (y_b, _), _ = apply(params, state, (x, mask), key=_key(2), train=True)
    assert not np.allclose(y_a, y_b)
    with pytest.raises(nn.LayerError, match=r"^transformer_block_0/dropout: .*needs a key"):
        model.apply(params, state, (x, mask), train=True)
    per_example = jax.vmap(lambda xi, mi: apply(params, state, (xi[None], mi[None]))[0][0][0])
    np.testing.assert_allclose(per_example(x, mask), y_eval, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["attention", "block"])
def test_gradients_match_finite_differences_in_float64(x64, kind):
    if kind == "attention":
        layer = nn.multi_head_attention(2, causal=True)
    else:
        layer = nn.transformer_block(1, 2)
    x, mask = _normal(2, 3, 4, dtype=np.float64), jnp.asarray([[True, True, False], [True] * 3])
    if kind == "block":
        x = x[..., :2]
    _, params, state = layer.init(_key(), (x.shape, mask.shape))
    params = _perturbed(params)
    weights = _normal(*x.shape, dtype=np.float64, seed=4)

    def loss(args):
        p, x = args
        (y, _), _ = layer.apply(p, state, (x, mask))
        return jnp.sum(weights * y)

    fn.diff.check_grads(jax.jit(loss), (params, x))


def test_bad_inputs_are_refused():
    layer = nn.multi_head_attention(3)
    with pytest.raises(nn.LayerError, match=r"8 features do not split into 3 heads; pass head_dim"):
        layer.init(_key(), (2, 5, 8))
    _, params, state = layer.init(_key(), (2, 5, 6))
    with pytest.raises(nn.LayerError, match=r"\(batch, time, features\).*\(5, 6\)"):
        layer.apply(params, state, jnp.ones((5, 6)))
    with pytest.raises(nn.LayerError, match=r"expected 6 features.*\(2, 5, 4\)"):
        layer.apply(params, state, jnp.ones((2, 5, 4)))
    with pytest.raises(nn.LayerError, match=r"mask must be a bool array of shape .*\(2, 5\)"):
        layer.apply(params, state, (jnp.ones((2, 5, 6)), jnp.ones((2, 5))))
    with pytest.raises(nn.LayerError, match=r"mask must have shape \(batch, time\)"):
        layer.init(_key(), ((2, 5, 6), (2, 4)))
