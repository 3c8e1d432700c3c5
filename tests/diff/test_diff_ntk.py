"""The empirical NTK's three methods against J₁J₂ᵀ from `jax.jacrev`, and against the
closed-form arc-cosine NTK of a wide two-layer ReLU network."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diff_problems import mlp_apply, mlp_params
from jax.flatten_util import ravel_pytree

import funcnet
from funcnet.diff.ntk import _StructuredPlan, empirical_ntk, layer_ntk

METHODS = ["jacobian", "ntvp", "structured"]


def explicit_jacobian(f, params, x):
    """(n, out, P): jax.jacrev of f over the raveled params, for the whole batch at once."""
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.jacrev(lambda t: f(unravel(t), x)))(flat))


def ntk(f, params, *xs, **kwargs):
    """`empirical_ntk` compiled: one XLA program instead of op-by-op dispatch."""
    return jax.jit(lambda p, *xs: empirical_ntk(f, p, *xs, **kwargs))(params, *xs)


@functools.cache
def _problem():
    rng = np.random.default_rng(3)
    params = mlp_params(rng, (4, 7, 6, 3))
    x1, x2 = jnp.asarray(rng.normal(size=(5, 4))), jnp.asarray(rng.normal(size=(3, 4)))
    j1, j2 = explicit_jacobian(mlp_apply, params, x1), explicit_jacobian(mlp_apply, params, x2)
    return params, x1, x2, j1, j2


@pytest.fixture
def problem(x64):
    return _problem()


@pytest.mark.parametrize("method", METHODS)
def test_kernel_is_the_product_of_explicit_jacobians(problem, method):
    params, x1, x2, j1, j2 = problem
    full = np.einsum("icp,jdp->ijcd", j1, j2)
    got = ntk(mlp_apply, params, x1, x2, method=method)
    assert got.shape == (5, 3, 3, 3)
    np.testing.assert_allclose(got, full, rtol=1e-10, atol=1e-10)
    # In blocks of 2 examples: 3 × 2 blocks, the last ones padded.
    traced = ntk(mlp_apply, params, x1, x2, method=method, trace=True, batch_size=2)
    np.testing.assert_allclose(traced, np.einsum("icp,jcp->ij", j1, j2), rtol=1e-10, atol=1e-10)
    sym = ntk(mlp_apply, params, x1, method=method, batch_size=2)
    np.testing.assert_allclose(sym, np.einsum("icp,jdp->ijcd", j1, j1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_is_each_examples_own_block(problem, method):
    params, x1, _, j1, _ = problem
    diag = ntk(mlp_apply, params, x1, method=method, diagonal=True, batch_size=2)
    np.testing.assert_allclose(diag, np.einsum("icp,idp->icd", j1, j1), rtol=1e-10, atol=1e-10)
    tr = ntk(mlp_apply, params, x1, method=method, diagonal=True, trace=True)
    np.testing.assert_allclose(tr, np.einsum("icp,icp->i", j1, j1), rtol=1e-10, atol=1e-10)


def test_tolerance_catches_a_kernel_missing_one_leaf(problem):
    # Every leaf matters far above 1e-10: leaving out the first bias, or taking a
    # transposed output block, would fail the tests above.
    params, x1, x2, j1, j2 = problem
    full = np.einsum("icp,jdp->ijcd", j1, j2)
    b0 = params["dense_0"]["b"]  # a constant, no longer a parameter of f
    f = lambda p, x: mlp_apply({**p, "dense_0": {**p["dense_0"], "b": b0}}, x)
    partial = ntk(f, params, x1, x2, method="structured")
    assert np.abs(partial - full).max() > 1e-3
    swapped = np.swapaxes(ntk(mlp_apply, params, x1, x2), 2, 3)
    assert np.abs(swapped - full).max() > 1e-3


def test_structured_rule_handles_every_dense_kernel(problem):
    params, x1, _, _, _ = problem
    g = lambda p, xi: mlp_apply(p, xi[None])[0]
    plan = _StructuredPlan(g, params, x1[0])
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = sorted(jax.tree_util.keystr(leaves[d.leaf][0]) for d in plan.dots.values())
    assert names == [f"['dense_{i}']['w']" for i in range(3)]
    assert len(plan.rest) == 3  # the biases, by the Jacobian rule


def odd_model(q, x):
    """Products the structured rule must read right: a kernel as left operand, a kernel
    shared over two positions, a product inside `jit`, a parameter used twice."""
    h = jnp.tanh(q["w"] @ x.T).T  # w (5, 4) on the left
    h = h[:, :4].reshape(-1, 2, 2)
    h = jnp.sin(jax.jit(lambda v, h: jnp.einsum("bak,ko->bao", h, v))(q["v"], h))
    h = h.reshape(h.shape[0], -1) @ q["shared"]
    return h @ q["shared"].T[:, :2] + jnp.sum(q["s"] ** 2)


def test_odd_products_and_a_funcnet_layer(x64):
    rng = np.random.default_rng(5)
    q = {
        "w": rng.normal(size=(5, 4)),
        "v": rng.normal(size=(2, 3)),
        "shared": rng.normal(size=(6, 6)) / 3,
        "s": rng.normal(size=3),
    }
    q = jax.tree.map(jnp.asarray, q)
    x = jnp.asarray(rng.normal(size=(4, 4)))
    j = explicit_jacobian(odd_model, q, x)
    expected = np.einsum("icp,jdp->ijcd", j, j)
    for method in METHODS:
        got = ntk(odd_model, q, x, method=method)
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10, err_msg=method)

    model = funcnet.nn.serial(funcnet.nn.dense(6), funcnet.nn.relu, funcnet.nn.dense(2))
    _, params, state = model.init(jax.random.key(0), (1, 4))
    j = explicit_jacobian(lambda p, x: model.apply(p, state, x)[0], params, x)
    for method in METHODS:
        got = jax.jit(lambda p, m=method: layer_ntk(model, p, state, x, method=m))(params)
        np.testing.assert_allclose(got, np.einsum("icp,jdp->ijcd", j, j), rtol=1e-10, atol=1e-10)


def test_attention_kernels_read_per_head_take_the_structured_rule(x64):
    model = funcnet.nn.serial(
        funcnet.nn.multi_head_attention(2), funcnet.nn.flatten(), funcnet.nn.dense(2)
    )
    _, params, state = model.init(jax.random.key(1), (1, 3, 4))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(2), (3, 3, 4), jnp.float64)
    f = lambda p, x: model.apply(p, state, x)[0]
    # q, k, v, o and the dense kernel: the first four through a reshape to (in, heads, d).
    assert len(_StructuredPlan(lambda p, xi: f(p, xi[None])[0], params, x[0]).dots) == 5
    j = explicit_jacobian(f, params, x)
    got = ntk(f, params, x, method="structured")
    np.testing.assert_allclose(got, np.einsum("icp,jdp->ijcd", j, j), rtol=1e-10, atol=1e-10)


def two_layer(params, x):
    """(1/√m) Σ_j a_j relu(w_jᵀx/√d): the NTK parameterisation, no biases, outputs (n, 1)."""
    d, m = params["w"].shape
    return jax.nn.relu(x @ params["w"] / np.sqrt(d)) @ params["a"] / np.sqrt(m)


def arccos_ntk(x, *, nngp_only=False):
    """Θ∞(x, x') = |x||x'|/(2d) (κ₁(ρ) + ρ κ₀(ρ)), Cho & Saul's κ₀ and κ₁ of ρ = cos ∠."""
    norms = np.linalg.norm(x, axis=1)
    rho = np.clip(x @ x.T / np.outer(norms, norms), -1, 1)
    k0 = (np.pi - np.arccos(rho)) / np.pi
    k1 = (np.sqrt(1 - rho**2) + (np.pi - np.arccos(rho)) * rho) / np.pi
    return np.outer(norms, norms) / (2 * x.shape[1]) * (k1 + (0 if nngp_only else rho * k0))


@functools.cache
def _arccos_errors():
    x = np.random.default_rng(0).normal(size=(5, 4))
    exact = arccos_ntk(x)

    def errors(m, seeds):
        def one(key):
            wk, ak = jax.random.split(key)
            params = {"w": jax.random.normal(wk, (4, m)), "a": jax.random.normal(ak, (m, 1))}
            return empirical_ntk(two_layer, params, jnp.asarray(x), method="structured", trace=True)

        kernels = np.asarray(jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(m), seeds)))
        return np.linalg.norm(kernels - exact, axis=(1, 2)) / np.linalg.norm(exact), kernels

    small, _ = errors(4096, 8)
    large, kernels = errors(65536, 8)
    return x, small, large, kernels


