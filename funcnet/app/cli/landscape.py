"""`funcnet landscape`: the loss around a checkpoint along filter-normalised random directions."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import jax
import numpy as np

from funcnet.app.cli.common import (
    CommandError,
    best_of_member,
    check_memory,
    checkpoint_file,
    loss_for,
    non_negative_int,
    open_checkpoint,
    output_file,
    positive_float,
    positive_int,
    seed,
)


def add_parser(commands: Any) -> None:
    """Adds the ``landscape`` subcommand to `commands`."""
    p = commands.add_parser(
        "landscape",
        help="loss landscape around a checkpoint: a line or contour plot",
        description="The loss of a checkpoint's best params along one or two random "
        "filter-normalised directions (Li et al. 2018, funcnet.diff.loss_line / loss_surface), "
        "L(θ + αd₁ + βd₂) for α, β in [-span, span], on a split of the run's data, drawn as a "
        "line (--dims 1) or a contour plot (--dims 2); the grid also goes to a .json file "
        "beside the figure.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file of `funcnet train`")
    p.add_argument("--dims", type=int, choices=(1, 2), default=2, help="directions: line or plane")
    p.add_argument(
        "--steps", type=grid_steps, default=21, help="grid points per direction, at least 2"
    )
    p.add_argument("--span", type=span, default=1.0, help="grid runs over [-S, S]")
    p.add_argument("--split", choices=("train", "val", "test"), default="train", help="split")
    p.add_argument("--examples", type=positive_int, default=None, help="first N examples only")
    p.add_argument("--batch-size", type=positive_int, default=512, help="examples per batch")
    p.add_argument("--chunk", type=positive_int, default=16, help="grid points at once")
    p.add_argument("--member", type=non_negative_int, default=0, help="ensemble member")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random directions")
    p.add_argument(
        "--out", default=None, help="figure file (default: landscape.png beside the checkpoint)"
    )
    p.set_defaults(run=run)


def grid_steps(text: str) -> int:
    """Grid points per direction: an integer of at least 2 (a contour needs a 2 × 2 grid)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"expected at least 2 grid points, got {text!r}")
    return value


