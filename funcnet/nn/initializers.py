"""Parameter initializers.

Every initializer is a function ``init(key, shape, dtype=None) -> array``; the ones with
settings are made by a factory (``normal(stddev=0.01)``). A kernel's last axis is its output,
the one before its input, and any axes before those its receptive field, so for a kernel of
shape ``(*receptive, fan_in_per_position, fan_out_per_position)``::

    fan_in  = prod(receptive) * shape[-2]
    fan_out = prod(receptive) * shape[-1]

The variance-scaling rules draw from a plain (untruncated) normal or a uniform distribution,
as PyTorch's ``torch.nn.init`` does. `dtype=None` means JAX's default float (float32, or
float64 under ``jax_enable_x64``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

__all__ = [
    "Initializer",
    "constant",
    "fans",
    "get",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "lecun_normal",
    "named",
    "normal",
    "ones",
    "orthogonal",
    "uniform",
    "variance_scaling",
    "zeros",
]

Array = jax.Array
Initializer = Callable[..., Array]


def _dtype(dtype):
    return jnp.result_type(float) if dtype is None else dtype


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a kernel shape; a vector counts as ``(size, size)``."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def zeros(key: Array, shape: tuple[int, ...], dtype=None) -> Array:
    """All zeros."""
    del key
    return jnp.zeros(shape, _dtype(dtype))


def ones(key: Array, shape: tuple[int, ...], dtype=None) -> Array:
    """All ones."""
    del key
    return jnp.ones(shape, _dtype(dtype))


def constant(value: float) -> Initializer:
    """Every entry equal to `value`."""

    def init(key, shape, dtype=None):
        del key
        return jnp.full(shape, value, _dtype(dtype))

    return init


def normal(stddev: float = 1e-2, mean: float = 0.0) -> Initializer:
    """``w ~ N(mean, stddev²)``."""

    def init(key, shape, dtype=None):
        dtype = _dtype(dtype)
        return mean + stddev * jax.random.normal(key, shape, dtype)

    return init


def uniform(scale: float = 1e-2) -> Initializer:
    """``w ~ U(-scale, scale)``."""

    def init(key, shape, dtype=None):
        return jax.random.uniform(key, shape, _dtype(dtype), -scale, scale)

    return init


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
    """``Var[w] = scale / n`` with ``n`` the fan in, the fan out or their mean (`mode`).

    `distribution` is ``"normal"`` (``w ~ N(0, scale/n)``) or ``"uniform"``
    (``w ~ U(-√(3·scale/n), √(3·scale/n))``, the same variance).
    """
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"mode must be 'fan_in', 'fan_out' or 'fan_avg', got {mode!r}")
    if distribution not in ("normal", "uniform"):
        raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")

    def init(key, shape, dtype=None):
        dtype = _dtype(dtype)
        fan_in, fan_out = fans(tuple(shape))
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        variance = scale / max(n, 1)
        if distribution == "normal":
            return math.sqrt(variance) * jax.random.normal(key, shape, dtype)
        limit = math.sqrt(3 * variance)
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def glorot_normal() -> Initializer:
    """Glorot/Xavier normal: ``w ~ N(0, 2 / (fan_in + fan_out))``."""
    return variance_scaling(1.0, "fan_avg", "normal")


def glorot_uniform() -> Initializer:
    """Glorot/Xavier uniform: ``w ~ U(-a, a)``, ``a = √(6 / (fan_in + fan_out))``."""
    return variance_scaling(1.0, "fan_avg", "uniform")


def he_normal() -> Initializer:
    """He/Kaiming normal (for ReLU): ``w ~ N(0, 2 / fan_in)``."""
    return variance_scaling(2.0, "fan_in", "normal")


def he_uniform() -> Initializer:
    """He/Kaiming uniform (for ReLU): ``w ~ U(-a, a)``, ``a = √(6 / fan_in)``."""
    return variance_scaling(2.0, "fan_in", "uniform")


def lecun_normal() -> Initializer:
    """LeCun normal (for SELU, and the dense default): ``w ~ N(0, 1 / fan_in)``."""
    return variance_scaling(1.0, "fan_in", "normal")


def orthogonal(gain: float = 1.0) -> Initializer:
    """A (semi-)orthogonal matrix times `gain`, reshaped to the kernel's shape.

    The kernel is viewed as a ``(prod(shape[:-1]), shape[-1])`` matrix ``W``, drawn as the
    ``Q`` of a Gaussian matrix's QR decomposition with the signs of ``diag(R)`` folded in, so
    ``WᵀW = gain²·I`` when it has at least as many rows as columns (``WWᵀ = gain²·I`` otherwise).
    """

    def init(key, shape, dtype=None):
        dtype = _dtype(dtype)
        if len(shape) < 2:
            raise ValueError(f"orthogonal: needs a shape of rank >= 2, got {tuple(shape)}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        # QR has no half-precision kernel: decompose in float32 (or wider), then cast.
        wide = jnp.promote_types(dtype, jnp.float32)
        a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), wide)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diagonal(r))
        if rows < cols:
            q = q.T
        return (gain * q).reshape(shape).astype(dtype)

    return init


_BY_NAME: dict[str, Callable[[], Initializer]] = {
    "zeros": lambda: zeros,
    "ones": lambda: ones,
    "normal": normal,
    "uniform": uniform,
    "glorot_normal": glorot_normal,
    "xavier_normal": glorot_normal,
    "glorot_uniform": glorot_uniform,
    "xavier_uniform": glorot_uniform,
    "he_normal": he_normal,
    "kaiming_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming_uniform": he_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal,
}


def get(init: str | Initializer) -> Initializer:
    """An initializer by name (``"he_normal"``, with default settings) or as it is."""
    if callable(init):
        return init
    if not isinstance(init, str) or init not in _BY_NAME:
        raise ValueError(
            f"unknown initializer {init!r:.40}; expected a function (key, shape, dtype) -> "
            f"array or one of {sorted(_BY_NAME)}"
        )
    return _BY_NAME[init]()


def named(owner: str, **inits: str | Initializer) -> tuple[Initializer, ...]:
    """Each of the keyword arguments `get` resolves, in order; an unknown one raises one line
    naming `owner` (the layer) and the argument: ``dense: w_init: unknown initializer ...``."""
    resolved = []
    for name, init in inits.items():
        try:
            resolved.append(get(init))
        except ValueError as err:
            raise ValueError(f"{owner}: {name}: {err}") from None
    return tuple(resolved)