def test_wide_relu_kernel_approaches_the_arccos_ntk_like_one_over_sqrt_width(x64):
    x, small, large, kernels = _arccos_errors()
    rms_small, rms_large = np.sqrt(np.mean(small**2)), np.sqrt(np.mean(large**2))
    assert rms_small < 0.06  # measured 0.038
    assert 2.5 < rms_small / rms_large < 6.5  # 1/√m predicts 4; measured 4.77
    # A kernel without the second layer's term, or without the factor 1/2, is far off.
    exact, wrong = arccos_ntk(x), arccos_ntk(x, nngp_only=True)
    mean = kernels.mean(axis=0)
    assert np.linalg.norm(mean - exact) / np.linalg.norm(exact) < 0.01
    assert np.linalg.norm(mean - wrong) / np.linalg.norm(exact) > 0.2
    assert np.linalg.norm(mean - 2 * exact) / np.linalg.norm(exact) > 0.5


def test_bad_input_is_named(problem):
    params, x1, x2, _, _ = problem
    with pytest.raises(ValueError, match="method"):
        empirical_ntk(mlp_apply, params, x1, method="exact")
    with pytest.raises(ValueError, match="batch_size"):
        empirical_ntk(mlp_apply, params, x1, batch_size=0)
    with pytest.raises(ValueError, match="diagonal"):
        empirical_ntk(mlp_apply, params, x1, x2, diagonal=True)
    with pytest.raises(ValueError, match=r"\(batch=5, out\)"):
        empirical_ntk(lambda p, x: mlp_apply(p, x)[..., None], params, x1)
    with pytest.raises(ValueError, match="leading axis"):
        empirical_ntk(lambda p, x: mlp_apply(p, x[0]), params, (x1, x2))