def span(text: str) -> float:
    """The grid's half-width: a positive number that float32, the params' type, holds."""
    value = positive_float(text)
    if value > float(np.finfo(np.float32).max):
        raise argparse.ArgumentTypeError(f"expected at most 3.4e38 (float32), got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from funcnet import losses
    from funcnet.diff.landscape import loss_line, loss_surface, random_direction

    checkpoint_file(args.checkpoint)
    out = output_file(
        pathlib.Path(args.checkpoint).parent / "landscape.png" if args.out is None else args.out,
        figure=True,
    )
    output_file(out.with_suffix(".json"), "--out")
    points = args.steps**args.dims
    # The loss and accuracy of every grid point, in float64 here and in the report's text.
    check_memory(8 * 4 * points, f"a grid of {points:,} points")
    run, states = open_checkpoint(args.checkpoint)
    best = best_of_member(run, states, args.member)
    split = getattr(run.data, args.split)
    if split is None:
        raise CommandError(f"this run has no {args.split} split")
    x, y = split
    if args.examples is not None:
        x, y = x[: args.examples], y[: args.examples]
    batches = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size])
        for i in range(0, len(y), args.batch_size)
    ]

    task = run.metadata["config"].get("task", "classification")
    loss_fn = loss_for(task)
    classification = task != "regression"
    model, model_state = run.model, best.model_state

    def loss(params, batch):
        outputs, _ = model.apply(params, model_state, batch[0])
        value = loss_fn(outputs, batch[1])
        return (value, losses.accuracy(outputs, batch[1])) if classification else value

    keys = jax.random.split(jax.random.key(args.seed), args.dims)
    directions = [random_direction(k, best.params) for k in keys]
    grid = np.linspace(-args.span, args.span, args.steps)
    settings = dict(batches=batches, has_aux=classification, chunk_size=args.chunk)
    if args.dims == 1:
        result = loss_line(loss, best.params, directions[0], alphas=grid, **settings)
    else:
        result = loss_surface(loss, best.params, directions, alphas=grid, **settings)
    loss_grid = np.asarray(result.losses, np.float64)
    if args.steps % 2:  # the middle grid point is the checkpoint itself
        centre = float(loss_grid[(args.steps // 2,) * args.dims])
    else:
        line = loss_line(loss, best.params, directions[0], alphas=[0.0], **settings)
        centre = float(line.losses[0])
    if not np.isfinite(loss_grid).any():
        raise CommandError(
            f"the loss is not finite anywhere on the grid (centre: {centre:.4g}); "
            "a smaller --span may help"
        )
    at = np.unravel_index(
        np.nanargmin(np.where(np.isfinite(loss_grid), loss_grid, np.nan)), loss_grid.shape
    )
    minimum_at = [float(grid[i]) for i in at]

    what = f"{args.split} loss, {len(y)} examples"
    figure = plot_landscape(result, out, title=f"{what}, filter-normalised directions")
    report = {
        "dims": args.dims,
        "split": args.split,
        "examples": len(y),
        "seed": args.seed,
        "grid": grid.tolist(),
        "losses": loss_grid.tolist(),
        "accuracy": None if result.accuracy is None else np.asarray(result.accuracy).tolist(),
        "centre_loss": centre,
        "min_loss": float(loss_grid[at]),
        "min_at": minimum_at,
    }
    report_path = out.with_suffix(".json")
    report_path.write_text(json.dumps(report) + "\n")
    where = ", ".join(f"{name} = {v:.3g}" for name, v in zip("αβ", minimum_at, strict=False))
    points = f"{args.steps}×{args.steps}" if args.dims == 2 else f"{args.steps}"
    print(f"{what}; {points} grid points in [-{args.span:g}, {args.span:g}]")
    print(f"loss at the centre: {centre:.4g}")
    print(f"minimum on the grid: {float(loss_grid[at]):.4g} at {where}")
    print(f"wrote {figure}, {report_path}")
    return 0


def plot_landscape(result: Any, path: str | pathlib.Path, *, title: str | None = None):
    """A `LossLine` as a line (with the accuracy on a second axis when it has one), or a
    `LossSurface` as a contour plot of the loss over (α, β) with the centre marked; saved to
    `path` with the Agg canvas. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(6.4, 5.0 if hasattr(result, "betas") else 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    losses = np.asarray(result.losses, np.float64)
    alphas = np.asarray(result.alphas, np.float64)
    if hasattr(result, "betas"):
        betas = np.asarray(result.betas, np.float64)
        finite = losses[np.isfinite(losses)]
        low, high = float(finite.min()), float(np.percentile(finite, 95))
        levels = np.linspace(low, max(high, low * (1 + 1e-6) + 1e-12), 30)
        filled = ax.contourf(alphas, betas, losses.T, levels=levels, cmap="viridis", extend="max")
        lines = ax.contour(alphas, betas, losses.T, levels=levels[::3], colors="w", linewidths=0.5)
        ax.clabel(lines, fontsize=7, fmt="%.3g")
        fig.colorbar(filled, ax=ax, label="loss")
        ax.plot([0], [0], "r+", markersize=12, label="the checkpoint (α = β = 0)")
        ax.set_xlabel("α (direction 1)")
        ax.set_ylabel("β (direction 2)")
        fig.legend(loc="outside lower center", fontsize=8)  # the contours fill the panel
    else:
        ax.plot(alphas, losses, color="tab:blue", label="loss")
        ax.axvline(0, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("α")
        ax.set_ylabel("loss", color="tab:blue")
        if result.accuracy is not None:
            twin = ax.twinx()
            twin.plot(alphas, np.asarray(result.accuracy), color="tab:red", label="accuracy")
            twin.set_ylabel("accuracy", color="tab:red")
            twin.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
    ax.set_title(title or "loss landscape")
    fig.savefig(path, dpi=110)
    return path
