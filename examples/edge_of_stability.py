"""Edge of stability: full-batch gradient descent drives the sharpness to 2/η and holds it there.

Gradient descent θ ← θ − η ∇L(θ) on a quadratic L(θ) = ½ θᵀHθ multiplies the component of θ
along an eigenvector of H with eigenvalue λ by (1 − ηλ) each step. It shrinks when
0 < λ < 2/η and grows, with alternating sign, when λ > 2/η: the classical stability bound
of gradient descent is a sharpness S(θ) = λ_max(∇²L(θ)) below 2/η. Cohen et al. (2021),
"Gradient Descent on Neural Networks Typically Occurs at the Edge of Stability" (Figure 1),
observed two things about neural networks trained with full-batch gradient descent:

- progressive sharpening: S(θ_t) rises during training, from well below 2/η;
- edge of stability: once S reaches 2/η it stops rising and hovers at (or just above) 2/η,
  while the loss keeps falling over long horizons but no longer monotonically (single steps
  increase it).

This example repeats that experiment on the 8×8 digits: the first `--examples` training
digits (centred), one-hot targets y, and an MLP 64 → width → … → 10 with tanh hidden
layers, its weights drawn as PyTorch draws a linear layer's, w ~ U(−1/√fan_in, 1/√fan_in)
(biases zero). The loss is the square loss of the paper,

    L(θ) = (1/n) Σᵢ ½ ‖f(xᵢ; θ) − yᵢ‖²,

trained from the same initial θ with full-batch gradient descent (`funcnet.optim.sgd`, the
`funcnet.train.train_step` scanned over `--every` steps in one compiled call) at each
learning rate of `--learning-rates`. Every `--every` steps the sharpness is measured with
`funcnet.diff.hessian_eigs` (Lanczos on Hessian-vector products over the whole training
set, the Hessian never formed). The figure `edge_of_stability.png` in `--out` shows, as the
paper's Figure 1, the training loss against the step (top) and the sharpness against the
step with a dashed line at 2/η (bottom), one colour per η. The table gives per η the first
tracked step with S ≥ 2/η, the mean of S over the last `--tail` of the tracked points
relative to 2/η, and the number of steps that increased the loss.

Run: python examples/edge_of_stability.py [--out runs/] [--steps 4000] [--every 20]
"""

import argparse
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import funcnet
import funcnet.diff as fd

NUM_CLASSES = 10
DEFAULT_LEARNING_RATES = (2 / 4, 2 / 7, 2 / 10)
# PyTorch's nn.Linear weights: U(−1/√fan_in, 1/√fan_in), i.e. variance 1/(3 fan_in).
TORCH_LINEAR_INIT = funcnet.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def model(width: int, depth: int) -> funcnet.nn.Layer:
    """An MLP with `depth` tanh hidden layers of `width` units and 10 linear outputs."""
    layers = []
    for _ in range(depth):
        layers += [funcnet.nn.dense(width, w_init=TORCH_LINEAR_INIT), funcnet.nn.tanh]
    return funcnet.nn.serial(*layers, funcnet.nn.dense(NUM_CLASSES, w_init=TORCH_LINEAR_INIT))


def square_loss(outputs: jax.Array, targets: jax.Array) -> jax.Array:
    """(1/n) Σᵢ ½ ‖outputsᵢ − targetsᵢ‖², both of shape `(n, classes)`; a scalar."""
    return 0.5 * outputs.shape[-1] * funcnet.losses.mse(outputs, targets)


def load_data(examples: int) -> tuple[jax.Array, jax.Array]:
    """The first `examples` training digits, centred, shape `(n, 64)`, and one-hot targets
    of shape `(n, 10)`."""
    data = funcnet.data.digits()
    available = data.x_train.shape[0]
    if not 1 <= examples <= available:
        raise ValueError(f"--examples must be between 1 and {available}, got {examples}")
    x = data.x_train[:examples]
    return x - jnp.mean(x, axis=0), jax.nn.one_hot(data.y_train[:examples], NUM_CLASSES)


