"""The protocol, its combinators, and mixing funcnet's pieces with optax's."""

import ast
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optim_helpers import flat, random_tree, trajectory

import funcnet.optim as fo

STEPS = 100


def _inputs():
    return random_tree(0), random_tree(1, lead=(STEPS,))


def test_identity_returns_its_input_and_an_empty_state():
    params, grads = random_tree(0), random_tree(1)
    tx = fo.identity()
    updates, state = tx.update(grads, tx.init(params), params)
    assert updates is grads and state == fo.EmptyState()


def test_stateless_applies_its_rule_to_updates_and_params():
    params, grads = random_tree(0), random_tree(1)
    tx = fo.stateless(lambda g, x: jax.tree.map(lambda a, b: a * b, g, x))
    updates, state = tx.update(grads, tx.init(params), params)
    assert state == fo.EmptyState()
    np.testing.assert_allclose(flat(updates), flat(grads) * flat(params), rtol=1e-6)


def test_chain_applies_in_order_and_stacks_states():
    tx = fo.chain(fo.scale(2.0), fo.clip(1.0), fo.scale_by_learning_rate(0.5))
    state = tx.init({"x": jnp.zeros(3)})
    assert isinstance(state, tuple) and len(state) == 3
    updates, _ = tx.update({"x": jnp.array([0.25, 1.0, -3.0])}, state)
    # 2g, clipped to [−1, 1], times −0.5.
    np.testing.assert_array_equal(updates["x"], [-0.25, -0.5, 0.5])


def test_empty_chain_is_identity():
    g = {"x": jnp.arange(3.0)}
    updates, state = fo.chain().update(g, fo.chain().init(g))
    assert updates is g and state == ()


def test_chain_rejects_a_foreign_state():
    tx = fo.chain(fo.scale(1.0), fo.scale(2.0))
    with pytest.raises(ValueError, match="chain of 2 transformations got a state of 1"):
        tx.update({"x": jnp.ones(1)}, (fo.EmptyState(),))


def test_apply_updates_adds_and_keeps_each_param_dtype():
    params = {"a": jnp.ones(2, jnp.bfloat16), "b": jnp.ones(2, jnp.float32), "c": None}
    updates = {"a": jnp.full(2, 0.5, jnp.float32), "b": jnp.full(2, 0.25, jnp.float32), "c": None}
    new = fo.apply_updates(params, updates)
    assert new["a"].dtype == jnp.bfloat16 and new["b"].dtype == jnp.float32 and new["c"] is None
    np.testing.assert_array_equal(np.asarray(new["a"], np.float32), [1.5, 1.5])
    np.testing.assert_array_equal(new["b"], [1.25, 1.25])


def test_state_is_a_pytree_of_arrays():
    params = random_tree(0)
    state = fo.adam().init(params)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(state))
    count = state[1].count
    assert count.shape == () and count.dtype == jnp.int32


# funcnet and optax mixed, both ways, against the all-optax pipeline.

MIXES = {
    "funcnet_in_optax_chain": optax.chain(
        optax.clip_by_global_norm(1.0), fo.adam(0.01), optax.add_decayed_weights(0.0)
    ),
    "optax_in_funcnet_chain": fo.chain(
        optax.clip_by_global_norm(1.0), optax.scale_by_adam(), fo.scale_by_learning_rate(0.01)
    ),
    "funcnet_chain_of_funcnet": fo.chain(fo.clip_by_global_norm(1.0), fo.adam(0.01)),
    "optax_masked_around_funcnet": optax.chain(
        optax.clip_by_global_norm(1.0),
        optax.masked(fo.adam(0.01), lambda p: jax.tree.map(lambda _: True, p)),
    ),
    "funcnet_masked_around_optax": fo.chain(
        fo.clip_by_global_norm(1.0),
        fo.masked(optax.adam(0.01), lambda p: jax.tree.map(lambda _: True, p)),
    ),
    "optax_schedule_in_funcnet": fo.chain(
        fo.clip_by_global_norm(1.0), fo.adam(optax.constant_schedule(0.01))
    ),
    "funcnet_schedule_in_optax": optax.chain(
        optax.clip_by_global_norm(1.0), optax.adam(fo.constant_schedule(0.01))
    ),
}


@functools.cache
def _all_optax_path():
    params, grads = _inputs()
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.01))
    return flat(trajectory(reference, params, grads, apply_updates=optax.apply_updates), 1)


@pytest.mark.parametrize("case", list(MIXES))
def test_mixing_with_optax(case):
    params, grads = _inputs()
    got = trajectory(MIXES[case], params, grads)
    np.testing.assert_allclose(flat(got, 1), _all_optax_path(), rtol=2e-5, atol=2e-6)


def test_optim_does_not_import_optax():
    package = Path(fo.__file__).parent
    imported = set()
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
    assert "optax" not in imported
    allowed = {"__future__", "collections", "functools", "math", "operator", "typing"}
    allowed |= {"jax", "numpy", "funcnet"}  # numpy: host-side shape logic (adafactor's axes)
    assert imported <= allowed
