"""Curvature-aware optimizers against Adam, in steps and in wall time, on two problems.

- Rosenbrock, L(x, y) = (1 − x)² + 100·(y − x²)², from (−1.2, 1), minimum 0 at (1, 1). It is
  a sum of squares of the residuals r = (1 − x, 10·(y − x²)), so Hessian-free with Gauss-
  Newton products is Levenberg–Marquardt on r (`outputs_fn = r`, `loss_of_outputs = ‖r‖²`).
- The 8×8 digits (`funcnet.data.digits`) with a one-hidden-layer tanh MLP and the softmax
  cross-entropy, trained by `funcnet.train.make_step` on fixed-size minibatches.

The optimizers: Adam, Sophia-G (Gauss-Newton-Bartlett diagonal, digits only: it needs class
logits), Sophia-H (Hutchinson diagonal), AdaHessian, and Hessian-free (Newton-CG) with the
Gauss-Newton matrix. The curvature optimizers take what they need besides the gradient as
extra args of `update` (the loss, `θ ↦ L(θ)`, the model's outputs, a key): on digits
`make_step` passes them; on Rosenbrock the scan below does, as any hand-written loop would.

Each run is one jitted step called in a Python loop, compiled before the clock starts; the
time of a step is measured with its result ready. The table gives, per optimizer, the final
loss (mean of the last tenth of the steps), the steps and the seconds until the loss first
falls below a target, the median time of a step, and on digits the test accuracy;
`curvature_optimizers.png` in `--out` draws loss against step and against time.

    python examples/curvature_optimizers.py [--out runs/] [--steps 1000] [--digits-steps 300]
"""

from __future__ import annotations

import argparse
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

import funcnet as fn
from funcnet.optim import GradientTransformation, accepts_extra_args

matplotlib.use("Agg")  # files only, no display; chosen before pyplot loads
import matplotlib.pyplot as plt

COLORS = {
    "adam": "C0",
    "sophia_g": "C1",
    "sophia_h": "C2",
    "adahessian": "C3",
    "hessian_free": "C4",
}
# Sophia-G and -H can take nearly the same steps; dashed, -H leaves -G visible beneath it.
STYLES = {"sophia_h": "--"}
ROSENBROCK_START = (-1.2, 1.0)
ROSENBROCK_TARGET = 1e-6
DIGITS_TARGET = 0.1


def residuals(params: dict[str, jax.Array]) -> jax.Array:
    """r(x, y) = (1 − x, 10·(y − x²)), shape (2,)."""
    x, y = params["xy"][0], params["xy"][1]
    return jnp.stack([1 - x, 10 * (y - x**2)])


def sum_of_squares(r: jax.Array) -> jax.Array:
    return jnp.sum(r**2)


def rosenbrock(params: dict[str, jax.Array]) -> jax.Array:
    """(1 − x)² + 100·(y − x²)² = ‖r‖²."""
    return sum_of_squares(residuals(params))


def rosenbrock_optimizers() -> dict[str, GradientTransformation]:
    """Each optimizer with the learning rate that did best in a small sweep on this problem,
    the rest at its defaults (but no weight decay, which would move the minimum)."""
    return {
        "adam": fn.optim.adam(0.2),
        "sophia_h": fn.optim.sophia(0.05, estimator="hutchinson", weight_decay=0.0),
        "adahessian": fn.optim.adahessian(1.0),
        "hessian_free": fn.optim.hessian_free(),
    }


def digits_optimizers() -> dict[str, GradientTransformation]:
    """Each optimizer with the learning rate that did best in a small sweep on the digits MLP;
    Hessian-free with a damping floor, without which `λ` falls towards 0 on batches of 256
    and the steps overfit each batch (see `hessian_free`'s `min_damping`)."""
    return {
        "adam": fn.optim.adam(3e-2),
        "sophia_g": fn.optim.sophia(1e-2, weight_decay=0.0),
        "sophia_h": fn.optim.sophia(1e-2, estimator="hutchinson", weight_decay=0.0),
        "adahessian": fn.optim.adahessian(0.15),
        "hessian_free": fn.optim.hessian_free(cg_iters=10, min_damping=1e-2),
    }


def timed_run(
    step: Callable[[Any, int], tuple[Any, jax.Array]], carry: Any, steps: int
) -> tuple[np.ndarray, np.ndarray, Any]:
    """Calls the jitted ``step(carry, i) -> (carry, loss)`` `steps` times (compiled by a first
    call on a copy beforehand); returns the losses, the seconds elapsed after each step and
    the last carry."""
    jax.block_until_ready(step(jax.tree.map(jnp.copy, carry), 0))
    losses, seconds = np.empty(steps), np.empty(steps)
    start = time.perf_counter()
    for i in range(steps):
        carry, loss = step(carry, i)
        losses[i] = float(loss)  # waits for the step
        seconds[i] = time.perf_counter() - start
    return losses, seconds, carry


