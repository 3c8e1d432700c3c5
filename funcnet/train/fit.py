"""`fit` and `fit_ensemble`: training runs of one model and of K models at once.

Both build the same compiled epoch (`epoch_fn`, under `vmap` for an ensemble) from the same
`EpochSettings` and hand it to the host loop (`funcnet.train.run_loop`), which runs K
members in every case: a lone model is K = 1.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from funcnet._checks import check_flag, check_function, check_int
from funcnet._keys import typed_key
from funcnet._trees import check_same_shapes
from funcnet.nn.core import Layer
from funcnet.optim import (
    GradientTransformation,
    apply_if_finite,
    chain,
    clip_by_global_norm,
)
from funcnet.train.batching import check_data, check_finite, steps_per_epoch
from funcnet.train.ema import check_decay, params_ema
from funcnet.train.epoch import EpochOutput, EpochParts, epoch_fn, epoch_parts, select
from funcnet.train.loop import EpochCallback, History, Members, StopFn, run_loop
from funcnet.train.loss_scale import DynamicLossScale, dynamic_loss_scale
from funcnet.train.partition import Rules, as_rules, place, state_shardings
from funcnet.train.sharding import check_mesh, place_data
from funcnet.train.state import TrainState, check_model, check_train_state, init_train_state
from funcnet.train.step import (
    LossFn,
    MetricFn,
    Metrics,
    check_accumulate,
    check_labels,
    check_metrics,
    check_not_empty,
    check_optimizer,
    frozen_shape,
    output_shape_of_init,
    per_model,
)

__all__ = [
    "CompiledEpoch",
    "EnsembleResult",
    "EpochSettings",
    "FitResult",
    "build_optimizer",
    "compile_epoch",
    "fit",
    "fit_ensemble",
]

Array = jax.Array
PyTree = Any


class FitResult(NamedTuple):
    """What `fit` returns.

    Attributes:
      state: the train state at the end (after the last epoch run): resume from it.
      best: the train state at the epoch with the lowest held-out loss (the last epoch when
        there is no held-out data). Its params are the ones to use.
      history: ``{metric: [value per epoch]}`` with ``epoch`` (0-based), the training
        metrics (``loss``, ``accuracy``, ``grad_norm``, ...) and the held-out ones prefixed
        ``val_``.
      best_epoch: the epoch of `best` (None if no epoch ran).
      loop: how the epochs ran: ``"scan"`` (one compiled `lax.scan` per epoch) or ``"step"``
        (one compiled step per batch, called from the host); see `fit`'s `loop`.
    """

    state: TrainState
    best: TrainState
    history: History
    best_epoch: int | None
    loop: str = "scan"


class EnsembleResult(NamedTuple):
    """What `fit_ensemble` returns: `FitResult`'s fields for K members.

    Attributes:
      state: the members' train states at the end, every leaf with a leading member axis.
      best: each member's best state (see `FitResult.best`), stacked the same way.
      history: one `FitResult.history` per member; a member stopped early has fewer epochs.
      best_epoch: each member's best epoch.
    """

    state: TrainState
    best: TrainState
    history: list[History]
    best_epoch: list[int | None]
    loop: str = "scan"


class EpochSettings(NamedTuple):
    """What a compiled epoch depends on besides the model, the loss and the optimizer: the
    settings `fit` and `fit_ensemble` share (see `fit` for each)."""

    batch_size: int
    metrics: tuple[tuple[str, MetricFn], ...] | None
    grad_norm: bool
    clip_norm: float | None
    on_nonfinite: str
    max_consecutive_skips: int
    accumulate: int = 1
    eval_ema: bool = True
    loop: str = "scan"


class CompiledEpoch(NamedTuple):
    """A compiled epoch and what goes with it.

    Attributes:
      build: ``build(**hparams) -> GradientTransformation``, the optimizer the epoch trains
        with (`build_optimizer` of the given one, or of the factory's result).
      run: ``run(state, hparams, train_data, eval_data, active, *, checked=False)``, one
        epoch, jitted once per value of `checked` (the checked one compiles only when a plain
        epoch meets a non-finite value, see `epoch_fn`); its metrics and ``bad_batch`` carry
        a leading member axis, of size 1 for a lone model.
      templates: the train-state shapes checked so far (see `_initial_state`).
    """

    build: Callable[..., GradientTransformation]
    run: Callable[..., EpochOutput]
    templates: dict[str, TrainState]


def _check_on_nonfinite(on_nonfinite: str) -> None:
    if on_nonfinite not in ("raise", "skip"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'skip', got {on_nonfinite!r}")


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
    _check_on_nonfinite(on_nonfinite)
    if clip_norm is not None:
        if not clip_norm > 0:
            raise ValueError(f"clip_norm must be positive, got {clip_norm}")
        optimizer = chain(clip_by_global_norm(clip_norm), optimizer)
    if on_nonfinite == "skip":
        optimizer = apply_if_finite(optimizer, max_consecutive_skips)
    return optimizer


def _check_inputs(
    model: Any,
    optimizer: Any,
    epochs: int,
    batch_size: int,
    patience: int | None,
    max_consecutive_skips: int,
    train_data: Any,
    eval_data: Any,
    *,
    where: str = "fit",
    factory: bool = False,
) -> tuple[Any, Any]:
    """Refuses what is not a model, an optimizer (or with `factory` a function making one),
    sizes that are not integers in range, and data sets that are not arrays of numbers, are
    empty or hold NaN or ±inf (see `check_data`, `check_finite`). Returns the data sets, nested
    lists of numbers turned into arrays."""
    check_model(where, model)
    check_optimizer(where, optimizer, factory=factory)
    check_int(where, "epochs", epochs, minimum=0)
    check_int(where, "batch_size", batch_size)
    check_int(where, "max_consecutive_skips", max_consecutive_skips, minimum=0)
    if patience is not None:
        check_int(where, "patience", patience)
        if eval_data is None:
            raise ValueError("early stopping (patience) needs eval_data to watch")
    train_data = check_data(where, "train_data", train_data)
    check_not_empty(where, "train_data", train_data)
    check_finite(train_data, "train_data")
    if eval_data is not None:
        eval_data = check_data(where, "eval_data", eval_data)
        check_not_empty(where, "eval_data", eval_data)
        check_finite(eval_data, "eval_data")
    return train_data, eval_data


def _check_callables(
    where: str, loss_fn: Any, metrics: Any, on_epoch_end: Any, stop: Any, progress: Any
) -> bool:
    """Refuses a `loss_fn`, metric, `on_epoch_end` or `stop` that is not a function (the last
    two may be None) and a `progress` that is not a bool, each in one line naming `where`;
    returns `progress`."""
    check_function(where, "loss_fn", loss_fn)
    check_metrics(where, metrics)
    check_function(where, "on_epoch_end", on_epoch_end, optional=True)
    check_function(where, "stop", stop, optional=True)
    return check_flag(where, "progress", progress)


def _check_labels(
    where: str, model: Layer, loss_fn: LossFn, in_shape: Any, train_data: Any, eval_data: Any
) -> None:
    """Refuses labels `loss_fn` would refuse (`check_labels`), in both data sets, against the
    output shape `model.init` gives for `in_shape`."""
    labelled = {"train_data": train_data[1]}
    if eval_data is not None:
        labelled["eval_data"] = eval_data[1]
    check_labels(where, loss_fn, labelled, lambda: output_shape_of_init(model, in_shape))


def _settings(
    batch_size: int,
    metrics: Metrics | None,
    grad_norm: bool,
    clip_norm: float | None,
    on_nonfinite: str,
    max_consecutive_skips: int,
    accumulate: int = 1,
    eval_ema: bool = True,
    *,
    where: str = "fit",
) -> EpochSettings:
    """The `EpochSettings` of `fit`'s keyword arguments, hashable (metrics as a tuple)."""
    _check_on_nonfinite(on_nonfinite)
    return EpochSettings(
        batch_size=int(batch_size),
        metrics=None if metrics is None else tuple(metrics.items()),
        grad_norm=check_flag(where, "grad_norm", grad_norm),
        clip_norm=None if clip_norm is None else float(clip_norm),
        on_nonfinite=on_nonfinite,
        max_consecutive_skips=int(max_consecutive_skips),
        accumulate=check_accumulate(accumulate, batch_size),
        eval_ema=check_flag(where, "eval_ema", eval_ema),
    )


class Extras(NamedTuple):
    """The optional train-state fields `fit` asked for: a params average and a loss scale."""

    ema: float | None
    ema_warmup: bool
    loss_scale: DynamicLossScale | None


def _extras(
    ema: float | None,
    ema_warmup: bool,
    loss_scale: str | DynamicLossScale | None,
    on_nonfinite: str,
    *,
    where: str = "fit",
) -> Extras:
    """`fit`'s `ema` and `loss_scale` arguments, checked (one line naming the bad one)."""
    if ema is not None:
        ema = check_decay(ema)
    if isinstance(loss_scale, str):
        if loss_scale != "dynamic":
            raise ValueError(
                f"loss_scale must be 'dynamic', a DynamicLossScale or None, got {loss_scale!r}"
            )
        loss_scale = dynamic_loss_scale()
    elif loss_scale is not None and not isinstance(loss_scale, DynamicLossScale):
        raise TypeError(
            "loss_scale must be 'dynamic', a DynamicLossScale or None, got "
            f"{type(loss_scale).__name__}"
        )
    if loss_scale is not None and on_nonfinite == "skip":
        raise ValueError(
            "loss_scale skips the steps whose gradient is not finite itself; use it with "
            "on_nonfinite='raise', not 'skip'"
        )
    return Extras(ema, check_flag(where, "ema_warmup", ema_warmup), loss_scale)


def _add_extras(state: TrainState, extras: Extras) -> TrainState:
    """`state` with the params average and the loss scale `extras` asks for and it lacks.

    A field the state already has (a resumed run) is kept as it is; asking for a moving
    average with another decay than the state's is refused.
    """
    if extras.ema is not None:
        if state.ema is None:
            state = state._replace(
                ema=params_ema(state.params, extras.ema, warmup=extras.ema_warmup)
            )
        elif not isinstance(state.ema.decay, jax.core.Tracer):
            decay = np.ravel(np.asarray(state.ema.decay))
            if not np.allclose(decay, np.float32(extras.ema)):
                raise ValueError(
                    f"ema={extras.ema}, but the state's moving average has decay "
                    f"{decay[0]:.6g}; continue it with the same decay"
                )
    if extras.loss_scale is not None and state.loss_scale is None:
        state = state._replace(loss_scale=extras.loss_scale)
    return state


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
    `init` would give it (a state of another model or optimizer is refused). The optional
    fields (a params average, a loss scale) are left out of the comparison: their params
    average is checked against the state's own params.

    Those shapes are traced once per `signature` (the input shapes and member count) and
    kept in `templates`, which lives as long as the compiled epoch, so continuing a run
    does not trace the model's init again."""
    if state is None:
        if key is None:
            raise ValueError(f"{where} needs a key to initialise the model, or a state to continue")
        return init(typed_key(key, caller=where))
    if not isinstance(state, TrainState):
        raise TypeError(f"{where}: state must be a TrainState, got {type(state).__name__}")
    if signature not in templates:
        templates[signature] = jax.eval_shape(init, jax.random.key(0))
    check_train_state(templates[signature], state._replace(ema=None, loss_scale=None), where=where)
    if state.ema is not None:
        check_same_shapes(
            jax.eval_shape(lambda: state.params),
            state.ema.params,
            what=f"{where}: the state's moving average does not fit its params",
            source="the average",
        )
    return state


def _check_layout(mesh: Mesh | None, rules: Rules | None, settings: EpochSettings) -> tuple | None:
    """Refuses `rules` without a mesh and a mesh that cannot share a batch or micro-batch;
    `rules` as a tuple (hashable, for `compile_epoch`'s cache)."""
    if mesh is None:
        if rules is not None:
            raise ValueError("rules lay the params out over a mesh; pass mesh= too")
        return None
    check_mesh(mesh, settings.batch_size)
    if settings.accumulate > 1:
        check_mesh(mesh, settings.batch_size // settings.accumulate)
    return None if rules is None else as_rules(rules)


def _place(data: Any, mesh: Mesh | None) -> Any:
    """Puts a data set on the device, or on the mesh for data-parallel training."""
    if data is None:
        return None
    if mesh is not None:
        return place_data(data, mesh)
    return jax.device_put(tuple(data))


def _input_shape(data: tuple[Any, Array], batch_size: int) -> Any:
    x = data[0]
    return jax.tree.map(lambda leaf: (batch_size, *jnp.shape(leaf)[1:]), x)


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
    stop: StopFn | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    accumulate: int = 1,
    ema: float | None = None,
    ema_warmup: bool = True,
    eval_ema: bool = True,
    loss_scale: str | DynamicLossScale | None = None,
    loop: str = "auto",
) -> FitResult:
    """Trains `model` by minibatch descent, each epoch one compiled `lax.scan`.

    Every epoch: shuffle on device from the state's key, run ``⌈n / batch_size⌉`` steps of
    `make_step`'s rule in one `lax.scan` over contiguous slices of the shuffled data (a
    ragged last batch padded, its filler rows weighted 0), then evaluate on `eval_data`.
    The state passed in is not consumed.

    Before anything is compiled the arguments are checked on the host, a fault raising one
    line that names the argument: the model must be a `Layer` and the optimizer a gradient
    transformation; `loss_fn`, each metric, `on_epoch_end` and `stop` functions (metrics not
    named ``loss``, ``grad_norm``, ``finite`` or ``fatal``, which the step reports itself);
    flags (`progress`, `grad_norm`, ...) bools; sizes (`epochs`, `batch_size`, `patience`,
    ...) integers in range; the data sets arrays of numbers (nested lists of numbers are
    turned into arrays), with no NaN or ±inf; and the labels of both data sets what `loss_fn`
    takes, against the model's output shape (`funcnet.losses.label_check`: integer classes
    in ``[0, classes)`` or one-hot vectors for the class losses, 0/1 or ±1 for the binary
    ones). Inside the compiled epoch nothing is checked per step.

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
      stop: ``stop() -> bool``, asked before each epoch; when true, training ends there and
        the result holds the state after the last whole epoch, to resume from (e.g.
        `SignalStop`, which turns Ctrl-C and SIGTERM into such a request).
      mesh: train data parallel over this mesh's ``data`` axis (see `data_mesh`): the state
        replicated, each minibatch's rows split over the devices, gradients averaged by XLA.
        `batch_size` is the global batch and must divide by the axis size. In a
        multi-process run `train_data` and `eval_data` are this process's shards.
      rules: with `mesh`, lay the params out over it as these rules say instead of
        replicating them (`funcnet.train.fsdp`, `tensor_parallel`, `by_path`; see
        `funcnet.train.partition`); the optimizer state and the params' average follow the
        params. The result's states keep that layout (`funcnet.train.local_copy` brings them
        whole to one device).
      accumulate: take each step's gradient over this many micro-batches of
        ``batch_size / accumulate`` rows in turn (`make_step`), holding one micro-batch's
        activations at a time; the update is the whole batch's. Batch norm normalises each
        micro-batch by its own statistics, as PyTorch does.
      ema: keep a moving average of the params with this decay in [0, 1) in the state
        (`funcnet.train.ParamsEma`: the first step copies the params, then
        ``θ̄ ← d_t θ̄ + (1 − d_t) θ``); checkpointed and resumed with the state.
      ema_warmup: let the average's decay warm up to `ema` (``d_t = min(d, 1 − t^(−2/3))``).
      eval_ema: with `ema`, evaluate `eval_data` with the average, so the history's ``val_``
        metrics, the best epoch and `best` are the average's (use ``best.ema.params``).
      loss_scale: ``"dynamic"`` (or a `DynamicLossScale`) for float16 training: the loss is
        scaled by ``S`` before the backward pass and the gradient divided by it; a step whose
        gradient is not finite is skipped and ``S`` halved, and ``S`` doubles after
        ``period`` finite steps in a row. Kept in the state, checkpointed and resumed;
        skipped steps are counted in the history's ``skipped``.
      loop: how an epoch runs. ``"scan"``: one compiled `lax.scan` over its steps (no host
        work between steps). ``"step"``: the same step, compiled on its own and called once
        per batch from the host (the shuffle, gather and metrics stay compiled). ``"auto"``
        (default) takes ``"step"`` on XLA:CPU for a model with a convolution and ``"scan"``
        otherwise: inside a loop body XLA:CPU runs the convolutions of the backward pass
        (input and kernel gradients) on its generic path rather than its fused one, which
        made the scanned epoch of a small CNN 6–9× slower than its steps run one by one,
        while for dense and recurrent models the scan saves the per-step dispatch. The
        result's `loop` says which ran. Both compute the same steps; the values agree to
        float round-off, not bit for bit (XLA compiles the step in and out of a loop
        separately).

    Returns:
      `FitResult(state, best, history, best_epoch)`.
    """
    train_data, eval_data = _check_inputs(
        model,
        optimizer,
        epochs,
        batch_size,
        patience,
        max_consecutive_skips,
        train_data,
        eval_data,
        where="fit",
    )
    progress = _check_callables("fit", loss_fn, metrics, on_epoch_end, stop, progress)
    settings = _settings(
        batch_size,
        metrics,
        grad_norm,
        clip_norm,
        on_nonfinite,
        max_consecutive_skips,
        accumulate,
        eval_ema,
        where="fit",
    )
    rules = _check_layout(mesh, rules, settings)
    extras = _extras(ema, ema_warmup, loss_scale, on_nonfinite, where="fit")
    in_shape = _input_shape(train_data, batch_size // settings.accumulate)
    _check_labels("fit", model, loss_fn, in_shape, train_data, eval_data)
    settings = settings._replace(loop=choose_loop(loop, model, train_data, in_shape))
    compiled = compile_epoch(
        model, optimizer, loss_fn=loss_fn, settings=settings, mesh=mesh, rules=rules
    )
    train_data, eval_data = _place(train_data, mesh), _place(eval_data, mesh)
    state = _initial_state(
        lambda key: init_train_state(model, compiled.build(), key, in_shape),
        key,
        state,
        where="fit",
        templates=compiled.templates,
        signature=repr(in_shape),
    )
    state = _add_extras(state, extras)
    if mesh is not None:
        state = place(state, state_shardings(state, mesh, rules))
    out = run_loop(
        lambda state, active, checked: compiled.run(
            state, {}, train_data, eval_data, active, checked=checked
        ),
        state,
        Members(count=1, stacked=False),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch(train_data, batch_size),
        patience=patience,
        has_eval=eval_data is not None,
        progress=progress,
        on_epoch_end=on_epoch_end,
        stop=stop,
    )
    return FitResult(out.state, out.best, out.histories[0], out.best_epochs[0], settings.loop)


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
    stop: StopFn | None = None,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    accumulate: int = 1,
    ema: float | None = None,
    ema_warmup: bool = True,
    eval_ema: bool = True,
    loss_scale: str | DynamicLossScale | None = None,
    loop: str = "auto",
) -> EnsembleResult:
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
      mesh, rules: as in `fit`; every member is laid out alike, its member axis whole.
      The other arguments are those of `fit`; `on_epoch_end` receives the stacked state
      and ``{metric: [value per member]}``.

    Returns:
      `EnsembleResult(state, best, history, best_epoch)`: a leading member axis on `state`
      and `best`, and `history` and `best_epoch` lists with one entry per member.
    """
    train_data, eval_data = _check_inputs(
        model,
        optimizer,
        epochs,
        batch_size,
        patience,
        max_consecutive_skips,
        train_data,
        eval_data,
        where="fit_ensemble",
        factory=bool(hparams),
    )
    progress = _check_callables("fit_ensemble", loss_fn, metrics, on_epoch_end, stop, progress)
    hparams = {name: jnp.asarray(values) for name, values in (hparams or {}).items()}
    k = _member_count(members, hparams)
    if hparams and isinstance(optimizer, GradientTransformation):
        raise TypeError("with hparams, optimizer must be a factory `optimizer(**hparams)`")
    settings = _settings(
        batch_size,
        metrics,
        grad_norm,
        clip_norm,
        on_nonfinite,
        max_consecutive_skips,
        accumulate,
        eval_ema,
        where="fit_ensemble",
    )
    extras = _extras(ema, ema_warmup, loss_scale, on_nonfinite, where="fit_ensemble")
    in_shape = _input_shape(train_data, batch_size // settings.accumulate)
    _check_labels("fit_ensemble", model, loss_fn, in_shape, train_data, eval_data)
    settings = settings._replace(loop=choose_loop(loop, model, train_data, in_shape))
    rules = _check_layout(mesh, rules, settings)
    compiled = compile_epoch(
        model,
        optimizer,
        loss_fn=loss_fn,
        settings=settings,
        mesh=mesh,
        rules=rules,
        ensemble=True,
        factory=bool(hparams),
    )
    train_data, eval_data = _place(train_data, mesh), _place(eval_data, mesh)

    def init_members(key):
        init = jax.vmap(lambda kk, h: init_train_state(model, compiled.build(**h), kk, in_shape))
        return init(jax.random.split(key, k), hparams)

    state = _initial_state(
        init_members,
        key,
        state,
        where="fit_ensemble",
        templates=compiled.templates,
        signature=repr((in_shape, k, sorted(hparams))),
    )
    _add_extras(jax.tree.map(lambda leaf: leaf[0], state), extras)  # checks a resumed state
    state = jax.vmap(lambda member: _add_extras(member, extras))(state)
    if mesh is not None:
        state = place(state, state_shardings(state, mesh, rules, members=True))
    out = run_loop(
        lambda state, active, checked: compiled.run(
            state, hparams, train_data, eval_data, active, checked=checked
        ),
        state,
        Members(count=k, stacked=True),
        epochs=epochs,
        steps_per_epoch=steps_per_epoch(train_data, batch_size),
        patience=patience,
        has_eval=eval_data is not None,
        progress=progress,
        on_epoch_end=on_epoch_end,
        stop=stop,
    )
    return EnsembleResult(*out, loop=settings.loop)


LOOPS = ("auto", "scan", "step")


def choose_loop(loop: str, model: Layer, train_data: Any, in_shape: Any) -> str:
    """``"scan"`` or ``"step"``: `loop` itself, or for ``"auto"`` the rule of `fit`'s `loop`
    (``"step"`` on XLA:CPU when the model's forward pass holds a convolution)."""
    if loop not in LOOPS:
        raise ValueError(f"loop must be one of {LOOPS}, got {loop!r}")
    if loop != "auto":
        return loop
    if jax.default_backend() != "cpu":
        return "scan"
    dtypes = tuple(jnp.result_type(leaf) for leaf in jax.tree.leaves(train_data[0]))
    return "step" if _has_convolution(model, *frozen_shape(in_shape), dtypes) else "scan"


@per_model
def _has_convolution(model: Layer, treedef: Any, shapes: tuple, dtypes: tuple) -> bool:
    """Whether the model's forward pass on inputs of these shapes and dtypes convolves
    (traced abstractly: nothing is computed or compiled)."""
    in_shape = jax.tree.unflatten(treedef, shapes)
    _, params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), in_shape))
    x = jax.tree.unflatten(
        treedef, [jax.ShapeDtypeStruct(s, d) for s, d in zip(shapes, dtypes, strict=True)]
    )
    jaxpr = jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x)[0])(params, state, x)
    return _uses(jaxpr.jaxpr, "conv_general_dilated")


