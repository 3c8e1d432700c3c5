"""Section 6: matmul-bound efficiency of the medium MLP step against this machine's peak.

The peak is measured in the same run: the FLOP/s of a jitted float32 ``n × n`` `jnp.dot`
(``2n³`` FLOPs) in its fastest repeat, the best this machine showed. `benchmarks.run`
measures it before the MLP section too and keeps the higher figure, so a load that changes
during the run cannot make the peak look lower than the MLP steps timed earlier.

For reference the same product is timed in PyTorch (MKL on CPU) when it is installed, and
the MLP's own largest product, ``(batch, 1024) × (1024, 1024)``, in JAX. An MLP step does
``6 · batch · Σ in·out`` matmul FLOPs (forward 2, backward 4); its efficiency is those FLOPs
per second over the peak.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import bench_mlp, trainers
from benchmarks.settings import Settings
from benchmarks.timing import measure, run_calls

REPORTED = ("funcnet", "funcnet_scan", "raw_jax")


def jax_matmul_flops(m: int, k: int, n: int, settings: Settings) -> float:
    """FLOP/s of a jitted float32 ``(m, k) × (k, n)`` `jnp.dot`, in the fastest repeat."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((m, k), dtype=np.float32))
    b = jnp.asarray(rng.standard_normal((k, n), dtype=np.float32))
    dot = jax.jit(jnp.dot)
    timing = measure(
        lambda calls: run_calls(functools.partial(dot, a, b) for _ in range(calls)),
        repeats=settings.repeats,
        min_time=settings.min_time,
    )
    return 2 * m * k * n / timing.low


def torch_matmul_flops(size: int, settings: Settings) -> float | None:
    """FLOP/s of a float32 ``size × size`` `torch.matmul`; None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)

    def run(calls):
        for _ in range(calls):
            torch.matmul(a, b)

    timing = measure(run, repeats=settings.repeats, min_time=settings.min_time)
    return 2 * size**3 / timing.low


def peak_flops(settings: Settings, log=print) -> float:
    """FLOP/s of the ``n × n`` float32 `jnp.dot` of `settings.matmul_size`, fastest repeat."""
    size = settings.matmul_size
    peak = jax_matmul_flops(size, size, size, settings)
    log(f"  peak: jnp.dot {size}² float32 {peak / 1e9:.1f} GFLOP/s")
    return peak


def run(
    settings: Settings,
    mlp_section: dict | None = None,
    earlier_peak: float | None = None,
    log=print,
) -> dict:
    """The peak, and the medium MLP step's FLOP/s and efficiency for each contender timed.

    The MLP figures come from `mlp_section` (the result of `bench_mlp.run`) when given;
    otherwise the medium MLP step of the `REPORTED` contenders is timed here. The peak is
    the higher of this measurement and `earlier_peak` (FLOP/s measured earlier in the run).
    """
    size = settings.matmul_size
    measured = [peak_flops(settings, log)] + ([earlier_peak] if earlier_peak else [])
    peak = max(measured)
    mlp = settings.mlps["medium"]
    widest = max(o for _, o in mlp.layers)
    shaped = jax_matmul_flops(mlp.batch, widest, widest, settings)
    torch_peak = torch_matmul_flops(size, settings)
    rows = [r for r in (mlp_section or {}).get("rows", []) if r["mlp"] == "medium"]
    if not rows:
        chosen = [c for c in trainers.CONTENDERS if c.key in REPORTED]
        rows = bench_mlp.timed_rows(chosen, "medium", mlp, settings)
    efficiency = []
    for row in rows:
        if "us_per_step" not in row:
            continue
        flops = mlp.step_flops / (row["us_per_step"] * 1e-6)
        efficiency.append(
            {
                "contender": row["contender"],
                "title": row["title"],
                "us_per_step": row["us_per_step"],
                "gflops": flops / 1e9,
                "fraction_of_peak": flops / peak,
            }
        )
    return {
        "matmul_size": size,
        "peak_gflops": peak / 1e9,
        "peak_measurements_gflops": [p / 1e9 for p in measured],
        "mlp_shape_matmul_gflops": shaped / 1e9,
        "mlp_shape": [mlp.batch, widest, widest],
        "torch_matmul_gflops": None if torch_peak is None else torch_peak / 1e9,
        "mlp": mlp.label,
        "flops_per_step": mlp.step_flops,
        "rows": efficiency,
    }
