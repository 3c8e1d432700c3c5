"""Gradient accumulation: an optimizer that steps once every k calls, on the mean gradient.

`multi_steps` is optax's ``MultiSteps(opt, every_k_schedule).gradient_transformation()``
(``optax/transforms/_accumulation.py``), with the same state, so a batch too large for one
device is split into k micro-batches whose gradients are averaged before the optimizer sees
them.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import DTypeLike

from funcnet.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    PyTree,
    Updates,
    accepts_extra_args,
    check_fits,
    check_transformation,
    increment,
)

__all__ = ["MultiStepsState", "multi_steps"]


class MultiStepsState(NamedTuple):
    """`mini_step`: int32, the calls since the inner optimizer last stepped, in ``[0, k)``;
    `gradient_step`: int32, the inner optimizer's steps so far; `inner_opt_state`: its state;
    `acc_grads`: the running mean (or sum) of the gradients of this cycle, one array per
    param; `skip_state`: ``()``, kept for the layout of optax's state."""

    mini_step: jax.Array
    gradient_step: jax.Array
    inner_opt_state: OptState
    acc_grads: Updates
    skip_state: PyTree = ()


def _every_k(every_k_schedule: int | Callable[[jax.Array], Any]) -> Callable[[jax.Array], Any]:
    """`every_k_schedule` as a function of the gradient step, once an int is checked."""
    if callable(every_k_schedule):
        return every_k_schedule
    try:
        k = operator.index(every_k_schedule)
    except TypeError:
        k = None
    if k is None or isinstance(every_k_schedule, bool) or k < 1:
        raise ValueError(
            "multi_steps: every_k_schedule must be an int >= 1 or a function of the gradient "
            f"step returning one, got {every_k_schedule!r}"
        )
    return lambda step: k


def _checked_k(k: Any) -> jax.Array:
    """The k a schedule returned, as int32; a non-integer, or a concrete k < 1, is refused."""
    if not jnp.issubdtype(jnp.result_type(k), jnp.integer):
        raise ValueError(
            f"multi_steps: every_k_schedule must return an integer, got {k!r} of dtype "
            f"{jnp.result_type(k)}"
        )
    if not isinstance(k, jax.core.Tracer) and int(k) < 1:
        raise ValueError(f"multi_steps: every_k_schedule returned {int(k)}; k must be >= 1")
    return jnp.asarray(k, jnp.int32)


def multi_steps(
    optimizer: GradientTransformation,
    every_k_schedule: int | Callable[[jax.Array], Any],
    *,
    use_grad_mean: bool = True,
    accumulator_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Accumulates k gradients and steps `optimizer` once on their mean.

    With `n` the mini step (`MultiStepsState.mini_step`) and ``k = every_k_schedule(s)`` at
    gradient step `s`, each call with gradient ``g`` does::

        a ← a + (g − a)/(n + 1)       (the running mean; a ← a + g with use_grad_mean=False)
        n = k − 1:  u, inner ← optimizer.update(a, inner, params),  a ← 0,  n ← 0,  s ← s + 1
        otherwise:  u ← 0,  n ← n + 1

    so k calls with ``g_1 … g_k`` give, on the k-th, the update of one call with
    ``(g_1 + … + g_k)/k``, and zero updates before it. The inner optimizer runs only on the
    k-th call (a `lax.cond`; under a `vmap` whose members are at different mini steps it runs
    on every call, its result kept on each member's k-th). These are the semantics of optax's
    ``MultiSteps``, whose state `MultiStepsState` this shares.

    Args:
      optimizer: the inner transformation.
      every_k_schedule: k, an int >= 1, or a function of the gradient step `s` (an int32
        scalar) returning an integer k >= 1, so the accumulation can grow during training.
      use_grad_mean: average the k gradients (True, the default) or sum them.
      accumulator_dtype: the dtype of `acc_grads`; None (the default) keeps each param's
        dtype, widened to float32 for half-precision params. (optax's default is float32
        always; here float64 params accumulate in float64.)

    When `optimizer` takes extra args (`accepts_extra_args`), so does the result and it passes
    them to the inner update; the inner optimizer then sees the extra args of the k-th call,
    those of its last micro-batch.
    """
    check_transformation("multi_steps", "optimizer", optimizer)
    every_k = _every_k(every_k_schedule)
    takes_extra = accepts_extra_args(optimizer)

    def accumulator(x: jax.Array) -> jax.Array:
        dtype = accumulator_dtype
        if dtype is None:
            dtype = jnp.promote_types(jnp.result_type(x), jnp.float32)
        return jnp.zeros(jnp.shape(x), dtype)

    def init_fn(params: Params) -> MultiStepsState:
        return MultiStepsState(
            mini_step=jnp.zeros([], jnp.int32),
            gradient_step=jnp.zeros([], jnp.int32),
            inner_opt_state=optimizer.init(params),
            acc_grads=jax.tree.map(accumulator, params),
        )

    def update_fn(
        updates: Updates, state: MultiStepsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MultiStepsState]:
        k = _checked_k(every_k(state.gradient_step))
        check_fits(updates, state.acc_grads)
        n = state.mini_step

        def add(g: jax.Array, a: jax.Array) -> jax.Array:
            g = g.astype(a.dtype)
            return (a + (g - a) / (n + 1)).astype(a.dtype) if use_grad_mean else a + g

        acc_grads = jax.tree.map(add, updates, state.acc_grads)
        emit = n == k - 1

        def step(operands):
            acc_grads, inner_state, params = operands
            grads = jax.tree.map(lambda a, g: a.astype(g.dtype), acc_grads, updates)
            if takes_extra:
                out, new_state = optimizer.update(grads, inner_state, params, **extra_args)
            else:
                out, new_state = optimizer.update(grads, inner_state, params)
            # The state keeps its dtypes, as both branches of the cond must.
            return out, jax.tree.map(lambda n, o: n.astype(o.dtype), new_state, inner_state)

        operands = (acc_grads, state.inner_opt_state, params)
        out_types = jax.eval_shape(step, operands)[0]

        def wait(operands):
            zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), out_types)
            return zeros, operands[1]

        new_updates, inner_state = lax.cond(emit, step, wait, operands)
        return new_updates, MultiStepsState(
            mini_step=(increment(n) % k).astype(jnp.int32),
            gradient_step=jnp.where(emit, increment(state.gradient_step), state.gradient_step),
            inner_opt_state=inner_state,
            acc_grads=jax.tree.map(lambda a: jnp.where(emit, jnp.zeros_like(a), a), acc_grads),
            skip_state=state.skip_state,
        )

    if takes_extra:
        return GradientTransformationExtraArgs(init_fn, update_fn)
    return GradientTransformation(init_fn, update_fn)
