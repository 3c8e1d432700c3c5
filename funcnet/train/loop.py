"""The host loop: what `fit` and `fit_ensemble` do between compiled epochs.

It calls the compiled epoch once per epoch, records the metrics, keeps the best state,
counts patience, raises on a non-finite step, stops between epochs when asked (`SignalStop`
turns Ctrl-C and SIGTERM into such a request) and draws the progress bar. It always runs K
members: every value it reads has a leading member axis, of size 1 for a lone model, and
`Members` says how the states are laid out.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.train.epoch import UNCHECKED, EpochOutput, select
from funcnet.train.state import TrainState

__all__ = [
    "Members",
    "NonFiniteLossError",
    "SignalStop",
    "run_loop",
]

Array = jax.Array
History = dict[str, list[float]]
EpochCallback = Callable[[int, TrainState, dict[str, Any]], None]
RunEpoch = Callable[[TrainState, Array, bool], EpochOutput]
StopFn = Callable[[], bool]


class NonFiniteLossError(FloatingPointError):
    """A training step produced a non-finite loss, gradient or updated params.

    Attributes:
      epoch: the epoch (0-based) of the failing step.
      step: the optimizer step count at the failing step (0-based index of that step).
      batch: the batch index within the epoch.
      member: the ensemble member, or None outside an ensemble.
      state: the train state before the failing step, whose params are finite (for an
        ensemble, every member's state at the end of that epoch, the failing member's frozen
        before its failing step).
      history: the metrics up to the failing epoch, as the result's `history`.
    """

    def __init__(self, message: str, *, epoch, step, batch, member, state, history):
        super().__init__(message)
        self.epoch, self.step, self.batch, self.member = epoch, step, batch, member
        self.state, self.history = state, history


class Members(NamedTuple):
    """How the loop's K members are laid out: `count` of them, and whether the state has a
    leading member axis (`stacked`, an ensemble) or is one model's (K = 1)."""

    count: int
    stacked: bool

    def pick(self, mask: np.ndarray, new: TrainState, old: TrainState) -> TrainState:
        """Each member's `new` state where `mask` (shape ``(K,)``) holds, else its `old`."""
        if not self.stacked:
            return new if mask[0] else old
        return old if not mask.any() else _select_members(jnp.asarray(mask), new, old)

    def view(self, values: np.ndarray) -> Any:
        """A per-member vector as the caller sees it: a float for a lone model, else a list."""
        return values.tolist() if self.stacked else float(values[0])


_select_members = jax.jit(select)
# Where no bar can be redrawn, progress is a line per epoch, at most one per this many seconds.
LINE_INTERVAL_S = 1.0
_SHOWN = {"loss": "loss", "accuracy": "acc", "val_loss": "val_loss", "val_accuracy": "val_acc"}


class LoopOutput(NamedTuple):
    state: TrainState
    best: TrainState
    histories: list[History]
    best_epochs: list[int | None]


