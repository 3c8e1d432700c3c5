"""`fit` and `fit_ensemble`: the epoch loop around the compiled epoch.

The host loop does only what needs the host: it calls the compiled epoch once per epoch,
records the metrics, keeps the best state, counts patience, raises on a non-finite step and
draws the progress bar. `fit_ensemble` is the same loop over `vmap` of the same epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from funcnet.nn.core import Layer
from funcnet.optim import (
    GradientTransformation,
    apply_if_finite,
    chain,
    clip_by_global_norm,
)
from funcnet.train._batching import check_finite, data_size, num_batches
from funcnet.train._epoch import UNCHECKED, EpochOutput, epoch_fn, select
from funcnet.train._sharding import check_mesh, place_data, replicate
from funcnet.train._state import TrainState, check_train_state, init_train_state, typed_key
from funcnet.train._step import LossFn, Metrics

Array = jax.Array
PyTree = Any
History = dict[str, list[float]]
EpochCallback = Callable[[int, TrainState, dict[str, float]], None]


class FitResult(NamedTuple):
    """What `fit` and `fit_ensemble` return.

    Attributes:
      state: the train state at the end (after the last epoch run): resume from it.
      best: the train state at the epoch with the lowest held-out loss (the last epoch when
        there is no held-out data). Its params are the ones to use.
      history: ``{metric: [value per epoch]}`` with ``epoch`` (0-based), the training
        metrics (``loss``, ``accuracy``, ``grad_norm``, ...) and the held-out ones prefixed
        ``val_``; for an ensemble, a list with one such dict per member.
      best_epoch: the epoch of `best` (None if no epoch ran); a list for an ensemble.

    For an ensemble every leaf of `state` and `best` carries a leading member axis.
    """

    state: TrainState
    best: TrainState
    history: History | list[History]
    best_epoch: int | list[int | None] | None


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss or gradient.

    Attributes:
      epoch: the epoch (0-based) of the failing step.
      step: the optimizer step count at the failing step (0-based index of that step).
      batch: the batch index within the epoch.
      member: the ensemble member, or None outside an ensemble.
      state: the train state before the failing step (for an ensemble, every member's state
        at the end of that epoch, the failing member's frozen before its failing step).
      history: the metrics up to the failing epoch, as `FitResult.history`.
    """

    def __init__(self, message: str, *, epoch, step, batch, member, state, history):
        super().__init__(message)
        self.epoch, self.step, self.batch, self.member = epoch, step, batch, member
        self.state, self.history = state, history


def build_optimizer(
    optimizer: GradientTransformation,
    *,
    clip_norm: float | None = None,
    on_nonfinite: str = "raise",
    max_consecutive_skips: int = 10,
) -> GradientTransformation:
    """The optimizer `fit` trains with: `optimizer` with clipping and skipping as asked.

    ``clip_by_global_norm(clip_norm)`` comes first when `clip_norm` is set; with
    ``on_nonfinite="skip"`` the whole is wrapped in
    ``apply_if_finite(·, max_consecutive_skips)``.
    """
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        optimizer = chain(clip_by_global_norm(clip_norm), optimizer)
    if on_nonfinite == "skip":
        optimizer = apply_if_finite(optimizer, max_consecutive_skips)
    return optimizer