def _uses(jaxpr: Any, primitive: str) -> bool:
    """Whether `jaxpr` or a jaxpr nested in its equations applies `primitive`."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == primitive:
            return True
        for value in eqn.params.values():
            for inner in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns") and _uses(inner, primitive):
                    return True
    return False


def _step_by_step(parts: EpochParts, ensemble: bool) -> Callable[..., EpochOutput]:
    """An epoch of `parts` run from the host: the shuffle and gather compiled, then each
    batch's step compiled on its own and called in turn, then the metrics and evaluation
    compiled. The signature of `compile_epoch`'s epochs."""

    def start(state, hparams, train_data):
        # The steps donate their carry; it must not be the caller's state, which the host
        # loop keeps (to rerun a checked epoch from it).
        carry, full, ragged = parts.start(state, hparams, train_data)
        return jax.tree.map(jnp.copy, carry), full, ragged

    def indexed(carry, index, full, hparams):
        batch = jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, index, 0, False), full)
        return parts.body(carry, index, batch, hparams)

    def finish(state, carry, records, ragged_record, eval_data, active):
        stacked = None if not records else jax.tree.map(lambda *r: jnp.stack(r), *records)
        if not ensemble:
            out = parts.finish(carry, stacked, ragged_record, eval_data)
            lead = functools.partial(jax.tree.map, lambda v: v[None])
            return out._replace(
                train=lead(out.train), eval=lead(out.eval), bad_batch=out.bad_batch[None]
            )
        members = jax.vmap(parts.finish, in_axes=(0, None if stacked is None else 1, 0, None))
        out = members(carry, stacked, ragged_record, eval_data)
        return out._replace(state=select(active, out.state, state))

    if ensemble:
        start = jax.vmap(start, in_axes=(0, 0, None))
        indexed = jax.vmap(indexed, in_axes=(0, None, 0, 0))
    body = jax.vmap(parts.body, in_axes=(0, None, 0, 0)) if ensemble else parts.body
    start_j = jax.jit(start)
    step_j = jax.jit(indexed, donate_argnums=0)
    ragged_j = jax.jit(body, donate_argnums=0)
    finish_j = jax.jit(finish)

    def epoch(state, hparams, train_data, eval_data, active):
        carry, full, ragged = start_j(state, hparams, train_data)
        records = []
        steps = 0 if full is None else jax.tree.leaves(full)[0].shape[1 if ensemble else 0]
        for index in range(steps):
            carry, record = step_j(carry, np.int32(index), full, hparams)
            records.append(record)
        ragged_record = None
        if ragged is not None:
            carry, ragged_record = ragged_j(carry, np.int32(steps), ragged, hparams)
        return finish_j(state, carry, tuple(records), ragged_record, eval_data, active)

    return epoch


