"""The loss landscape of a small MLP on the digits: the path from initialisation to the
trained params, and the plane of two filter-normalised random directions around them.

A 64 → 32 → 10 ReLU network (2,410 parameters) is trained with full-batch Adam on the 8×8
digits. Then, with `funcnet.diff`:

- `linear_interpolation`: L((1 − α)θ₀ + αθ₁) from the initialisation θ₀ (α = 0) to the
  trained θ₁ (α = 1) and past both ends, on the training set (three batches) and on the test
  set, with the accuracy (Goodfellow, Vinyals and Saxe 2015). On this problem the training
  loss falls along the whole straight path, with no bump to climb over.
- `loss_surface`: L(θ₁ + αd₁ + βd₂) on a grid around the trained params, d₁ and d₂ drawn by
  `random_direction` and filter-normalised (each output unit's weights scaled to the norm of
  the trained weights into it, biases left out; Li et al. 2018).

Both panels go to `loss_landscape.png` in `--out`.

Run: python examples/loss_landscape.py [--out runs/] [--steps 500] [--grid 31] [--span 1]
"""

import argparse
import pathlib

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import funcnet
from funcnet.diff.landscape import linear_interpolation, loss_surface, random_direction

NUM_BATCHES = 3  # the training set (1,437 digits) as batches of 479


def model() -> funcnet.nn.Layer:
    return funcnet.nn.serial(funcnet.nn.dense(32), funcnet.nn.relu, funcnet.nn.dense(10))


def loss_and_accuracy(params: dict, batch: tuple[jax.Array, jax.Array]):
    """Mean softmax cross-entropy and accuracy of the network on one batch `(x, labels)`."""
    x, y = batch
    logits, _ = model().apply(params, {}, x)
    return funcnet.losses.softmax_cross_entropy(logits, y), funcnet.losses.accuracy(logits, y)


def train(params: dict, data: funcnet.data.Split, steps: int, learning_rate: float) -> dict:
    """Full-batch Adam on the training set."""
    optimizer = funcnet.optim.adam(learning_rate)

    def loss(p):
        return loss_and_accuracy(p, (data.x_train, data.y_train))[0]

    @jax.jit
    def step(params, opt_state):
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return funcnet.optim.apply_updates(params, updates), opt_state

    opt_state = optimizer.init(params)
    for _ in range(steps):
        params, opt_state = step(params, opt_state)
    return params


