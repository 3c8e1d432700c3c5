"""hvp and gnvp against dense Hessians and Jacobians."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diff_problems import batch_loss, mlp_apply, mlp_params
from jax.flatten_util import ravel_pytree

import funcnet.diff as fd


def random_like(rng, tree):
    return jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), tree)


@pytest.mark.parametrize("mode", ["fwd_rev", "rev_rev", "rev_fwd"])
def test_hvp_is_dense_hessian_times_vector(mlp_problem, mode):
    params = mlp_problem.params
    v = random_like(np.random.default_rng(0), params)
    expected = mlp_problem.hessian @ ravel_pytree(v)[0]
    actual = jax.jit(lambda p, v: fd.hvp(mlp_problem.loss, p, v, mode=mode))(params, v)
    assert jax.tree.structure(actual) == jax.tree.structure(params)
    np.testing.assert_allclose(ravel_pytree(actual)[0], expected, rtol=1e-10, atol=1e-12)


def test_hvp_modes_agree_in_float32():
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda a: a.astype(jnp.float32), mlp_params(rng, (5, 8, 2)))
    x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
    v = random_like(rng, params)
    loss = lambda p: batch_loss(p, (x, y))
    results = [
        ravel_pytree(jax.jit(lambda p, v, m=m: fd.hvp(loss, p, v, mode=m))(params, v))[0]
        for m in ("fwd_rev", "rev_rev", "rev_fwd")
    ]
    assert results[0].dtype == jnp.float32
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-4, atol=1e-5)


def test_hvp_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        fd.hvp(jnp.sum, jnp.ones(2), jnp.ones(2), mode="fwd_fwd")


def mse(z, y):
    return 0.5 * jnp.mean(jnp.sum((z - y) ** 2, axis=-1))


def cross_entropy(z, y):
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(z) * jax.nn.one_hot(y, z.shape[-1]), axis=-1))


@pytest.mark.parametrize("loss_name", ["mse", "cross_entropy"])
def test_gnvp_is_dense_jt_hl_j_times_vector(mlp_problem, loss_name):
    params = mlp_problem.params
    x, y = mlp_problem.batch
    if loss_name == "mse":
        loss_fn = lambda z: mse(z, y)
    else:
        labels = jnp.arange(x.shape[0]) % 3
        loss_fn = lambda z: cross_entropy(z, labels)
    model_fn = lambda p: mlp_apply(p, x)
    flat, unravel = ravel_pytree(params)
    v = random_like(np.random.default_rng(2), params)

    @jax.jit
    def dense_gauss_newton(flat):
        z = model_fn(unravel(flat))
        jac = jax.jacobian(lambda t: model_fn(unravel(t)).ravel())(flat)  # (N·C, n)
        hess_loss = jax.hessian(lambda u: loss_fn(u.reshape(z.shape)))(z.ravel())  # (N·C, N·C)
        return jac.T @ hess_loss @ jac

    gauss_newton = dense_gauss_newton(flat)
    actual = jax.jit(lambda p, v: fd.gnvp(model_fn, loss_fn, p, v))(params, v)
    assert jax.tree.structure(actual) == jax.tree.structure(params)
    np.testing.assert_allclose(
        ravel_pytree(actual)[0], gauss_newton @ ravel_pytree(v)[0], rtol=1e-10, atol=1e-12
    )
    # A convex loss makes G positive semi-definite.
    assert np.linalg.eigvalsh(np.asarray(gauss_newton)).min() > -1e-10


def test_gnvp_equals_hvp_for_a_linear_model(x64):
    # With z linear in the params the model adds no curvature, so G = H.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(10, 4)))
    labels = jnp.arange(10) % 3
    params = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.zeros(3)}
    v = random_like(rng, params)
    model_fn = lambda p: x @ p["w"] + p["b"]
    loss_fn = lambda z: cross_entropy(z, labels)
    gv = fd.gnvp(model_fn, loss_fn, params, v)
    hv = fd.hvp(lambda p: loss_fn(model_fn(p)), params, v)
    for a, b in zip(jax.tree.leaves(gv), jax.tree.leaves(hv), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
