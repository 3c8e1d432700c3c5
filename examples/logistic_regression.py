"""Softmax regression on the 8×8 digits, with its gradient derived by hand.

Model: z = W x + b, p = softmax(z), loss L = −log p_y. By the chain rule through softmax,
∂L/∂z = p − 1_y, so for one example

    ∇_W L = (p − 1_y) xᵀ,    ∇_b L = p − 1_y,

and over a batch the mean of those. This script checks that formula against `jax.grad`
and against the pullback of `jax.vjp` applied to the cotangent 1.0 (reverse mode spelled
out), then trains with it by gradient descent and reports test accuracy.

    python examples/logistic_regression.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import funcnet as fn


def loss(params, x, y):
    logits = x @ params["w"].T + params["b"]
    return fn.losses.softmax_cross_entropy(logits, y)


def analytic_grad(params, x, y):
    """∇_W L = mean_i (p_i − 1_{y_i}) x_iᵀ and ∇_b L = mean_i (p_i − 1_{y_i})."""
    p = fn.nn.softmax(x @ params["w"].T + params["b"])
    delta = p - jax.nn.one_hot(y, p.shape[-1], dtype=p.dtype)
    return {"w": delta.T @ x / len(x), "b": jnp.mean(delta, axis=0)}


def main(steps: int = 500, learning_rate: float = 0.5) -> float:
    split = fn.data.digits()
    x_train, x_test = fn.data.standardize(split.x_train, split.x_test)
    params = {"w": jnp.zeros((10, 64)), "b": jnp.zeros(10)}

    probe = {"w": 0.01 * jax.random.normal(jax.random.key(0), (10, 64)), "b": jnp.zeros(10)}
    by_hand = analytic_grad(probe, x_train, split.y_train)
    by_jax = jax.grad(loss)(probe, x_train, split.y_train)
    value, pullback = jax.vjp(lambda p: loss(p, x_train, split.y_train), probe)
    (by_vjp,) = pullback(jnp.ones_like(value))
    error = max(
        float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
        for reference in (by_jax, by_vjp)
        for a, b in zip(jax.tree.leaves(by_hand), jax.tree.leaves(reference), strict=True)
    )
    print(f"analytic gradient vs jax.grad and jax.vjp: max relative difference {error:.1e}")

    @jax.jit
    def step(params, _):
        grads = analytic_grad(params, x_train, split.y_train)
        return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads), None

    params, _ = jax.lax.scan(step, params, length=steps)
    logits = x_test @ params["w"].T + params["b"]
    accuracy = float(fn.losses.accuracy(logits, split.y_test))
    print(f"softmax regression, {steps} steps of gradient descent: test accuracy {accuracy:.1%}")
    return accuracy


if __name__ == "__main__":
    main()
