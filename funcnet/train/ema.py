"""A moving average of the parameters (Polyak averaging), kept in the train state.

After every applied update the average moves toward the new params::

    θ̄ ← d_t · θ̄ + (1 − d_t) · θ

The first update copies the params (``d_1 = 0``, as Keras' ``use_ema`` and timm's
``ModelEmaV3`` do), so the average never carries the initialisation. Later updates use the
decay `d`, or with warm-up (timm's ``use_warmup`` with ``γ = 1``, power 2/3)

    d_t = min(d, 1 − t^(−2/3)),    t = 2, 3, …  the number of updates so far,

which averages over roughly the last 3t/2 params early in training (``d_2 ≈ 0.37``,
``d_100 ≈ 0.95``) and reaches ``d = 0.999`` near ``t = 32,000``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet._checks import check_flag

__all__ = ["ParamsEma", "ema_decay", "params_ema", "update_ema"]

Array = jax.Array
PyTree = Any

_WARMUP_POWER = 2.0 / 3.0


class ParamsEma(NamedTuple):
    """The moving average of the params, a field of `funcnet.train.TrainState`.

    Attributes:
      params: the average, a tree like the params (floating leaves in the params' dtype).
      count: int32 scalar, the number of updates averaged so far.
      decay: float scalar (float32, float64 under ``jax_enable_x64``), the decay `d`.
      warmup: bool scalar, whether `d_t` warms up to `d` (module doc).

    Every field is an array, so the average is checkpointed, resumed and vmapped with the
    rest of the train state.
    """

    params: PyTree
    count: Array
    decay: Array
    warmup: Array


def check_decay(decay: Any) -> float:
    """`decay` as a float once checked to lie in [0, 1); one ValueError line otherwise."""
    if isinstance(decay, bool) or not isinstance(decay, int | float):
        raise ValueError(f"ema: the decay must be a number in [0, 1), got {decay!r}")
    if not (math.isfinite(decay) and 0.0 <= decay < 1.0):
        raise ValueError(f"ema: the decay must lie in [0, 1), got {decay}")
    return float(decay)


def params_ema(params: PyTree, decay: float, *, warmup: bool = True) -> ParamsEma:
    """A moving average that starts at `params`, with no update counted yet.

    Args:
      params: the params to average (copied).
      decay: `d` in [0, 1), e.g. 0.999; 0 makes the average the params themselves.
      warmup: let the decay warm up to `d` (module doc).
    """
    return ParamsEma(
        params=jax.tree.map(jnp.copy, params),
        count=jnp.zeros([], jnp.int32),
        decay=jnp.asarray(check_decay(decay), jnp.result_type(float)),
        warmup=jnp.asarray(check_flag("params_ema", "warmup", warmup)),
    )


def ema_decay(ema: ParamsEma) -> Array:
    """The decay ``d_t`` of the next update, ``t = count + 1`` (module doc), in the dtype of
    ``ema.decay``."""
    dtype = ema.decay.dtype
    t = (ema.count + 1).astype(dtype)
    warm = 1 - t ** jnp.asarray(-_WARMUP_POWER, dtype)
    decay = jnp.where(ema.warmup, jnp.minimum(ema.decay, warm), ema.decay)
    return jnp.where(ema.count == 0, jnp.zeros([], dtype), decay)


def update_ema(ema: ParamsEma, params: PyTree) -> ParamsEma:
    """The average after one more update of the params to `params`:
    ``θ̄ ← d_t θ̄ + (1 − d_t) θ``, computed in float32 at least and stored in θ̄'s dtype."""
    d = ema_decay(ema)

    def move(average: Array, new: Array) -> Array:
        if not jnp.issubdtype(average.dtype, jnp.floating):
            return new
        wide = jnp.promote_types(average.dtype, d.dtype)
        dw = d.astype(wide)
        mixed = dw * average.astype(wide) + (1 - dw) * new.astype(wide)
        return mixed.astype(average.dtype)

    return ema._replace(
        params=jax.tree.map(move, ema.params, params), count=(ema.count + 1).astype(jnp.int32)
    )
