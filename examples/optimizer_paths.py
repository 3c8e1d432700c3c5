"""Every funcnet optimizer on the Rosenbrock and Beale functions, paths drawn on contour plots.

Each optimizer starts from the same point on each function and runs the same number of steps
with its torch defaults, except for the learning rate: a peak rate picked per optimizer and
function, decayed to zero by a cosine schedule. The whole run of each optimizer is one jitted
`lax.scan` that records the path.

Writes `optimizer_paths_rosenbrock.png` and `optimizer_paths_beale.png` to `--out` (default
`runs/`) and prints each optimizer's final distance to the minimum.

AdamW keeps its default decoupled weight decay (λ = 0.01): its fixed point, where the Adam
direction balances λ·x, lies short of the minimum, and the table shows by how much.

    python examples/optimizer_paths.py --out runs/ --steps 3000
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from jax import lax

import funcnet.optim as fo

matplotlib.use("Agg")  # files only, no display; chosen before pyplot loads
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator


def rosenbrock(xy: jax.Array) -> jax.Array:
    """(1 − x)² + 100·(y − x²)²; minimum 0 at (1, 1), at the end of a long curved valley."""
    x, y = xy[0], xy[1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(xy: jax.Array) -> jax.Array:
    """(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²; minimum 0 at (3, 0.5)."""
    x, y = xy[0], xy[1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


class Problem(NamedTuple):
    name: str
    loss: Callable[[jax.Array], jax.Array]
    start: tuple[float, float]
    minimum: tuple[float, float]
    window: tuple[float, float, float, float]  # x_min, x_max, y_min, y_max
    peak_rates: dict[str, float]


PROBLEMS = [
    Problem(
        "rosenbrock",
        rosenbrock,
        start=(-1.2, 1.0),
        minimum=(1.0, 1.0),
        window=(-2.0, 2.0, -1.0, 3.0),
        peak_rates={
            "sgd": 3e-3,
            "momentum": 1e-3,
            "nesterov": 1e-3,
            "adagrad": 1.0,
            "rmsprop": 1e-2,
            "adadelta": 1.0,
            "adam": 0.1,
            "adamw": 0.1,
            "nadam": 3e-2,
            "adamax": 1.0,
            "lion": 1e-2,
        },
    ),
    Problem(
        "beale",
        beale,
        start=(1.0, 1.4),
        minimum=(3.0, 0.5),
        window=(-0.5, 4.5, -1.5, 2.0),
        peak_rates={
            "sgd": 1e-2,
            "momentum": 3e-3,
            "nesterov": 3e-3,
            "adagrad": 1.0,
            "rmsprop": 3e-3,
            "adadelta": 1.0,
            "adam": 0.1,
            "adamw": 0.1,
            "nadam": 0.1,
            "adamax": 0.3,
            "lion": 1e-2,
        },
    ),
]


def path(
    opt: fo.GradientTransformation,
    loss: Callable[[jax.Array], jax.Array],
    start: jax.Array,
    steps: int,
) -> jax.Array:
    """The iterates of `opt` on `loss` from `start`, an array of shape `(steps + 1, 2)`."""

    @jax.jit
    def run(xy: jax.Array) -> jax.Array:
        def step(carry, _):
            xy, state = carry
            updates, state = opt.update(jax.grad(loss)(xy), state, xy)
            xy = fo.apply_updates(xy, updates)
            return (xy, state), xy

        _, points = lax.scan(step, (xy, opt.init(xy)), None, length=steps)
        return jnp.concatenate([xy[None], points])

    return run(start)


# One colour per optimizer, none repeated: tab10's ten and black for the eleventh.
COLOURS = [*plt.get_cmap("tab10").colors, "black"]
# AdamW follows Adam until its weight decay tells; dashed, it leaves Adam's path visible.
STYLES = {"adamw": "--"}


def draw(problem: Problem, paths: dict[str, np.ndarray], out: Path) -> Path:
    """One contour panel per optimizer and one with all paths; returns the PNG's path."""
    x0, x1, y0, y1 = problem.window
    xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    zs = np.asarray(problem.loss(jnp.asarray(np.stack([xs, ys]))))  # the losses broadcast
    levels = np.logspace(-3, np.log10(zs.max()), 25)
    colours = dict(zip(paths, COLOURS, strict=False))

    fig, axes = plt.subplots(3, 4, figsize=(16, 13), sharex=True, sharey=True, layout="constrained")
    panels = [*zip(paths, axes.flat, strict=False), ("all", axes.flat[-1])]
    for name, ax in panels:
        ax.contour(xs, ys, zs, levels=levels, colors="0.7", linewidths=0.6)
        shown = paths if name == "all" else {name: paths[name]}
        for label, points in shown.items():
            finite = points[np.all(np.isfinite(points), axis=1)]
            style = STYLES.get(label, "-")
            ax.plot(finite[:, 0], finite[:, 1], style, color=colours[label], lw=1.4, label=label)
            ax.plot(*finite[-1], "o", color=colours[label], ms=4)
        ax.plot(*problem.start, "s", color="k", mfc="w", ms=7, label="start")
        ax.plot(*problem.minimum, "r*", ms=12, label="minimum")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
        # No tick at the window's edges, where neighbouring panels' labels would meet.
        ax.xaxis.set_major_locator(MaxNLocator(5, prune="both"))
        ax.yaxis.set_major_locator(MaxNLocator(5, prune="both"))
        ax.set_title(name if name == "all" else f"{name}  (peak rate {problem.peak_rates[name]:g})")
    fig.legend(*axes.flat[-1].get_legend_handles_labels(), loc="outside lower center", ncol=7)
    for ax in axes[-1]:
        ax.set_xlabel("x")
    for ax in axes[:, 0]:
        ax.set_ylabel("y")
    fig.suptitle(
        f"{problem.name}: paths from the square to the star (the minimum), dots at the end",
        fontsize=14,
    )
    target = out / f"optimizer_paths_{problem.name}.png"
    fig.savefig(target, dpi=80)
    plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs"), help="folder for the PNGs")
    parser.add_argument("--steps", type=int, default=3000, help="steps per optimizer")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    distances: dict[str, dict[str, float]] = {}
    for problem in PROBLEMS:
        paths = {}
        for name, peak in problem.peak_rates.items():
            rate = fo.cosine_decay_schedule(peak, args.steps)
            opt = getattr(fo, name)(learning_rate=rate)
            points = np.asarray(path(opt, problem.loss, jnp.array(problem.start), args.steps))
            paths[name] = points
            gap = float(np.linalg.norm(points[-1] - np.array(problem.minimum)))
            distances.setdefault(name, {})[problem.name] = gap
        print(f"wrote {draw(problem, paths, args.out)}")

    names = [p.name for p in PROBLEMS]
    print(f"\nfinal distance to the minimum after {args.steps} steps")
    print(f"{'optimizer':<10}" + "".join(f"{n:>14}" for n in names))
    for name, row in distances.items():
        print(f"{name:<10}" + "".join(f"{row[n]:>14.2e}" for n in names))


if __name__ == "__main__":
    main()
