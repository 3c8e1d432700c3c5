"""Dynamic loss scaling: float16 gradients that neither underflow nor stay infinite.

float16 flushes values below about 6e-8 to zero, and small gradients get there. Multiplying
the loss by a scale ``S`` multiplies every gradient by ``S`` and lifts them into range;
dividing the gradients by ``S`` (in float32) before the optimizer sees them undoes it. Too
large an ``S`` overflows to infinity instead, so the scale adapts, by the rule of jmp's
``DynamicLossScale`` (``jmp/_src/loss_scale.py``, google-deepmind/jmp)::

    finite step:      counter ← counter + 1;  when counter = period:
                      S ← S·factor (kept as S if that is infinite),  counter ← 0
    non-finite step:  S ← max(min_scale, S / factor),  counter ← 0

A step whose gradients are not finite is meant to be skipped by the caller, and the next
one runs with a smaller scale. One step reads::

    grads = jax.grad(lambda p: scale_loss(ls, loss_fn(p)))(params)
    grads = unscale_grads(ls, grads)
    finite = all_finite(grads)
    ls = adjust(ls, finite)            # apply the update only where `finite`

bfloat16 has float32's exponent range and needs no loss scale.
"""

from __future__ import annotations

import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = [
    "DynamicLossScale",
    "adjust",
    "all_finite",
    "dynamic_loss_scale",
    "scale_loss",
    "unscale_grads",
]

PyTree = Any


class DynamicLossScale(NamedTuple):
    """The state of a dynamic loss scale, every field a scalar array.

    `scale` (float32) is the current ``S``; `counter` (int32) the finite steps since ``S``
    last changed, in ``[0, period)``; `period` (int32), `factor` (float32) and `min_scale`
    (float32) are the rule's settings. The settings are arrays too, so the whole tuple is a
    pytree of arrays: it checkpoints with the train state, and under `vmap` each member of
    an ensemble can carry its own settings and scale. Build it with `dynamic_loss_scale`.
    """

    scale: jax.Array
    counter: jax.Array
    period: jax.Array
    factor: jax.Array
    min_scale: jax.Array


def _positive_finite(name: str, value: float, *, above: float = 0.0) -> float:
    """`value` as a float once it is finite and greater than `above`, else a ValueError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > above):
        raise ValueError(
            f"dynamic_loss_scale: {name} must be a finite number greater than {above:g}, "
            f"got {value!r}"
        )
    return number


def dynamic_loss_scale(
    initial: float = 2.0**15, period: int = 2000, factor: float = 2.0, min_scale: float = 1.0
) -> DynamicLossScale:
    """A `DynamicLossScale` starting at ``S = initial`` with the counter at 0.

    `period`: the finite steps in a row after which ``S`` grows by `factor` (an int >= 1);
    `factor`: the growth and shrink factor (> 1); `min_scale`: the floor ``S`` never drops
    below (> 0). The defaults are those of jmp's documented example (2^15, 2000 steps,
    factor 2); PyTorch's ``GradScaler`` starts at 2^16 with the same period and factor.
    """
    initial = _positive_finite("initial", initial)
    factor = _positive_finite("factor", factor, above=1.0)
    min_scale = _positive_finite("min_scale", min_scale)
    try:
        steps = operator.index(period)
    except TypeError:
        steps = 0
    if isinstance(period, bool) or steps < 1:
        raise ValueError(f"dynamic_loss_scale: period must be an int >= 1, got {period!r}")
    return DynamicLossScale(
        scale=jnp.asarray(initial, jnp.float32),
        counter=jnp.zeros([], jnp.int32),
        period=jnp.asarray(steps, jnp.int32),
        factor=jnp.asarray(factor, jnp.float32),
        min_scale=jnp.asarray(min_scale, jnp.float32),
    )


def scale_loss(ls: DynamicLossScale, loss: jax.Array) -> jax.Array:
    """``S · loss``, in the loss's dtype promoted to at least float32 (a float16 loss times
    2^15 would overflow in float16)."""
    loss = jnp.asarray(loss)
    wide = jnp.promote_types(loss.dtype, jnp.float32)
    return loss.astype(wide) * ls.scale.astype(wide)


def unscale_grads(ls: DynamicLossScale, grads: PyTree) -> PyTree:
    """``g / S`` for every floating leaf of `grads`, divided in float32 (float64 stays
    float64) and returned in the leaf's own dtype; other leaves as they are."""

    def unscale(g: Any) -> Any:
        g = jnp.asarray(g)
        if not jnp.issubdtype(g.dtype, jnp.floating):
            return g
        wide = jnp.promote_types(g.dtype, jnp.float32)
        return (g.astype(wide) / ls.scale.astype(wide)).astype(g.dtype)

    return jax.tree.map(unscale, grads)


def all_finite(tree: PyTree) -> jax.Array:
    """A bool scalar array: whether every leaf of `tree` is free of NaN and ±∞ (True for a
    tree without leaves)."""
    finite = jnp.array(True)
    for leaf in jax.tree.leaves(tree):
        finite = finite & jnp.all(jnp.isfinite(leaf))
    return finite


def adjust(ls: DynamicLossScale, grads_finite: jax.Array) -> DynamicLossScale:
    """The loss scale after a step whose gradients were finite or not (`grads_finite`, a
    bool scalar), by the rule in the module docstring."""
    grads_finite = jnp.asarray(grads_finite, bool)
    due = ls.counter + 1 >= ls.period
    grown = ls.scale * ls.factor
    grown = jnp.where(jnp.isfinite(grown), grown, ls.scale)
    on_finite = jnp.where(due, grown, ls.scale)
    on_overflow = jnp.maximum(ls.min_scale, ls.scale / ls.factor)
    counter = jnp.where(grads_finite & ~due, ls.counter + 1, 0)
    return ls._replace(
        scale=jnp.where(grads_finite, on_finite, on_overflow).astype(ls.scale.dtype),
        counter=counter.astype(ls.counter.dtype),
    )
