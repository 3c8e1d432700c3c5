"""Activations against float64 numpy/scipy references, finite differences and extreme inputs."""

import contextlib
import functools
import io
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from funcnet import nn
from funcnet.nn import activations

SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _np_softplus(x):
    return np.logaddexp(x, 0.0)


# Reference formulas written independently in numpy / scipy (float64).
REFERENCES = {
    "sigmoid": special.expit,
    "tanh": np.tanh,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),  # α = 1
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: x * special.ndtr(x),
    "softplus": _np_softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "swish": lambda x: x * special.expit(x),
    "silu": lambda x: x * special.expit(x),
    "mish": lambda x: x * np.tanh(_np_softplus(x)),
    "log_sigmoid": special.log_expit,
    "sinc": lambda x: np.sinc(x / np.pi),
    "step": lambda x: np.heaviside(x, 0.0),
    "sine": lambda x: np.sin(30.0 * x),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hard_swish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "softmax": lambda x: special.softmax(x, axis=-1),
    "log_softmax": lambda x: special.log_softmax(x, axis=-1),
}
NAMES = sorted(REFERENCES)


def test_catalogue_is_complete():
    for name in NAMES:
        assert callable(getattr(activations, name))
        assert getattr(nn, name) is getattr(activations, name)


def test_activations_table_names_every_activation():
    assert nn.ACTIVATIONS is activations.ACTIVATIONS
    assert sorted(activations.ACTIVATIONS) == NAMES
    for name, fn in activations.ACTIVATIONS.items():
        assert fn is getattr(activations, name)


def test_selu_constants_are_the_papers():
    assert nn.SELU_ALPHA == SELU_ALPHA
    assert nn.SELU_SCALE == SELU_SCALE


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_in_float64(name, x64):
    x = np.linspace(-6, 6, 121).reshape(11, 11)
    x = x[np.abs(x) > 1e-9] if name == "step" else x  # Heaviside's value at 0 is a convention
    got = np.asarray(getattr(activations, name)(jnp.asarray(x)))
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, REFERENCES[name](x), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("extreme", [-1e4, 1e4, -1e30, 1e30])
def test_finite_value_and_gradient_at_extremes(name, extreme):
    fn = getattr(activations, name)
    x = jnp.array([extreme, -1.0, 0.0, 2.0], jnp.float32)
    if name in ("softmax", "log_softmax"):
        value, grad = fn(x), jax.grad(lambda v: fn(v)[0])(x)
    else:
        value, grad = fn(x), jax.vmap(jax.grad(fn))(x)
    if name == "sine" and abs(extreme) > 1e20:
        pytest.skip("sin of 3e31 is finite but meaningless in float32")
    assert np.all(np.isfinite(value)), value
    assert np.all(np.isfinite(grad)), grad


def _central_difference(fn, x, h=1e-6):
    return (fn(x + h) - fn(x - h)) / (2 * h)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("softmax", "log_softmax")])
