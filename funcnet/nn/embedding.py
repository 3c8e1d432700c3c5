"""Embedding: a trainable lookup table from integer ids to vectors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.nn import initializers
from funcnet.nn.core import Layer, LayerError

__all__ = ["embedding"]


def embedding(
    num_embeddings: int,
    features: int,
    *,
    table_init: str | initializers.Initializer | None = None,
    dtype=None,
) -> Layer:
    """Looks up rows of a table: ``y[..., :] = table[ids[...], :]``.

    Equivalent to ``one_hot(ids) @ table`` (its gradient adds into the rows that were used),
    without forming the one-hot array. Input: integer ids of any shape with values in
    ``[0, num_embeddings)``; output ``(*ids.shape, features)``. Params: ``table`` of shape
    ``(num_embeddings, features)``, drawn by `table_init` (``N(0, 1)`` when None, as in PyTorch).
    Out-of-range ids are refused when the ids are concrete (outside `jit`); inside `jit` they
    are clamped to the table.
    """
    if num_embeddings < 1 or features < 1:
        raise ValueError(
            f"embedding: num_embeddings and features must be positive, got "
            f"{num_embeddings} and {features}"
        )
    table_init = initializers.normal(1.0) if table_init is None else initializers.get(table_init)

    def init(key, in_shape):
        table = table_init(key, (num_embeddings, features), dtype)
        return (*tuple(in_shape), features), {"table": table}, {}

    def apply(params, state, ids, *, key=None, train=False):
        del key, train
        table = params["table"]
        if not jnp.issubdtype(jnp.result_type(ids), jnp.integer):
            raise LayerError(
                "embedding",
                f"expected integer ids, got dtype {jnp.result_type(ids)}; "
                f"convert them with ids.astype(jnp.int32)",
            )
        if not isinstance(ids, jax.core.Tracer):
            values = np.asarray(ids)
            if values.size and (values.min() < 0 or values.max() >= table.shape[0]):
                raise LayerError(
                    "embedding",
                    f"ids must lie in [0, {table.shape[0]}), got values in "
                    f"[{values.min()}, {values.max()}]",
                )
        return jnp.take(table, ids, axis=0, mode="clip"), state

    return Layer(init, apply, kind="embedding")