def _member_count(members: int | None, hparams: dict[str, Array]) -> int:
    """K, from `members` or the hyperparameters' lengths, which must agree."""
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
    return k


@functools.lru_cache(maxsize=16)
def compile_epoch(
    model: Layer,
    optimizer: Any,
    *,
    loss_fn: LossFn,
    settings: EpochSettings,
    mesh: Mesh | None = None,
    rules: tuple | None = None,
    ensemble: bool = False,
    factory: bool = False,
) -> CompiledEpoch:
    """The compiled epoch `fit` (or, with `ensemble`, `fit_ensemble`) trains with.

    `optimizer` is a gradient transformation, or with `factory` a function of the members'
    hyperparameters returning one. The result is cached on the identity of the model, the
    optimizer and the loss and on the settings, so a later `fit` with the same objects (a
    resumed run, a rerun) compiles nothing again; to reuse a compiled epoch, keep those
    objects.
    """

    def build(**hparams: Array) -> GradientTransformation:
        return build_optimizer(
            optimizer(**hparams) if factory else optimizer,
            clip_norm=settings.clip_norm,
            on_nonfinite=settings.on_nonfinite,
            max_consecutive_skips=settings.max_consecutive_skips,
        )

    common = dict(
        loss_fn=loss_fn,
        batch_size=settings.batch_size,
        metrics=None if settings.metrics is None else dict(settings.metrics),
        grad_norm=settings.grad_norm,
        skip_nonfinite=(
            settings.max_consecutive_skips if settings.on_nonfinite == "skip" else None
        ),
        mesh=mesh,
        rules=rules,
        accumulate=settings.accumulate,
        eval_ema=settings.eval_ema,
    )

    def compile_one(checked: bool) -> Callable[..., EpochOutput]:
        run = epoch_fn(model, build, checked=checked, **common)
        if ensemble:
            members = jax.vmap(run, in_axes=(0, 0, None, None))

            def epoch(state, hparams, train_data, eval_data, active):
                out = members(state, hparams, train_data, eval_data)
                return out._replace(state=select(active, out.state, state))

        else:

            def epoch(state, hparams, train_data, eval_data, active):
                del active
                out = run(state, hparams, train_data, eval_data)
                # One member: the host loop reads every value with a leading member axis.
                lead = functools.partial(jax.tree.map, lambda v: v[None])
                return out._replace(
                    train=lead(out.train), eval=lead(out.eval), bad_batch=out.bad_batch[None]
                )

        return jax.jit(epoch)

    def compile_steps(checked: bool) -> Callable[..., EpochOutput]:
        parts = epoch_parts(model, build, checked=checked, **common)
        return _step_by_step(parts, ensemble)

    compile = compile_steps if settings.loop == "step" else compile_one
    epochs = {False: compile(False), True: compile(True)}

    def run(state, hparams, train_data, eval_data, active, *, checked=False):
        return epochs[checked](state, hparams, train_data, eval_data, active)

    return CompiledEpoch(build, run, {})
