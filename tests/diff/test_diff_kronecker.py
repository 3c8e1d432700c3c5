"""Kronecker factors against their definitions, computed densely from hand-written models.

Each reference takes the per-example inputs of a layer from the model written out by hand
(conv patches by an explicit NumPy loop), and `δ = ∂ℓ_n/∂s` (or `J_{n,t}ᵀ H_n J_{n,t}`) from
`jax.jacobian` / `jax.hessian` of per-example losses with the pre-activations as inputs, then
sums `A = (1/B) Σ_{n,t} ā āᵀ` and `G = (1/B) Σ_n (1/T) Σ_t δ δᵀ` in NumPy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.nn as nn
from funcnet.diff import (
    KroneckerLayer,
    kronecker_factors,
    kronecker_layers,
    kronecker_unmatched,
)
from funcnet.losses import softmax_cross_entropy

CURVATURES = ("ggn", "empirical")


def _ce(f, y):
    """Per-example cross-entropy of logits `f` (C,) at label `y`."""
    return -jax.nn.log_softmax(f)[y]


def _init(model, shape, seed=0):
    _, params, state = model.init(jax.random.key(seed), shape)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(7), p.shape), params)
    return params, state


def _jit_factors(outputs_fn, params, **kwargs):
    """`kronecker_factors` compiled (quicker than op by op on a busy CPU)."""
    return jax.jit(lambda p: kronecker_factors(outputs_fn, p, **kwargs))(params)


def _reference_g(curvature, head, s, labels):
    """`G` by definition: `head(s_n) -> f_n` per example, `s` of shape (B, *positions, out)."""
    b, out = s.shape[0], s.shape[-1]
    t = int(np.prod(s.shape[1:-1]))
    if curvature == "ggn":
        jac = jax.vmap(jax.jacobian(head))(s)  # (B, C, *positions, out)
        hess = jax.vmap(lambda sn, yn: jax.hessian(_ce)(head(sn), yn))(s, labels)
        jac = np.asarray(jac).reshape(b, -1, t, out)
        return np.einsum("ncti,ncd,ndtj->ij", jac, np.asarray(hess), jac) / (b * t)
    delta = jax.vmap(jax.grad(lambda sn, yn: _ce(head(sn), yn)))(s, labels)
    delta = np.asarray(delta).reshape(-1, out)
    return delta.T @ delta / (b * t)


def _reference_a(rows, b, bias=True):
    """`A` from the input rows ``(B·T, d_in)``."""
    if bias:
        rows = np.concatenate([rows, np.ones((rows.shape[0], 1))], axis=1)
    return rows.T @ rows / b


@pytest.mark.parametrize("curvature", CURVATURES)
def test_dense_on_sequences_matches_definition(x64, curvature):
    b, seq, d, c = 3, 4, 3, 5
    model = nn.serial(nn.dense(4), nn.tanh, nn.flatten(), nn.dense(c))
    x = jax.random.normal(jax.random.key(1), (b, seq, d))
    y = jnp.array([0, 3, 1])
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    loss = lambda f: softmax_cross_entropy(f, y)
    got = _jit_factors(outputs_fn, params, loss_of_outputs=loss, curvature=curvature)
    assert set(got) == {"dense_0/w", "dense_3/w"}

    w0, b0 = params["dense_0"]["w"], params["dense_0"]["b"]
    w3, b3 = params["dense_3"]["w"], params["dense_3"]["b"]
    s0 = x @ w0 + b0
    h = jnp.tanh(s0).reshape(b, -1)
    s3 = h @ w3 + b3
    head0 = lambda z: jnp.tanh(z).reshape(-1) @ w3 + b3
    np.testing.assert_allclose(
        got["dense_0/w"].a, _reference_a(np.asarray(x).reshape(-1, d), b), atol=1e-12
    )
    np.testing.assert_allclose(
        got["dense_0/w"].g, _reference_g(curvature, head0, s0, y), atol=1e-12
    )
    np.testing.assert_allclose(got["dense_3/w"].a, _reference_a(np.asarray(h), b), atol=1e-12)
    np.testing.assert_allclose(
        got["dense_3/w"].g, _reference_g(curvature, lambda z: z, s3, y), atol=1e-12
    )


def _same_pads(n, k, s, d):
    out = -(-n // s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    return total // 2, total - total // 2


def _patches_loop(x, window, stride, dilation, padding):
    """Input patches by an explicit loop: rows (n, i, j), features (kh, kw, c) row-major."""
    b, hgt, wid, ch = x.shape
    (kh, kw), (sh, sw), (dh, dw) = window, stride, dilation
    if padding == "SAME":
        (ph, _), (pw, _) = _same_pads(hgt, kh, sh, dh), _same_pads(wid, kw, sw, dw)
        oh, ow = -(-hgt // sh), -(-wid // sw)
    else:
        ph = pw = 0
        oh, ow = (hgt - (kh - 1) * dh - 1) // sh + 1, (wid - (kw - 1) * dw - 1) // sw + 1
    rows = []
    for n in range(b):
        for i in range(oh):
            for j in range(ow):
                patch = np.zeros((kh, kw, ch))
                for u in range(kh):
                    for v in range(kw):
                        r, q = i * sh - ph + u * dh, j * sw - pw + v * dw
                        if 0 <= r < hgt and 0 <= q < wid:
                            patch[u, v] = x[n, r, q]
                rows.append(patch.reshape(-1))
    return np.array(rows)


@pytest.mark.parametrize(
    ("padding", "dilation", "curvature"),
    [("SAME", 1, "ggn"), ("VALID", 1, "empirical"), ("SAME", 2, "empirical"), ("VALID", 2, "ggn")],
)
def test_conv_matches_patch_loop(x64, padding, dilation, curvature):
    b, c = 2, 3
    conv = nn.conv(2, (3, 2), strides=2, padding=padding, dilation=dilation)
    model = nn.serial(conv, nn.relu, nn.flatten(), nn.dense(c))
    x = jax.random.normal(jax.random.key(2), (b, 7, 6, 2))
    y = jnp.array([2, 0])
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    loss = lambda f: softmax_cross_entropy(f, y)
    got = _jit_factors(outputs_fn, params, loss_of_outputs=loss, curvature=curvature)
    layer = kronecker_layers(outputs_fn, params)["conv_0/w"]
    assert (layer.kind, layer.bias, layer.in_dim, layer.out_dim) == ("conv", "conv_0/b", 12, 2)

    w, bias = params["conv_0"]["w"], params["conv_0"]["b"]
    patches = _patches_loop(np.asarray(x), (3, 2), (2, 2), (dilation,) * 2, padding)
    np.testing.assert_allclose(got["conv_0/w"].a, _reference_a(patches, b), atol=1e-12)
    s = jax.lax.conv_general_dilated(
        x, w, (2, 2), padding, rhs_dilation=(dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    ) + bias  # fmt: skip
    np.testing.assert_allclose(
        s.reshape(-1, 2), patches @ np.asarray(w).reshape(-1, 2) + np.asarray(bias), atol=1e-12
    )
    w3, b3 = params["dense_3"]["w"], params["dense_3"]["b"]
    head = lambda z: jax.nn.relu(z).reshape(-1) @ w3 + b3
    np.testing.assert_allclose(got["conv_0/w"].g, _reference_g(curvature, head, s, y), atol=1e-12)


def _mlp(x64_on=True):
    model = nn.serial(nn.dense(4), nn.tanh, nn.dense(3))
    return model


def _wbar_jacobian(outputs_fn, params, name):
    """The Jacobian of the outputs (B·C) with respect to `W̄ = [W; bᵀ]`, row-major vec."""
    jac = jax.jacrev(outputs_fn)(params)
    jw, jb = jac[name]["w"], jac[name]["b"]  # (B, C, in, out), (B, C, out)
    full = jnp.concatenate([jw, jb[:, :, None, :]], axis=2)
    return np.asarray(full).reshape(-1, full.shape[2] * full.shape[3])


def test_one_example_is_the_gauss_newton_block(x64):
    model = _mlp()
    x = jax.random.normal(jax.random.key(3), (1, 5))
    y = jnp.array([1])
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    loss = lambda f: softmax_cross_entropy(f, y)
    got = _jit_factors(outputs_fn, params, loss_of_outputs=loss, curvature="ggn")
    hess = np.asarray(jax.hessian(loss)(outputs_fn(params))).reshape(3, 3)
    for name in ("dense_0", "dense_2"):
        jac = _wbar_jacobian(jax.jit(outputs_fn), params, name)
        ggn = jac.T @ hess @ jac
        factors = got[f"{name}/w"]
        np.testing.assert_allclose(np.kron(factors.a, factors.g), ggn, atol=1e-12)


def test_one_example_empirical_is_the_gradient_outer_product(x64):
    model = _mlp()
    x = jax.random.normal(jax.random.key(4), (1, 5))
    y = jnp.array([2])
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    loss = lambda f: softmax_cross_entropy(f, y)
    got = _jit_factors(outputs_fn, params, loss_of_outputs=loss, curvature="empirical")
    grads = jax.grad(lambda p: loss(outputs_fn(p)))(params)
    for name in ("dense_0", "dense_2"):
        g = np.concatenate([grads[name]["w"], grads[name]["b"][None]]).reshape(-1)
        factors = got[f"{name}/w"]
        np.testing.assert_allclose(np.kron(factors.a, factors.g), np.outer(g, g), atol=1e-12)


@pytest.mark.parametrize("likelihood", ["categorical", "gaussian"])
def test_sampled_fisher_averages_to_the_gauss_newton(x64, likelihood):
    model = _mlp()
    x = jax.random.normal(jax.random.key(5), (3, 5))
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    if likelihood == "categorical":
        y = jnp.array([0, 1, 2])
        loss = lambda f: softmax_cross_entropy(f, y)
    else:
        y = jax.random.normal(jax.random.key(6), (3, 3))
        loss = lambda f: 0.5 * jnp.mean(jnp.sum((f - y) ** 2, axis=-1))
    exact = _jit_factors(outputs_fn, params, loss_of_outputs=loss)

    def sampled(key):
        return kronecker_factors(
            outputs_fn, params, curvature="fisher", likelihood=likelihood, key=key
        )

    draws = jax.jit(jax.vmap(sampled))(jax.random.split(jax.random.key(8), 4000))
    for name, factors in exact.items():
        np.testing.assert_allclose(draws[name].a[0], factors.a, atol=1e-12)
        mean = np.mean(draws[name].g, axis=0)
        # 4000 draws of 3 examples: a relative error of a few 1/√12000.
        assert np.linalg.norm(mean - factors.g) < 0.05 * np.linalg.norm(factors.g)


def test_layers_of_attention_and_unmatched_leaves():
    model = nn.serial(nn.multi_head_attention(2), nn.layer_norm(), nn.flatten(), nn.dense(2))
    x = jnp.ones((2, 3, 4))
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    layers = kronecker_layers(outputs_fn, params)
    attention = next(k for k in params if k.startswith("multi_head_attention"))
    for part in "qkvo":
        layer = layers[f"{attention}/{part}/w"]
        assert layer.kind == "dense" and layer.bias == f"{attention}/{part}/b"
        assert (layer.in_dim, layer.out_dim) == (4, 4)
    assert isinstance(layers["dense_3/w"], KroneckerLayer)
    norm = next(k for k in params if k.startswith("layer_norm"))
    assert set(kronecker_unmatched(outputs_fn, params)) == {
        f"{norm}/{leaf}" for leaf in params[norm]
    }


def test_attention_factors_equal_those_of_its_plain_matrix_form(x64):
    """The attention kernels are read per head, ``(in, heads, d)``, through a reshape; their
    factors must be those of the same network with each kernel a plain matrix product."""
    heads = 2
    model = nn.serial(nn.multi_head_attention(heads), nn.flatten(), nn.dense(3))
    x = jax.random.normal(jax.random.key(1), (4, 3, 4), jnp.float64)
    params, state = _init(model, x.shape)
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    name = next(k for k in params if k.startswith("multi_head_attention"))

    def plain(p):
        a = p[name]
        split = lambda z: z.reshape(*z.shape[:2], heads, -1).transpose(0, 2, 1, 3)
        q, k, v = (split(x @ a[n]["w"] + a[n]["b"]) for n in "qkv")
        scores = jnp.einsum("bhid,bhjd->bhij", q, k) / np.sqrt(q.shape[-1])
        out = jnp.einsum("bhij,bhjd->bhid", jax.nn.softmax(scores, -1), v)
        y = out.transpose(0, 2, 1, 3).reshape(x.shape) @ a["o"]["w"] + a["o"]["b"]
        return y.reshape(len(x), -1) @ p["dense_2"]["w"] + p["dense_2"]["b"]

    outputs_fn = lambda p: model.apply(p, state, x)[0]
    np.testing.assert_allclose(outputs_fn(params), plain(params), atol=1e-12)
    loss = lambda o: softmax_cross_entropy(o, jnp.array([0, 2, 1, 1]))
    factors = lambda f: jax.jit(lambda p: kronecker_factors(f, p, loss_of_outputs=loss))(params)
    got, want = factors(outputs_fn), factors(plain)
    assert set(got) == set(want) == {f"{name}/{n}/w" for n in "qkvo"} | {"dense_2/w"}
    for key in want:
        np.testing.assert_allclose(got[key].a, want[key].a, atol=1e-12)
        np.testing.assert_allclose(got[key].g, want[key].g, atol=1e-12)


def test_shared_weights_and_scan_bodies_match_nothing():
    w = jnp.ones((3, 3))
    params = {"w": w, "scan": {"w": w}, "free": {"w": w, "b": jnp.ones(3)}}
    x = jnp.ones((2, 3))

    def outputs_fn(p):
        h = x @ p["w"] @ p["w"]  # used twice
        h, _ = jax.lax.scan(lambda c, _: (c @ p["scan"]["w"], None), h, None, length=2)
        return h @ p["free"]["w"] + p["free"]["b"]

    layers = kronecker_layers(outputs_fn, params)
    assert set(layers) == {"free/w"} and layers["free/w"].bias == "free/b"
    assert kronecker_unmatched(outputs_fn, params) == ("scan/w", "w")


def test_factors_jit():
    model = _mlp()
    x = jnp.ones((2, 5))
    params, state = _init(model, x.shape)
    loss = lambda f: softmax_cross_entropy(f, jnp.array([0, 1]))

    @jax.jit
    def factors(params, x):
        return kronecker_factors(
            lambda p: model.apply(p, state, x)[0], params, loss_of_outputs=loss
        )

    got = factors(params, x)
    want = kronecker_factors(lambda p: model.apply(p, state, x)[0], params, loss_of_outputs=loss)
    for name in want:
        np.testing.assert_allclose(got[name].g, want[name].g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"curvature": "hessian"}, "curvature must be one of 'ggn', 'fisher', 'empirical'"),
        ({"curvature": "fisher", "likelihood": "poisson", "key": jax.random.key(0)},
         "likelihood must be one of 'categorical', 'gaussian'"),
        ({"curvature": "ggn", "loss_of_outputs": None}, "curvature='ggn' needs loss_of_outputs"),
        ({"curvature": "empirical", "loss_of_outputs": None}, "'empirical' needs loss_of_outputs"),
        ({"curvature": "fisher"}, "samples one target per example and needs key"),
    ],
)  # fmt: skip
def test_bad_arguments_say_what_is_allowed(kwargs, message):
    model = _mlp()
    params, state = _init(model, (2, 5))
    args = {"loss_of_outputs": lambda f: jnp.mean(f)} | kwargs
    with pytest.raises((ValueError, TypeError), match=message) as info:
        kronecker_factors(lambda p: model.apply(p, state, jnp.ones((2, 5)))[0], params, **args)
    assert "\n" not in str(info.value)


def test_categorical_fisher_of_sequence_logits_averages_to_the_gauss_newton(x64):
    """Logits (B, S, C), a dense layer over the positions: one sampled class per position,
    against the exact Gauss-Newton factors of the position-averaged cross-entropy."""
    model = nn.serial(nn.dense(4), nn.tanh, nn.dense(3))
    x = jax.random.normal(jax.random.key(5), (2, 4, 3))
    params, state = _init(model, x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    y = jnp.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    exact = _jit_factors(outputs_fn, params, loss_of_outputs=lambda f: softmax_cross_entropy(f, y))

    def sampled(key):
        return kronecker_factors(outputs_fn, params, curvature="fisher", key=key)

    draws = jax.jit(jax.vmap(sampled))(jax.random.split(jax.random.key(8), 4000))
    for name, factors in exact.items():
        mean = np.mean(draws[name].g, axis=0)
        assert np.linalg.norm(mean - factors.g) < 0.05 * np.linalg.norm(factors.g), name


def test_categorical_fisher_refuses_outputs_without_a_class_axis():
    params = {"w": jnp.ones((3,))}
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"logits of shape \(batch, ..., classes\), got .*\(2,\)"):
        kronecker_factors(lambda p: x @ p["w"], params, curvature="fisher", key=jax.random.key(0))
