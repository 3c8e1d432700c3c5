"""Fixed-shape minibatches: every batch, the ragged last one included, has one shape.

An epoch over ``n`` examples in batches of ``b`` runs ``B = ⌈n / b⌉`` steps. The data set is
put in the epoch's order once (one gather), and the ``⌊n / b⌋`` full batches are contiguous
slices of it. A ragged last batch is filled up to ``b`` rows with examples from the start of
the order, and those filler rows get weight 0, so the weighted mean over it counts only its
real rows. Filling with real examples (rather than zeros) keeps batch statistics, such as
batch norm's, on the data's own scale.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet._checks import check_int
from funcnet._keys import typed_key
from funcnet._trees import leading_size, path_name

__all__ = [
    "EpochBatches",
    "batch_plan",
    "epoch_batches",
    "shuffle",
    "steps_per_epoch",
]

Array = jax.Array
PyTree = Any


def num_batches(n: int, batch_size: int, *, owner: str = "num_batches") -> int:
    """``⌈n / batch_size⌉``, the number of steps in an epoch over `n` examples.

    `steps_per_epoch` counts them from the data set; this count from `n` is for callers
    that know only the number of rows (`batch_plan`, or a process holding a share).
    `owner`: the public function a bad `batch_size` is reported for.
    """
    batch_size = check_int(owner, "batch_size", batch_size)
    if n < 1:
        raise ValueError("the data set is empty")
    return -(-n // batch_size)


def steps_per_epoch(data: tuple[PyTree, Array], batch_size: int) -> int:
    """The number of optimizer steps `fit` takes per epoch over ``data = (x, y)``:
    ``⌈n / batch_size⌉`` for `n` examples, the last batch ragged when `batch_size` does
    not divide `n`."""
    return num_batches(data_size(data), batch_size, owner="steps_per_epoch")


def shuffle(key: Array, n: int) -> Array:
    """A uniformly random order of ``0 … n−1`` (int32, shape ``(n,)``).

    The rows are sorted by 64 random bits each, drawn from `key` as two uint32 sort keys: one
    stable sort, where `jax.random.permutation` sorts once per round of 32 bits. Two rows tie
    with probability below ``n² / 2⁶⁵``, and then keep their order.
    """
    key = typed_key(key, caller="shuffle")
    n = check_int("shuffle", "n", n, minimum=0)
    high, low = jax.random.bits(key, (2, n), jnp.uint32)
    return lax.sort((high, low, jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]


def batch_plan(n: int, batch_size: int, key: Array | None = None) -> tuple[Array, Array]:
    """Row indices and weights of the batches of one epoch.

    With a `key` the order is ``shuffle(key, n)``; without, ``0 … n−1``. Returns ``indices``
    (int32) and ``weights`` (float32, 1 for real rows, 0 for the filler rows of the last
    batch), both of shape ``(B, batch_size)``.
    """
    steps = num_batches(n, batch_size, owner="batch_plan")
    order = jnp.arange(n) if key is None else shuffle(key, n)
    slots = jnp.arange(steps * batch_size)
    indices = order[slots % n].astype(jnp.int32)
    weights = (slots < n).astype(jnp.float32)
    return indices.reshape(steps, batch_size), weights.reshape(steps, batch_size)


def data_size(data: tuple[PyTree, Array]) -> int:
    """The number of examples in ``(x, y)``; every leaf of `x` and `y` must agree on it."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(
            f"data must be a pair (x, y) of inputs and labels, got {type(data).__name__}"
            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else "")
        )
    return leading_size(data, what="x and y")


class EpochBatches(NamedTuple):
    """The batches of one epoch in their order.

    Attributes:
      full: ``(x, y)`` whose leaves stack the ``⌊n / b⌋`` full batches, shape
        ``(⌊n / b⌋, b, ...)``; None when ``n < b``.
      ragged: the last batch ``(x, y, w)`` when ``b`` does not divide ``n``, its filler
        rows weighted 0; None otherwise.
    """

    full: tuple[Any, Array] | None
    ragged: tuple[Any, Array, Array] | None


def epoch_batches(data: tuple[PyTree, Array], batch_size: int, order: Array) -> EpochBatches:
    """The batches of `batch_plan` for the row order `order`, with one gather of the data.

    The data set is gathered into `order` once; the full batches are then contiguous slices
    of it (no gather per step), and only a ragged last batch carries weights.
    """
    n = data_size(data)
    count, ragged = divmod(n, batch_size)
    full = None
    if count:
        rows = order[: count * batch_size]
        full = jax.tree.map(
            lambda leaf: jnp.take(leaf, rows, axis=0).reshape(
                count, batch_size, *jnp.shape(leaf)[1:]
            ),
            tuple(data),
        )
    last = None
    if ragged:
        slots = jnp.arange(count * batch_size, (count + 1) * batch_size)
        last = take(data, order[slots % n], (slots < n).astype(jnp.float32))
    return EpochBatches(full, last)


