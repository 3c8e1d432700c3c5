"""Runs the benchmarks and writes ``results/<machine>.json`` and ``RESULTS.md``.

    python -m benchmarks.run                 # the full run (about ten minutes on 2 cores)
    python -m benchmarks.run --smoke         # tiny sizes, one repeat: checks the code works
    python -m benchmarks.run --check         # the targets only, a few minutes; exit 1
                                             # when one is missed
    python -m benchmarks.run --only mlp,peak --contenders funcnet,raw_jax

`funcnet bench` calls `main` with its own arguments. Sections: ``mlp`` (training step per
contender), ``compile`` (first step), ``second_order`` (gradient vs HVPs vs Hessian; alias
``hvp``), ``per_example``, ``ensemble``, ``peak`` (matmul efficiency), ``scaling`` (data
parallel over 1, 2, 4, 8 devices and 2 processes; alias ``data_parallel``), ``families``
(a CNN, an LSTM, a GRU, a transformer and a batch-norm MLP against hand-written JAX, Flax
and Equinox).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

from benchmarks import (
    bench_compile,
    bench_ensemble,
    bench_families,
    bench_mlp,
    bench_peak,
    bench_per_example,
    bench_scaling,
    report,
    timing,
    trainers,
)
from benchmarks.settings import CHECK, FULL, SMOKE, Settings

SECTIONS = (
    "mlp",
    "compile",
    "second_order",
    "per_example",
    "ensemble",
    "peak",
    "scaling",
    "families",
)
ALIASES = {
    "hvp": "second_order",
    "per-example": "per_example",
    "ensembles": "ensemble",
    "data_parallel": "scaling",
}
HERE = Path(__file__).resolve().parent
# What `--check` runs: the sections and contenders its targets read.
CHECK_SECTIONS = ("mlp", "compile", "per_example", "scaling", "families")
CHECK_CONTENDERS = (
    "funcnet",
    "funcnet_scan",
    "raw_jax",
    "raw_jax_epoch",
    "flax_linen",
    "flax_nnx_cached",  # NNX's faster step; plain nnx.jit is never the fastest peer
    "equinox",
    "haiku",
    "torch",
)


def second_order(settings: Settings, log=print) -> dict:
    """Section 3, measured by `benchmarks.bench_second_order` (written with `funcnet.diff`)."""
    try:
        bench_second_order = importlib.import_module("benchmarks.bench_second_order")
    except ModuleNotFoundError as err:
        if err.name != "benchmarks.bench_second_order":
            raise
        return {"status": "not measured: benchmarks/bench_second_order.py is not there yet"}
    options = {}
    if "min_time" in inspect.signature(bench_second_order.run).parameters:
        options["min_time"] = settings.min_time
    rows = bench_second_order.run(list(settings.hvp_sizes), settings.repeats, **options)
    for row in rows:
        log("  second order: " + ", ".join(f"{k}={v}" for k, v in row.items()))
    section = {"rows": rows}
    if hasattr(bench_second_order, "markdown"):
        section["markdown"] = bench_second_order.markdown(rows)
    return section


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="funcnet bench",
        description="Time funcnet against hand-written JAX, Flax, Equinox, Haiku and PyTorch.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, one repeat (checks the code works)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="only the targets' figures (a few minutes); exit 1 if a target is missed",
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated sections to run, of {', '.join(SECTIONS)} (default: all; with "
        f"--check, those of {', '.join(CHECK_SECTIONS)})",
    )
    parser.add_argument(
        "--contenders",
        default=None,
        help="comma-separated contenders of the MLP and families sections, of "
        + ", ".join(c.key for c in trainers.CONTENDERS)
        + " (default: all)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for <machine>.json and RESULTS.md (default: benchmarks/results/ and "
        "benchmarks/RESULTS.md; a temporary folder for --smoke)",
    )
    parser.add_argument("--machine", default=None, help="the JSON file's name (default: from CPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    parser.add_argument("--quiet", action="store_true", help="print only the final tables")
    args = parser.parse_args(argv)
    if args.check and args.smoke:
        parser.error("--check and --smoke exclude each other")
    if args.check:
        args.contenders = args.contenders or ",".join(CHECK_CONTENDERS)
    allowed = CHECK_SECTIONS if args.check else SECTIONS
    only = args.only if args.only is not None else ",".join(allowed)
    sections = [ALIASES.get(s.strip(), s.strip()) for s in only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(allowed))
    if unknown:
        what = "sections with a --check target" if args.check else "sections"
        parser.error(f"unknown {what} {unknown}; choose from {', '.join(allowed)}")
    args.sections = [s for s in SECTIONS if s in sections]
    if args.contenders is not None:
        keys = [c.strip() for c in args.contenders.split(",") if c.strip()]
        known = {c.key for c in trainers.CONTENDERS}
        if set(keys) - known:
            parser.error(f"unknown contenders {sorted(set(keys) - known)}; choose from {known}")
        args.contenders = keys
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def destinations(args: argparse.Namespace, slug: str) -> tuple[Path, Path]:
    """Where the JSON and the Markdown go."""
    if args.out is not None:
        out = Path(args.out)
        return out / f"{slug}.json", out / "RESULTS.md"
    if args.smoke or args.check:
        out = Path(tempfile.mkdtemp(prefix="funcnet-bench-"))
        return out / f"{slug}.json", out / "RESULTS.md"
    return HERE / "results" / f"{slug}.json", HERE / "RESULTS.md"


def measure(args: argparse.Namespace, settings: Settings, log) -> dict:
    """Runs the chosen sections in order; each gets the ones before it where it needs them."""
    sections: dict = {}
    earlier_peak = None
    if "peak" in args.sections and "mlp" in args.sections:
        log("[peak, before the MLP section]")
        earlier_peak = bench_peak.peak_flops(settings, log=log)
    for name in args.sections:
        log(f"[{name}]")
        if name == "mlp":
            sections[name] = bench_mlp.run(settings, args.contenders, log=log)
        elif name == "compile":
            sections[name] = bench_compile.run(settings, args.contenders, log=log)
        elif name == "second_order":
            sections[name] = second_order(settings, log=log)
        elif name == "per_example":
            sections[name] = bench_per_example.run(settings, log=log)
        elif name == "ensemble":
            sections[name] = bench_ensemble.run(settings, log=log)
        elif name == "peak":
            sections[name] = bench_peak.run(settings, sections.get("mlp"), earlier_peak, log=log)
        elif name == "scaling":
            sections[name] = bench_scaling.run(settings, log=log)
        elif name == "families":
            sections[name] = bench_families.run(
                settings, args.contenders, sections.get("peak"), log=log
            )
    return sections


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmarks; prints the Markdown report and writes it with the JSON results."""
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = parse_args(argv)
    settings = SMOKE if args.smoke else CHECK if args.check else FULL
    if args.repeats is not None:
        settings = settings._replace(repeats=args.repeats)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    machine = timing.machine()
    slug = args.machine or machine_slug_for(machine, args.smoke)
    json_path, md_path = destinations(args, slug)
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    log(f"funcnet bench: {machine['cpu']}, {machine['cores']} cores, load {load_start}")
    sections = measure(args, settings, log)
    load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    results = {
        "timestamp": timing.timestamp(),
        "command": " ".join(["python -m benchmarks.run", *argv]),
        "smoke": args.smoke,
        "machine": machine,
        "versions": timing.versions(),
        "load_average": {"start": load_start, "end": load_end} if load_start else {},
        "settings": {
            "repeats": settings.repeats,
            "min_time": settings.min_time,
            "mlps": {k: v._asdict() for k, v in settings.mlps.items()},
            "epoch_steps": settings.epoch_steps,
        },
        "sections": sections,
    }
    results["targets"] = report.targets(results)
    text = report.markdown(results)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    md_path.write_text(text, encoding="utf-8")
    if args.check:
        return check_verdict(results["targets"], print)
    print(text)
    log(f"wrote {json_path} and {md_path}")
    return 0


def check_verdict(found: list[dict], show) -> int:
    """Prints each target of a `--check` run; 1 if a measured one is missed, else 0."""
    words = {True: "met", False: "MISSED", None: "not measured"}
    for target in found:
        show(f"{words[target['met']]:>12}  {target['target']}: {target['figure']}")
    return 1 if any(target["met"] is False for target in found) else 0


def machine_slug_for(machine: dict, smoke: bool) -> str:
    slug = timing.machine_slug(machine)
    return f"{slug}-smoke" if smoke else slug


if __name__ == "__main__":
    sys.exit(main())
