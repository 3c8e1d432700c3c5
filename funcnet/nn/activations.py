"""The classic activation functions, as plain functions of an array.

Each one is written so that its value and gradient stay finite at extreme inputs (±1e4 and
beyond): exponentials only ever see non-positive arguments, and the branches of a `where`
are themselves safe so that no NaN leaks into the gradient of the branch not taken.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import erf

from funcnet._precision import half_in_float32

__all__ = [
    "ACTIVATIONS",
    "SELU_ALPHA",
    "SELU_SCALE",
    "celu",
    "elu",
    "gelu",
    "hard_tanh",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "mish",
    "relu",
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


def relu(x: Array) -> Array:
    """Rectified linear unit ``max(x, 0)``, with gradient 0 at ``x = 0``."""
    return jnp.where(x > 0, x, jnp.zeros_like(x))


def leaky_relu(x: Array, *, negative_slope: float = 1e-2) -> Array:
    """``x`` for ``x ≥ 0``, ``negative_slope · x`` otherwise."""
    return jnp.where(x >= 0, x, negative_slope * x)


def elu(x: Array, *, alpha: float = 1.0) -> Array:
    """Exponential linear unit: ``x`` for ``x > 0``, ``α(e^x − 1)`` otherwise."""
    negative = jnp.where(x > 0, jnp.zeros_like(x), x)
    return jnp.where(x > 0, x, alpha * jnp.expm1(negative))


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
    """Gaussian error linear unit ``x · Φ(x) = x/2 · (1 + erf(x/√2))``.

    With ``approximate=True``: ``x/2 · (1 + tanh(√(2/π)(x + 0.044715 x³)))``. The exact form is
    the default, as in PyTorch. Half-precision inputs are computed in float32.
    """
    if approximate:
        inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
        return 0.5 * x * (1 + jnp.tanh(inner))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def softplus(x: Array) -> Array:
    """``log(1 + e^x)``, computed as ``max(x, 0) + log1p(e^{−|x|})``."""
    return jnp.logaddexp(x, jnp.zeros_like(x))


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
    x = jax.lax.stop_gradient(x)
    return jnp.where(x > threshold, 1.0, jnp.where(x < threshold, 0.0, value_at_threshold)).astype(
        x.dtype
    )


@half_in_float32
def sine(x: Array, *, omega_0: float = 30.0) -> Array:
    """SIREN's periodic activation ``sin(ω₀ x)``. Half-precision inputs are computed in
    float32, where the product ``ω₀ x`` would overflow."""
    return jnp.sin(omega_0 * x)


def hard_tanh(x: Array, *, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """``x`` clipped to ``[min_val, max_val]``; gradient 1 inside, 0 outside."""
    return jnp.where(x < min_val, min_val, jnp.where(x > max_val, max_val, x)).astype(x.dtype)


def softmax(x: Array, *, axis: int = -1) -> Array:
    """``e^{x_i − m} / Σ_j e^{x_j − m}`` with ``m = max_j x_j``."""
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    unnormalised = jnp.exp(shifted)
    return unnormalised / jnp.sum(unnormalised, axis=axis, keepdims=True)


def log_softmax(x: Array, *, axis: int = -1) -> Array:
    """``x_i − m − log Σ_j e^{x_j − m}`` with ``m = max_j x_j``."""
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


ACTIVATIONS = {
    fn.__name__: fn
    for fn in (
        sigmoid,
        tanh,
        relu,
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
        softmax,
        log_softmax,
    )
}
"""Every activation above by its name (``"relu"``, ``"gelu"``, ...): the names that model
configurations and the command line accept. Treat it as read-only."""
