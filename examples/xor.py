"""XOR: why a hidden layer matters.

A linear classifier on (x1, x2) cannot separate XOR: no line puts (0,1) and (1,0) on one side
and (0,0) and (1,1) on the other, so it tops out at 3 of 4 points. Two ways out:
- add the feature x1·x2, after which XOR = x1 + x2 − 2·x1·x2 is linear;
- learn the features: a 2-layer network  y = w₂ᵀ tanh(W₁x + b₁) + b₂.

Each model is trained by full-batch gradient descent θ ← θ − η ∇L(θ) on the binary
cross-entropy, written out here so the update is visible.

    python examples/xor.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcnet as fn


def train(model, x, y, *, steps=2000, learning_rate=0.5, seed=0):
    """Full-batch gradient descent; returns the trained params and the final accuracy."""
    _, params, state = model.init(jax.random.key(seed), x.shape)

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
    return params, float(accuracy)


def with_product_feature(x):
    return jnp.concatenate([x, x[:, :1] * x[:, 1:]], axis=1)


def main() -> dict[str, float]:
    x, y = fn.data.xor()
    results = {
        "linear on (x1, x2)": train(fn.nn.dense(1), x, y)[1],
        "linear on (x1, x2, x1·x2)": train(fn.nn.dense(1), with_product_feature(x), y)[1],
        "2-layer tanh network": train(
            fn.nn.serial(fn.nn.dense(4), fn.nn.tanh, fn.nn.dense(1)), x, y
        )[1],
    }
    width = max(map(len, results))
    for name, accuracy in results.items():
        print(f"{name:<{width}}  accuracy {accuracy:.0%}")
    return results


if __name__ == "__main__":
    main()
