"""Section 1: µs per MLP training step after compilation, for funcnet and each peer.

Each contender trains the same MLP from the same weights on the same batches (see
`benchmarks.workload` and `benchmarks.trainers`); the contenders' repeats are interleaved,
one of each per round. Per-step contenders are timed over many
steps, each a Python call; the scan-fused epoch is timed over whole epochs and its per-step
time is epoch time / steps. Ratios are to hand-written raw JAX on the same workload.
"""

from __future__ import annotations

import gc

from benchmarks import trainers, workload
from benchmarks.settings import Settings
from benchmarks.timing import measure_interleaved

BASELINE = "raw_jax"


def timed_rows(
    contenders: list[trainers.Contender], role: str, mlp: workload.MLP, settings: Settings
) -> list[dict]:
    """One row per contender: its median µs per step on `mlp`, or why it could not run.

    All contenders are built first, then timed in interleaved rounds (`measure_interleaved`).
    """
    weights, data = workload.initial_weights(mlp), workload.batches(mlp)
    rows, runners = {}, {}
    for contender in contenders:
        rows[contender.key] = {
            "mlp": role,
            "shape": mlp.label,
            "contender": contender.key,
            "title": contender.title,
            "outputs": contender.outputs,
        }
        try:
            runners[contender.key] = contender.make(mlp, weights, data, settings.epoch_steps[role])
        except trainers.Unavailable as err:
            rows[contender.key]["status"] = str(err)
    timings = measure_interleaved(
        {key: runner.run for key, runner in runners.items()},
        repeats=settings.repeats,
        min_time=settings.min_time,
    )
    for key, timing in timings.items():
        steps = runners[key].steps_per_call
        per_step = timing.median / steps
        rows[key].update(
            status="ok",
            us_per_step=per_step * 1e6,
            us_low=timing.low / steps * 1e6,
            us_high=timing.high / steps * 1e6,
            steps_per_repeat=timing.units * steps,
            repeats=timing.repeats,
            steps_per_s=1 / per_step,
            gflops=mlp.step_flops / per_step / 1e9,
        )
    del runners
    gc.collect()
    return list(rows.values())


def add_ratios(rows: list[dict]) -> list[dict]:
    """Adds ``ratio_to_raw_jax`` (time / raw JAX's time on the same MLP) to each timed row."""
    base = {
        r["mlp"]: r["us_per_step"]
        for r in rows
        if r["contender"] == BASELINE and "us_per_step" in r
    }
    for r in rows:
        if "us_per_step" in r and r["mlp"] in base:
            r["ratio_to_raw_jax"] = r["us_per_step"] / base[r["mlp"]]
    return rows


def run(settings: Settings, contenders: list[str] | None = None, log=print) -> dict:
    """Times every contender (or those named in `contenders`) on the small and medium MLPs."""
    chosen = [c for c in trainers.CONTENDERS if contenders is None or c.key in contenders]
    rows = []
    for name, mlp in settings.mlps.items():
        for row in timed_rows(chosen, name, mlp, settings):
            rows.append(row)
            figure = f"{row['us_per_step']:.1f} µs/step" if "us_per_step" in row else row["status"]
            log(f"  mlp {name:6s} {row['title']:28s} {figure}")
    mlps = {
        name: {**m._asdict(), "flops_per_step": m.step_flops} for name, m in settings.mlps.items()
    }
    return {"rows": add_ratios(rows), "mlps": mlps}