def take(data: tuple[PyTree, Array], indices: Array, weights: Array) -> tuple[Any, Array, Array]:
    """The batch ``(x[indices], y[indices], weights)`` of a data set ``(x, y)``."""
    x, y = jax.tree.map(lambda leaf: jnp.take(leaf, indices, axis=0), tuple(data))
    return x, y, weights


def check_finite(data: tuple[PyTree, Array], name: str) -> None:
    """Refuses a data set ``(x, y)`` holding NaN or ±inf in a floating-point leaf, naming the
    leaf and the first offending rows: such values would only surface later as a non-finite
    loss, far from their cause."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(tuple(data))
    for path, leaf in pairs:
        if isinstance(leaf, jax.core.Tracer) or not jnp.issubdtype(
            jnp.result_type(leaf), jnp.inexact
        ):
            continue
        finite = jnp.isfinite(leaf)
        if bool(jnp.all(finite)):
            continue
        bad = ~np.atleast_1d(np.asarray(finite))
        rows = np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))
        where = ("x", "y")[path[0].idx] + (f"/{path_name(path[1:])}" if path[1:] else "")
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise ValueError(
            f"{name} {where} of shape {tuple(jnp.shape(leaf))} holds NaN or inf in "
            f"{len(rows)} row(s): {shown}; remove or impute them before training"
        )


_NUMBER_KINDS = "biufc"  # bool, integers, floats and complex numbers: what a data set may hold


def _python_numbers(part: Any) -> bool:
    """Whether `part` is a non-empty (nested) list or tuple whose leaves are Python numbers."""
    if not isinstance(part, (list, tuple)) or not part:
        return False
    leaves = jax.tree.leaves(part)
    return bool(leaves) and all(isinstance(leaf, int | float) for leaf in leaves)


def _as_arrays(where: str, what: str, part: Any) -> Any:
    """`part` (the x, y or weights of a data set) with every leaf an array of numbers."""
    if _python_numbers(part):
        try:
            array = np.asarray(part)
        except ValueError:
            array = None
        if array is None or array.dtype.kind not in _NUMBER_KINDS:
            raise ValueError(
                f"{where}: {what} is a ragged nested {type(part).__name__} of numbers (its rows "
                "differ in length); pass an array with one length per axis"
            )
        return array
    pairs, treedef = jax.tree_util.tree_flatten_with_path(part)
    leaves = []
    for path, leaf in pairs:
        where_leaf = what + (f"/{path_name(path)}" if path else "")
        if not isinstance(leaf, jax.Array | np.ndarray | jax.core.Tracer):
            if not hasattr(leaf, "__array__") or isinstance(leaf, str | bytes):
                raise TypeError(
                    f"{where}: {where_leaf} is a {type(leaf).__name__} ({leaf!r:.40}), not an "
                    "array; data sets are (x, y) of arrays with one row per example"
                )
            leaf = np.asarray(leaf)
        dtype = jnp.dtype(leaf.dtype)
        if dtype.kind not in _NUMBER_KINDS and dtype.kind != "V":  # "V": bfloat16 and kin
            hint = (
                "; encode classes as integer ids, e.g. np.unique(y, return_inverse=True)[1]"
                if what.endswith(" y") and dtype.kind in "USO"
                else ""
            )
            raise TypeError(
                f"{where}: {where_leaf} has dtype {dtype} (shape {tuple(leaf.shape)}); data "
                f"must be numbers (bool, int, float or complex){hint}"
            )
        leaves.append(leaf)
    return jax.tree.unflatten(treedef, leaves)


def check_data(where: str, name: str, data: Any, *, weights: bool = False) -> tuple:
    """`data`, ``(x, y)`` (or ``(x, y, w)`` with `weights`), as a tuple of array trees.

    A nested list or tuple of Python numbers in the place of x, y or w becomes one NumPy
    array; any other leaf must be an array of numbers (NumPy, JAX, or anything `np.asarray`
    takes). Anything else, a string array, a ragged list or an object, is refused in one line
    that names `where` (the public function), `name` (``"train_data"``) and the part.
    """
    sizes = (2, 3) if weights else (2,)
    if not isinstance(data, (tuple, list)) or len(data) not in sizes:
        form = "(x, y) or (x, y, weights)" if weights else "a pair (x, y) of inputs and labels"
        got = type(data).__name__ + (
            f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        )
        raise ValueError(f"{where}: {name} must be {form}, got {got}")
    parts = ("x", "y", "weights")
    return tuple(
        _as_arrays(where, f"{name} {part}", d)
        for part, d in zip(parts[: len(data)], data, strict=True)
    )
