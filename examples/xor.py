"""XOR: why a hidden layer matters.

A linear classifier on (x1, x2) cannot separate XOR: no line puts (0,1) and (1,0) on one side
and (0,0) and (1,1) on the other, so the best line gets 3 of the 4 points right. Gradient
descent on the cross-entropy does not even find that line. Started from zero, w = 0 and b = 0,
every point has p = σ(0) = ½ and the gradient is

    ∇_w L = ¼ Σ (p − y) x = ¼ [½·(0,0) − ½·(0,1) − ½·(1,0) + ½·(1,1)] = 0,
    ∇_b L = ¼ Σ (p − y) = ¼ (½ − ½ − ½ + ½) = 0:

the four points pull in directions that cancel, so zero is a stationary point, and as the loss
is convex in (w, b) and strictly so here, the minimum: the best linear model predicts ½
everywhere, with loss log 2 ≈ 0.693. Read as a classifier (p > ½ → 1) it calls every point 0
and is right on the two zeros, 50%. Two ways out:
- add the feature x1·x2, after which XOR = x1 + x2 − 2·x1·x2 is linear;
- learn the features: a 2-layer network  y = w₂ᵀ tanh(W₁x + b₁) + b₂.

Each model is trained by full-batch gradient descent θ ← θ − η ∇L(θ) on the binary
cross-entropy, written out here so the update is visible; the linear models start from zero,
the network from its random initialisation (from zero its hidden units would stay identical).

    python examples/xor.py
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

import funcnet as fn


def train(model, x, y, *, steps=2000, learning_rate=0.5, seed=0, from_zero=False):
    """Full-batch gradient descent; returns the trained params, the final accuracy and loss."""
    _, params, state = model.init(jax.random.key(seed), x.shape)
    if from_zero:
        params = jax.tree.map(jnp.zeros_like, params)

    def loss(params):
        logits, _ = model.apply(params, state, x)
        return fn.losses.binary_cross_entropy(logits[:, 0], y.astype(logits.dtype))

    @jax.jit
    def step(params, _):
        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), None

    params, _ = jax.lax.scan(step, params, length=steps)
    logits, _ = model.apply(params, state, x)
    accuracy = jnp.mean((logits[:, 0] > 0) == (y == 1))
    return params, float(accuracy), float(loss(params))


def with_product_feature(x):
    return jnp.concatenate([x, x[:, :1] * x[:, 1:]], axis=1)


def main() -> dict[str, tuple[float, float]]:
    """Trains the three models; returns {model: (accuracy, loss)}."""
    x, y = fn.data.xor()
    results = {
        "linear on (x1, x2)": train(fn.nn.dense(1), x, y, from_zero=True)[1:],
        "linear on (x1, x2, x1·x2)": train(
            fn.nn.dense(1), with_product_feature(x), y, from_zero=True
        )[1:],
        "2-layer tanh network": train(
            fn.nn.serial(fn.nn.dense(4), fn.nn.tanh, fn.nn.dense(1)), x, y
        )[1:],
    }
    width = max(map(len, results))
    for name, (accuracy, loss) in results.items():
        print(f"{name:<{width}}  accuracy {accuracy:.0%}  loss {loss:.4f}")
    print(f"(log 2 = {math.log(2):.4f}: the linear model predicts ½ at every point)")
    return results


if __name__ == "__main__":
    main()