def _check_inputs(
    epochs: int, batch_size: int, patience: int | None, train_data: Any, eval_data: Any
) -> None:
    """Refuses bad settings, and data sets holding NaN or ±inf (see `check_finite`)."""
    if epochs < 0:
        raise ValueError(f"epochs must be non-negative, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if patience is not None:
        if patience < 1:
            raise ValueError(f"patience must be at least 1, got {patience}")
        if eval_data is None:
            raise ValueError("early stopping (patience) needs eval_data to watch")
    check_finite(train_data, "train_data")
    if eval_data is not None:
        check_finite(eval_data, "eval_data")


def _initial_state(
    init: Callable[[Array], TrainState],
    key: Array | None,
    state: TrainState | None,
    *,
    where: str,
    templates: dict[str, TrainState],
    signature: str,
) -> TrainState:
    """``init(key)`` when no state is given; else `state`, once checked against the shapes
    `init` would give it (a state of another model or optimizer is refused).

    Those shapes are traced once per `signature` (the input shapes and member count) and
    kept in `templates`, which lives as long as the compiled epoch, so continuing a run
    does not trace the model's init again."""
    if state is None:
        if key is None:
            raise ValueError(f"{where} needs a key to initialise the model, or a state to continue")
        return init(typed_key(key))
    if signature not in templates:
        templates[signature] = jax.eval_shape(init, jax.random.key(0))
    check_train_state(templates[signature], state, where=where)
    return state


def _place(data: Any, mesh: Mesh | None) -> Any:
    """Puts a data set on the device, or on the mesh for data-parallel training."""
    if data is None:
        return None
    if mesh is not None:
        return place_data(data, mesh)
    return jax.device_put(tuple(data))


def fit(
    model: Layer,
    optimizer: GradientTransformation,
    train_data: tuple[Any, Array],
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    key: Array | None = None,
    state: TrainState | None = None,
    eval_data: tuple[Any, Array] | None = None,
    patience: int | None = None,
    metrics: Metrics | None = None,
    grad_norm: bool = False,
    clip_norm: float | None = None,
    on_nonfinite: str = "raise",
    max_consecutive_skips: int = 10,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
    mesh: Mesh | None = None,
) -> FitResult:
    """Trains `model` by minibatch descent, each epoch one compiled `lax.scan`.

    Every epoch: shuffle on device from the state's key, run ``⌈n / batch_size⌉`` steps of
    `make_step`'s rule in one `lax.scan` over contiguous slices of the shuffled data (a
    ragged last batch padded, its filler rows weighted 0), then evaluate on `eval_data`.
    The state passed in is not consumed.

    Args:
      model: a `funcnet.nn.Layer`.
      optimizer: a gradient transformation; a learning-rate schedule lives inside it
        (``adam(cosine_decay_schedule(1e-3, epochs * steps))``), counted in steps.
      train_data: ``(x, y)`` with a shared leading example axis.
      loss_fn: ``loss_fn(outputs, labels) -> scalar``, a mean over the batch.
      epochs: the total number of epochs. A `state` that has run some already (its
        ``step // ⌈n / batch_size⌉``) continues up to this total.
      batch_size: rows per step.
      key: initialises the model (`init_train_state`) when no `state` is given.
      state: a train state to continue from, e.g. loaded from a checkpoint.
      eval_data: held-out ``(x, y)``, evaluated after every epoch with ``train=False``;
        its metrics enter the history prefixed ``val_`` and choose the best epoch.
      patience: stop after this many epochs without a lower held-out loss; the result's
        `best` holds the best state. Needs `eval_data`.
      metrics: ``{name: fn(outputs, labels) -> scalar}``; by default ``accuracy`` for class
        logits with integer labels.
      grad_norm: also record ``grad_norm``, the epoch mean of ``‖g‖₂`` (off by default: it
        costs a reduction over every gradient leaf in every step).
      clip_norm: clip the gradient to this global norm before the optimizer.
      on_nonfinite: ``"raise"``: a non-finite loss or gradient stops training with
        `NonFiniteLossError`, naming epoch and step and holding the last good state.
        ``"skip"``: such steps are skipped (`funcnet.optim.apply_if_finite`); more than
        `max_consecutive_skips` in a row raise.
      progress: draw a tqdm progress bar with the epoch, loss and accuracy.
      on_epoch_end: called as ``on_epoch_end(epoch, state, metrics)`` after each epoch, e.g.
        to save a checkpoint.
      mesh: train data parallel over this mesh's ``data`` axis (see `data_mesh`): the state
        replicated, each minibatch's rows split over the devices, gradients averaged by XLA.
        `batch_size` is the global batch and must divide by the axis size. In a
        multi-process run `train_data` and `eval_data` are this process's shards.

    Returns:
      `FitResult(state, best, history, best_epoch)`.
    """
    _check_inputs(epochs, batch_size, patience, train_data, eval_data)
    if mesh is not None:
        check_mesh(mesh, batch_size)
    build, run_epoch, templates = _compiled_epoch(
        model,
        loss_fn,
        optimizer,
        factory=False,
        ensemble=False,
        batch_size=batch_size,
        metrics=metrics,
        grad_norm=grad_norm,
        clip_norm=clip_norm,
        on_nonfinite=on_nonfinite,
        max_consecutive_skips=max_consecutive_skips,
        mesh=mesh,
    )
    train_data, eval_data = _place(train_data, mesh), _place(eval_data, mesh)
    in_shape = _input_shape(train_data, batch_size)
    state = _initial_state(
        lambda key: init_train_state(model, build(), key, in_shape),
        key,
        state,
        where="fit",
        templates=templates,
        signature=repr(in_shape),
    )
    if mesh is not None:
        state = replicate(state, mesh)
    return _loop(
        lambda state, active, checked: run_epoch(
            state, {}, train_data, eval_data, active, checked=checked
        ),
        state,
        members=None,
        epochs=epochs,
        steps_per_epoch=num_batches(data_size(train_data), batch_size),
        patience=patience,
        has_eval=eval_data is not None,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )


def fit_ensemble(
    model: Layer,
    optimizer: GradientTransformation | Callable[..., GradientTransformation],
    train_data: tuple[Any, Array],
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    members: int | None = None,
    hparams: Mapping[str, Sequence[float] | Array] | None = None,
    key: Array | None = None,
    state: TrainState | None = None,
    eval_data: tuple[Any, Array] | None = None,
    patience: int | None = None,
    metrics: Metrics | None = None,
    grad_norm: bool = False,
    clip_norm: float | None = None,
    on_nonfinite: str = "raise",
    max_consecutive_skips: int = 10,
    progress: bool = True,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Trains K models at once: `fit` under `vmap` over seeds and hyperparameters.

    Member ``k`` starts from ``jax.random.split(key, K)[k]`` and trains with
    ``optimizer(**{name: values[k] for name, values in hparams.items()})``, so it equals
    ``fit(model, optimizer(**hparams_k), ..., key=split(key, K)[k])`` to float round-off.
    All members run in one compiled epoch; a member whose patience runs out is frozen
    while the others go on, and the loop ends when every member has stopped.

    Args:
      optimizer: a gradient transformation shared by all members, or, with `hparams`, a
        factory ``optimizer(**hparams_k) -> GradientTransformation`` called inside the trace
        with each member's values as scalar arrays (e.g. ``lambda learning_rate:
        adam(learning_rate)``).
      members: K, the number of members; may be left out when `hparams` gives it.
      hparams: ``{name: K values}``, one value per member; to cross seeds with a grid,
        repeat the grid's values.
      state: a train state with a leading member axis to continue from.
      The other arguments are those of `fit`; `on_epoch_end` receives the stacked state
      and ``{metric: [value per member]}``.

    Returns:
      `FitResult` with a leading member axis on `state` and `best`, and `history` and
      `best_epoch` lists with one entry per member.
    """
    _check_inputs(epochs, batch_size, patience, train_data, eval_data)
    hparams = {name: jnp.asarray(values) for name, values in (hparams or {}).items()}
    sizes = {name: values.shape for name, values in hparams.items()}
    if any(len(shape) != 1 for shape in sizes.values()):
        raise ValueError(f"each hyperparameter needs one value per member, got shapes {sizes}")
    counts = {shape[0] for shape in sizes.values()} | ({members} if members is not None else set())
    if len(counts) != 1:
        raise ValueError(
            f"the number of members is ambiguous: members={members}, hyperparameter shapes {sizes}"
        )
    k = counts.pop()
    if k < 1:
        raise ValueError(f"an ensemble needs at least one member, got {k}")
    if hparams and isinstance(optimizer, GradientTransformation):
        raise TypeError("with hparams, optimizer must be a factory `optimizer(**hparams)`")
    build, run_epoch, templates = _compiled_epoch(
        model,
        loss_fn,
        optimizer,
        factory=bool(hparams),
        ensemble=True,
        batch_size=batch_size,
        metrics=metrics,
        grad_norm=grad_norm,
        clip_norm=clip_norm,
        on_nonfinite=on_nonfinite,
        max_consecutive_skips=max_consecutive_skips,
    )
    train_data, eval_data = _place(train_data, None), _place(eval_data, None)
    in_shape = _input_shape(train_data, batch_size)

    def init_members(key):
        init = jax.vmap(lambda kk, h: init_train_state(model, build(**h), kk, in_shape))
        return init(jax.random.split(key, k), hparams)

    state = _initial_state(
        init_members,
        key,
        state,
        where="fit_ensemble",
        templates=templates,
        signature=repr((in_shape, k, sorted(sizes))),
    )
    return _loop(
        lambda state, active, checked: run_epoch(
            state, hparams, train_data, eval_data, active, checked=checked
        ),
        state,
        members=k,
        epochs=epochs,
        steps_per_epoch=num_batches(data_size(train_data), batch_size),
        patience=patience,
        has_eval=eval_data is not None,
        progress=progress,
        on_epoch_end=on_epoch_end,
    )


def _compiled_epoch(
    model: Layer,
    loss_fn: LossFn,
    optimizer: Any,
    *,
    factory: bool,
    ensemble: bool,
    batch_size: int,
    metrics: Metrics | None,
    grad_norm: bool,
    clip_norm: float | None,
    on_nonfinite: str,
    max_consecutive_skips: int,
    mesh: Mesh | None = None,
) -> tuple[Callable[..., GradientTransformation], Callable[..., EpochOutput], dict]:
    """``(build, epoch, templates)``: the optimizer builder; the epoch ``(state, hparams,
    train, eval, active, *, checked)``, jitted once per value of `checked` (the checked one
    compiles only when a plain epoch meets a non-finite value, see `funcnet.train.epoch_fn`);
    and the train-state shapes seen so far (see `_initial_state`).

    Compiled epochs are cached on the identity of the model, loss, optimizer and settings,
    so a later `fit` with the same objects and data shapes (a resumed run, a rerun) does not
    compile again.
    """
    settings = (
        model,
        loss_fn,
        optimizer,
        factory,
        ensemble,
        batch_size,
        None if metrics is None else tuple(metrics.items()),
        grad_norm,
        clip_norm,
        on_nonfinite,
        max_consecutive_skips,
        mesh,
    )
    try:
        return _epoch_cache(*settings)
    except TypeError:  # an unhashable piece: build without the cache
        return _epoch_cache.__wrapped__(*settings)


@functools.lru_cache(maxsize=16)
def _epoch_cache(
    model,
    loss_fn,
    optimizer,
    factory,
    ensemble,
    batch_size,
    metrics,
    grad_norm,
    clip_norm,
    on_nonfinite,
    max_consecutive_skips,
    mesh,
):
    def build(**hparams):
        return build_optimizer(
            optimizer(**hparams) if factory else optimizer,
            clip_norm=clip_norm,
            on_nonfinite=on_nonfinite,
            max_consecutive_skips=max_consecutive_skips,
        )

    def compile_epoch(checked: bool) -> Callable[..., EpochOutput]:
        run = epoch_fn(
            model,
            loss_fn,
            build,
            batch_size=batch_size,
            metrics=None if metrics is None else dict(metrics),
            grad_norm=grad_norm,
            skip_nonfinite=max_consecutive_skips if on_nonfinite == "skip" else None,
            checked=checked,
            mesh=mesh,
        )
        if not ensemble:

            def single(state, hparams, train_data, eval_data, active):
                del active
                return run(state, hparams, train_data, eval_data)

            return jax.jit(single)
        members = jax.vmap(run, in_axes=(0, 0, None, None))

        def epoch(state, hparams, train_data, eval_data, active):
            out = members(state, hparams, train_data, eval_data)
            return out._replace(state=select(active, out.state, state))

        return jax.jit(epoch)

    epochs = {False: compile_epoch(False), True: compile_epoch(True)}

    def epoch(state, hparams, train_data, eval_data, active, *, checked=False):
        return epochs[checked](state, hparams, train_data, eval_data, active)

    return build, epoch, {}


def _input_shape(data: tuple[Any, Array], batch_size: int) -> Any:
    x = data[0]
    return jax.tree.map(lambda leaf: (batch_size, *jnp.shape(leaf)[1:]), x)


def _loop(
    run_epoch: Callable[[TrainState, Array, bool], EpochOutput],
    state: TrainState,
    *,
    members: int | None,
    epochs: int,
    steps_per_epoch: int,
    patience: int | None,
    has_eval: bool,
    progress: bool,
    on_epoch_end: EpochCallback | None,
) -> FitResult:
    """The host side of `fit` (``members=None``) and `fit_ensemble` (``members=K``).

    ``run_epoch(state, active, checked)`` runs one compiled epoch. A plain epoch that met a
    non-finite value is run again, checked, from the same state (`funcnet.train.epoch_fn`).
    """
    from tqdm.auto import tqdm

    k = 1 if members is None else members
    steps = np.asarray(jax.device_get(state.step)).reshape(-1)
    start = int(steps.min()) // steps_per_epoch
    histories: list[History] = [{} for _ in range(k)]
    best, best_loss = state, np.full(k, np.inf)
    best_epoch: list[int | None] = [None] * k
    waited = np.zeros(k, int)
    active = np.ones(k, bool)

    bar = tqdm(
        range(start, epochs),
        desc="fit" if members is None else f"fit ×{k}",
        unit="epoch",
        initial=start,
        total=epochs,
        disable=not progress,
        leave=True,
    )
    try:
        for epoch in bar:
            live = jnp.asarray(active if members is not None else True)
            out = run_epoch(state, live, False)
            bad = np.asarray(jax.device_get(out.bad_batch)).reshape(-1)
            if np.any(active & (bad == UNCHECKED)):
                out = run_epoch(state, live, True)
            train, evaluated, bad = jax.device_get((out.train, out.eval, out.bad_batch))
            values = {name: np.asarray(v, float).reshape(-1) for name, v in train.items()}
            values.update(
                {f"val_{name}": np.asarray(v, float).reshape(-1) for name, v in evaluated.items()}
            )
            bad = np.asarray(bad).reshape(-1)
            for m in np.flatnonzero(active):
                histories[m].setdefault("epoch", []).append(epoch)
                for name, v in values.items():
                    histories[m].setdefault(name, []).append(float(v[m]))
            failed = np.flatnonzero(active & (bad >= 0))
            if failed.size:
                raise _nonfinite_error(
                    out.state, failed, bad, epoch, steps_per_epoch, members, histories
                )
            state = out.state

            if has_eval:
                score = values["val_loss"]
                improved = active & (score < best_loss)
                best_loss = np.where(improved, score, best_loss)
            else:
                improved = active.copy()
            if members is None:
                best = state if improved[0] else best
            elif improved.any():
                best = _select_members(jnp.asarray(improved), state, best)
            for m in np.flatnonzero(improved):
                best_epoch[m] = epoch
            if patience is not None:
                waited = np.where(improved, 0, waited + active)
                active &= waited < patience

            shown = {name: float(np.mean(v)) for name, v in values.items() if name != "skipped"}
            bar.set_postfix(
                {short: f"{shown[name]:.4g}" for name, short in _SHOWN.items() if name in shown}
            )
            if on_epoch_end is not None:
                report = {
                    name: (v.tolist() if members is not None else float(v[0]))
                    for name, v in values.items()
                }
                on_epoch_end(epoch, state, report)
            if not active.any():
                break
    finally:
        bar.close()

    if members is None:
        return FitResult(state, best, histories[0], best_epoch[0])
    return FitResult(state, best, histories, best_epoch)


_select_members = jax.jit(select)
_SHOWN = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}


def _nonfinite_error(
    state: TrainState,
    failed: np.ndarray,
    bad: np.ndarray,
    epoch: int,
    steps_per_epoch: int,
    members: int | None,
    histories: list[History],
) -> NonFiniteLossError:
    member = int(failed[0])
    steps = np.asarray(jax.device_get(state.step)).reshape(-1)
    step, batch = int(steps[member]), int(bad[member])
    who = "" if members is None else f"ensemble member {member} (of failing {failed.tolist()}): "
    message = (
        f"{who}the loss or gradient became non-finite at step {step} (epoch {epoch}, batch "
        f"{batch} of {steps_per_epoch}); training stopped and the error's `state` holds the last "
        f"good state. Lower the learning rate, clip gradients (clip_norm=...) or pass "
        f"on_nonfinite='skip' to skip such steps."
    )
    return NonFiniteLossError(
        message,
        epoch=epoch,
        step=step,
        batch=batch,
        member=None if members is None else member,
        state=state,
        history=histories[0] if members is None else histories,
    )


def steps_per_epoch(data: tuple[Any, Array], batch_size: int) -> int:
    """The number of optimizer steps `fit` takes per epoch, ``⌈n / batch_size⌉``."""
    return num_batches(data_size(data), batch_size)
