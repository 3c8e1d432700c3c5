"""`funcnet bench`: the benchmark suite of a source checkout (`benchmarks/run.py`)."""

from __future__ import annotations

import importlib
import pathlib
import sys
from typing import Any


def add_parser(commands: Any) -> None:
    """Adds the ``bench`` subcommand to `commands`; its arguments go to the suite."""
    p = commands.add_parser(
        "bench",
        help="run the benchmark suite (benchmarks/run.py)",
        description="Run the benchmark suite of a source checkout; the remaining arguments go "
        "to it (`funcnet bench -- --help` shows its own options).",
    )
    p.add_argument("args", nargs="*", help="arguments for the benchmark suite")
    p.set_defaults(run=lambda args: run_suite(args.args))


def _benchmark_main():
    """`benchmarks.run.main` from the current folder or the source tree, or None."""
    candidates = [None, pathlib.Path(__file__).resolve().parents[3]]
    for root in candidates:
        if root is not None:
            if not (root / "benchmarks" / "run.py").exists():
                continue
            sys.path.insert(0, str(root))
        try:
            return importlib.import_module("benchmarks.run").main
        except ModuleNotFoundError as err:
            if err.name not in ("benchmarks", "benchmarks.run"):
                raise
        finally:
            if root is not None:
                sys.path.remove(str(root))
    return None


def run_suite(argv: list[str]) -> int:
    main = _benchmark_main()
    if main is None:
        print(
            "funcnet bench: the benchmark suite (benchmarks/run.py) is not available here; "
            "run it from a source checkout of funcnet that has the benchmarks/ folder.",
            file=sys.stderr,
        )
        return 2
    return int(main(argv[1:] if argv[:1] == ["--"] else argv) or 0)
