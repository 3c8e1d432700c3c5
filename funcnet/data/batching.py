"""Minibatch iteration over arrays that share a leading axis."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import numpy as np

from funcnet._checks import check_int
from funcnet._keys import typed_key
from funcnet._trees import leading_size

Array = jax.Array


def minibatches(
    arrays: Sequence[Array],
    batch_size: int,
    *,
    key: Array | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Array, ...]]:
    """Yields tuples of aligned slices of `arrays`, `batch_size` rows at a time.

    With a `key` the rows are shuffled (one permutation shared by all arrays); without, they
    come in order. The last batch is smaller unless ``drop_last=True``.
    """
    arrays = tuple(arrays)
    n = leading_size(arrays, what="minibatches: the arrays")
    batch_size = check_int("minibatches", "batch_size", batch_size)
    if key is not None:
        key = typed_key(key, caller="minibatches")
    order = np.asarray(jax.random.permutation(key, n)) if key is not None else np.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start : start + batch_size]
        yield tuple(a[idx] for a in arrays)
