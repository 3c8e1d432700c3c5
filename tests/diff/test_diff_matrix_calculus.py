"""The closed forms of examples/matrix_calculus.py against funcnet.diff and jax, and the
Jacobian of examples/forward_vs_reverse.py assembled from jvps and from vjps."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.diff as fd
from tests.helpers import load_module

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


def gradient_by_vjp(f, x):
    """∇f(x) for a scalar f, as the pullback of the cotangent 1."""
    value, pullback = jax.vjp(f, x)
    return pullback(jnp.ones_like(value))[0]


def relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


@pytest.mark.parametrize("n", [2, 5])
def test_quadratic_form_non_symmetric(x64, n):
    rng = np.random.default_rng(10 + n)
    a = jnp.asarray(rng.normal(size=(n, n)))
    x = jnp.asarray(rng.normal(size=n))
    f = lambda v: mc.quadratic_form(v, a)
    expected = mc.quadratic_form_grad(x, a)
    assert relative_error(jax.grad(f)(x), expected) <= 1e-10
    assert relative_error(gradient_by_vjp(f, x), expected) <= 1e-10
    assert relative_error(fd.complex_step_grad(f, x), expected) <= 1e-10


def test_two_ax_is_not_the_gradient_unless_a_is_symmetric(x64):
    rng = np.random.default_rng(12)
    a = jnp.asarray(rng.normal(size=(5, 5)))
    x = jnp.asarray(rng.normal(size=5))
    grad = jax.grad(lambda v: mc.quadratic_form(v, a))(x)
    assert relative_error(2 * a @ x, grad) > 0.1
    # 2Ax is the gradient of the symmetric part's form, which has the same values: xᵀAx = xᵀSx.
    s = (a + a.T) / 2
    np.testing.assert_allclose(mc.quadratic_form(x, s), mc.quadratic_form(x, a), rtol=1e-13)
    assert relative_error(2 * s @ x, grad) <= 1e-10
    grad_s = jax.grad(lambda v: mc.quadratic_form(v, s))(x)
    assert relative_error(2 * s @ x, grad_s) <= 1e-10


@pytest.mark.parametrize("n", [1, 3, 6])
def test_det_differential_and_gradient(x64, n):
    rng = np.random.default_rng(20 + n)
    x = jnp.asarray(rng.normal(size=(n, n)) + 2 * np.eye(n))
    dx = jnp.asarray(rng.normal(size=(n, n)))
    value, d_det = jax.jvp(jnp.linalg.det, (x,), (dx,))
    assert relative_error(d_det, mc.det_differential(x, dx)) <= 1e-10
    # The differential is the pairing ⟨∇ det X, dX⟩ with ∇ det X = det X·X⁻ᵀ.
    grad = mc.det_grad(x)
    assert relative_error(gradient_by_vjp(jnp.linalg.det, x), grad) <= 1e-10
    assert relative_error(jnp.sum(grad * dx), d_det) <= 1e-10
    np.testing.assert_allclose(value, np.linalg.det(np.asarray(x)), rtol=1e-12)


@pytest.mark.parametrize("n", [1, 3, 6])
def test_inverse_differential(x64, n):
    rng = np.random.default_rng(30 + n)
    x = jnp.asarray(rng.normal(size=(n, n)) + 2 * np.eye(n))
    dx = jnp.asarray(rng.normal(size=(n, n)))
    _, d_inv = jax.jvp(jnp.linalg.inv, (x,), (dx,))
    assert relative_error(d_inv, mc.inverse_differential(x, dx)) <= 1e-10
    # Second-order agreement with a step: (X + εdX)⁻¹ − X⁻¹ = ε d(X⁻¹) + O(ε²).
    eps = 1e-6
    step = (jnp.linalg.inv(x + eps * dx) - jnp.linalg.inv(x)) / eps
    assert relative_error(step, mc.inverse_differential(x, dx)) <= 1e-4


@pytest.mark.parametrize("seed", [0, 1])
def test_second_differential(x64, seed):
    rng = np.random.default_rng(40 + seed)
    x = jnp.asarray(rng.normal(size=6))
    a, b = symmetric(rng, 6), symmetric(rng, 6)
    h1, h2 = jnp.asarray(rng.normal(size=(2, 6)))
    f = lambda v: mc.quadratic_product(v, a, b)
    expected = mc.quadratic_product_second_differential(x, a, b, h1, h2)
    forward_over_reverse = jax.jvp(jax.grad(f), (x,), (h2,))[1] @ h1
    assert relative_error(forward_over_reverse, expected) <= 1e-10
    for mode in ("fwd_rev", "rev_rev", "rev_fwd"):
        assert relative_error(fd.hvp(f, x, h2, mode=mode) @ h1, expected) <= 1e-10
    hessian = mc.quadratic_product_hessian(x, a, b)
    assert relative_error(h1 @ hessian @ h2, expected) <= 1e-10
    # A bilinear form from a symmetric Hessian: d²f[h₁, h₂] = d²f[h₂, h₁].
    swapped = mc.quadratic_product_second_differential(x, a, b, h2, h1)
    assert relative_error(swapped, expected) <= 1e-10


@pytest.mark.parametrize("c", [2, 5])
def test_softmax_jacobian_and_neg_log_prob(x64, c):
    rng = np.random.default_rng(50 + c)
    z = jnp.asarray(rng.normal(size=c))
    p = jax.nn.softmax(z)
    jac = mc.softmax_jacobian(z)
    assert relative_error(jax.jacfwd(jax.nn.softmax)(z), jac) <= 1e-10
    assert relative_error(jax.jacrev(jax.nn.softmax)(z), jac) <= 1e-10
    for y in range(c):
        grad_p = mc.neg_log_prob_grad(p, y)
        assert relative_error(jax.grad(mc.neg_log_prob)(p, y), grad_p) <= 1e-10
        assert np.count_nonzero(np.asarray(grad_p)) == 1
        # Chain rule: ∇z L = Jᵀ∇ₚL = (diag(p) − ppᵀ)(−1_y/p_y) = p − 1_y.
        chained = jac.T @ grad_p
        expected = jax.grad(lambda v, y=y: -jax.nn.log_softmax(v)[y])(z)
        assert relative_error(chained, expected) <= 1e-10
        assert relative_error(chained, p - jax.nn.one_hot(y, c, dtype=p.dtype)) <= 1e-10


def test_jacobian_by_columns_and_rows(x64):
    fvr = load_module("examples/forward_vs_reverse.py")
    w = jnp.asarray(np.random.default_rng(60).normal(size=(4, 3)))
    f = lambda v: jnp.sin(w @ v) * (v @ v)
    x = jnp.asarray([0.3, -1.2, 0.8])
    reference = jax.jacfwd(f)(x)
    assert fvr.jacobian_by_columns(f, x).shape == (4, 3)
    assert relative_error(fvr.jacobian_by_columns(f, x), reference) <= 1e-10
    assert relative_error(fvr.jacobian_by_rows(f, x), reference) <= 1e-10


def test_example_main_reports_agreement(capsys):
    results = mc.main()
    assert max(results.values()) < 1e-12
    out = capsys.readouterr().out
    assert "reverse mode" in out
    wrong = float(out.split("2Ax, relative error")[1].split()[0])
    assert wrong > 0.1
