"""One epoch as one compiled function: shuffle, a `lax.scan` of training steps, evaluation.

The epoch draws its shuffle from the train state (``order = shuffle(shuffle_key(state), n)``),
puts the data set in that order with one gather, and scans the training step over the
``⌊n / b⌋`` full batches, contiguous slices of the ordered data; a ragged last batch follows
as one weighted step (see `funcnet.train.epoch_batches`). Everything it needs is in the train
state, so the same state always continues the same way: a run resumed from a checkpoint
repeats the uninterrupted one.

Non-finite steps cost nothing per step until they happen. The plain epoch only records
whether any loss was non-finite, and whether the params it ends with are; if so it reports
``bad_batch = UNCHECKED`` and the caller runs the same epoch again from the same state with
``checked=True``. The checked epoch tests each step's loss, gradient norm and updated params,
applies no step from the first non-finite one on, and reports that step's batch index, so the
state that comes out is the last good one, finite by construction. A non-finite gradient or
update always shows in the plain epoch too: it makes the params it updates non-finite, and
with them every later loss.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh

from funcnet._checks import check_function
from funcnet.nn.core import Layer
from funcnet.optim import GradientTransformation
from funcnet.train.batching import data_size, epoch_batches, shuffle
from funcnet.train.loss_scale import all_finite
from funcnet.train.partition import Rules, constrain
from funcnet.train.sharding import batch_sharding, stacked_batch_sharding
from funcnet.train.state import TrainState, shuffle_key
from funcnet.train.step import (
    LossFn,
    Metrics,
    check_metrics,
    eval_step,
    evaluate_batches,
    train_step,
)

__all__ = [
    "UNCHECKED",
    "EpochOutput",
    "EpochParts",
    "epoch_fn",
    "epoch_parts",
    "select",
]

Array = jax.Array
PyTree = Any

UNCHECKED = -2
"""`EpochOutput.bad_batch` of a plain epoch that met a non-finite value: run it checked."""


class EpochOutput(NamedTuple):
    """What one compiled epoch returns.

    Attributes:
      state: the train state after the epoch; in a checked epoch that met a non-finite step,
        the state before that step.
      train: epoch means of the step metrics (``loss``, ``accuracy``, ...) over the steps
        applied, weighted by their real rows; with skipping, ``skipped`` counts the steps
        skipped.
      eval: the metrics on the held-out data at the end of the epoch (``{}`` without it).
      bad_batch: int32, −1 if every step was finite (or skipped); in a checked epoch the
        batch index of the first non-finite step that was not skipped; in a plain epoch
        `UNCHECKED` if some value was not finite, and the epoch's results are not to be used.
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


class EpochParts(NamedTuple):
    """An epoch cut at its steps, for running the steps from the host one by one.

    Attributes:
      start: ``start(state, hparams, train_data) -> (carry, full, ragged)``: the shuffled
        batches, ``full`` stacked ``(steps, batch, ...)`` (None when there is no full batch)
        and the ragged last one (or None), and the carry ``(state, bad_batch)`` the steps
        thread.
      body: ``body(carry, index, batch, hparams) -> (carry, record)``: the step on `batch`,
        the epoch's batch number `index`.
      finish: ``finish(carry, records, ragged_record, eval_data) -> EpochOutput``: the
        records of the full batches stacked on a leading axis (or None), the ragged one's.

    ``run`` of `epoch_fn` is ``start``, a `lax.scan` of ``body`` over the full batches, the
    ragged step and ``finish``: the same functions, so both ways compute the same steps.
    """

    start: Callable[..., Any]
    body: Callable[..., Any]
    finish: Callable[..., EpochOutput]


