"""Growth: the memory, compile time and step time of a deep transformer, unrolled or scanned,
with and without rematerialisation.

The model is a pre-norm transformer on float inputs, ``transformer_block × L → layer_norm →
dense(width)``, trained on a mean-squared error with Adam; one step is
``value_and_grad + adam + apply_updates`` under one `jax.jit`. Four ways to build the stack of
L blocks, the same params (converted with `funcnet.nn.serial_to_repeat`):

- ``serial``: ``serial(block, ..., block)``, unrolled;
- ``serial_remat``: the same with each block in `funcnet.nn.remat`;
- ``repeat``: `funcnet.nn.repeat` (one `lax.scan` over stacked params);
- ``repeat_remat``: ``repeat(block, L, remat=True)``;
- ``repeat_remat_bfloat16``: the last under ``funcnet.nn.mixed_precision(model, "bfloat16")``
  (params float32, compute bfloat16, output float32), where that module exists.

Figures per row: ``temp_mb``, the compiled step's temporary buffers
(``compiled.memory_analysis().temp_size_in_bytes``, the activations kept for the backward
pass among them); ``compile_s``, tracing, lowering and XLA compilation of the step (the median
of `compile_repeats` fresh builds); ``step_s``, the median step time after warm-up, the rows'
repeats interleaved (`benchmarks.timing.measure_interleaved`). Ratios are to ``serial``; the
bfloat16 row also has ``temp_vs_float32`` and ``step_vs_float32``, against ``repeat_remat``.

Targets (at 12 blocks): ``repeat_remat``'s temporary memory at most 35% of ``serial``'s, its
step at most 1.4× ``serial``'s, and ``repeat``'s compile time at most a quarter of
``serial``'s.

    python -m benchmarks.bench_growth            # 12 blocks, width 256, seq 256, batch 16
    python -m benchmarks.bench_growth --smoke    # tiny sizes, one repeat

Nothing here is CPU-specific: on a GPU the same figures are those of the GPU's compiled step.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

import funcnet
from benchmarks import timing
from funcnet import nn


class Growth(NamedTuple):
    """The sizes and repeat counts of one run."""

    name: str
    blocks: int
    width: int
    heads: int
    mlp: int
    seq: int
    batch: int
    repeats: int
    min_time: float
    compile_repeats: int


FULL = Growth("full", 12, 256, 4, 1024, 256, 16, 3, 0.0, 1)
SMOKE = Growth("smoke", 2, 32, 2, 64, 16, 2, 1, 0.0, 1)
LEARNING_RATE = 1e-3


def models(size: Growth) -> dict[str, nn.Layer]:
    """The rows' models, by row name."""
    block = nn.transformer_block(size.heads, size.mlp, causal=True)

    def head(stack):
        return nn.serial(stack, nn.layer_norm(), nn.dense(size.width))

    found = {
        "serial": head(nn.serial(*[block] * size.blocks)),
        "serial_remat": head(nn.serial(*[nn.remat(block)] * size.blocks)),
        "repeat": head(nn.repeat(block, size.blocks)),
        "repeat_remat": head(nn.repeat(block, size.blocks, remat=True)),
    }
    if hasattr(nn, "mixed_precision"):
        found["repeat_remat_bfloat16"] = nn.mixed_precision(found["repeat_remat"], "bfloat16")
    return found


def _params_for(name: str, serial_params: dict) -> dict:
    """The unrolled model's params in the form of row `name`'s model."""
    if not name.startswith("repeat"):
        return serial_params
    stack = nn.serial_to_repeat(serial_params["serial_0"])
    return {"repeat_0": stack, **{k: v for k, v in serial_params.items() if k != "serial_0"}}


def make_step(model: nn.Layer) -> Callable:
    """One training step ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""
    optimizer = funcnet.optim.adam(LEARNING_RATE)

    def loss_fn(params, x, y):
        out, _ = model.apply(params, {}, x)
        return jnp.mean((out - y) ** 2)

    def step(params, opt_state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return funcnet.optim.apply_updates(params, updates), opt_state, loss

    return step, optimizer


def compile_step(model: nn.Layer, params, x, y):
    """``(compiled, seconds, opt_state)``: a fresh build of the step, timed from tracing to the
    end of XLA's compilation."""
    step, optimizer = make_step(model)
    opt_state = optimizer.init(params)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, x, y).compile()
    return compiled, time.perf_counter() - start, opt_state


