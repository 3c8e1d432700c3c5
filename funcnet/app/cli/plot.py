"""`funcnet plot`: the learning curves of one or more runs on one figure."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

from funcnet.app.cli.common import EPOCHS, METRICS, CommandError, loss_name, output_file


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

    ``metrics.jsonl`` is read first, one JSON object per epoch; a line that is not one (the
    last line of a killed run, cut short) is left out, and so is any value that is not a
    number or a list of numbers. An ensemble's per-member values are averaged. Without it,
    the ``history`` of ``metrics.json`` is used.
    """
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        what = "a file" if folder.exists() else "missing"
        raise CommandError(f"{folder} is {what}; expected the folder of a `funcnet train` run")
    history: dict[str, list[float]] = {}
    if (folder / EPOCHS).is_file():
        for line in _text(folder / EPOCHS).splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line a killed run did not finish
            if isinstance(record, dict):
                _append(history, record)
        if _usable(history):
            return history
    if (folder / METRICS).is_file():
        try:
            report = json.loads(_text(folder / METRICS))
        except json.JSONDecodeError as err:
            raise CommandError(f"{folder / METRICS} is not JSON ({err})") from err
        found = report.get("history") if isinstance(report, dict) else None
        if isinstance(found, list) and found:  # an ensemble: the first member's history
            found = found[0]
        history = {}
        if isinstance(found, dict):
            for name, values in found.items():
                if isinstance(values, list):
                    for value in values:
                        _append(history, {name: value})
        if _usable(history):
            return history
    raise CommandError(f"{folder} holds no {EPOCHS} or {METRICS} with a history")


def _text(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError as err:
        raise CommandError(f"{path} is not text ({err})") from err


def _append(history: dict[str, list[float]], record: dict) -> None:
    """Adds a record's numbers (an ensemble's list of them averaged) to `history`."""
    for name, value in record.items():
        if isinstance(value, list) and value and all(_is_number(v) for v in value):
            value = sum(value) / len(value)
        if _is_number(value):
            history.setdefault(name, []).append(float(value))


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _usable(history: dict[str, list[float]]) -> bool:
    """Whether a history has a loss to draw."""
    return bool(history.get("loss") or history.get("val_loss"))


def _loss_name(folders: list[str]) -> str:
    """The loss the runs share (from their metrics.json), else ``loss``."""
    tasks = set()
    for folder in folders:
        try:
            report = json.loads((pathlib.Path(folder) / METRICS).read_text())
            tasks.add(report["config"]["task"])
        except (OSError, ValueError, KeyError, TypeError):
            tasks.add(None)
    return loss_name(tasks.pop()) if len(tasks) == 1 and None not in tasks else "loss"


def run(args: argparse.Namespace) -> int:
    from funcnet.app import plots

    out = output_file(args.out, figure=True)
    histories = {str(folder): read_history(folder) for folder in args.runs}
    path = plots.plot_runs(histories, out, title=args.title, loss_name=_loss_name(args.runs))
    print(f"wrote {path}")
    return 0
