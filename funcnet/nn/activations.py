"""The classic activation functions, as plain functions of an array.

Each one is written so that its value and gradient stay finite at extreme inputs (±1e4 and
beyond): exponentials only ever see non-positive arguments, and the branches of a `where`
are themselves safe so that no NaN leaks into the gradient of the branch not taken. At a
kink the gradient is one of the one-sided slopes; where a docstring names it, it is the one
PyTorch takes.

The piecewise ones (relu, relu6, leaky_relu, hard_tanh, the ELU family, softplus) compute
their value with max and min rather than compare-and-select, and state their derivative
in a `jax.custom_jvp` (`_elementwise`). XLA fuses a max into the convolution or matmul
that produces its input, and the pooling that reads it, while a select stops that fusion
on XLA:CPU and writes every activation out (2x the time of conv → relu → pool measured at
batch 1024); the derivative, a select on the backward pass as in `jax.nn.relu`, keeps the
kink gradients and NaN behaviour documented below. ``min(max(x, a), b)`` is written
``−max(−max(x, a), −b)``, equal for every input, because XLA rewrites the former into a
clamp, which XLA:CPU does not fuse either.

`prelu`, the one activation with a learned parameter, is a layer; it closes the module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.scipy.special import erfc

from funcnet._checks import check_float_dtype, is_real
from funcnet._precision import half_in_float32
from funcnet.nn import initializers
from funcnet.nn.core import Layer, LayerError, check_floating, check_params, check_shape

__all__ = [
    "ACTIVATIONS",
    "SELU_ALPHA",
    "SELU_SCALE",
    "celu",
    "elu",
    "gelu",
    "glu",
    "hard_sigmoid",
    "hard_swish",
    "hard_tanh",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "mish",
    "prelu",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "sinc",
    "sine",
    "softmax",
    "softplus",
    "softsign",
    "step",
    "swish",
    "tanh",
]

Array = jax.Array

SELU_ALPHA = 1.6732632423543772848170429916717
"""SELU's ``α`` (Klambauer et al., 2017): ``selu(x) = λ · α(e^x − 1)`` for ``x ≤ 0``."""

SELU_SCALE = 1.0507009873554804934193349852946
"""SELU's ``λ``, which with `SELU_ALPHA` makes mean 0 and variance 1 a fixed point."""


def sigmoid(x: Array) -> Array:
    """Logistic sigmoid ``σ(x) = 1 / (1 + e^{−x})``."""
    return jax.nn.sigmoid(x)


def tanh(x: Array) -> Array:
    """Hyperbolic tangent ``(e^x − e^{−x}) / (e^x + e^{−x})``."""
    return jnp.tanh(x)


def _elementwise(value, tangent):
    """``value(x)`` as a function whose derivative is ``tangent(x, t)`` (a `jax.custom_jvp`)."""
    fn = jax.custom_jvp(value)

    @fn.defjvp
    def jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        return value(x), tangent(x, t)

    return fn


def _clip(x: Array, low: float, high: float) -> Array:
    """``min(max(x, low), high)``, written so that XLA does not turn it into a clamp."""
    return -jnp.maximum(-jnp.maximum(x, low), -high)


_relu = _elementwise(
    lambda x: jnp.maximum(x, 0), lambda x, t: jnp.where(x <= 0, jnp.zeros_like(t), t)
)


def relu(x: Array) -> Array:
    """Rectified linear unit ``max(x, 0)``, with gradient 0 at ``x = 0``; NaN stays NaN."""
    return _relu(x)


def leaky_relu(x: Array, *, negative_slope: float = 1e-2) -> Array:
    """``x`` for ``x ≥ 0``, ``negative_slope · x`` otherwise; gradient 1 at 0.

    For a slope in [0, 1], as usual, computed as ``max(x, negative_slope · x)``.
    """
    if isinstance(negative_slope, int | float) and 0 <= negative_slope <= 1:
        return _elementwise(
            lambda x: jnp.maximum(x, negative_slope * x),
            lambda x, t: jnp.where(x >= 0, t, negative_slope * t),
        )(x)
    return jnp.where(x >= 0, x, negative_slope * x)


_relu6 = _elementwise(
    lambda x: _clip(x, 0, 6),
    lambda x, t: jnp.where((x <= 0) | (x >= 6), jnp.zeros_like(t), t),
)


