"""Laplace approximations make a trained network's confidence honest, after the fact.

A network trained to a minimum of its loss predicts with the softmax of its logits, and is
usually overconfident: among the test digits it calls 99% sure, fewer than 99% are right.
The Laplace approximation (MacKay, 1992; Daxberger et al., 2021) turns the trained weights θ̂
into a Gaussian posterior N(θ̂, P⁻¹), P = H + δI with H the Gauss-Newton matrix of the summed
training loss, tunes the prior precision δ by the evidence, and predicts with the linearised
network, f ~ N(f(x; θ̂), J P⁻¹ Jᵀ), through the probit approximation
softmax(μ / √(1 + π/8 · diag Σ)). Nothing is retrained.

1. Digits (the 1,797 8×8 images of scikit-learn, 1,437 to train, 360 to test): an MLP
   64 → 32 (tanh) → 10 trained by Adam with a weak weight decay for `--steps` full-batch
   steps, then four Laplace variants: the last layer with the full matrix, and all weights
   with the full matrix, the diagonal and K-FAC's Kronecker factors. For each: the expected
   calibration error (ECE, 15 equal-width confidence bins: Σ_b (n_b/N) |acc_b − conf_b|),
   the test negative log-likelihood, the accuracy and the time to fit (curvature and δ).
2. Two moons (scikit-learn's `make_moons`): an MLP 2 → 20 → 20 → 2 (tanh) and a Laplace
   over all its weights. Far from the data the MAP network stays near-certain; the Laplace
   predictive's confidence falls towards ½, because J P⁻¹ Jᵀ grows away from the data.

Figure in `--out`: `laplace_digits.png`: the digits' reliability diagram (accuracy against
confidence per bin) before and after Laplace, and the two moons' confidence max_c p(c | x)
of the MAP network and of the Laplace predictive.

Run: python examples/laplace_digits.py [--out runs/] [--steps 3000]
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import make_moons

import funcnet as fn

BINS = 15
VARIANTS = {  # name: (subset, structure)
    "last layer, full": ("last_layer", "full"),
    "all, full": ("all", "full"),
    "all, diag": ("all", "diag"),
    "all, kron": ("all", "kron"),
}


def train(model, x, y, steps, weight_decay, seed):
    """Full-batch Adam on the mean cross-entropy plus `weight_decay`·½‖θ‖², one `lax.scan`."""
    _, params, _ = model.init(jax.random.key(seed), (1, x.shape[1]))
    opt = fn.optim.adam(3e-3)

    def loss(p):
        logits = model.apply(p, {}, x)[0]
        return fn.losses.softmax_cross_entropy(logits, y) + weight_decay * fn.losses.l2_penalty(p)

    def step(carry, _):
        p, state = carry
        updates, state = opt.update(jax.grad(loss)(p), state, p)
        return (fn.optim.apply_updates(p, updates), state), None

    (params, _), _ = jax.jit(lambda p: jax.lax.scan(step, (p, opt.init(p)), length=steps))(params)
    return params


def calibration(probs, labels, bins=BINS):
    """ECE and the reliability diagram's (confidence, accuracy, count) per non-empty bin."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append((confidence[inside].mean(), correct[inside].mean(), inside.sum()))
    conf, acc, count = (np.array(c) for c in zip(*rows, strict=True))
    ece = float(np.sum(count / len(labels) * np.abs(acc - conf)))
    return ece, conf, acc


def nll(probs, labels):
    picked = np.asarray(probs)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.maximum(picked, 1e-12))))


