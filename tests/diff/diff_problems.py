"""Small problems whose Hessians are cheap to form densely, shared by the diff tests."""

import itertools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree


class Problem(NamedTuple):
    """A tanh MLP regression loss: `loss(params)` on all data, `batch_loss(params, batch)`,
    and its dense Hessian over the raveled params from `jax.hessian`."""

    loss: Any
    batch_loss: Any
    params: dict
    batch: tuple[jax.Array, jax.Array]
    hessian: np.ndarray


def mlp_params(rng: np.random.Generator, sizes: tuple[int, ...]) -> dict:
    """Dense layers `dense_i` with `w` (in, out) and `b` (out,), float64 under x64."""
    return {
        f"dense_{i}": {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m)),
            "b": jnp.asarray(0.1 * rng.normal(size=n)),
        }
        for i, (m, n) in enumerate(itertools.pairwise(sizes))
    }


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
    layers = [params[f"dense_{i}"] for i in range(len(params))]
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def batch_loss(params: dict, batch: tuple[jax.Array, jax.Array]) -> jax.Array:
    x, y = batch
    return 0.5 * jnp.mean(jnp.sum((mlp_apply(params, x) - y) ** 2, axis=-1))


def make_problem(rng: np.random.Generator, sizes: tuple[int, ...], num_examples: int) -> Problem:
    params = mlp_params(rng, sizes)
    x = jnp.asarray(rng.normal(size=(num_examples, sizes[0])))
    y = jnp.asarray(rng.normal(size=(num_examples, sizes[-1])))
    loss = lambda p: batch_loss(p, (x, y))
    flat, unravel = ravel_pytree(params)
    hessian = np.asarray(jax.jit(jax.hessian(lambda t: loss(unravel(t))))(flat))
    return Problem(loss, batch_loss, params, (x, y), hessian)
