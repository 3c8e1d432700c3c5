"""Section 2: how long the first training step takes, compilation included.

Each repeat builds the contender afresh (a new function, so nothing is cached in memory; JAX's
persistent compilation cache is off by default) and times its first call: tracing, lowering,
XLA compilation and one execution. The second call is timed too, and ``compile_s`` is the
difference, the cost of getting ready to run. PyTorch eager compiles nothing; its first step
pays for allocations and operator dispatch set-up only.
"""

from __future__ import annotations

import functools
import gc
import statistics

from benchmarks import trainers, workload
from benchmarks.settings import Settings
from benchmarks.timing import first_call


def first_calls(contender: trainers.Contender, role: str, mlp: workload.MLP, settings: Settings):
    """Seconds of the first and of the second call of one fresh build of the contender."""
    weights, data = workload.initial_weights(mlp), workload.batches(mlp)
    runner = contender.make(mlp, weights, data, settings.epoch_steps[role])
    first = first_call(functools.partial(runner.run, 1))
    second = first_call(functools.partial(runner.run, 1))
    del runner
    gc.collect()
    return first, second


def summary(row: dict, firsts: list[float], seconds: list[float], epoch: bool) -> dict:
    """One row: median first-call and compile seconds over the fresh builds."""
    compile_s = statistics.median(f - s for f, s in zip(firsts, seconds, strict=True))
    return {
        **row,
        "status": "ok",
        "first_call_s": statistics.median(firsts),
        "second_call_s": statistics.median(seconds),
        "compile_s": max(compile_s, 0.0),
        "repeats": len(firsts),
        "unit": "epoch" if epoch else "step",
    }


def run(settings: Settings, contenders: list[str] | None = None, log=print) -> dict:
    """Times the first step of every contender (or those in `contenders`) on both MLPs.

    The fresh builds are interleaved, one of each contender per round, so load that comes
    and goes on the machine falls on every contender alike.
    """
    chosen = [c for c in trainers.CONTENDERS if contenders is None or c.key in contenders]
    rows = []
    for role in settings.compile_mlps:
        mlp = settings.mlps[role]
        times: dict[str, tuple[list[float], list[float]]] = {}
        status: dict[str, str] = {}
        for _ in range(settings.compile_repeats):
            for contender in chosen:
                if contender.key in status:
                    continue
                try:
                    first, second = first_calls(contender, role, mlp, settings)
                except trainers.Unavailable as err:
                    status[contender.key] = str(err)
                    continue
                firsts, seconds = times.setdefault(contender.key, ([], []))
                firsts.append(first)
                seconds.append(second)
        for contender in chosen:
            row = {"mlp": role, "shape": mlp.label, "contender": contender.key}
            row["title"] = contender.title
            if contender.key in status:
                row = {**row, "status": status[contender.key]}
            else:
                row = summary(row, *times[contender.key], contender.epoch)
            rows.append(row)
            figure = f"{row['compile_s']:.3f} s" if "compile_s" in row else row["status"]
            log(f"  compile {role:6s} {contender.title:28s} {figure}")
    base = {
        r["mlp"]: r["compile_s"] for r in rows if r["contender"] == "raw_jax" and "compile_s" in r
    }
    for r in rows:
        if "compile_s" in r and base.get(r["mlp"]):
            r["ratio_to_raw_jax"] = r["compile_s"] / base[r["mlp"]]
    return {"rows": rows}
