"""`funcnet plot`: the learning curves of one or more runs on one figure."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from funcnet.app.cli.common import EPOCHS, METRICS, CommandError


def add_parser(commands: Any) -> None:
    """Adds the ``plot`` subcommand to `commands`."""
    p = commands.add_parser(
        "plot",
        help="draw and compare the learning curves of runs",
        description=f"Read each run folder's {EPOCHS} (written as epochs end, so a run "
        f"stopped midway has its history up to there), or its {METRICS}, and draw every "
        "run's training and held-out curves on one figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("runs", nargs="+", help="run folders of `funcnet train` (its --out)")
    p.add_argument("--out", default="runs.png", help="figure to write")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(run=run)


def read_history(folder: str | pathlib.Path) -> dict[str, list[float]]:
    """A run's history, ``{metric: [value per epoch]}``, from its folder.

    ``metrics.jsonl`` is read first, one JSON object per epoch; a last line cut off by a
    killed run is left out. An ensemble's per-member values are averaged. Without it, the
    ``history`` of ``metrics.json`` is used.
    """
    folder = pathlib.Path(folder)
    if (folder / EPOCHS).exists():
        history: dict[str, list[float]] = {}
        for line in (folder / EPOCHS).read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line a killed run did not finish
            for name, value in record.items():
                if isinstance(value, list):
                    value = sum(value) / len(value)
                history.setdefault(name, []).append(value)
        if history:
            return history
    if (folder / METRICS).exists():
        history = json.loads((folder / METRICS).read_text()).get("history")
        if isinstance(history, list):  # an ensemble: the first member's history
            history = history[0]
        if history:
            return history
    raise CommandError(f"{folder} holds no {EPOCHS} or {METRICS} with a history")


def run(args: argparse.Namespace) -> int:
    from funcnet.app import plots

    histories = {str(folder): read_history(folder) for folder in args.runs}
    path = plots.plot_runs(histories, args.out, title=args.title)
    print(f"wrote {path}")
    return 0