def full_batch_loss(
    net: funcnet.nn.Layer, batch: tuple[jax.Array, jax.Array]
) -> Callable[[dict], jax.Array]:
    """θ ↦ L(θ) on the whole training set, the function whose Hessian is measured."""
    x, targets = batch

    def loss(params: dict) -> jax.Array:
        outputs, _ = net.apply(params, {}, x)
        return square_loss(outputs, targets)

    return loss


def make_advance(net: funcnet.nn.Layer, batch: tuple[jax.Array, jax.Array], every: int) -> Callable:
    """A compiled `(state, η) -> (state, losses)` taking `every` full-batch GD steps.

    `losses` has shape `(every,)`: the loss at the params each step starts from. η is traced,
    so one compilation serves every learning rate.
    """

    @jax.jit
    def advance(state: funcnet.train.TrainState, learning_rate: jax.Array):
        step = funcnet.train.train_step(
            net, funcnet.optim.sgd(learning_rate), loss_fn=square_loss, metrics={}
        )

        def body(state, _):
            state, values = step(state, batch)
            return state, values["loss"]

        return jax.lax.scan(body, state, None, length=every)

    return advance


def train(
    net: funcnet.nn.Layer,
    batch: tuple[jax.Array, jax.Array],
    learning_rate: float,
    *,
    steps: int,
    every: int,
    lanczos_iters: int,
    key: jax.Array,
    advance: Callable,
    loss: Callable[[dict], jax.Array],
) -> dict:
    """Full-batch GD at `learning_rate`, with the sharpness measured every `every` steps.

    Returns `loss` of shape `(steps + 1,)` (L(θ_t), t = 0 … steps), `sharpness` and
    `tracked_steps` of shape `(steps / every + 1,)`, the final `params`, and the seconds
    spent in the steps and in the Lanczos runs.
    """
    init_key, lanczos_key = jax.random.split(key)
    optimizer = funcnet.optim.sgd(learning_rate)
    state = funcnet.train.init_train_state(net, optimizer, init_key, batch[0].shape)
    rate = jnp.asarray(learning_rate, jnp.float32)

    def sharpness(params: dict, index: int) -> float:
        eigs = fd.hessian_eigs(
            loss, params, key=jax.random.fold_in(lanczos_key, index), k=1, num_iters=lanczos_iters
        )
        return float(eigs.eigenvalues[0])

    losses, sharp = [], []
    step_seconds = lanczos_seconds = 0.0
    for index in range(steps // every):
        start = time.perf_counter()
        sharp.append(sharpness(state.params, index))
        lanczos_seconds += time.perf_counter() - start
        start = time.perf_counter()
        state, chunk = advance(state, rate)
        losses.append(np.asarray(chunk))
        step_seconds += time.perf_counter() - start
    start = time.perf_counter()
    sharp.append(sharpness(state.params, steps // every))
    lanczos_seconds += time.perf_counter() - start
    losses.append(np.asarray([loss(state.params)]))
    return {
        "learning_rate": learning_rate,
        "threshold": 2 / learning_rate,
        "loss": np.concatenate(losses),
        "sharpness": np.asarray(sharp),
        "tracked_steps": np.arange(0, steps + 1, every),
        "params": state.params,
        "step_seconds": step_seconds,
        "lanczos_seconds": lanczos_seconds,
    }


def summarise(run: dict, tail: float) -> dict:
    """The table's figures for one run: first step with S ≥ 2/η, the tail mean of S / (2/η),
    the count of loss increases L(θ_{t+1}) > L(θ_t)."""
    sharp, threshold = run["sharpness"], run["threshold"]
    reached = np.flatnonzero(sharp >= threshold)
    last = max(1, round(tail * len(sharp)))
    return {
        "first_reached": int(run["tracked_steps"][reached[0]]) if reached.size else None,
        "start_ratio": float(sharp[0] / threshold),
        "tail_ratio": float(np.mean(sharp[-last:]) / threshold),
        "loss_increases": int(np.sum(np.diff(run["loss"]) > 0)),
    }


def plot(runs: dict[float, dict], path: pathlib.Path, title: str) -> None:
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 7), sharex=True, layout="constrained")
    for i, (rate, run) in enumerate(runs.items()):
        colour = f"C{i}"
        top.plot(
            np.arange(run["loss"].size), run["loss"], color=colour, lw=0.8, label=f"η = {rate:.3g}"
        )
        bottom.plot(run["tracked_steps"], run["sharpness"], color=colour, lw=1.0)
        bottom.axhline(
            run["threshold"], color=colour, ls="--", lw=1.0, label=f"2/η = {run['threshold']:.3g}"
        )
    top.set_ylabel("train loss")
    top.legend()
    fig.suptitle(title)
    bottom.set_xlabel("step")
    bottom.set_ylabel(r"sharpness $\lambda_{\max}(\nabla^2 L)$")
    bottom.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2, help="number of tanh hidden layers")
    parser.add_argument(
        "--learning-rates", type=float, nargs="+", default=list(DEFAULT_LEARNING_RATES)
    )
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--every", type=int, default=20, help="steps between sharpness checks")
    parser.add_argument("--lanczos-iters", type=int, default=30)
    parser.add_argument("--tail", type=float, default=0.2, help="fraction of tracked points")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.every < 1 or args.steps < args.every or args.steps % args.every:
        raise ValueError(
            f"--steps must be a positive multiple of --every, got {args.steps} and {args.every}"
        )
    if min(args.learning_rates) <= 0:
        raise ValueError(f"--learning-rates must be positive, got {args.learning_rates}")
    if not 0 < args.tail <= 1:
        raise ValueError(f"--tail must be in (0, 1], got {args.tail}")

    batch = load_data(args.examples)
    net = model(args.width, args.depth)
    loss = full_batch_loss(net, batch)
    advance = make_advance(net, batch, args.every)
    key = jax.random.key(args.seed)
    hidden = " → ".join([str(args.width)] * args.depth)
    title = f"tanh MLP 64 → {hidden} → 10, square loss, {args.examples} digits, full-batch GD"
    print(title)

    runs, summaries = {}, {}
    for rate in args.learning_rates:
        runs[rate] = train(
            net,
            batch,
            rate,
            steps=args.steps,
            every=args.every,
            lanczos_iters=args.lanczos_iters,
            key=key,
            advance=advance,
            loss=loss,
        )
        summaries[rate] = summarise(runs[rate], args.tail)
    n = sum(leaf.size for leaf in jax.tree.leaves(runs[args.learning_rates[0]]["params"]))
    print(
        f"{n:,} parameters; sharpness every {args.every} steps, {args.lanczos_iters} Lanczos steps"
    )

    print(
        f"\n{'η':>7} {'2/η':>7} {'S at 0':>7} {'S ≥ 2/η at':>11} "
        f"{'tail S/(2/η)':>13} {'loss ↑ steps':>13} {'L(0)':>8} {'L(end)':>8} "
        f"{'GD s':>6} {'Lanczos s':>10}"
    )
    for rate, run in runs.items():
        s = summaries[rate]
        first = "never" if s["first_reached"] is None else str(s["first_reached"])
        print(
            f"{rate:7.4f} {run['threshold']:7.3f} {run['sharpness'][0]:7.3f} {first:>11} "
            f"{s['tail_ratio']:13.3f} {s['loss_increases']:13d} {run['loss'][0]:8.4f} "
            f"{run['loss'][-1]:8.4f} {run['step_seconds']:6.1f} {run['lanczos_seconds']:10.1f}"
        )

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "edge_of_stability.png"
    plot(runs, path, title)
    print(f"\nsaved {path}")
    return {"runs": runs, "summaries": summaries, "loss": loss, "figure": path}


if __name__ == "__main__":
    main()
