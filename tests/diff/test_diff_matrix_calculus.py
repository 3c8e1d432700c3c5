"""The closed forms of examples/matrix_calculus.py against funcnet.diff and jax."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.diff as fd

_PATH = pathlib.Path(__file__).resolve().parents[2] / "examples" / "matrix_calculus.py"
_SPEC = importlib.util.spec_from_file_location("matrix_calculus", _PATH)
mc = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(mc)


def symmetric(rng, n):
    m = rng.normal(size=(n, n))
    return jnp.asarray((m + m.T) / 2)


@pytest.mark.parametrize("seed", [0, 1])
def test_quadratic_product(x64, seed):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=6))
    a, b = symmetric(rng, 6), symmetric(rng, 6)
    f = lambda v: mc.quadratic_product(v, a, b)
    np.testing.assert_allclose(mc.quadratic_product_grad(x, a, b), jax.grad(f)(x), rtol=1e-12)
    hessian = jax.jit(lambda v: fd.hessian(f, v))(x)
    np.testing.assert_allclose(mc.quadratic_product_hessian(x, a, b), hessian, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_cubed_norm(x64, n):
    x = jnp.asarray(np.random.default_rng(n).normal(size=n))
    norm = np.linalg.norm(np.asarray(x))
    np.testing.assert_allclose(mc.cubed_norm(x), norm**3, rtol=1e-14)
    np.testing.assert_allclose(mc.cubed_norm_grad(x), jax.grad(mc.cubed_norm)(x), rtol=1e-13)
    np.testing.assert_allclose(
        mc.cubed_norm_hessian(x), jax.jit(lambda v: fd.hessian(mc.cubed_norm, v))(x), rtol=1e-13
    )
    np.testing.assert_allclose(
        fd.complex_step_grad(mc.cubed_norm, x), mc.cubed_norm_grad(x), rtol=1e-13
    )


@pytest.mark.parametrize(("p", "m", "k"), [(2, 2, 2), (3, 4, 5)])
def test_det_product(x64, p, m, k):
    rng = np.random.default_rng(p * m * k)
    a = jnp.asarray(rng.normal(size=(p, m)))
    x = jnp.asarray(rng.normal(size=(m, k)))
    b = jnp.asarray(rng.normal(size=(k, p)))
    g = lambda v: mc.det_product(v, a, b)
    np.testing.assert_allclose(mc.det_product_grad(x, a, b), jax.grad(g)(x), rtol=1e-10)
    report = fd.check_grads(g, x)
    np.testing.assert_allclose(mc.det_product_grad(x, a, b), report.numerical, rtol=1e-7, atol=1e-9)


def test_softmax_regression(x64):
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=(4, 6))), "b": jnp.asarray(rng.normal(size=4))}
    x = jnp.asarray(rng.normal(size=6))
    for label in range(4):
        ad_params, ad_x = jax.grad(mc.softmax_regression_loss, argnums=(0, 1))(params, x, label)
        cf_params, cf_x = mc.softmax_regression_grads(params, x, label)
        np.testing.assert_allclose(cf_params["w"], ad_params["w"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(cf_params["b"], ad_params["b"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(cf_x, ad_x, rtol=1e-12, atol=1e-15)
        # ∇W is the rank-one outer product ∇z xᵀ.
        assert np.linalg.matrix_rank(np.asarray(cf_params["w"])) == 1


@pytest.mark.parametrize("point", [(1.5, 0.5, 2.0), (-0.7, 1.2, 0.9)])
def test_traced_function_by_hand(x64, point):
    x = jnp.asarray(point)
    grad = jax.grad(mc.traced_function)(x)
    np.testing.assert_allclose(mc.traced_function_grad(x), grad, rtol=1e-13)
    forward_value = mc.forward_trace(point, (0.0, 0.0, 0.0))[-1][2]
    np.testing.assert_allclose(forward_value, mc.traced_function(x), rtol=1e-14)
    # One forward sweep per input direction gives one column of the 1×3 Jacobian.
    for i, seed in enumerate(np.eye(3).tolist()):
        tangent = mc.forward_trace(point, tuple(seed))[-1][-1]
        _, expected = jax.jvp(mc.traced_function, (x,), (jnp.asarray(seed),))
        np.testing.assert_allclose(tangent, expected, rtol=1e-13)
        np.testing.assert_allclose(tangent, grad[i], rtol=1e-13)
    # One reverse sweep gives all three partial derivatives.
    adjoints = {name: value for name, _, value in mc.reverse_trace(point)}
    np.testing.assert_allclose([adjoints[f"v{i}"] for i in (1, 2, 3)], grad, rtol=1e-13)
    np.testing.assert_allclose(fd.jacobian(mc.traced_function, x, mode="fwd"), grad, rtol=1e-13)
    np.testing.assert_allclose(fd.jacobian(mc.traced_function, x, mode="rev"), grad, rtol=1e-13)


def test_example_main_reports_agreement(capsys):
    results = mc.main()
    assert max(results.values()) < 1e-12
    assert "reverse mode" in capsys.readouterr().out
