"""Half precision: where float16/bfloat16 inputs are computed in float32.

Products such as ``x · σ(x)`` and their gradients, or a sum of squared errors, overflow
float16 (largest value 65504) long before the result they lead to does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array


def is_half(x: Any) -> bool:
    """Whether `x` holds floats narrower than 32 bits (float16, bfloat16)."""
    dtype = jnp.result_type(x)
    return bool(jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits < 32)


def at_least_float32(x: Any) -> Array:
    """`x` as float32 if it is half precision; any other array unchanged."""
    x = jnp.asarray(x)
    return x.astype(jnp.float32) if is_half(x) else x


def half_in_float32(fn: Callable[..., Array]) -> Callable[..., Array]:
    """Wraps ``fn(x, ...)`` so that a half-precision `x` is computed in float32 and the
    result cast back to `x`'s dtype; other inputs go to `fn` unchanged."""

    @functools.wraps(fn)
    def wrapped(x: Array, *args: Any, **kwargs: Any) -> Array:
        if is_half(x):
            return fn(x.astype(jnp.float32), *args, **kwargs).astype(x.dtype)
        return fn(x, *args, **kwargs)

    return wrapped
