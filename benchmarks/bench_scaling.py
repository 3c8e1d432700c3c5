"""Section 7: data-parallel training, the same `fit` over 1, 2, 4, 8 devices and 2 processes.

Each configuration runs in a fresh Python process, because the number of forced host
devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``) is fixed when JAX starts,
and the two-process configuration is two processes joined by `funcnet.launch`. Every one
times the scan-fused epoch of `funcnet.train.fit` on the same global batches; the figure is
µs per optimizer step and its ratio to ``fit`` without a mesh in one process. Beside it, in
the same process, the hand-written epoch of `benchmarks.trainers.raw_jax_epoch` (same
shuffle, same scan, each batch's rows laid out over the same ``data`` axis; one-process
configurations only).

On a CPU, forced host devices share the machine's cores: this measures the cost of
partitioning the step and of its gradient all-reduce, not a speed-up. On a machine with N
accelerators the same code spreads the batch over them.

    python -m benchmarks.bench_scaling              # the full section, printed as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import trainers, workload
from benchmarks.settings import SETTINGS, Settings
from benchmarks.timing import measure_interleaved

ROOT = Path(__file__).resolve().parents[1]


def configurations(settings: Settings) -> list[dict]:
    """``{"label", "devices", "processes", "mesh"}`` of each configuration, baseline first."""
    rows = [{"label": "no mesh", "devices": 1, "processes": 1, "mesh": False}]
    for devices in settings.scaling_devices:
        rows.append({"label": f"{devices} device(s)", "devices": devices, "processes": 1})
    for processes in settings.scaling_processes:
        rows.append({"label": f"{processes} processes", "devices": 1, "processes": processes})
    return [{"mesh": True, **row} for row in rows]


def _worker_command(settings: Settings, config: dict, out: Path) -> list[str]:
    command = [sys.executable, "-m", "benchmarks.bench_scaling", "--worker", str(out)]
    command += ["--settings", settings.name, "--repeats", str(settings.repeats)]
    if not config["mesh"]:
        command.append("--no-mesh")
    if config["processes"] > 1:
        command.append("--distributed")
    return command


# A smoke run measures nothing, and its workers spend most of their time compiling: XLA's
# cheaper passes and older fused-loop emitters (as the test suite uses) cut
# that by more than half.
SMOKE_XLA_FLAGS = [
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
]


def _environment(devices: int, smoke: bool = False) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
    flags += SMOKE_XLA_FLAGS if smoke else []
    env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
    return env


def measure_configuration(settings: Settings, config: dict, timeout_s: float = 600) -> dict:
    """Runs one configuration in its own process(es); returns the leader's measurement."""
    from funcnet.launch import launch

    with tempfile.TemporaryDirectory(prefix="funcnet-scaling-") as folder:
        out = Path(folder) / "result.json"
        command = _worker_command(settings, config, out)
        env = _environment(config["devices"], smoke=settings.smoke)
        if config["processes"] > 1:
            code = launch(command, config["processes"], timeout_s=timeout_s, env=env)
        else:
            code = subprocess.run(command, env=env, cwd=ROOT, timeout=timeout_s).returncode
        if code != 0 or not out.exists():
            return {**config, "status": f"failed (exit code {code})"}
        return {**config, **json.loads(out.read_text(encoding="utf-8"))}


def run(settings: Settings, log=print) -> dict:
    """The section: one row per configuration, with its ratio to the no-mesh baseline."""
    mlp = settings.mlps[settings.scaling_mlp]
    rows = []
    for config in configurations(settings):
        row = measure_configuration(settings, config)
        rows.append(row)
        log(f"  scaling: {row}")
    base = rows[0].get("step_us")
    for row in rows:
        step = row.get("step_us")
        row["ratio"] = None if base is None or step is None else step / base
    return {
        "mlp": mlp.label,
        "epoch_steps": settings.scaling_epoch_steps,
        "cores": os.cpu_count(),
        "rows": rows,
    }


def worker(settings: Settings, out: Path, *, use_mesh: bool, distributed: bool) -> None:
    """One configuration's measurement, in this process (and its peers when distributed)."""
    if distributed:
        from funcnet.launch import initialize

        initialize()
    import jax

    import funcnet as fn

    mlp = settings.mlps[settings.scaling_mlp]
    steps = settings.scaling_epoch_steps
    mesh = fn.train.data_mesh() if use_mesh else None
    weights, data = workload.initial_weights(mlp), workload.batches(mlp)
    runner = trainers.funcnet_scan(mlp, weights, data, steps, mesh=mesh)
    runs = {"funcnet": runner.run}
    if not distributed:  # the hand-written baseline on the same devices, in the same process
        raw = trainers.raw_jax_epoch(mlp, weights, data, steps, mesh=mesh)
        runs["raw_jax"] = raw.run
    timings = measure_interleaved(runs, repeats=settings.repeats, min_time=settings.min_time)
    timing = timings["funcnet"]
    result = {
        "step_us": timing.median / runner.steps_per_call * 1e6,
        "low_us": timing.low / runner.steps_per_call * 1e6,
        "high_us": timing.high / runner.steps_per_call * 1e6,
        "mesh_devices": 1 if mesh is None else int(mesh.devices.size),
        "local_devices": jax.local_device_count(),
    }
    if "raw_jax" in timings:
        result["raw_jax_step_us"] = timings["raw_jax"].median / runner.steps_per_call * 1e6
    if jax.process_index() == 0:
        out.write_text(json.dumps(result), encoding="utf-8")
    if distributed:
        jax.distributed.shutdown()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument(
        "--settings", choices=sorted(SETTINGS), default=None, help=argparse.SUPPRESS
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-mesh", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = SETTINGS[args.settings or ("smoke" if args.smoke else "full")]
    if args.repeats is not None:
        settings = settings._replace(repeats=args.repeats)
    if args.worker is not None:
        worker(settings, args.worker, use_mesh=not args.no_mesh, distributed=args.distributed)
    else:
        print(json.dumps(run(settings), indent=1))


if __name__ == "__main__":
    main()
