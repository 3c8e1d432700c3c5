"""Cost of second-order products relative to one gradient, for MLPs of 10² to 10⁴ parameters.

For each size: one gradient of the loss, a Hessian-vector product in each of the three
compositions of `funcnet.diff.hvp` (forward-over-reverse, reverse-over-reverse,
reverse-over-forward), and the dense Hessian from `funcnet.diff.flat_hessian`. Each is
jitted, warmed up (compilation excluded), and timed over `repeats` rounds of enough calls
to last about `min_time` seconds; the fastest round is kept (`seconds_per_call`). The
ratio of an HVP to a gradient is the figure the literature puts at 2-4× (Pearlmutter 1994;
Griewank & Walther, *Evaluating Derivatives*); the dense Hessian costs about n HVPs.

The model: inputs of 16 features, two tanh hidden layers of equal width h chosen so the
parameter count h² + 28h + 10 is near the requested size, 10 classes, softmax
cross-entropy over a fixed batch of 128 random examples.

    python benchmarks/bench_second_order.py                       # 10², 10³, 10⁴ parameters
    python benchmarks/bench_second_order.py --sizes 100 1000 --repeats 3
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import funcnet.diff as fd

IN_FEATURES = 16
CLASSES = 10
BATCH = 128
HVP_MODES = ("fwd_rev", "rev_rev", "rev_fwd")


def hidden_width(n_params: int) -> int:
    """Width h of both hidden layers so that h² + 28h + 10 ≈ n_params (at least 1)."""
    a = IN_FEATURES + 1 + 1 + CLASSES  # the linear coefficient, 28
    return max(1, round((-a + math.sqrt(a * a + 4 * max(n_params - CLASSES, 0))) / 2))


def problem(n_params: int, seed: int = 0) -> tuple[Callable, dict, tuple]:
    """`(loss, params, batch)` of the benchmark MLP, `loss(params, batch) -> scalar`."""
    h = hidden_width(n_params)
    rng = np.random.default_rng(seed)
    sizes = (IN_FEATURES, h, h, CLASSES)
    params = {
        f"dense_{i}": {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m), jnp.float32),
            "b": jnp.zeros(n, jnp.float32),
        }
        for i, (m, n) in enumerate(itertools.pairwise(sizes))
    }
    x = jnp.asarray(rng.normal(size=(BATCH, IN_FEATURES)), jnp.float32)
    y = jnp.asarray(rng.integers(0, CLASSES, size=BATCH))

    def loss(params: dict, batch: tuple) -> jax.Array:
        x, y = batch
        for i in range(len(sizes) - 2):
            x = jnp.tanh(x @ params[f"dense_{i}"]["w"] + params[f"dense_{i}"]["b"])
        last = params[f"dense_{len(sizes) - 2}"]
        logits = x @ last["w"] + last["b"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    return loss, params, (x, y)


def seconds_per_call(
    timed: dict[str, tuple[Callable, tuple]], *, repeats: int, min_time: float
) -> dict[str, float]:
    """Seconds per call of each function, compilation excluded, least disturbed repeat.

    Each function is warmed up, then the repeats go round-robin over the functions, each
    repeat a batch of calls lasting about `min_time`, so that a change in the machine's load
    falls on all of them alike; the fastest repeat is kept, as `timeit` advises, since other
    processes only ever add time. A call that alone lasts over a second (the dense Hessian
    at 10⁴ parameters) is timed once.
    """
    calls = {}
    best = {}
    for name, (fn, args) in timed.items():
        jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        once = max(time.perf_counter() - start, 1e-7)
        if once > 1.0:
            best[name] = once
        else:
            calls[name] = max(1, math.ceil(min_time / once))
            best[name] = math.inf
    for _ in range(repeats):
        for name, count in calls.items():
            fn, args = timed[name]
            start = time.perf_counter()
            for _ in range(count):
                out = fn(*args)
            jax.block_until_ready(out)
            best[name] = min(best[name], (time.perf_counter() - start) / count)
    return best


def contenders(loss: Callable, params: dict, batch: tuple, *, dense: bool) -> dict:
    """name -> (jitted function, its arguments) for the gradient, HVPs and dense Hessian."""
    n = sum(leaf.size for leaf in jax.tree.leaves(params))
    v = jax.tree.map(lambda a: jnp.full_like(a, 1 / math.sqrt(n)), params)
    timed = {"grad": (jax.jit(jax.grad(loss)), (params, batch))}
    for mode in HVP_MODES:
        hvp = jax.jit(lambda p, v, b, mode=mode: fd.hvp(lambda q: loss(q, b), p, v, mode=mode))
        timed[f"hvp_{mode}"] = (hvp, (params, v, batch))
    if dense:
        hessian = jax.jit(lambda p, b: fd.flat_hessian(lambda q: loss(q, b), p)[0])
        timed["hessian"] = (hessian, (params, batch))
    return timed


def run(
    sizes: list[int],
    repeats: int,
    *,
    min_time: float = 0.2,
    dense_max: int = 10_000,
) -> list[dict]:
    """Time a gradient, the three HVP compositions and the dense Hessian at each size.

    Args:
      sizes: approximate parameter counts, e.g. `[100, 1_000, 10_000]`.
      repeats: timed rounds per figure; the fastest is reported.
      min_time: seconds one repeat lasts at least.
      dense_max: the dense Hessian (n² entries) is skipped for sizes above this.

    Returns:
      One dict per size: `params` (the exact count), `hidden` (the width h), times in µs
      per call (`grad_us`, `hvp_<mode>_us`, `hessian_us`), and ratios to one gradient
      (`hvp_<mode>_ratio`, `hessian_ratio`); the Hessian entries are None when skipped.
    """
    rows = []
    for size in sizes:
        loss, params, batch = problem(size)
        n = sum(leaf.size for leaf in jax.tree.leaves(params))
        timed = contenders(loss, params, batch, dense=size <= dense_max)
        row = {"params": n, "hidden": hidden_width(size)}
        seconds = seconds_per_call(timed, repeats=repeats, min_time=min_time)
        for name in ("grad", *(f"hvp_{m}" for m in HVP_MODES), "hessian"):
            row[f"{name}_us"] = round(1e6 * seconds[name], 1) if name in seconds else None
        for name in (*(f"hvp_{m}" for m in HVP_MODES), "hessian"):
            ratio = seconds[name] / seconds["grad"] if name in seconds else None
            row[f"{name}_ratio"] = None if ratio is None else round(ratio, 2)
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table: times in µs, then ratios to one gradient."""
    header = (
        "| params | grad µs | fwd-rev µs | rev-rev µs | rev-fwd µs | Hessian µs "
        "| fwd-rev / grad | rev-rev / grad | rev-fwd / grad | Hessian / grad |"
    )
    lines = [header, "|" + "---:|" * 10]
    fmt = lambda value, unit="": "–" if value is None else f"{value:,.1f}{unit}"
    for r in rows:
        cells = [
            f"{r['params']:,}",
            fmt(r["grad_us"]),
            *(fmt(r[f"hvp_{m}_us"]) for m in HVP_MODES),
            fmt(r["hessian_us"]),
            *(fmt(r[f"hvp_{m}_ratio"], "×") for m in HVP_MODES),
            fmt(r["hessian_ratio"], "×"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.2)
    parser.add_argument("--dense-max", type=int, default=10_000)
    args = parser.parse_args(argv)
    rows = run(args.sizes, args.repeats, min_time=args.min_time, dense_max=args.dense_max)
    devices = ", ".join(d.device_kind for d in jax.devices())
    print(f"float32, batch {BATCH}, {jax.default_backend()} ({devices})\n")
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