def digits_study(steps, quiet, variants=tuple(VARIANTS)):
    split = fn.data.digits()
    # A fifth of the training images is held out to choose δ by held-out NLL.
    order = np.random.default_rng(0).permutation(len(split.y_train))
    held, kept = order[: len(order) // 5], order[len(order) // 5 :]
    x_train, y_train = split.x_train[kept], split.y_train[kept]
    x_val, y_val = split.x_train[held], split.y_train[held]
    model = fn.nn.serial(fn.nn.dense(32), fn.nn.tanh, fn.nn.dense(10))
    params = train(model, x_train, y_train, steps, 1e-4, 0)

    def outputs_fn(p, x):
        return model.apply(p, {}, x)[0]

    map_probs = jax.nn.softmax(outputs_fn(params, split.x_test))
    results = {"MAP": summary(map_probs, split.y_test, None)}
    for name in variants:
        subset, structure = VARIANTS[name]
        started = time.perf_counter()
        post = fn.bayes.laplace(
            outputs_fn,
            params,
            (x_train, y_train),
            subset=subset,
            structure=structure,
            batch_size=None if structure == "kron" else 256,
        )
        jax.block_until_ready(post.curvature)
        fitted = time.perf_counter()
        tuned = fn.bayes.optimize_prior_precision(post)
        jax.block_until_ready(tuned.prior_precision)
        seconds = (fitted - started, time.perf_counter() - fitted)
        probs = fn.bayes.predictive(tuned, split.x_test)
        results[name + ", marglik δ"] = summary(probs, split.y_test, seconds)
        results[name + ", marglik δ"]["prior_precision"] = float(tuned.prior_precision)
        # δ by held-out NLL on a grid (laplace-torch's method="gridsearch").
        grid = np.logspace(-1, 3, 9)
        scores = [
            nll(fn.bayes.predictive(post._replace(prior_precision=jnp.asarray(d)), x_val), y_val)
            for d in grid
        ]
        best = post._replace(prior_precision=jnp.asarray(grid[int(np.argmin(scores))]))
        probs = fn.bayes.predictive(best, split.x_test)
        results[name + ", held-out δ"] = summary(probs, split.y_test, None)
        results[name + ", held-out δ"]["prior_precision"] = float(best.prior_precision)
    if not quiet:
        print(f"digits MLP 64-32-10, {fn.nn.param_count(params)} weights, {steps} Adam steps")
        print(
            f"{'':32s} {'ECE':>7s} {'NLL':>7s} {'acc':>6s} {'fit s':>6s} {'tune s':>6s} {'δ':>8s}"
        )
        for name, r in results.items():
            fit, tune = ("", "") if r["seconds"] is None else (f"{t:6.2f}" for t in r["seconds"])
            prior = f"{r['prior_precision']:8.3g}" if "prior_precision" in r else ""
            print(
                f"{name:32s} {r['ece']:7.4f} {r['nll']:7.4f} {r['accuracy']:6.3f} "
                f"{fit:>6s} {tune:>6s} {prior}"
            )
    return results


def summary(probs, labels, seconds):
    ece, conf, acc = calibration(probs, labels)
    accuracy = float(np.mean(np.asarray(probs).argmax(axis=1) == np.asarray(labels)))
    return {
        "ece": ece,
        "nll": nll(probs, labels),
        "accuracy": accuracy,
        "seconds": seconds,
        "curve": (conf, acc),
    }


def moons_study(steps, grid):
    x, y = make_moons(200, noise=0.15, random_state=0)
    x = x.astype(np.float32)
    model = fn.nn.serial(fn.nn.dense(20), fn.nn.tanh, fn.nn.dense(20), fn.nn.tanh, fn.nn.dense(2))
    params = train(model, x, y, steps, 1e-4, 1)

    def outputs_fn(p, x):
        return model.apply(p, {}, x)[0]

    post = fn.bayes.optimize_prior_precision(fn.bayes.laplace(outputs_fn, params, (x, y)))
    u, v = np.meshgrid(np.linspace(-3, 4, grid), np.linspace(-3, 3.5, grid))
    points = np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float32)
    map_conf = jax.nn.softmax(outputs_fn(params, points)).max(axis=1).reshape(u.shape)
    la_conf = fn.bayes.predictive(post, points).max(axis=1).reshape(u.shape)
    far = np.hypot(u - 0.5, v - 0.25) > 2.5
    return {
        "x": x,
        "y": y,
        "grid": (u, v),
        "map": np.asarray(map_conf),
        "laplace": np.asarray(la_conf),
        "far_map": float(np.mean(np.asarray(map_conf)[far])),
        "far_laplace": float(np.mean(np.asarray(la_conf)[far])),
    }


def plot(path, digits, moons):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 5.8))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", label="perfect calibration")
    # Dashed lines over the MAP's solid one: a Laplace curve that coincides with it (a large
    # δ) leaves it visible.
    styles = {
        "MAP": ("C3", "o", "-"),
        "last layer, full, held-out δ": ("C0", "s", "--"),
        "all, kron, held-out δ": ("C2", "^", "-."),
        "all, kron, marglik δ": ("C1", "v", ":"),
    }
    for name, (color, marker, style) in styles.items():
        conf, acc = digits[name]["curve"]
        label = f"{name} (ECE {digits[name]['ece']:.3f})"
        ax.plot(conf, acc, color=color, marker=marker, linestyle=style, label=label)
    ax.set_xlabel("confidence (mean max-probability in bin)")
    ax.set_ylabel("accuracy in bin")
    ax.set_title("Digits: reliability diagram")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=8)
    u, v = moons["grid"]
    for ax, key, title in (
        (axes[1], "map", "Two moons: MAP confidence"),
        (axes[2], "laplace", "Two moons: Laplace (GLM, probit) confidence"),
    ):
        filled = ax.contourf(u, v, moons[key], levels=np.linspace(0.5, 1.0, 11), cmap="viridis")
        for c, marker in ((0, "o"), (1, "x")):
            pts = moons["x"][moons["y"] == c]
            ax.scatter(pts[:, 0], pts[:, 1], s=8, c="white" if c else "black", marker=marker)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_title(title)
    fig.colorbar(filled, ax=axes[1:], label="max-probability")
    fig.suptitle("Laplace approximations: calibrated confidence without retraining")
    fig.subplots_adjust(bottom=0.32)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs")
    parser.add_argument("--steps", type=int, default=3000, help="Adam steps for each network")
    parser.add_argument("--grid", type=int, default=80, help="two-moons grid points per axis")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
        metavar="NAME",
        help=f"the Laplace variants on the digits, of {list(VARIANTS)}",
    )
    args = parser.parse_args(argv)
    digits = digits_study(args.steps, args.quiet, args.variants)
    moons = moons_study(args.steps, args.grid)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure = out / "laplace_digits.png"
    plot(figure, digits, moons)
    best = min((r["ece"], name) for name, r in digits.items() if name != "MAP")
    if not args.quiet:
        print(
            f"ECE {digits['MAP']['ece']:.4f} (MAP) -> {best[0]:.4f} ({best[1]}); two moons far "
            f"from the data: mean confidence {moons['far_map']:.3f} (MAP) -> "
            f"{moons['far_laplace']:.3f} (Laplace); figure {figure}"
        )
    return {"digits": digits, "moons": moons, "figure": figure}


if __name__ == "__main__":
    main()