def test_gradient_matches_finite_differences(name, x64):
    fn = getattr(activations, name)
    # Away from kinks (relu, leaky_relu, elu's second derivative, step, hard_tanh at ±1).
    x = jnp.array([-3.3, -1.7, -0.4, 0.3, 0.8, 2.1, 4.2])
    if name == "sine":
        x = x / 30
    auto = jax.vmap(jax.grad(fn))(x)
    numeric = _central_difference(fn, x)
    np.testing.assert_allclose(auto, numeric, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_jacobian_matches_finite_differences(name, x64):
    fn = getattr(activations, name)
    x = jnp.array([0.3, -1.2, 2.5, 0.0])
    auto = jax.jacobian(fn)(x)
    eye = jnp.eye(4)
    numeric = jnp.stack([_central_difference(lambda t, e=e: fn(x + t * e), 0.0) for e in eye], 1)
    np.testing.assert_allclose(auto, numeric, rtol=1e-7, atol=1e-9)


def test_softmax_derivatives_in_both_modes_and_of_second_order_along_any_axis(x64):
    """`softmax` is differentiated by its own rule ``ẏ = y ⊙ (ẋ − ⟨y, ẋ⟩)``: forward and reverse
    mode give the Jacobian ``diag(y) − y yᵀ``, and differentiating the rule again gives the
    closed-form Hessian ``∂²y_i/∂x_j∂x_k = y_i[(δ_ij − y_j)(δ_ik − y_k) − y_j(δ_jk − y_k)]``;
    here along axis 0 of a matrix, column by column."""
    x = jnp.array([[0.3, -1.2], [2.5, 0.0], [-0.7, 1.1]])
    d = np.eye(3)
    for col in range(2):
        y = special.softmax(np.asarray(x[:, col]))
        jacobian = np.diag(y) - np.outer(y, y)
        first = (d[:, :, None] - y[None, :, None]) * (d[:, None, :] - y[None, None, :])
        hessian = y[:, None, None] * (first - y[None, :, None] * (d[None] - y[None, None, :]))

        def f(v, col=col):
            return nn.softmax(x.at[:, col].set(v), axis=0)[:, col]

        for got in (jax.jacfwd(f)(x[:, col]), jax.jacrev(f)(x[:, col])):
            np.testing.assert_allclose(got, jacobian, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(jax.hessian(f)(x[:, col]), hessian, rtol=1e-12, atol=1e-15)


def test_softmax_over_several_axes_or_all_of_them():
    x = jnp.arange(24.0).reshape(2, 3, 4) / 7
    for axis in (None, (0, 2), [1, 2], -1):
        expected = special.softmax(
            np.asarray(x), axis=None if axis is None else tuple(np.atleast_1d(axis))
        )
        np.testing.assert_allclose(nn.softmax(x, axis=axis), expected, rtol=1e-6)
    weights = jnp.cos(x)
    grad = jax.grad(lambda v: jnp.sum(weights * nn.softmax(v, axis=(0, 2))))(x)
    reference = jax.grad(lambda v: jnp.sum(weights * jax.nn.softmax(v, axis=(0, 2))))(x)
    np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-7)


def test_softmax_backward_pass_keeps_only_its_output():
    """One residual, ``y`` itself; differentiating the exponentials and the quotient kept three
    (the exponentials, their sum and the sum's reciprocal squared)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        jax.ad_checkpoint.print_saved_residuals(nn.softmax, jnp.ones((4, 5)))
    saved = buffer.getvalue().splitlines()
    assert len(saved) == 1 and saved[0].startswith("f32[4,5]"), saved


def test_sinc_at_zero(x64):
    assert nn.sinc(jnp.array(0.0)) == 1.0
    assert jax.grad(nn.sinc)(0.0) == 0.0
    np.testing.assert_allclose(jax.grad(jax.grad(nn.sinc))(0.0), -1.0 / 3.0, rtol=1e-12)
    # Both sides of the series switch agree with sin(x)/x to round-off.
    for x in (9.9e-4, 1.01e-3):
        np.testing.assert_allclose(nn.sinc(jnp.array(x)), math.sin(x) / x, rtol=1e-15)


def test_relu_gradient_is_zero_at_zero():
    assert jax.grad(nn.relu)(0.0) == 0.0
    assert jax.grad(nn.relu)(1.0) == 1.0


def test_step_has_zero_gradient_a_threshold_and_a_value_at_the_threshold():
    assert jax.grad(nn.step)(0.7) == 0.0
    assert nn.step(jnp.array(0.0), value_at_threshold=0.5) == 0.5
    x = jnp.array([-1.0, 0.4, 0.5, 0.6, 2.0])
    np.testing.assert_array_equal(nn.step(x, threshold=0.5), np.heaviside(np.asarray(x) - 0.5, 0))
    np.testing.assert_array_equal(
        nn.step(x, threshold=0.5, value_at_threshold=1.0), [0, 0, 1, 1, 1]
    )
    assert jax.grad(lambda t: nn.step(t, threshold=0.5))(0.5) == 0.0


def test_celu_is_the_elu_of_the_slides_with_slope_one_at_zero(x64):
    x = jnp.array([-40.0, -2.0, -1e-3, 0.0, 3.0])
    for alpha in (0.5, 1.0, 2.0):
        slide = np.where(np.asarray(x) > 0, x, alpha * np.expm1(np.asarray(x) / alpha))
        np.testing.assert_allclose(nn.celu(x, alpha=alpha), slide, rtol=1e-14)
        assert jax.grad(nn.celu)(0.0, alpha=alpha) == 1.0 or alpha != 1.0
        left = jax.grad(lambda t, a=alpha: nn.celu(t, alpha=a))(-1e-9)
        np.testing.assert_allclose(left, 1.0, rtol=1e-6)  # e^{x/α} → 1: no kink at 0
    # elu's slope just left of 0 is α, celu's is 1.
    np.testing.assert_allclose(jax.grad(lambda t: nn.elu(t, alpha=2.0))(-1e-9), 2.0, rtol=1e-6)
    np.testing.assert_allclose(nn.celu(x), nn.elu(x), rtol=1e-14)


def test_gelu_tanh_approximation_is_close_to_exact():
    x = jnp.linspace(-5, 5, 101)
    np.testing.assert_allclose(nn.gelu(x, approximate=True), nn.gelu(x), atol=1e-3)


def test_parameters_of_parametrised_activations(x64):
    x = jnp.array([-2.0, 3.0])
    np.testing.assert_allclose(nn.leaky_relu(x, negative_slope=0.2), [-0.4, 3.0])
    np.testing.assert_allclose(nn.elu(x, alpha=2.0), [2 * math.expm1(-2.0), 3.0])
    np.testing.assert_allclose(nn.sine(x, omega_0=1.0), np.sin([-2.0, 3.0]))
    np.testing.assert_allclose(nn.swish(x, beta=2.0), x * special.expit(2 * np.asarray(x)))


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_shapes_and_dtypes(name):
    fn = getattr(activations, name)
    x = jax.random.normal(jax.random.key(1), (3, 5), jnp.float32)
    eager = fn(x)
    jitted = jax.jit(fn)(x)
    mapped = jax.vmap(fn)(x)
    chex.assert_shape([eager, jitted, mapped], (3, 5))
    chex.assert_type([eager, jitted, mapped], jnp.float32)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mapped, eager, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", NAMES)
def test_low_precision_stays_finite(name, dtype):
    fn = functools.partial(getattr(activations, name))
    # ±3e4: the widest inputs whose log-softmax (down to -6e4) float16 can still hold.
    x = jnp.array([-3e4, -3.0, 0.0, 2.0, 3e4], dtype)
    y = fn(x)
    assert y.dtype == dtype
    assert np.all(np.isfinite(np.asarray(y, np.float32)))
    grad = jax.grad(lambda t: jnp.sum(fn(t).astype(jnp.float32) * jnp.arange(1.0, 6.0)))(x)
    assert grad.dtype == dtype
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
