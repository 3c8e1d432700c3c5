"""Timing helpers shared by every benchmark, and the description of the machine they ran on.

Every number in a run comes from `measure`: the work is warmed up (compilation and first
dispatch excluded), a step count is chosen so that one repeat lasts about `min_time` seconds,
and the per-step time is the median over `repeats` repeats of that many steps. Callers block
on their results at the end of each repeat (`jax.block_until_ready`), so asynchronous dispatch
is counted in full but never waited on between steps, as in a real training loop.
"""

from __future__ import annotations

import collections
import datetime
import functools
import importlib.metadata
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import jax


class Timing(NamedTuple):
    """Seconds per unit of work (one step, one gradient, ...), over `repeats` repeats.

    `median` is the figure reported; `low` and `high` are the fastest and slowest repeat, so a
    reader sees the spread; `units` is how many units each repeat ran.
    """

    median: float
    low: float
    high: float
    units: int
    repeats: int

    def as_dict(self) -> dict[str, float | int]:
        return self._asdict()


def block(tree):
    """Waits until every array in `tree` is computed; returns `tree`."""
    return jax.block_until_ready(tree)


def run_calls(calls: Iterable[Callable[[], object]], window: int = 16) -> None:
    """Makes each call in turn and waits until all their results are computed.

    Independent JAX calls may run concurrently, so waiting for the last result alone does not
    prove the others finished. Up to `window` results are left in flight (dispatch stays
    asynchronous, memory stays bounded); the oldest is waited for when more are pending.
    """
    pending: collections.deque = collections.deque()
    for call in calls:
        pending.append(call())
        if len(pending) > window:
            jax.block_until_ready(pending.popleft())
    jax.block_until_ready(list(pending))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds of one call of `fn` (which must block on its own results)."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def measure(
    run: Callable[[int], object],
    *,
    repeats: int,
    min_time: float,
    max_units: int = 1_000_000,
    warmup: int = 1,
) -> Timing:
    """Median seconds per unit of `run(n)`, which does `n` units of work and blocks at the end.

    `run(warmup)` is called first and not counted. The unit count per repeat starts at 1 and
    doubles (those calls also serve as warm-up) until one repeat takes at least `min_time`
    seconds or reaches `max_units`; then `repeats` repeats of that many units are timed.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if warmup:
        run(warmup)
    units = 1
    while True:
        elapsed, _ = timed(functools.partial(run, units))
        if elapsed >= min_time or units >= max_units:
            break
        # Extrapolate towards min_time, growing at least 2x and at most 100x per try.
        guess = math.ceil(units * min_time / max(elapsed, 1e-9) * 1.1)
        units = min(max_units, 100 * units, max(2 * units, guess))
    samples = []
    for _ in range(repeats):
        elapsed, _ = timed(functools.partial(run, units))
        samples.append(elapsed / units)
    return Timing(statistics.median(samples), min(samples), max(samples), units, repeats)


def measure_interleaved(
    runs: dict[str, Callable[[int], object]],
    *,
    repeats: int,
    min_time: float,
    max_units: int = 1_000_000,
) -> dict[str, Timing]:
    """`measure` for several contenders at once, their repeats taken in turns.

    Each contender is warmed up and sized as in `measure`; then every round times one
    repeat of each, in the same order, so load that comes and goes on a shared machine
    falls on all of them alike and their ratios stay meaningful.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    units = {}
    for name, run in runs.items():
        run(1)
        count = 1
        while True:
            elapsed, _ = timed(functools.partial(run, count))
            if elapsed >= min_time or count >= max_units:
                break
            guess = math.ceil(count * min_time / max(elapsed, 1e-9) * 1.1)
            count = min(max_units, 100 * count, max(2 * count, guess))
        units[name] = count
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            elapsed, _ = timed(functools.partial(run, units[name]))
            samples[name].append(elapsed / units[name])
    return {
        name: Timing(statistics.median(v), min(v), max(v), units[name], repeats)
        for name, v in samples.items()
    }


def first_call(fn: Callable[[], object]) -> float:
    """Seconds of the first call of `fn`: tracing, compilation and one execution."""
    elapsed, _ = timed(fn)
    return elapsed


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or `platform.processor()` elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, object]:
    """What the numbers were measured on: CPU, usable cores, OS, Python, JAX's devices."""
    devices = jax.devices()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu": cpu_model(),
        "cores": usable or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d.device_kind) for d in devices],
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _torch_threads() -> int | None:
    """PyTorch's intra-op thread count, if PyTorch is installed (it is imported only to ask)."""
    try:
        import torch
    except ImportError:
        return None
    return torch.get_num_threads()


def machine_slug(info: dict[str, object]) -> str:
    """A file name for a machine, ``{cpu model}-{cores}c-{backend}``: ``amd-epyc-2c-cpu``."""
    words = "".join(c if c.isalnum() else " " for c in str(info["cpu"]).lower()).split()
    noise = {"processor", "cpu", "with", "radeon", "graphics", "core", "tm", "r"}
    name = "-".join(w for w in words if w not in noise)[:40] or "machine"
    return f"{name}-{info['cores']}c-{info['jax_backend']}"


PACKAGES = ("funcnet", "jax", "jaxlib", "numpy", "optax", "flax", "equinox", "dm-haiku", "torch")


def versions() -> dict[str, str | None]:
    """Installed version of each library a run touches; None for those not installed."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if found["funcnet"] is None:  # run from a checkout without an install
        import funcnet

        found["funcnet"] = f"{funcnet.__version__} (not installed, from {funcnet.__path__[0]})"
    return found


def timestamp() -> str:
    """The current time in UTC, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
