"""`funcnet predict`: a trained model's predictions for new examples, written as csv."""

from __future__ import annotations

import argparse
import csv
import pathlib
from typing import Any

import jax
import numpy as np

from funcnet.app.cli.common import CommandError, checkpoint_file, flat_features, output_file


def add_parser(commands: Any) -> None:
    """Adds the ``predict`` subcommand to `commands`."""
    p = commands.add_parser(
        "predict",
        help="predict new examples with a checkpoint's best state; write a csv",
        description="Rebuild the model of a `funcnet train --data` checkpoint from the file "
        "alone (funcnet.app.models.load), standardise the new examples as its training data "
        "was, and write one csv row per example: the class and each class's probability "
        "(the ensemble's mean for --members), or the regression's predicted targets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file of `funcnet train`")
    p.add_argument(
        "--data",
        required=True,
        help="new examples: .csv with the training file's feature columns, .npz with x, or .npy",
    )
    p.add_argument("--out", default="predictions.csv", help="csv file to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from funcnet.app import models
    from funcnet.app.datafile import DataFileError, read_features

    path = checkpoint_file(args.checkpoint)
    out = output_file(args.out)
    if any(out.resolve() == pathlib.Path(part).resolve() for part in args.data.split(",")):
        raise CommandError(f"--out {out} is the --data file; choose another name")
    try:
        trained = models.load(path)
    except (KeyError, TypeError, ValueError) as err:  # a foreign or malformed checkpoint
        raise CommandError(str(err)) from err
    info = trained.metadata.get("data_info")
    if not info:
        raise CommandError(
            f"{path} was trained on a bundled data set; predict needs a run of "
            "`funcnet train --data FILE`, whose checkpoint records how to read new examples"
        )
    try:
        x = read_features(args.data, info)
    except DataFileError as err:
        raise CommandError(str(err)) from err
    outputs = np.asarray(jax.jit(trained.outputs)(flat_features(x)))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as stream:
        writer = csv.writer(stream)
        if info["task"] == "regression":
            writer.writerow([f"y_{j}" for j in range(outputs.shape[1])])
            writer.writerows([f"{v:.7g}" for v in row] for row in outputs)
        else:
            classes = info["classes"]
            probs = np.asarray(jax.nn.softmax(outputs, axis=-1))
            writer.writerow(["class", *(f"p_{c}" for c in classes)])
            for row in probs:
                writer.writerow([classes[int(np.argmax(row))], *(f"{p:.6f}" for p in row)])
    print(f"wrote {out}: {len(outputs)} predictions")
    return 0
