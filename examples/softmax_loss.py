"""The softmax classifier's loss, worked through on three images and three classes.

A linear classifier gives each image a score s_c per class c. Softmax reads the scores as
unnormalised log-probabilities,

    p_c = e^{s_c} / Σ_k e^{s_k},

and the loss of an image whose correct class is y is the negative log-likelihood of that class,

    L = −log p_y = −s_y + log Σ_k e^{s_k},

averaged over the images. Its gradient with respect to the scores is ∂L/∂s = p − 1_y. L > 0 for
any finite scores: it tends to 0 only as s_y − s_c → ∞ for every c ≠ y, and it grows without
bound as s_y falls below the others. With equal scores every p_c = 1/C and L = log C, which is
what a freshly initialised classifier with small weights should show (log 3 = 1.0986 here).

The script prints the table for the scores (3.2, 5.1, −1.7), (1.3, 4.9, 2.0), (2.2, 2.5, −3.1)
of a cat, a car and a frog image, and compares each loss with
`funcnet.losses.softmax_cross_entropy` and the gradient with `jax.grad`.

Run: python examples/softmax_loss.py
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn

CLASSES = ("cat", "car", "frog")
# one row per image (cat image, car image, frog image), one column per class
SCORES = np.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
LABELS = np.array([0, 1, 2])


def softmax(scores: np.ndarray) -> np.ndarray:
    """p = e^s / Σ e^s over the last axis, with the largest score subtracted first so that
    e^s cannot overflow (the shift cancels in the ratio)."""
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def nll(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """−log p_y per image; `scores` (images, classes), `labels` (images,). Returns (images,)."""
    return -np.log(softmax(scores)[np.arange(len(labels)), labels])


def nll_grad(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """∂(−log p_y)/∂s = p − 1_y per image, shape (images, classes)."""
    return softmax(scores) - np.eye(scores.shape[-1])[labels]


def main() -> dict:
    """Print the lecture's table, the gradient and the loss's range; return the numbers."""
    exp_scores = np.exp(SCORES)
    probs = softmax(SCORES)
    losses = nll(SCORES, LABELS)
    grads = nll_grad(SCORES, LABELS)
    images = [f"{CLASSES[y]} image" for y in LABELS]

    def table(title: str, values: np.ndarray, fmt: str) -> None:
        print(f"  {title:<24}" + "".join(f"{name:>12}" for name in images))
        for c, name in enumerate(CLASSES):
            print(f"    {name:<22}" + "".join(f"{v:>12{fmt}}" for v in values[:, c]))

    print("scores s, one column per image")
    table("class scores s", SCORES, ".1f")
    table("unnormalised e^s", exp_scores, ".2f")
    table("probabilities p", probs, ".2f")
    p_y = probs[np.arange(len(LABELS)), LABELS]
    print(f"  {'p_y of the correct class':<24}" + "".join(f"{v:>12.4f}" for v in p_y))
    print(f"  {'loss −log p_y':<24}" + "".join(f"{v:>12.2f}" for v in losses))
    print(f"  mean loss over the three images: {losses.mean():.4f}")

    with jax.enable_x64(True):
        scores, labels = jnp.asarray(SCORES), jnp.asarray(LABELS)
        per_image = fn.losses.softmax_cross_entropy(scores, labels, reduction="none")
        mean = fn.losses.softmax_cross_entropy(scores, labels)  # reduction="mean"
        by_jax = jax.grad(fn.losses.softmax_cross_entropy)(scores, labels, reduction="sum")
    loss_diff = float(np.max(np.abs(np.asarray(per_image) - losses)))
    mean_diff = abs(float(mean) - float(losses.mean()))
    grad_diff = float(np.max(np.abs(np.asarray(by_jax) - grads)))
    print("\nfuncnet.losses.softmax_cross_entropy, float64:")
    print(f"  reduction='none' {_fmt(per_image)}   max |diff| {loss_diff:.1e}")
    print(f"  reduction='mean' {float(mean):.4f}   |diff| {mean_diff:.1e}")

    print("\ngradient ∂L/∂s = p − 1_y, one column per image")
    table("p − 1_y", grads, ".2f")
    print(f"  vs jax.grad of the summed loss: max |diff| {grad_diff:.1e}")

    uniform = float(nll(np.zeros((1, 3)), np.array([0]))[0])
    uniform_shifted = float(nll(np.full((1, 3), 7.5), np.array([2]))[0])
    margins = (1.0, 5.0, 10.0, 20.0)
    # scores (t, 0, 0) with correct class 0: L = log(1 + 2e^{−t}) > 0, → 0 only as t → ∞
    towards_zero = [float(nll(np.array([[t, 0.0, 0.0]]), np.array([0]))[0]) for t in margins]
    # scores (−t, 0, 0): L = log(1 + 2e^t) ≈ t + log 2, without bound
    unbounded = [float(nll(np.array([[-t, 0.0, 0.0]]), np.array([0]))[0]) for t in margins]
    print("\nrange of the loss (C = 3 classes)")
    print(f"  equal scores (0, 0, 0):       L = {uniform:.4f} = log 3 = {math.log(3):.4f}")
    print(f"  equal scores (7.5, 7.5, 7.5): L = {uniform_shifted:.4f}")
    print("  correct score t above the others:  " + _fmt(towards_zero, ".1e") + f"  t = {margins}")
    print("  correct score t below the others:  " + _fmt(unbounded, ".2f") + f"  t = {margins}")

    return {
        "scores": SCORES.tolist(),
        "exp scores": exp_scores.tolist(),
        "probabilities": probs.tolist(),
        "correct-class probabilities": p_y.tolist(),
        "losses": losses.tolist(),
        "mean loss": float(losses.mean()),
        "funcnet losses": np.asarray(per_image).tolist(),
        "funcnet mean loss": float(mean),
        "gradient": grads.tolist(),
        "jax.grad gradient": np.asarray(by_jax).tolist(),
        "uniform loss": uniform,
        "uniform loss, shifted scores": uniform_shifted,
        "margins": margins,
        "loss towards zero": towards_zero,
        "loss unbounded": unbounded,
    }


def _fmt(values, spec: str = ".4f") -> str:
    return "(" + ", ".join(f"{float(v):{spec}}" for v in values) + ")"


if __name__ == "__main__":
    main()