def relu6(x: Array) -> Array:
    """``min(max(x, 0), 6)``; gradient 1 on ``(0, 6)`` and 0 elsewhere, kinks included (as
    `torch.nn.functional.relu6`)."""
    return _relu6(x)


def hard_sigmoid(x: Array) -> Array:
    """Piecewise-linear sigmoid ``relu6(x + 3) / 6``: 0 for ``x ≤ −3``, 1 for ``x ≥ 3``,
    ``x/6 + 1/2`` between; gradient ``1/6`` on ``(−3, 3)`` and 0 at the kinks (as
    `torch.nn.functional.hardsigmoid`)."""
    return relu6(x + 3) / 6


def hard_swish(x: Array) -> Array:
    """``x · hard_sigmoid(x)``: 0 for ``x ≤ −3``, ``x`` for ``x ≥ 3``, ``x(x + 3)/6`` between
    (MobileNetV3). Gradient ``(2x + 3)/6`` on ``(−3, 3)``, 0 at ``−3`` and 1 at ``3``, the
    slopes of the outer pieces (as `torch.nn.functional.hardswish`)."""
    return x * hard_sigmoid(x)


@jax.custom_jvp
def _expm1(x: Array) -> Array:
    """``e^x − 1``, whose derivative is computed as ``e^x``.

    JAX differentiates `jnp.expm1` as ``expm1(x) + 1``, which cancels to 0 once ``e^x`` is
    below the float's resolution at 1 (``x ≲ −17`` in float32); ``e^x`` itself stays exact
    down to its underflow (``x ≈ −87`` in float32, ``−708`` in float64).
    """
    return jnp.expm1(x)


@_expm1.defjvp
def _expm1_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.expm1(x), jnp.exp(x) * t


def elu(x: Array, *, alpha: float = 1.0) -> Array:
    """Exponential linear unit: ``x`` for ``x > 0``, ``α(e^x − 1)`` otherwise, computed as
    ``max(x, 0) + α(e^{min(x, 0)} − 1)``.

    Gradient 1 for ``x > 0`` and ``α e^x`` otherwise (``α`` at 0, as PyTorch), exact far into
    the negative tail: nonzero until ``e^x`` underflows.
    """
    return _elementwise(
        lambda x: jnp.maximum(x, 0) + alpha * _expm1(jnp.minimum(x, 0)),
        lambda x, t: jnp.where(x > 0, t, alpha * jnp.exp(jnp.minimum(x, 0)) * t),
    )(x)


def celu(x: Array, *, alpha: float = 1.0) -> Array:
    """Continuously differentiable ELU: ``x`` for ``x > 0``, ``α(e^{x/α} − 1)`` otherwise.

    The ELU as it is often written on slides; it equals `elu` for ``α = 1`` and, unlike `elu`,
    has slope 1 at 0 for every ``α`` (Barron, 2017; `torch.nn.CELU`). ``celu(x, α) = α·elu(x/α)``.
    """
    return alpha * elu(x / alpha)


def selu(x: Array) -> Array:
    """Scaled ELU ``λ · elu(x, α)`` with the self-normalising ``λ ≈ 1.0507``, ``α ≈ 1.6733``."""
    return SELU_SCALE * elu(x, alpha=SELU_ALPHA)


@half_in_float32
def gelu(x: Array, *, approximate: bool = False) -> Array:
    """Gaussian error linear unit ``x · Φ(x) = x/2 · (1 + erf(x/√2)) = x/2 · erfc(−x/√2)``.

    The exact form is the default, as in PyTorch, computed as ``x/2 · erfc(−x/√2)``: in the
    negative tail ``1 + erf`` cancels (6% off at ``x = −5`` in float32, and ``−3·10³¹`` at
    ``−3.4·10³⁸`` where XLA's erf stops short of −1), ``erfc`` does not. With
    ``approximate=True``: ``x/2 · (1 + tanh(√(2/π)(x + 0.044715 x³)))``. Half-precision
    inputs are computed in float32.
    """
    if approximate:
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1 + jnp.tanh(inner))
    return 0.5 * x * erfc(-x / math.sqrt(2))


