"""Argument checks that answer in one line: the owner, the argument, the value, what is allowed.

An owner is the public function the value was given to (``dense``, ``adam``, ``fit``). Sizes
(widths, heads, batch sizes, epochs) must be Python or NumPy integers; hyperparameters
(learning rates, momenta, epsilons) must be real numbers in their range, or, where a rate may
be a schedule, a function. A traced value (an ensemble's hyperparameter under `vmap`) cannot be
read and passes unchecked.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_int(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """`value` as an int once it is an integer (Python's or NumPy's, not a bool) of at least
    `minimum`.

    Anything else (a float, even a whole one, a string, a smaller integer) raises one
    ValueError line, ``"{owner}: {name} must be a positive int, got {value!r}"``.
    """
    allowed = {1: "a positive int", 0: "a non-negative int"}.get(minimum, f"an int >= {minimum}")
    message = f"{owner}: {name} must be {allowed}, got {value!r:.80}"
    if isinstance(value, bool | jax.core.Tracer):
        raise ValueError(message)
    try:
        number = operator.index(value)
    except TypeError:
        raise ValueError(message) from None
    if number < minimum:
        raise ValueError(message)
    return number


def _shown(value: Any) -> str:
    """`value` as an error message shows it: a scalar's repr, an array's shape and range."""
    if np.ndim(value) == 0 and not isinstance(value, np.ndarray | jax.Array):
        return repr(value)
    array = np.asarray(value)
    if array.ndim == 0:
        return repr(array.item())
    return f"an array of shape {array.shape} with values in [{array.min()}, {array.max()}]"


def _real_values(owner: str, name: str, value: Any, allowed: str) -> np.ndarray | None:
    """The values of a real number or array of them as float64, None when traced; anything
    else (a string, a bool, None, a complex number) raises."""
    if isinstance(value, jax.core.Tracer):
        return None
    refused = isinstance(value, str | bytes | bool | np.bool_) or value is None
    try:
        array = None if refused else np.asarray(value)
    except (TypeError, ValueError):
        array = None
    if array is None or array.dtype.kind not in "iuf" or array.size == 0:
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r:.80}")
    return array.astype(np.float64)


def check_rate(owner: str, value: Any, *, name: str = "learning_rate") -> None:
    """Refuses a learning rate that is not a finite positive number or a schedule (any
    callable, ``step -> rate``)."""
    if callable(value):
        return
    allowed = "a finite positive number or a schedule (a function step -> rate)"
    values = _real_values(owner, name, value, allowed)
    if values is not None and not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(f"{owner}: {name} must be {allowed}, got {_shown(value)}")


def check_decay(owner: str, name: str, value: Any, *, allow_one: bool = False) -> None:
    """Refuses a decay rate (a momentum, a beta) outside [0, 1), or [0, 1] with `allow_one`."""
    interval = "[0, 1]" if allow_one else "[0, 1)"
    allowed = f"a number in {interval}"
    values = _real_values(owner, name, value, allowed)
    if values is None:
        return
    inside = (values >= 0) & ((values <= 1) if allow_one else (values < 1))
    if not np.all(inside):
        bound = "at most 1" if allow_one else "below 1"
        raise ValueError(
            f"{owner}: {name} must lie in {interval} (non-negative, {bound}), got {_shown(value)}"
        )


def check_positive(owner: str, name: str, value: Any, *, allow_zero: bool = False) -> None:
    """Refuses a value that is not a finite number above 0 (at least 0 with `allow_zero`)."""
    allowed = f"a finite number {'>= 0' if allow_zero else '> 0'}"
    values = _real_values(owner, name, value, allowed)
    if values is None:
        return
    inside = (values >= 0) if allow_zero else (values > 0)
    if not (np.all(np.isfinite(values)) and np.all(inside)):
        raise ValueError(f"{owner}: {name} must be {allowed}, got {_shown(value)}")


def check_flag(owner: str, name: str, value: Any) -> bool:
    """`value` as a bool once it is one (Python's or NumPy's); anything else (a string such
    as ``"False"``, which is true, a number, None) raises one ValueError line."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ValueError(f"{owner}: {name} must be True or False, got {value!r:.80}")


def check_function(owner: str, name: str, value: Any, *, optional: bool = False) -> None:
    """Refuses a `value` that cannot be called (or, with `optional`, is neither None nor
    callable), in one TypeError line."""
    if callable(value) or (optional and value is None):
        return
    allowed = "a function" + (" or None" if optional else "")
    raise TypeError(f"{owner}: {name} must be {allowed}, got {type(value).__name__} {value!r:.40}")


def is_real(value: Any) -> bool:
    """Whether `value` is a real number to compare with bounds: Python's or NumPy's, not a
    bool (a string, None or a tuple would make the comparison itself raise)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def check_probability(owner: str, name: str, value: Any, *, of: str) -> None:
    """Refuses a probability (of `of`: dropping a unit, say) that is not a number in [0, 1):
    a Python or NumPy number, since the layers branch on it before tracing."""
    if not is_real(value) or not 0.0 <= value < 1.0:
        raise ValueError(
            f"{owner}: {name} is the probability of {of} and must lie in [0, 1), got {value!r:.40}"
        )


def check_finite(owner: str, name: str, value: Any) -> None:
    """Refuses a value that is not a finite real number or array of them (any sign)."""
    values = _real_values(owner, name, value, "a finite number")
    if values is not None and not np.all(np.isfinite(values)):
        raise ValueError(f"{owner}: {name} must be a finite number, got {_shown(value)}")


def check_float_dtype(owner: str, dtype: Any, *, name: str = "dtype") -> None:
    """Refuses a params or state `dtype` that is neither None (the default) nor a floating
    dtype (``jnp.float32``, ``"bfloat16"``, ...), before `init` would hand it to JAX."""
    if dtype is None:
        return
    try:
        floating = not isinstance(dtype, bool) and jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(
            f"{owner}: {name} must be a floating-point dtype (jnp.float32, 'bfloat16', ...) or "
            f"None, got {dtype!r:.40}"
        )


def check_float_tree(owner: str, name: str, tree: Any) -> None:
    """Refuses a pytree that holds no arrays, or a leaf that is not floating point (a string,
    a bool, an integer array), in one line naming the dtypes found."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{owner}: {name} has no arrays")
    bad = set()
    for leaf in leaves:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None:
            try:
                dtype = np.asarray(leaf).dtype
            except (TypeError, ValueError):
                dtype = None
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            bad.add(type(leaf).__name__ if dtype is None else str(dtype))
    if bad:
        raise TypeError(f"{owner}: {name} must hold float arrays, got dtypes {sorted(bad)}")
