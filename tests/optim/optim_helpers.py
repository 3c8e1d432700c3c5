"""Helpers shared by the optimizer tests: random pytrees and jitted optimization loops."""

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcnet.optim as fo

SHAPES = {"dense": {"w": (3, 4), "b": (4,)}, "blocks": [()]}


def random_tree(seed, shapes=SHAPES, lead=(), dtype=np.float32):
    """A nested tree shaped like `shapes`, each leaf with leading dims `lead`, N(0, 1) entries."""
    rng = np.random.default_rng(seed)
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
    values = [jnp.asarray(rng.standard_normal(lead + shape), dtype) for shape in leaves]
    return jax.tree.unflatten(treedef, values)


def flat(tree, lead_dims=0):
    """Concatenates the leaves of `tree` into one numpy array, keeping `lead_dims` leading dims."""
    leaves = [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]
    return np.concatenate([x.reshape((*x.shape[:lead_dims], -1)) for x in leaves], axis=lead_dims)


def trajectory(opt, params, grads, apply_updates=fo.apply_updates):
    """Params after each of the updates driven by `grads` (leaves with a leading step axis).

    Runs the whole loop as one jitted `lax.scan`.
    """

    @jax.jit
    def run(params, grads):
        def step(carry, g):
            p, state = carry
            updates, state = opt.update(g, state, p)
            p = apply_updates(p, updates)
            return (p, state), p

        _, path = lax.scan(step, (params, opt.init(params)), grads)
        return path

    return run(params, grads)


def as_dtype(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)