@half_in_float32
def softplus(x: Array, *, beta: float = 1.0, threshold: float | None = None) -> Array:
    """``(1/β) log(1 + e^{βx})``, computed as ``(max(βx, 0) + log1p(e^{−|βx|})) / β``.

    The formula is stable for every input, so by default it is used everywhere. With a
    `threshold`, inputs where ``βx > threshold`` return ``x`` itself (gradient 1), as
    `torch.nn.functional.softplus` does with its default ``threshold=20``; the two differ there
    by less than ``e^{−threshold}/β``. Gradient ``σ(βx)``. `beta` must be positive.
    Half-precision inputs are computed in float32.
    """
    if not beta > 0:
        raise ValueError(f"softplus: beta must be positive, got {beta}")
    y = _elementwise(
        lambda x: (jnp.maximum(beta * x, 0) + jnp.log1p(jnp.exp(-jnp.abs(beta * x)))) / beta,
        # The derivative of ``logaddexp(βx, 0) / β`` exactly as JAX takes it, σ(βx) · t.
        lambda x, t: jax.jvp(lambda z: jnp.logaddexp(z, 0.0), (beta * x,), (beta * t,))[1] / beta,
    )(x)
    if threshold is not None:
        y = jnp.where(beta * x > threshold, x, y)
    return y


def softsign(x: Array) -> Array:
    """``x / (1 + |x|)``."""
    return x / (1 + jnp.abs(x))


@half_in_float32
def swish(x: Array, *, beta: float = 1.0) -> Array:
    """``x · σ(βx)``; with ``β = 1`` this is SiLU. Half-precision inputs are computed in
    float32."""
    return x * sigmoid(beta * x)


def silu(x: Array) -> Array:
    """Sigmoid linear unit ``x · σ(x)``."""
    return swish(x)


@half_in_float32
def mish(x: Array) -> Array:
    """``x · tanh(softplus(x))``. Half-precision inputs are computed in float32."""
    return x * jnp.tanh(softplus(x))


def log_sigmoid(x: Array) -> Array:
    """``log σ(x) = −softplus(−x)``."""
    return -softplus(-x)


def sinc(x: Array) -> Array:
    """Unnormalised sinc ``sin(x) / x``, with value 1 and gradient 0 at ``x = 0``.

    Near zero (``|x| < 1e-3``) it uses the Taylor series ``1 − x²/6 + x⁴/120``, exact to
    round-off in float64 there, so first and second derivatives are right at 0 too.
    """
    small = jnp.abs(x) < 1e-3
    safe = jnp.where(small, jnp.ones_like(x), x)
    x2 = jnp.square(jnp.where(small, x, jnp.zeros_like(x)))
    return jnp.where(small, 1 - x2 / 6 + x2 * x2 / 120, jnp.sin(safe) / safe)


def step(x: Array, *, threshold: float = 0.0, value_at_threshold: float = 0.0) -> Array:
    """Heaviside step at `threshold` ``a``: 1 for ``x > a``, 0 for ``x < a``,
    `value_at_threshold` at ``x = a``; gradient 0 everywhere.

    The threshold unit of the perceptron, ``step(wᵀx, threshold=a)`` fires when ``wᵀx > a``.
    """
    x = jax.lax.stop_gradient(jnp.asarray(x))
    y = jnp.where(x > threshold, 1.0, jnp.where(x < threshold, 0.0, value_at_threshold))
    return jnp.where(jnp.isnan(x), x, y.astype(x.dtype))  # NaN stays NaN


@half_in_float32
def sine(x: Array, *, omega_0: float = 30.0) -> Array:
    """SIREN's periodic activation ``sin(ω₀ x)``. Half-precision inputs are computed in
    float32, where the product ``ω₀ x`` would overflow."""
    return jnp.sin(omega_0 * x)