def cosine(a: dict, b: dict) -> float:
    dot = sum(jnp.vdot(u, v) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    norm_a = jnp.sqrt(sum(jnp.vdot(u, u) for u in jax.tree.leaves(a)))
    norm_b = jnp.sqrt(sum(jnp.vdot(v, v) for v in jax.tree.leaves(b)))
    return float(dot / (norm_a * norm_b))


def plot(results: dict, path: pathlib.Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    train_path, test_path = results["train_path"], results["test_path"]
    alphas = np.asarray(train_path.alphas)
    left.plot(alphas, train_path.losses, color="C0", label="training loss")
    left.plot(alphas, test_path.losses, color="C0", linestyle="--", label="test loss")
    left.set_yscale("log")
    left.set_xlabel("α   (0: initialisation, 1: trained)")
    left.set_ylabel("softmax cross-entropy")
    for end in (0, 1):
        left.axvline(end, color="gray", linestyle=":", linewidth=1)
    twin = left.twinx()
    twin.plot(alphas, train_path.accuracy, color="C3", label="training accuracy")
    twin.plot(alphas, test_path.accuracy, color="C3", linestyle="--", label="test accuracy")
    twin.set_ylabel("accuracy", color="C3")
    twin.set_ylim(0, 1.02)
    lines = left.get_legend_handles_labels()
    twin_lines = twin.get_legend_handles_labels()
    left.legend(lines[0] + twin_lines[0], lines[1] + twin_lines[1], fontsize=8, loc="best")
    left.set_title("L((1 − α)θ₀ + αθ₁), straight path from init to trained")

    surface = results["surface"]
    a, b, z = (np.asarray(v, np.float64) for v in (surface.alphas, surface.betas, surface.losses))
    levels = np.linspace(z.min(), np.percentile(z, 95), 30)
    filled = right.contourf(a, b, z.T, levels=levels, cmap="viridis", extend="max")
    contours = right.contour(a, b, z.T, levels=levels[::3], colors="w", linewidths=0.5)
    right.clabel(contours, fontsize=7, fmt="%.2f")
    fig.colorbar(filled, ax=right, label="training loss")
    right.plot([0], [0], "r+", markersize=12)
    right.set_xlabel("α (direction 1)")
    right.set_ylabel("β (direction 2)")
    right.set_aspect("equal")
    right.set_title("L(θ₁ + αd₁ + βd₂), filter-normalised d₁, d₂")
    fig.suptitle("Loss landscape of a 64 → 32 → 10 ReLU MLP on the 8×8 digits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--steps", type=int, default=500, help="Adam steps")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--path-points", type=int, default=41, help="α grid in [-0.5, 1.5]")
    parser.add_argument("--grid", type=int, default=31, help="surface points per axis, odd")
    parser.add_argument("--span", type=float, default=1.0, help="surface over [-S, S]²")
    args = parser.parse_args(argv)
    if args.path_points < 5 or args.path_points % 4 != 1:
        parser.error("--path-points must be 5, 9, 13, ... so that α = 0 and 1 lie on the grid")
    if args.grid < 3 or args.grid % 2 == 0:
        parser.error("--grid must be odd and at least 3, so that the centre lies on the grid")

    data = funcnet.data.digits()
    n_train = data.x_train.shape[0] // NUM_BATCHES * NUM_BATCHES
    size = n_train // NUM_BATCHES
    batches = [
        (data.x_train[i : i + size], data.y_train[i : i + size]) for i in range(0, n_train, size)
    ]
    init_key, d1_key, d2_key = jax.random.split(jax.random.key(0), 3)
    _, init, _ = model().init(init_key, data.x_train.shape)
    n = sum(leaf.size for leaf in jax.tree.leaves(init))
    print(f"MLP 64 → 32 → 10, {n:,} parameters; {n_train} training digits in {NUM_BATCHES} batches")
    trained = train(init, data, args.steps, args.learning_rate)

    alphas = np.linspace(-0.5, 1.5, args.path_points)
    settings = {"has_aux": True, "alphas": alphas}
    train_path = linear_interpolation(loss_and_accuracy, init, trained, batches=batches, **settings)
    test_path = linear_interpolation(
        loss_and_accuracy, init, trained, batch=(data.x_test, data.y_test), **settings
    )
    losses = np.asarray(train_path.losses)
    inside = (alphas >= 0) & (alphas <= 1)
    rises = np.diff(losses[inside])
    at = {round(float(a), 6): i for i, a in enumerate(alphas)}
    init_loss, trained_loss = (float(losses[at[a]]) for a in (0.0, 1.0))
    print(f"\nafter {args.steps} Adam steps, straight path θ₀ → θ₁ ({args.path_points} points):")
    print(f"  training loss {init_loss:.4f} at init (α = 0), {trained_loss:.4f} trained (α = 1)")
    print(
        f"  test accuracy {float(test_path.accuracy[at[0.0]]):.3f} → "
        f"{float(test_path.accuracy[at[1.0]]):.3f}"
    )
    print(
        f"  largest rise of the training loss between neighbouring α in [0, 1]: "
        f"{max(float(rises.max()), 0.0):.2e} (0 means it falls all the way)"
    )

    d1 = random_direction(d1_key, trained)
    d2 = random_direction(d2_key, trained)
    grid = np.linspace(-args.span, args.span, args.grid)
    surface = loss_surface(
        loss_and_accuracy, trained, (d1, d2), alphas=grid, batches=batches, has_aux=True
    )
    z = np.asarray(surface.losses)
    corner = np.unravel_index(np.argmin(z), z.shape)
    print(f"\nfilter-normalised plane around θ₁, {args.grid}×{args.grid} points in ±{args.span:g}:")
    print(f"  cosine(d₁, d₂) = {cosine(d1, d2):+.3f}")
    centre = float(z[args.grid // 2, args.grid // 2])  # the middle point is θ₁ itself
    print(f"  loss at the centre {centre:.4f}")
    print(
        f"  smallest on the grid {float(z.min()):.4f} at α = {grid[corner[0]]:+.2f}, "
        f"β = {grid[corner[1]]:+.2f}; largest {float(z.max()):.4f}"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "loss_landscape.png"
    results = {
        "params": n,
        "init": init,
        "trained": trained,
        "directions": (d1, d2),
        "train_path": train_path,
        "test_path": test_path,
        "init_loss": init_loss,
        "trained_loss": trained_loss,
        "largest_rise": max(float(rises.max()), 0.0),
        "surface": surface,
        "centre_loss": centre,
        "min_loss": float(z.min()),
        "figure": path,
    }
    plot(results, path)
    print(f"\nsaved {path}")
    return results


if __name__ == "__main__":
    main()