def run_loop(
    run_epoch: RunEpoch,
    state: TrainState,
    members: Members,
    *,
    epochs: int,
    steps_per_epoch: int,
    patience: int | None,
    has_eval: bool,
    progress: bool,
    on_epoch_end: EpochCallback | None,
    stop: StopFn | None = None,
) -> LoopOutput:
    """Runs epochs from the one `state` has reached up to `epochs`.

    ``run_epoch(state, active, checked)`` runs one compiled epoch for the members flagged in
    `active` (shape ``(K,)``) and returns metrics and ``bad_batch`` with a leading member
    axis. A plain epoch that met a non-finite value is run again, checked, from the same
    state (see `funcnet.train.epoch_fn`). Before each epoch ``stop()`` is asked; when true
    the loop ends there and returns what it has, the state after the last whole epoch.
    """
    from tqdm.auto import tqdm

    k = members.count
    start = int(np.asarray(jax.device_get(state.step)).min()) // steps_per_epoch
    histories: list[History] = [{} for _ in range(k)]
    best, best_loss = state, np.full(k, np.inf)
    best_epochs: list[int | None] = [None] * k
    waited = np.zeros(k, int)
    active = np.ones(k, bool)

    desc = "fit" if not members.stacked else f"fit ×{k}"
    lines = _EpochLines(desc, epochs) if progress and not _draws_a_bar(tqdm) else None
    bar = tqdm(
        range(start, epochs),
        desc=desc,
        unit="epoch",
        initial=start,
        total=epochs,
        disable=not progress or lines is not None,
        leave=True,
    )
    try:
        for epoch in bar:
            if stop is not None and stop():
                break
            live = jnp.asarray(active)
            out = run_epoch(state, live, False)
            if np.any(active & (np.asarray(jax.device_get(out.bad_batch)) == UNCHECKED)):
                out = run_epoch(state, live, True)
            train, evaluated, bad = jax.device_get((out.train, out.eval, out.bad_batch))
            values = {name: np.asarray(v, float) for name, v in train.items()}
            values |= {f"val_{name}": np.asarray(v, float) for name, v in evaluated.items()}
            bad = np.asarray(bad)
            for m in np.flatnonzero(active):
                histories[m].setdefault("epoch", []).append(epoch)
                for name, v in values.items():
                    histories[m].setdefault(name, []).append(float(v[m]))
            failed = np.flatnonzero(active & (bad >= 0))
            if failed.size:
                raise _nonfinite_error(
                    out.state, members, failed, bad, epoch, steps_per_epoch, histories
                )
            state = out.state

            if has_eval:
                score = values["val_loss"]
                improved = active & (score < best_loss)
                best_loss = np.where(improved, score, best_loss)
            else:
                improved = active.copy()
            best = members.pick(improved, state, best)
            for m in np.flatnonzero(improved):
                best_epochs[m] = epoch
            if patience is not None:
                waited = np.where(improved, 0, waited + active)
                active &= waited < patience

            shown = {name: float(np.mean(v)) for name, v in values.items() if name != "skipped"}
            postfix = {
                short: f"{shown[name]:.4g}" for name, short in _SHOWN.items() if name in shown
            }
            bar.set_postfix(postfix)
            if lines is not None:
                lines.epoch_end(epoch, postfix, last=epoch + 1 == epochs or not active.any())
            if on_epoch_end is not None:
                on_epoch_end(epoch, state, {name: members.view(v) for name, v in values.items()})
            if not active.any():
                break
    finally:
        bar.close()
    return LoopOutput(state, best, histories, best_epochs)


def _draws_a_bar(tqdm: type) -> bool:
    """Whether `tqdm` (tqdm.auto's class) has somewhere to redraw a bar: a notebook, or a
    standard error that is a terminal. Elsewhere (a log file, a pipe, CI) each redraw would
    add a carriage-return line to the log."""
    if any(cls.__module__ == "tqdm.notebook" for cls in tqdm.__mro__):
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


