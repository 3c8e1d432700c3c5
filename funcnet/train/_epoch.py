"""One epoch as one compiled function: shuffle, a `lax.scan` of training steps, evaluation.

The epoch draws its shuffle from the train state's key (``key, k = split(key)``;
``order = permutation(k, n)``), then scans the training step over ``B = ⌈n / b⌉`` batches of
one shape (see `funcnet.train.batch_plan`). Everything it needs is in the train state, so
the same state always continues the same way: a run resumed from a checkpoint repeats the
uninterrupted one.

A step whose loss or gradient norm is not finite is detected inside the scan. The scan
carries the index of the first such step; from it on no step is applied, so the state that
comes out is the last good one, and the caller raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from funcnet.nn.core import Layer
from funcnet.optim import GradientTransformation
from funcnet.train._batching import batch_plan, data_size, take
from funcnet.train._state import TrainState
from funcnet.train._step import LossFn, Metrics, eval_step, evaluate_batches, train_step

Array = jax.Array
PyTree = Any


class EpochOutput(NamedTuple):
    """What one compiled epoch returns.

    Attributes:
      state: the train state after the epoch, or the last good one if a step was non-finite.
      train: epoch means of the step metrics (``loss``, ``accuracy``, ..., ``grad_norm``) over
        the steps applied, weighted by their real rows; with skipping, ``skipped`` counts
        the steps skipped.
      eval: the metrics on the held-out data at the end of the epoch (``{}`` without it).
      bad_batch: int32, the batch index of the first non-finite step that was not skipped,
        −1 if there was none.
    """

    state: TrainState
    train: dict[str, Array]
    eval: dict[str, Array]
    bad_batch: Array


def select(mask: Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where `mask` holds, else ``old``, leaf by leaf.

    `mask` is a bool scalar, or a vector of shape ``(K,)`` matched against the leading
    member axis of every leaf.
    """
    mask = jnp.asarray(mask)

    def pick(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (jnp.ndim(a) - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree.map(pick, new, old)


def epoch_fn(
    model: Layer,
    loss_fn: LossFn,
    make_optimizer: Callable[..., GradientTransformation],
    *,
    batch_size: int,
    metrics: Metrics | None = None,
    skip_nonfinite: int | None = None,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> Callable[[TrainState, Mapping[str, Array], Any, Any], EpochOutput]:
    """The pure epoch ``run(state, hparams, train_data, eval_data) -> EpochOutput``.

    ``make_optimizer(**hparams)`` builds the optimizer inside the trace, so hyperparameters
    may be traced arrays (one per ensemble member under `vmap`). With `skip_nonfinite` set
    to ``m``, the optimizer built must be ``apply_if_finite(..., m)`` outermost: a skipped
    step leaves the model state as it was too, and only a non-finite step that it lets
    through (after ``m`` in a row) stops the epoch. With `batch_sharding` every minibatch is
    laid out that way (rows over a mesh's ``data`` axis, for data-parallel training).
    """

    def batch(train_data, idx, w):
        rows = take(train_data, idx, w)
        if batch_sharding is None:
            return rows
        return lax.with_sharding_constraint(rows, batch_sharding)

    def run(
        state: TrainState, hparams: Mapping[str, Array], train_data: Any, eval_data: Any
    ) -> EpochOutput:
        step = train_step(model, loss_fn, make_optimizer(**hparams), metrics=metrics)
        key, shuffle_key = jax.random.split(state.key)
        indices, weights = batch_plan(data_size(train_data), batch_size, shuffle_key)
        state = state._replace(key=key)

        def body(carry, plan):
            state, bad_batch, totals = carry
            i, idx, w = plan
            new, values = step(state, batch(train_data, idx, w))
            finite = jnp.isfinite(values["loss"]) & jnp.isfinite(values["grad_norm"])
            if skip_nonfinite is None:
                fatal = ~finite
            else:
                fatal = ~finite & (new.opt_state.notfinite_count > skip_nonfinite)
                new = new._replace(model_state=select(finite, new.model_state, state.model_state))
            ok = (bad_batch < 0) & ~fatal
            rows = jnp.where(ok & finite, jnp.sum(w), 0.0)
            totals = {
                "rows": totals["rows"] + rows,
                "skipped": totals["skipped"] + (ok & ~finite).astype(jnp.int32),
                **{
                    name: totals[name] + rows * jnp.where(ok & finite, v, 0.0)
                    for name, v in values.items()
                },
            }
            bad_batch = jnp.where((bad_batch < 0) & fatal, i, bad_batch)
            return (select(ok, new, state), bad_batch, totals), None

        shapes = jax.eval_shape(step, state, batch(train_data, indices[0], weights[0]))[1]
        totals = {
            "rows": jnp.zeros([]),
            "skipped": jnp.zeros([], jnp.int32),
            **{name: jnp.zeros(s.shape, s.dtype) for name, s in shapes.items()},
        }
        plan = (jnp.arange(indices.shape[0], dtype=jnp.int32), indices, weights)
        carry = (state, jnp.array(-1, jnp.int32), totals)
        (state, bad_batch, totals), _ = lax.scan(body, carry, plan)

        rows = totals.pop("rows")
        skipped = totals.pop("skipped")
        train = {name: t / jnp.where(rows > 0, rows, 1.0) for name, t in totals.items()}
        if skip_nonfinite is not None:
            train["skipped"] = skipped
        evaluated = {}
        if eval_data is not None:
            evaluate = eval_step(model, loss_fn, metrics=metrics)
            evaluated = evaluate_batches(
                evaluate, state.params, state.model_state, eval_data, batch_size
            )
        return EpochOutput(state, train, evaluated, bad_batch)

    return run
