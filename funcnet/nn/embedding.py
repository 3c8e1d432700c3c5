"""Embedding: a trainable lookup table from integer ids to vectors."""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import check_float_dtype, check_int
from funcnet.nn import initializers
from funcnet.nn.core import Layer, LayerError, check_params, check_shape

__all__ = ["embedding"]


def embedding(
    num_embeddings: int,
    features: int,
    *,
    padding_idx: int | None = None,
    table_init: str | initializers.Initializer | None = None,
    dtype=None,
) -> Layer:
    """Looks up rows of a table: ``y[..., :] = table[ids[...], :]``.

    Equivalent to ``one_hot(ids) @ table`` (its gradient adds into the rows that were used),
    without forming the one-hot array. Input: integer ids of any shape with values in
    ``[0, num_embeddings)``; output ``(*ids.shape, features)``. Params: ``table`` of shape
    ``(num_embeddings, features)``, drawn by `table_init` (``N(0, 1)`` when None, as in PyTorch).

    `padding_idx` marks one id as padding, as in `torch.nn.Embedding`: its row starts at zero
    and the lookup never sends it a gradient, so training leaves it where it is; its output is
    that row. A negative `padding_idx` counts from the end (``−1`` is the last row).

    Out-of-range ids (negative ones included: they are never wrapped around) are refused with
    a `LayerError` when the ids are concrete (outside `jit`). Inside `jit`, `vmap` or a
    `lax.scan` the values are unknown, so each such id gets a row of NaNs instead: the loss
    turns non-finite, and `funcnet.train.fit` stops with `NonFiniteLossError` rather than train
    on a wrong row. Those NaN rows send no gradient into the table.
    """
    num_embeddings = check_int("embedding", "num_embeddings", num_embeddings)
    features = check_int("embedding", "features", features)
    if padding_idx is not None:
        try:
            inside = -num_embeddings <= operator.index(padding_idx) < num_embeddings
        except TypeError:
            inside = False
        if not inside or isinstance(padding_idx, bool):
            raise ValueError(
                f"embedding: padding_idx must lie in [-{num_embeddings}, {num_embeddings}), "
                f"got {padding_idx!r}"
            )
        padding_idx = operator.index(padding_idx) % num_embeddings
    if table_init is None:
        table_init = initializers.normal(1.0)
    (table_init,) = initializers.named("embedding", table_init=table_init)
    check_float_dtype("embedding", dtype)

    def init(key, in_shape):
        in_shape = check_shape("embedding", in_shape, "integer ids of any shape")
        table = table_init(key, (num_embeddings, features), dtype)
        if padding_idx is not None:
            table = table.at[padding_idx].set(0)
        return (*in_shape, features), {"table": table}, {}

    def apply(params, state, ids, *, key=None, train=False):
        del key, train
        check_params("embedding", params, "table")
        table = params["table"]
        if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
            raise LayerError(
                "embedding",
                f"expected integer ids, got dtype {jnp.result_type(ids)}; "
                f"convert them with ids.astype(jnp.int32)",
            )
        check_shape("embedding", jnp.shape(ids), "integer ids of any shape")
        size = table.shape[0]
        if not isinstance(ids, jax.core.Tracer):
            values = np.asarray(ids)
            if values.size and (values.min() < 0 or values.max() >= size):
                raise LayerError(
                    "embedding",
                    f"ids must lie in [0, {size}), got values in [{values.min()}, {values.max()}]",
                )
        ids = jnp.asarray(ids)
        # An explicit mask rather than jnp.take(mode="fill"), which wraps negative ids around.
        # Bounds beyond the ids' dtype are left out: they would wrap around in the comparison.
        largest = jnp.iinfo(ids.dtype).max
        inside = ids >= 0
        if size <= largest:
            inside = inside & (ids < size)
        rows = jnp.take(table, jnp.where(inside, ids, 0), axis=0, mode="clip")
        if padding_idx is not None and padding_idx <= largest:
            rows = jnp.where((ids == padding_idx)[..., None], jax.lax.stop_gradient(rows), rows)
        return jnp.where(inside[..., None], rows, jnp.nan), state

    return Layer(init, apply, kind="embedding")
