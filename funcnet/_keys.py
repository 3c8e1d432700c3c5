"""PRNG keys as funcnet takes them: typed `jax.random.key` keys, legacy uint32 keys wrapped.

Every public function that draws random numbers accepts a typed key (``jax.random.key(0)``) or
a legacy one (``jax.random.PRNGKey(0)``, uint32 of shape ``(2,)``) and works on the typed key
from then on, so the rest of the library meets one kind of key.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def is_key(x: Any) -> bool:
    """Whether `x` (an array, tracer or `jax.ShapeDtypeStruct`) has a typed PRNG key dtype."""
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def typed_key(key: Any, *, caller: str) -> jax.Array:
    """`key` as a typed key: a typed key as it is, a legacy uint32 key of shape ``(2,)``
    wrapped with `jax.random.wrap_key_data`.

    Anything else (an int seed, a key of another dtype or shape) raises a TypeError that
    names `caller`, the public function the key was given to.
    """
    if is_key(key):
        return key
    if hasattr(key, "dtype") and key.dtype == jnp.uint32 and tuple(key.shape) == (2,):
        return jax.random.wrap_key_data(jnp.asarray(key))
    got = (
        f"an array of dtype {key.dtype} and shape {tuple(key.shape)}"
        if hasattr(key, "dtype") and hasattr(key, "shape")
        else f"an object of type {type(key).__name__}"
    )
    raise TypeError(
        f"{caller}: key must be a jax.random.key(seed) typed key or a legacy uint32 "
        f"jax.random.PRNGKey(seed) of shape (2,), got {got}"
    )
