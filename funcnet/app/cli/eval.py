"""`funcnet eval`: a checkpoint's best state on one split of its data."""

from __future__ import annotations

import argparse
import json
from typing import Any

from funcnet.app.cli.common import CommandError, deployed, evaluate_state, open_checkpoint


def add_parser(commands: Any) -> None:
    """Adds the ``eval`` subcommand to `commands`."""
    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint's best state on a split",
        description="Rebuild the model of a `funcnet train` checkpoint and report loss and "
        "accuracy (mean squared error for a regression) of its best state.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file of `funcnet train`")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    run, states = open_checkpoint(args.checkpoint)
    data = getattr(run.data, args.split)
    if data is None:
        raise CommandError(f"this run has no {args.split} split")
    task = run.metadata["config"].get("task", "classification")
    metrics = evaluate_state(
        run.model, deployed(states["best"]), data, run.metadata.get("members", 1), task=task
    )
    if args.json:
        print(json.dumps({"split": args.split, "examples": len(data[1]), **metrics}))
    elif task == "regression":
        print(f"{args.split}: {len(data[1])} examples, mean squared error {metrics['loss']:.4g}")
    else:
        print(
            f"{args.split}: {len(data[1])} examples, loss {metrics['loss']:.4f}, "
            f"accuracy {metrics['accuracy']:.4f}"
        )
    return 0
