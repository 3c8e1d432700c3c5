"""Cross-attention, attention masks, attention dropout, returned weights and the key/value cache.

Outputs, returned weights and gradients are checked against ``torch.nn.MultiheadAttention``
(its ``attn_mask`` True means *not* allowed, the opposite of funcnet's); dropout against an
explicit NumPy computation with the same drop mask; the cache against the full causal pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.nn.attention import cross_attention, multi_head_attention, transformer_block

torch = pytest.importorskip("torch")


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _perturbed(params, seed=2):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        tree, [leaf + 0.3 * rng.normal(size=leaf.shape).astype(leaf.dtype) for leaf in leaves]
    )


def _torch_attention(params, num_heads, x, context, key_padding, attn_mask):
    """torch's MultiheadAttention with funcnet's weights: ``(y, weights, grad_of)``.

    `grad_of(cotangent)` gives the gradients of ``Σ cotangent ⊙ y`` with respect to x, context
    and funcnet's params (w as (in, out)).
    """

    def t(a):
        return torch.tensor(np.asarray(a, np.float64), requires_grad=True)

    features = params["q"]["w"].shape[0]
    context_features = params["k"]["w"].shape[0]
    mha = torch.nn.MultiheadAttention(
        features, num_heads, batch_first=True, kdim=context_features, vdim=context_features
    ).double()
    p = {n: {"w": t(params[n]["w"]), "b": t(params[n]["b"])} for n in "qkvo"}
    # torch keeps (out, in) weights; assign funcnet's (in, out) ones, transposed, as tensors
    # that keep the autograd link to `p`.
    del mha.in_proj_weight, mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
    del mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias
    if mha._qkv_same_embed_dim:
        mha.in_proj_weight = torch.cat([p[n]["w"].T for n in "qkv"])
        mha.q_proj_weight = mha.k_proj_weight = mha.v_proj_weight = None
    else:
        mha.in_proj_weight = None
        mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight = (p[n]["w"].T for n in "qkv")
    mha.in_proj_bias = torch.cat([p[n]["b"] for n in "qkv"])
    mha.out_proj.weight, mha.out_proj.bias = p["o"]["w"].T, p["o"]["b"]
    xt = t(x)
    ct = xt if context is None else t(context)
    mask = None
    if attn_mask is not None:
        batch, q_time, k_time = x.shape[0], x.shape[1], ct.shape[1]
        full = np.broadcast_to(np.asarray(attn_mask), (batch, num_heads, q_time, k_time))
        mask = torch.tensor(~full.reshape(batch * num_heads, q_time, k_time))
    padding = None if key_padding is None else torch.tensor(~np.asarray(key_padding))
    y, weights = mha(
        xt, ct, ct, key_padding_mask=padding, attn_mask=mask, average_attn_weights=False
    )

    def grad_of(cotangent):
        leaves = [xt] if context is None else [xt, ct]
        leaves += [p[n][w] for n in "qkvo" for w in "wb"]
        grads = torch.autograd.grad(y, leaves, torch.tensor(np.asarray(cotangent, np.float64)))
        grads = [g.numpy() for g in grads]
        n = 1 if context is None else 2
        param_grads = {
            name: {"w": grads[n + 2 * i], "b": grads[n + 2 * i + 1]}
            for i, name in enumerate("qkvo")
        }
        return grads[:n], param_grads

    return y.detach().numpy(), weights.detach().numpy(), grad_of


def _assert_trees_close(got, want, rtol=2e-4, atol=2e-5):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)


PADDING = np.array([[True] * 5, [True, True, True, False, False]])
# Every query keeps key 0 (torch gives NaN for a query that sees no key); the rest at random.
ATTENTION = np.random.default_rng(3).random((2, 2, 5, 5)) < 0.6
ATTENTION[..., 0] = True


@pytest.mark.parametrize(
    "case", ["plain", "padding_causal", "attention_mask_padding", "attention_mask_causal_shared"]
)
def test_self_attention_matches_torch_outputs_weights_and_gradients(case):
    causal = "causal" in case
    x = _normal(2, 5, 6)
    mask = jnp.asarray(PADDING) if "padding" in case else None
    attention = ATTENTION[:1, :1] if "shared" in case else ATTENTION
    attention = jnp.asarray(attention) if "attention" in case else None
    if mask is None and attention is None:
        inputs, in_shape = x, x.shape
    else:
        inputs = (x, mask, attention) if attention is not None else (x, mask)
        in_shape = jax.tree.map(jnp.shape, inputs)
    layer = multi_head_attention(2, causal=causal, return_weights=True)
    out_shape, params, state = layer.init(_key(), in_shape)
    params = _perturbed(params)
    (out, weights), _ = jax.jit(layer.apply)(params, state, inputs)
    assert out_shape == (jax.tree.map(jnp.shape, out), weights.shape) and weights.shape == (
        2,
        2,
        5,
        5,
    )
    y = out if mask is None and attention is None else out[0]

    allowed = None if attention is None else np.asarray(attention)
    if causal:
        tril = np.tril(np.ones((5, 5), bool))
        allowed = tril if allowed is None else allowed & tril
    y_t, weights_t, grad_of = _torch_attention(params, 2, x, None, mask, allowed)
    np.testing.assert_allclose(y, y_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights, weights_t, rtol=1e-4, atol=1e-6)

    cotangent = _normal(2, 5, 6, seed=5)

    def loss(params, x):
        inner = x if mask is None and attention is None else (x, *inputs[1:])
        (out, _), _ = layer.apply(params, state, inner)
        return jnp.sum(cotangent * (out if inner is x else out[0]))

    param_grads, x_grad = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    (x_grad_t,), param_grads_t = grad_of(cotangent)
    np.testing.assert_allclose(x_grad, x_grad_t, rtol=2e-4, atol=2e-5)
    _assert_trees_close(param_grads, param_grads_t)


@pytest.mark.parametrize("with_attention_mask", [False, True])
def test_cross_attention_matches_torch_outputs_weights_and_gradients(with_attention_mask):
    x, context = _normal(2, 3, 6), _normal(2, 5, 4, seed=6)
    context_mask = jnp.asarray(PADDING)
    attention = jnp.asarray(ATTENTION[:, :, :3]) if with_attention_mask else None
    inputs = (x, context, context_mask) + ((attention,) if with_attention_mask else ())
    layer = cross_attention(2, return_weights=True)
    out_shape, params, state = layer.init(_key(), jax.tree.map(jnp.shape, inputs))
    assert jax.tree.map(jnp.shape, params) == {
        "q": {"w": (6, 6), "b": (6,)},
        "k": {"w": (4, 6), "b": (6,)},
        "v": {"w": (4, 6), "b": (6,)},
        "o": {"w": (6, 6), "b": (6,)},
    }
    params = _perturbed(params)
    (out, weights), _ = jax.jit(layer.apply)(params, state, inputs)
    assert out_shape == (jax.tree.map(jnp.shape, out), weights.shape)
    assert weights.shape == (2, 2, 3, 5) and out[1] is not None
    np.testing.assert_array_equal(out[1], context)  # the rest of the input passes through

    y_t, weights_t, grad_of = _torch_attention(params, 2, x, context, context_mask, attention)
    np.testing.assert_allclose(out[0], y_t, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights, weights_t, rtol=1e-4, atol=1e-6)

    cotangent = _normal(2, 3, 6, seed=7)

    def loss(params, x, context):
        (out, _), _ = layer.apply(params, state, (x, context, *inputs[2:]))
        return jnp.sum(cotangent * out[0])

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, context)
    (x_grad_t, context_grad_t), param_grads_t = grad_of(cotangent)
    np.testing.assert_allclose(grads[1], x_grad_t, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(grads[2], context_grad_t, rtol=2e-4, atol=2e-5)
    _assert_trees_close(grads[0], param_grads_t)


def test_cross_attention_stacks_and_works_under_vmap():
    x, context = _normal(3, 4, 8), _normal(3, 6, 5, seed=2)
    context_mask = jnp.asarray(np.arange(6) < np.array([[6], [4], [1]]))
    model = nn.serial(cross_attention(2), cross_attention(4, head_dim=3))
    in_shape = (x.shape, context.shape, context_mask.shape)
    out_shape, params, state = model.init(_key(), in_shape)
    assert out_shape == in_shape and state == {}
    apply = jax.jit(model.apply)
    (y, c, m), _ = apply(params, state, (x, context, context_mask))
    assert y.shape == x.shape and c is not None and m is not None
    per_example = jax.vmap(
        lambda xi, ci, mi: apply(params, state, (xi[None], ci[None], mi[None]))[0][0][0]
    )
    np.testing.assert_allclose(per_example(x, context, context_mask), y, rtol=1e-5, atol=1e-5)
    # A padded context position has no influence on any query.
    (y2, _, _), _ = apply(params, state, (x, context.at[1, 4:].set(50.0), context_mask))
    np.testing.assert_allclose(y2, y, rtol=1e-6, atol=1e-6)


def test_attention_dropout_drops_weights_with_the_documented_mask():
    rate, x = 0.4, _normal(2, 5, 6)
    plain, dropping = multi_head_attention(2), multi_head_attention(2, dropout_rate=rate)
    _, params, state = plain.init(_key(), x.shape)
    params = _perturbed(params)
    y0, _ = plain.apply(params, state, x)
    y_eval, _ = dropping.apply(params, state, x)  # train=False: no dropout, no key needed
    np.testing.assert_array_equal(y_eval, y0)
    y_rate0, _ = multi_head_attention(2, dropout_rate=0.0).apply(params, state, x, train=True)
    np.testing.assert_array_equal(y_rate0, y0)

    key = _key(9)
    with_weights = multi_head_attention(2, dropout_rate=rate, return_weights=True)
    (y, weights), _ = jax.jit(with_weights.apply, static_argnames="train")(
        params, state, x, key=key, train=True
    )
    keep = np.asarray(jax.random.bernoulli(key, 1 - rate, (2, 2, 5, 5)))
    # The same computation in NumPy, float64, with that mask.
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    xs = np.asarray(x, np.float64)
    q, k, v = (
        (xs @ p[n]["w"] + p[n]["b"]).reshape(2, 5, 2, 3).transpose(0, 2, 1, 3) for n in "qkv"
    )
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(3)
    a = np.exp(scores - scores.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True) * keep / (1 - rate)
    expected = (a @ v).transpose(0, 2, 1, 3).reshape(2, 5, 6) @ p["o"]["w"] + p["o"]["b"]
    np.testing.assert_allclose(weights, a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    assert 0.2 < np.mean(~keep) < 0.6

    y_other, _ = dropping.apply(params, state, x, key=_key(10), train=True)
    assert not np.allclose(y_other, y)
    with pytest.raises(nn.LayerError, match=r"^multi_head_attention: train=True .*needs a key"):
        dropping.apply(params, state, x, train=True)
    block = nn.serial(transformer_block(2, 8, attention_dropout_rate=0.5))
    _, block_params, block_state = block.init(_key(), x.shape)
    with pytest.raises(nn.LayerError, match=r"^transformer_block_0/attention: .*needs a key"):
        block.apply(block_params, block_state, x, train=True)
    y_a, _ = block.apply(block_params, block_state, x, key=_key(1), train=True)
    y_b, _ = block.apply(block_params, block_state, x, key=_key(2), train=True)
    y_c, _ = block.apply(block_params, block_state, x)
    assert not np.allclose(y_a, y_b) and not np.allclose(y_a, y_c)


def test_cached_steps_match_the_full_causal_pass_and_compile_once():
    batch, time, cache_length = 2, 7, 9
    x = _normal(batch, time, 6)
    full = multi_head_attention(3, causal=True, return_weights=True)
    cached = multi_head_attention(3, causal=True, return_weights=True, cache_length=cache_length)
    _, params, _ = full.init(_key(), x.shape)
    out_shape, cached_params, state = cached.init(_key(), (batch, 1, 6))
    assert jax.tree.map(jnp.shape, cached_params) == jax.tree.map(jnp.shape, params)
    assert out_shape == ((batch, 1, 6), (batch, 3, 1, cache_length))
    assert jax.tree.map(jnp.shape, state) == {
        "cache": {"k": (2, 3, 9, 2), "v": (2, 3, 9, 2), "valid": (2, 9), "index": ()}
    }
    params = _perturbed(params)
    (y_full, weights_full), _ = jax.jit(full.apply)(params, {}, x)

    traces = []

    @jax.jit
    def step(state, x_t):
        traces.append(None)
        return cached.apply(params, state, x_t)

    prompt = 3
    (y_prompt, weights_prompt), state = cached.apply(params, state, x[:, :prompt])
    outputs, weights = [y_prompt], [weights_prompt]
    for t in range(prompt, time):
        (y_t, w_t), state = step(state, x[:, t : t + 1])
        outputs.append(y_t)
        weights.append(w_t)
    assert len(traces) == 1 and int(state["cache"]["index"]) == time
    np.testing.assert_allclose(jnp.concatenate(outputs, 1), y_full, rtol=1e-5, atol=1e-5)
    weights = jnp.concatenate(weights, 2)
    np.testing.assert_allclose(weights[..., :time], weights_full, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(weights[..., time:], 0.0)  # slots not yet written

    with pytest.raises(nn.LayerError, match=r"holds 9 positions, 7 are filled and 3 more"):
        cached.apply(params, state, x[:, :3])


def test_cached_transformer_blocks_match_the_full_pass_with_padding_in_a_scan():
    batch, time, features = 2, 6, 8
    x = _normal(batch, time, features)
    mask = jnp.asarray([[False, False, True, True, True, True], [True] * time])  # left padding
    blocks = [transformer_block(2, 16, causal=True) for _ in range(2)]
    full = nn.serial(*blocks)
    decoder = nn.serial(
        *[transformer_block(2, 16, causal=True, cache_length=time) for _ in range(2)]
    )
    _, params, _ = full.init(_key(), (x.shape, mask.shape))
    params = _perturbed(params)
    _, _, state = decoder.init(_key(), ((batch, 1, features), (batch, 1)))
    assert set(state) == {"transformer_block_0", "transformer_block_1"}
    assert state["transformer_block_0"]["attention"]["cache"]["k"].shape == (2, 2, time, 4)
    (y_full, _), _ = jax.jit(full.apply)(params, {}, (x, mask))

    def step(state, inputs):
        (y, _), state = decoder.apply(params, state, (inputs[0][:, None], inputs[1][:, None]))
        return state, y[:, 0]

    state, ys = jax.jit(lambda s: jax.lax.scan(step, s, (x.swapaxes(0, 1), mask.T)))(state)
    y_steps = ys.swapaxes(0, 1)
    real = np.asarray(mask)  # a padded position's own output carries no meaning
    np.testing.assert_allclose(y_steps[real], y_full[real], rtol=1e-5, atol=1e-5)
    assert int(state["transformer_block_1"]["attention"]["cache"]["index"]) == time


def test_bad_settings_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r"dropout_rate is the probability of dropping"):
        multi_head_attention(2, dropout_rate=1.0)
    with pytest.raises(ValueError, match=r"cache_length needs causal=True"):
        multi_head_attention(2, cache_length=8)
    with pytest.raises(ValueError, match=r"cache_length needs causal=True"):
        transformer_block(2, 8, cache_length=8)
    with pytest.raises(ValueError, match=r"cross_attention: num_heads"):
        cross_attention(0)

    layer = multi_head_attention(2)
    x = jnp.ones((2, 5, 4))
    _, params, state = layer.init(_key(), x.shape)
    with pytest.raises(
        nn.LayerError,
        match=r"attention mask must have shape .*\(2 or 1, 2 or 1, 5, 5\), got \(2, 3, 5, 5\)",
    ):
        layer.apply(params, state, (x, None, jnp.ones((2, 3, 5, 5), bool)))
    with pytest.raises(nn.LayerError, match=r"attention mask must be a bool array"):
        layer.apply(params, state, (x, None, jnp.ones((1, 1, 5, 5))))
    with pytest.raises(nn.LayerError, match=r"attention mask must have shape"):
        layer.init(_key(), ((2, 5, 4), None, (1, 1, 5, 4)))
    with pytest.raises(nn.LayerError, match=r"expected the shapes of x, \(x, mask\)"):
        layer.init(_key(), ((2, 5, 4), (2, 5), (1, 1, 5, 5), (2, 5)))

    cross = cross_attention(2)
    context = jnp.ones((2, 3, 5))
    with pytest.raises(
        nn.LayerError,
        match=r"^cross_attention: expected the shapes of \(x, context\).*got \(2, 5, 4\)",
    ):
        cross.init(_key(), (2, 5, 4))
    _, params, state = cross.init(_key(), (x.shape, context.shape))
    with pytest.raises(nn.LayerError, match=r"context with 5 features.*\(2, 3, 6\)"):
        cross.apply(params, state, (x, jnp.ones((2, 3, 6))))
    with pytest.raises(
        nn.LayerError, match=r"one batch size, got shapes \(2, 5, 4\) and \(1, 3, 5\)"
    ):
        cross.apply(params, state, (x, context[:1]))
    with pytest.raises(
        nn.LayerError, match=r"context_mask must be a bool array of shape .*\(2, 3\)"
    ):
        cross.apply(params, state, (x, context, jnp.ones((2, 5), bool)))

    cached = multi_head_attention(2, causal=True, cache_length=4)
    _, params, state = cached.init(_key(), (2, 1, 4))
    with pytest.raises(nn.LayerError, match=r"needs the state made by its init"):
        cached.apply(params, {}, x[:, :1])
    with pytest.raises(nn.LayerError, match=r"holds 4 positions, 0 are filled and 5 more"):
        cached.apply(params, state, x)
    with pytest.raises(nn.LayerError, match=r"cache holds a batch of 2 sequences"):
        cached.apply(params, state, x[:1, :1])