class _EpochLines:
    """The progress of a run as plain lines on standard error, for a stream that is not a
    terminal: one per epoch, at most one every `LINE_INTERVAL_S` seconds, and the last."""

    def __init__(self, desc: str, epochs: int):
        self.desc, self.epochs, self.interval = desc, epochs, LINE_INTERVAL_S
        self.started = time.perf_counter()
        self.shown = -math.inf

    def epoch_end(self, epoch: int, metrics: dict[str, str], *, last: bool) -> None:
        now = time.perf_counter()
        if not last and now - self.shown < self.interval:
            return
        self.shown = now
        values = "".join(f", {name} {value}" for name, value in metrics.items())
        print(
            f"{self.desc}: epoch {epoch + 1}/{self.epochs}{values} ({now - self.started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )


def _nonfinite_error(
    state: TrainState,
    members: Members,
    failed: np.ndarray,
    bad: np.ndarray,
    epoch: int,
    steps_per_epoch: int,
    histories: list[History],
) -> NonFiniteLossError:
    member = int(failed[0])
    step = int(np.asarray(jax.device_get(state.step)).reshape(-1)[member])
    batch = int(bad[member])
    who = f"ensemble member {member} (of failing {failed.tolist()}): " if members.stacked else ""
    message = (
        f"{who}the loss, gradient or updated params became non-finite at step {step} (epoch "
        f"{epoch}, batch {batch} of {steps_per_epoch}); training stopped and the error's `state` "
        f"holds the last good state. Lower the learning rate, clip gradients (clip_norm=...) or "
        f"pass on_nonfinite='skip' to skip such steps."
    )
    return NonFiniteLossError(
        message,
        epoch=epoch,
        step=step,
        batch=batch,
        member=member if members.stacked else None,
        state=state,
        history=histories if members.stacked else histories[0],
    )


class SignalStop:
    """Turns SIGINT (Ctrl-C) and SIGTERM into a request to stop training between epochs.

    Inside ``with SignalStop() as stop:`` the first SIGINT or SIGTERM prints a notice on
    stderr and makes ``stop()`` true, so ``fit(..., stop=stop)`` ends once the epoch in
    progress is over and returns the state it reached; save it there, still inside the
    ``with``. A second signal ends the process at once, with exit status
    ``128 + signal`` (130 for SIGINT, 143 for SIGTERM), even in the middle of a compiled
    epoch: a watcher thread reads the signals from `signal.set_wakeup_fd`, since Python's
    own handlers wait until the compiled call returns. A checkpoint at a path then stays
    whole: `funcnet.checkpoint.save` writes atomically.

    Attributes:
      signum: the first signal received, or None.
      exit_code: ``128 + signum`` (None before a signal).

    Outside the main thread, or with ``install=False``, it installs nothing and ``stop()``
    stays false.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *, name: str = "funcnet", install: bool = True):
        self.name, self.install = name, install
        self.signum: int | None = None
        self._saved: tuple[dict[int, Any], int] | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int | None:
        return None if self.signum is None else 128 + self.signum

    def __enter__(self) -> SignalStop:
        if not self.install or threading.current_thread() is not threading.main_thread():
            return self
        read, write = os.pipe()
        os.set_blocking(write, False)  # set_wakeup_fd needs a non-blocking descriptor
        handlers = {s: signal.signal(s, _noted) for s in self.SIGNALS}
        wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._saved = (handlers, wakeup)
        self._pipe = (read, write)
        self._watcher = threading.Thread(
            target=self._watch, args=(read,), name="funcnet-signals", daemon=True
        )
        self._watcher.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._saved is None:
            return
        handlers, wakeup = self._saved
        for s, handler in handlers.items():  # a signal from here on has its usual effect
            signal.signal(s, handler)
        signal.set_wakeup_fd(wakeup)
        read, write = self._pipe
        os.close(write)  # the watcher reads end-of-file and returns
        self._watcher.join()
        os.close(read)
        self._saved = None

    def _watch(self, read: int) -> None:
        while data := os.read(read, 64):
            for signum in data:
                if signum not in self.SIGNALS:
                    continue
                what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                if self.signum is None:
                    self.signum = signum
                    again = "Ctrl-C" if signum == signal.SIGINT else "the signal"
                    _tell(
                        f"{self.name}: {what}: stopping after the current epoch to write a "
                        f"checkpoint; {again} again stops at once"
                    )
                else:
                    _tell(f"{self.name}: {what} again: stopped at once")
                    os._exit(128 + signum)


def _noted(signum: int, frame: Any) -> None:
    """The Python-level handler: nothing to do, `SignalStop`'s watcher acts on the signal."""
    del signum, frame


def _tell(line: str) -> None:
    try:
        sys.stderr.write(f"\n{line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed: the exit status still says it
        pass