def run(size: Growth = FULL, log=print) -> dict:
    """Measures every row; returns ``{"size": ..., "rows": [...], "targets": [...],
    "markdown": ...}``."""
    built = models(size)
    key = jax.random.key(0)
    in_shape = (size.batch, size.seq, size.width)
    _, serial_params, _ = built["serial"].init(key, in_shape)
    x = jax.random.normal(jax.random.fold_in(key, 1), in_shape)
    y = jax.random.normal(jax.random.fold_in(key, 2), in_shape)

    rows, runs = {}, {}
    for name, model in built.items():
        params = _params_for(name, serial_params)
        seconds = []
        for _ in range(size.compile_repeats):
            compiled, elapsed, opt_state = compile_step(model, params, x, y)
            seconds.append(elapsed)
        memory = compiled.memory_analysis()
        rows[name] = {
            "row": name,
            "temp_mb": memory.temp_size_in_bytes / 1e6,
            "argument_mb": memory.argument_size_in_bytes / 1e6,
            "compile_s": statistics.median(seconds),
        }
        log(
            f"  growth {name:22s} temp {rows[name]['temp_mb']:8.1f} MB  compile "
            f"{rows[name]['compile_s']:6.2f} s"
        )
        runs[name] = _runner(compiled, jax.tree.map(jnp.copy, params), opt_state, x, y)
        gc.collect()

    timings = timing.measure_interleaved(runs, repeats=size.repeats, min_time=size.min_time)
    base = rows["serial"]
    for name, row in rows.items():
        row["step_s"] = timings[name].median
        row["step_low_s"], row["step_high_s"] = timings[name].low, timings[name].high
        for figure, ratio in (("temp_mb", "temp"), ("compile_s", "compile"), ("step_s", "step")):
            row[f"{ratio}_ratio"] = row[figure] / base[figure] if base[figure] else None
    if "repeat_remat_bfloat16" in rows:
        half, full = rows["repeat_remat_bfloat16"], rows["repeat_remat"]
        half["temp_vs_float32"] = half["temp_mb"] / full["temp_mb"] if full["temp_mb"] else None
        half["step_vs_float32"] = half["step_s"] / full["step_s"]
    # A smoke run's sizes are too small for the targets to mean anything.
    found = targets(rows, judged=size.name != "smoke")
    result = {
        "size": size._asdict(),
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "rows": list(rows.values()),
        "targets": found,
    }
    result["markdown"] = markdown(result)
    return result


def _runner(compiled, params, opt_state, x, y) -> Callable[[int], object]:
    """``run(n)``: n steps of the compiled step on its own (donated) state, blocking at the end."""
    state = [params, opt_state]

    def run(n):
        loss = None
        for _ in range(n):
            state[0], state[1], loss = compiled(state[0], state[1], x, y)
        return jax.block_until_ready(loss)

    return run


def targets(rows: dict[str, dict], *, judged: bool = True) -> list[dict]:
    """The three targets, each ``{"target", "met", "figure"}``; `met` is None unless
    `judged`."""
    remat, scan = rows["repeat_remat"], rows["repeat"]
    found = [
        {
            "target": "repeat + remat: temporary memory ≤ 35% of the unrolled serial's",
            "met": remat["temp_ratio"] <= 0.35,
            "figure": f"{100 * remat['temp_ratio']:.1f}%",
        },
        {
            "target": "repeat + remat: step time ≤ 1.4× the unrolled serial's",
            "met": remat["step_ratio"] <= 1.4,
            "figure": f"{remat['step_ratio']:.2f}×",
        },
        {
            "target": "repeat: compile time ≤ 1/4 of the unrolled serial's",
            "met": scan["compile_ratio"] <= 0.25,
            "figure": f"{scan['compile_ratio']:.2f}×",
        },
    ]
    return found if judged else [{**t, "met": None} for t in found]


def markdown(result: dict) -> str:
    """The table and the targets, as Markdown."""
    s = result["size"]
    lines = [
        f"Growth: {s['blocks']} pre-norm transformer blocks, width {s['width']}, {s['heads']} "
        f"heads, MLP {s['mlp']}, sequence {s['seq']}, batch {s['batch']}; training step "
        f"(MSE + Adam), {result['backend']} ({result['device']}).",
        "",
        "| model | temp MB | × serial | compile s | × serial | step s | × serial |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['row']} | {row['temp_mb']:.1f} | {row['temp_ratio']:.2f} | "
            f"{row['compile_s']:.2f} | {row['compile_ratio']:.2f} | {row['step_s']:.3f} | "
            f"{row['step_ratio']:.2f} |"
        )
    half = next((r for r in result["rows"] if "temp_vs_float32" in r), None)
    if half is not None:
        lines += [
            "",
            f"bfloat16 against float32 (both repeat + remat): temp memory "
            f"{half['temp_vs_float32']:.2f}×, step time {half['step_vs_float32']:.2f}×.",
        ]
    else:
        lines += ["", "No bfloat16 row: funcnet.nn.mixed_precision is not there."]
    lines.append("")
    for t in result["targets"]:
        mark = {True: "**met**", False: "**not met**", None: "not judged (smoke sizes)"}[t["met"]]
        lines.append(f"- {mark} — {t['target']}: {t['figure']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    result = run(size, log=lambda message: print(message, file=sys.stderr, flush=True))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in result.items() if k != "markdown"}, f, indent=1)
    print(result["markdown"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
