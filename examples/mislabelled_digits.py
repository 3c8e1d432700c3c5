"""Finding wrong labels by self-influence: flip 5% of the digits' training labels, train an
MLP on them, and rank the training examples by how much each one's own loss depends on it.

The self-influence of a training example z = (x, y) at the trained params θ̂ is

    s(z) = ∇ℓ(z, θ̂)ᵀ (G + λI)⁻¹ ∇ℓ(z, θ̂),

with G the Gauss-Newton matrix of the mean training loss (`funcnet.diff.self_influence`,
formed exactly here: the MLP has 2,410 params). n·(ℓ(z, θ̂₋z) − ℓ(z, θ̂)) ≈ s(z): an example that
the rest of the data contradicts, such as a wrong label, is one that the model fits only because
it is in the training set, and it ranks high (Koh & Liang 2017, §5.4). The script reports the
precision among the top 5% (the fraction of them that were flipped; chance is 5%) and draws
the fraction of flipped labels found against the fraction of the data checked, in the order of
self-influence, of the training loss (a strong baseline on a model that does not memorise its
data) and at random.

    python examples/mislabelled_digits.py [--epochs 30] [--out DIR]
"""

from __future__ import annotations

import argparse
import pathlib

import jax
import numpy as np

import funcnet as fn

FLIPPED_FRACTION = 0.05


def flip_labels(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`y` with a `fraction` of its labels moved to another class drawn uniformly; and the
    flipped rows."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(y), round(fraction * len(y)), replace=False)
    noisy = y.copy()
    noisy[rows] = (y[rows] + rng.integers(1, 10, len(rows))) % 10
    return noisy, rows


def found_curve(scores: np.ndarray, flipped: np.ndarray) -> np.ndarray:
    """The fraction of flipped rows among the first k rows by descending score, k = 1 … n."""
    hit = np.isin(np.argsort(-scores, kind="stable"), flipped)
    return np.cumsum(hit) / len(flipped)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--damping", type=float, default=1e-3, help="λ added to G")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="folder for the figure")
    args = parser.parse_args(argv)

    split = fn.data.digits()
    x, x_test = fn.data.standardize(split.x_train, split.x_test)
    y, flipped = flip_labels(np.asarray(split.y_train), FLIPPED_FRACTION, args.seed)
    net = fn.nn.serial(fn.nn.dense(32), fn.nn.tanh, fn.nn.dense(10))
    result = fn.train.fit(
        net,
        fn.optim.adamw(3e-3, weight_decay=1e-4),
        (x, y),
        loss_fn=fn.losses.softmax_cross_entropy,
        epochs=args.epochs,
        batch_size=64,
        key=jax.random.key(args.seed),
        progress=False,
    )
    params, model_state = result.state.params, result.state.model_state

    def model(p, inputs):
        return net.apply(p, model_state, inputs)[0]

    loss = fn.losses.softmax_cross_entropy
    scores = np.asarray(
        fn.diff.self_influence(model, loss, params, (x, y), method="exact", damping=args.damping)
    )
    losses = np.asarray(loss(model(params, x), y, reduction="none"))
    top = len(flipped) - 1  # the top 5%: as many rows as were flipped
    results = {
        "flipped": len(flipped),
        "n_train": len(y),
        "test_accuracy": float(fn.losses.accuracy(model(params, x_test), split.y_test)),
        "precision_self_influence": float(found_curve(scores, flipped)[top]),
        "precision_loss": float(found_curve(losses, flipped)[top]),
    }
    print(
        f"{len(flipped)} of {len(y)} training labels flipped; test accuracy "
        f"{results['test_accuracy']:.1%}\nprecision among the top 5% by self-influence: "
        f"{results['precision_self_influence']:.1%}; by training loss: "
        f"{results['precision_loss']:.1%}; at random: {FLIPPED_FRACTION:.0%}"
    )
    if args.out is not None:
        results["figure"] = str(draw(scores, losses, flipped, args.out))
    return results


def draw(scores: np.ndarray, losses: np.ndarray, flipped: np.ndarray, out: pathlib.Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checked = np.arange(1, len(scores) + 1) / len(scores)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(checked, found_curve(scores, flipped), label="by self-influence")
    ax.plot(checked, found_curve(losses, flipped), "--", label="by training loss")
    ax.plot(checked, checked, ":", color="grey", label="at random")
    ax.axvline(FLIPPED_FRACTION, color="black", linewidth=0.6)
    ax.set_xlim(0, 0.3)
    ax.set_xlabel("fraction of the training data checked")
    ax.set_ylabel("fraction of the flipped labels found")
    ax.set_title(f"Digits, {FLIPPED_FRACTION:.0%} of the training labels flipped")
    ax.legend(loc="best")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "mislabelled_digits.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