def hard_tanh(x: Array, *, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """``x`` clipped to ``[min_val, max_val]``; gradient 1 inside (kinks included), 0 outside."""
    return _elementwise(
        lambda x: _clip(x, min_val, max_val).astype(x.dtype),
        lambda x, t: jnp.where((x < min_val) | (x > max_val), jnp.zeros_like(t), t),
    )(x)


@half_in_float32
def glu(x: Array, *, axis: int = -1) -> Array:
    """Gated linear unit ``a ⊙ σ(b)``, where ``a`` and ``b`` are the first and second halves of
    `x` along `axis` (Dauphin et al., 2017; `torch.nn.functional.glu`).

    Input ``(..., 2n, ...)``; output ``(..., n, ...)``: the one activation here that changes the
    shape, which is why `ACTIVATIONS` (elementwise functions for a configurable hidden layer)
    leaves it out. Half-precision inputs are computed in float32.
    """
    if x.ndim == 0 or x.shape[axis] % 2:
        raise ValueError(
            f"glu: expected an even size along axis {axis}, got shape {tuple(x.shape)}"
        )
    a, b = jnp.split(x, 2, axis=axis)
    return a * sigmoid(b)


@half_in_float32
def softmax(x: Array, *, axis: int | Sequence[int] | None = -1) -> Array:
    """``y_i = e^{x_i − m} / Σ_j e^{x_j − m}`` with ``m = max_j x_j``, over `axis` (an int, a
    sequence of them, or None for all).

    Differentiated by its own rule ``ẏ = y ⊙ (ẋ − Σ_j y_j ẋ_j)``, so the backward pass keeps
    only ``y``, not the exponentials, their sum and the quotient's operands (the families
    benchmark's transformer step: 17% less temporary memory, 6% less time).
    Half-precision inputs are computed in float32 and the result rounded once: a sum of
    thousands of terms in bfloat16 keeps two or three digits.
    """
    return _softmax(x, axis if axis is None or isinstance(axis, int) else tuple(axis))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _softmax(x: Array, axis: int | tuple[int, ...] | None) -> Array:
    unnormalised = jnp.exp(x - jnp.max(x, axis=axis, keepdims=True))
    return unnormalised / jnp.sum(unnormalised, axis=axis, keepdims=True)


@_softmax.defjvp
def _softmax_jvp(axis, primals, tangents):
    (x,), (x_dot,) = primals, tangents
    y = _softmax(x, axis)
    return y, y * (x_dot - jnp.sum(y * x_dot, axis=axis, keepdims=True))


@half_in_float32
def log_softmax(x: Array, *, axis: int = -1) -> Array:
    """``x_i − m − log Σ_j e^{x_j − m}`` with ``m = max_j x_j``.

    Half-precision inputs are computed in float32 and the result rounded once.
    """
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


ACTIVATIONS = {
    fn.__name__: fn
    for fn in (
        sigmoid,
        tanh,
        relu,
        relu6,
        leaky_relu,
        elu,
        celu,
        selu,
        gelu,
        softplus,
        softsign,
        swish,
        silu,
        mish,
        log_sigmoid,
        sinc,
        step,
        sine,
        hard_tanh,
        hard_sigmoid,
        hard_swish,
        softmax,
        log_softmax,
    )
}
"""Every activation above by its name (``"relu"``, ``"gelu"``, ...): the names that model
configurations and the command line accept. Treat it as read-only."""


# The one activation with a learned parameter, hence a layer rather than a plain function.
def prelu(
    *,
    per_channel: bool = False,
    slope_init: float | str | initializers.Initializer = 0.25,
    dtype=None,
) -> Layer:
    """Parametric ReLU ``y = x`` for ``x > 0``, ``a · x`` otherwise, with a learned slope ``a``
    (He et al., 2015; `torch.nn.PReLU`).

    Params: ``slope``, of shape ``()`` (one slope for every unit, as ``PReLU()``) or, with
    `per_channel`, ``(channels,)`` for the last axis (as ``PReLU(num_parameters=channels)``
    in channels-last layout). `slope_init` is a number (0.25 by default, as PyTorch) or an
    initializer; `dtype` is the slope's dtype (JAX's default float when None). Input: any
    floating-point array ``(..., channels)``; output: the same shape. Gradient at ``x = 0``:
    ``a`` for ``x`` and 0 for ``a``, the slopes of the negative piece, as PyTorch.
    """
    if is_real(slope_init):
        slope_init = initializers.constant(float(slope_init))
    else:
        (slope_init,) = initializers.named("prelu", slope_init=slope_init)
    check_float_dtype("prelu", dtype)

    def init(key, in_shape):
        if per_channel:
            in_shape = check_shape("prelu", in_shape, "an input (..., channels)", min_rank=1)
            shape = (in_shape[-1],)
        else:
            shape = ()
        return tuple(in_shape), {"slope": slope_init(key, shape, dtype)}, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_params("prelu", params, "slope")
        slope = params["slope"]
        check_floating("prelu", x)
        if slope.ndim == 1:
            check_shape(
                "prelu",
                x.shape,
                f"an input with {slope.shape[0]} channels on the last axis (one slope each)",
                min_rank=1,
                last=slope.shape[0],
            )
        elif slope.ndim != 0:
            raise LayerError(
                "prelu",
                f"slope of shape {tuple(slope.shape)} is neither one slope () nor one per "
                "channel (channels,); was it made by another model's init?",
            )
        return jnp.where(x > 0, x, slope * x), state

    return Layer(init, apply, kind="prelu")