def run_rosenbrock(opt: GradientTransformation, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Losses L(θ_t) before each step and the elapsed seconds, from `ROSENBROCK_START`."""
    params = {"xy": jnp.array(ROSENBROCK_START, jnp.float32)}
    root = jax.random.key(0)

    @jax.jit
    def step(carry, i):
        params, opt_state = carry
        value, grad = jax.value_and_grad(rosenbrock)(params)
        if accepts_extra_args(opt):
            extra = dict(
                value=value,
                grad=grad,
                value_fn=rosenbrock,
                outputs_fn=residuals,
                loss_of_outputs=sum_of_squares,
                key=jax.random.fold_in(root, i),
            )
            updates, opt_state = opt.update(grad, opt_state, params, **extra)
        else:
            updates, opt_state = opt.update(grad, opt_state, params)
        return (fn.optim.apply_updates(params, updates), opt_state), value

    losses, seconds, _ = timed_run(step, (params, opt.init(params)), steps)
    return losses, seconds


class DigitsTask(NamedTuple):
    """The digits data (first `train_size` training images), the MLP, its loss and evaluation."""

    split: fn.data.Split
    x: jax.Array
    y: jax.Array
    model: fn.nn.Layer
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array]
    evaluate: Callable[..., dict[str, jax.Array]]


def digits_task(hidden: int, train_size: int | None) -> DigitsTask:
    split = fn.data.digits()
    model = fn.nn.serial(fn.nn.dense(hidden), fn.nn.tanh, fn.nn.dense(10))
    loss_fn = fn.losses.softmax_cross_entropy
    evaluate = fn.train.make_evaluate(model, loss_fn=loss_fn)
    x, y = split.x_train[:train_size], split.y_train[:train_size]
    return DigitsTask(split, x, y, model, loss_fn, evaluate)


def run_digits(
    opt: GradientTransformation, steps: int, task: DigitsTask, *, batch_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Minibatch losses and elapsed seconds of `make_step`, and the final test accuracy."""
    state = fn.train.init_train_state(
        task.model, opt, jax.random.key(0), (batch_size, task.x.shape[1])
    )
    train_step = fn.train.make_step(task.model, opt, loss_fn=task.loss_fn)
    per_epoch = len(task.y) // batch_size
    order = np.random.default_rng(0).permutation(len(task.y))

    def step(state, i):
        rows = order[(i % per_epoch) * batch_size : (i % per_epoch + 1) * batch_size]
        state, metrics = train_step(state, (task.x[rows], task.y[rows]))
        return state, metrics["loss"]

    losses, seconds, state = timed_run(step, state, steps)
    test = task.evaluate(state.params, state.model_state, (task.split.x_test, task.split.y_test))
    return losses, seconds, float(test["accuracy"])


def first_below(losses: np.ndarray, seconds: np.ndarray, target: float) -> tuple[float, float]:
    """The 1-based step and the seconds at which the loss first falls below `target`."""
    hits = np.flatnonzero(losses < target)
    if not hits.size:
        return float("nan"), float("nan")
    return float(hits[0] + 1), float(seconds[hits[0]])


def summarise(losses, seconds, target, **more) -> dict[str, float]:
    steps_to, seconds_to = first_below(losses, seconds, target)
    tail = max(1, len(losses) // 10)
    return {
        "final_loss": float(np.mean(losses[-tail:])),
        "steps_to_target": steps_to,
        "seconds_to_target": seconds_to,
        # The median step: robust to the pauses of a shared machine.
        "ms_per_step": 1e3 * float(np.median(np.diff(seconds, prepend=0.0))),
        **more,
    }


def print_table(title: str, target: float, rows: dict[str, dict[str, float]]) -> None:
    print(f"\n{title} (target loss {target:g})")
    extra = "test acc" if any("test_accuracy" in r for r in rows.values()) else ""
    print(f"{'optimizer':<14}{'final loss':>12}{'steps to':>10}{'s to':>9}{'ms/step':>9}  {extra}")
    for name, r in rows.items():
        acc = f"{r['test_accuracy']:.3f}" if "test_accuracy" in r else ""
        print(
            f"{name:<14}{r['final_loss']:>12.3g}{r['steps_to_target']:>10.0f}"
            f"{r['seconds_to_target']:>9.3f}{r['ms_per_step']:>9.2f}  {acc}"
        )


def plot(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], path: pathlib.Path):
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.4), layout="constrained")
    for row, (problem, runs) in zip(axes, curves.items(), strict=True):
        for name, (losses, seconds) in runs.items():
            style = dict(label=name, color=COLORS[name], linestyle=STYLES.get(name, "-"))
            row[0].plot(np.arange(1, len(losses) + 1), losses, **style)
            row[1].plot(seconds, losses, **style)
        for ax, xlabel in zip(
            row, ["step", "seconds (compiled, excluding compilation)"], strict=True
        ):
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"{problem} loss")
            ax.grid(alpha=0.3)
        row[0].legend()
    fig.suptitle("Curvature-aware optimizers against Adam: loss by step and by wall time")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs every optimizer on both problems; returns ``{problem: {optimizer: figures}}`` and
    the figure's path under ``"figure"``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--steps", type=int, default=1000, help="Rosenbrock steps")
    parser.add_argument("--digits-steps", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=64, help="hidden units of the MLP")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--train-size", type=int, default=None, help="use the first N digits")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"rosenbrock": {}, "digits": {}}
    curves: dict[str, dict] = {"rosenbrock": {}, "digits": {}}
    for name, opt in rosenbrock_optimizers().items():
        losses, seconds = run_rosenbrock(opt, args.steps)
        curves["rosenbrock"][name] = (losses, seconds)
        results["rosenbrock"][name] = summarise(losses, seconds, ROSENBROCK_TARGET)
    task = digits_task(args.hidden, args.train_size)
    for name, opt in digits_optimizers().items():
        losses, seconds, accuracy = run_digits(
            opt, args.digits_steps, task, batch_size=args.batch_size
        )
        curves["digits"][name] = (losses, seconds)
        results["digits"][name] = summarise(losses, seconds, DIGITS_TARGET, test_accuracy=accuracy)

    print_table(f"Rosenbrock from {ROSENBROCK_START}", ROSENBROCK_TARGET, results["rosenbrock"])
    print_table(
        f"digits MLP, {args.hidden} tanh units, batches of {args.batch_size}",
        DIGITS_TARGET,
        results["digits"],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "curvature_optimizers.png"
    plot(curves, path)
    print(f"\nwrote {path}")
    results["figure"] = path
    return results


if __name__ == "__main__":
    main()