def epoch_parts(
    model: Layer,
    make_optimizer: Callable[..., GradientTransformation],
    *,
    loss_fn: LossFn,
    batch_size: int,
    metrics: Metrics | None = None,
    grad_norm: bool = False,
    skip_nonfinite: int | None = None,
    checked: bool = False,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    accumulate: int = 1,
    eval_ema: bool = True,
) -> EpochParts:
    """The pure pieces of the epoch `epoch_fn` runs (see `EpochParts`); the arguments are
    `epoch_fn`'s."""
    check_function("epoch_fn", "loss_fn", loss_fn)
    check_metrics("epoch_fn", metrics)
    track_norm = grad_norm or (checked and skip_nonfinite is None)

    def layout(batches):
        if mesh is None:
            return batches
        full, ragged = batches
        if full is not None:
            full = lax.with_sharding_constraint(full, stacked_batch_sharding(mesh))
        if ragged is not None:
            ragged = lax.with_sharding_constraint(ragged, batch_sharding(mesh))
        return batches._replace(full=full, ragged=ragged)

    def keep_layout(state: TrainState) -> TrainState:
        return state if rules is None else constrain(state, mesh, rules)

    def start(state: TrainState, hparams: Mapping[str, Array], train_data: Any):
        del hparams
        state = keep_layout(state)
        n = data_size(train_data)
        batches = layout(epoch_batches(train_data, batch_size, shuffle(shuffle_key(state), n)))
        return (state, jnp.array(-1, jnp.int32)), batches.full, batches.ragged

    def body(carry, index, batch, hparams):
        state, bad_batch = carry
        step = train_step(
            model,
            make_optimizer(**hparams),
            loss_fn=loss_fn,
            metrics=metrics,
            grad_norm=track_norm,
            skip_nonfinite=skip_nonfinite,
            accumulate=accumulate,
        )
        flagged = skip_nonfinite is not None or state.loss_scale is not None
        new, values = step(state, batch)
        new = keep_layout(new)
        if flagged:
            finite, fatal = values.pop("finite"), values.pop("fatal")
        else:
            finite = jnp.isfinite(values["loss"])
            if checked:
                finite &= jnp.isfinite(values["grad_norm"])
            fatal = ~finite
        if checked:
            # A finite loss and gradient can still give non-finite params (a rate of inf, an
            # ε that underflows to 0 in float16): stop at that step too, so the state kept
            # is finite.
            kept = all_finite(new.params)
            finite &= kept
            fatal |= ~kept
            ok = (bad_batch < 0) & ~fatal
            new = select(ok, new, state)
            bad_batch = jnp.where((bad_batch < 0) & fatal, index, bad_batch)
        else:
            ok = jnp.array(True)
            bad_batch = jnp.where(fatal, UNCHECKED, bad_batch)
        counted = ok & finite if checked or flagged else ok
        rows = jnp.sum(batch[2]) if len(batch) == 3 else jnp.float32(batch_size)
        rows = jnp.where(counted, rows, 0.0)
        # Each step's row count and row-weighted metrics; the epoch sums them at the end.
        record = {name: rows * jnp.where(counted, v, 0.0) for name, v in values.items()}
        record |= {"rows": rows, "skipped": (ok & ~finite).astype(jnp.int32)}
        return (new, bad_batch), record

    def finish(carry, records, ragged_record, eval_data) -> EpochOutput:
        state, bad_batch = carry
        parts = []
        if records is not None:
            parts.append(jax.tree.map(jnp.sum, records))
        if ragged_record is not None:
            parts.append(ragged_record)
        totals = jax.tree.map(lambda *p: sum(p[1:], p[0]), *parts)
        if not checked:
            clean = all_finite(state.params)
            bad_batch = jnp.where(clean, bad_batch, UNCHECKED)

        rows = totals.pop("rows")
        skipped = totals.pop("skipped")
        if track_norm and not grad_norm:
            totals.pop("grad_norm")
        train = {name: t / jnp.where(rows > 0, rows, 1.0) for name, t in totals.items()}
        if skip_nonfinite is not None or state.loss_scale is not None:
            train["skipped"] = skipped
        evaluated = {}
        if eval_data is not None:
            evaluate = eval_step(model, loss_fn=loss_fn, metrics=metrics)
            params = state.ema.params if eval_ema and state.ema is not None else state.params
            evaluated = evaluate_batches(evaluate, params, state.model_state, eval_data, batch_size)
        return EpochOutput(state, train, evaluated, bad_batch)

    return EpochParts(start, body, finish)


def epoch_fn(
    model: Layer,
    make_optimizer: Callable[..., GradientTransformation],
    *,
    loss_fn: LossFn,
    batch_size: int,
    metrics: Metrics | None = None,
    grad_norm: bool = False,
    skip_nonfinite: int | None = None,
    checked: bool = False,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    accumulate: int = 1,
    eval_ema: bool = True,
) -> Callable[[TrainState, Mapping[str, Array], Any, Any], EpochOutput]:
    """The pure epoch ``run(state, hparams, train_data, eval_data) -> EpochOutput``.

    ``make_optimizer(**hparams)`` builds the optimizer inside the trace, so hyperparameters
    may be traced arrays (one per ensemble member under `vmap`). With `skip_nonfinite` set
    to ``m``, the optimizer built must be ``apply_if_finite(..., m)`` outermost, and
    `train_step` decides which steps are skipped; only a non-finite step let through (after
    ``m`` in a row) is fatal. `checked` selects the checked epoch (module
    doc). `grad_norm` adds ``‖g‖₂`` to the step metrics. With a `mesh` every minibatch's rows
    are laid out over its ``data`` axis, for data-parallel training, and with `rules` the
    state is kept in the layout they give (`funcnet.train.partition`); without, replicated.
    `accumulate` is `train_step`'s. A state with a loss scale skips steps as
    `skip_nonfinite` does (see `train_step`). A state with a moving average of the params is
    evaluated with the average when `eval_ema` holds, with the params otherwise. The steps
    run in one `lax.scan`; `epoch_parts` gives the same epoch cut at its steps.
    """
    parts = epoch_parts(
        model,
        make_optimizer,
        loss_fn=loss_fn,
        batch_size=batch_size,
        metrics=metrics,
        grad_norm=grad_norm,
        skip_nonfinite=skip_nonfinite,
        checked=checked,
        mesh=mesh,
        rules=rules,
        accumulate=accumulate,
        eval_ema=eval_ema,
    )

    def run(
        state: TrainState, hparams: Mapping[str, Array], train_data: Any, eval_data: Any
    ) -> EpochOutput:
        carry, full, ragged = parts.start(state, hparams, train_data)
        records = ragged_record = None
        if full is not None:
            indices = jnp.arange(full[1].shape[0], dtype=jnp.int32)
            carry, records = lax.scan(
                lambda c, p: parts.body(c, p[0], p[1], hparams), carry, (indices, full)
            )
        if ragged is not None:
            carry, ragged_record = parts.body(carry, jnp.int32(_steps(full)), ragged, hparams)
        return parts.finish(carry, records, ragged_record, eval_data)

    return run


def _steps(full: Any) -> int:
    """The number of full batches stacked in `full` (0 for None)."""
    return 0 if full is None else full[1].shape[0]
