"""multi_steps against optax.MultiSteps and the closed form of accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax
from optim_helpers import random_tree

import funcnet.optim as fo

CALLS = 30


def schedule(step):
    """k = 1, 2, 3, 1, 2, 3, ... over the gradient steps."""
    return 1 + step % 3


INNER = {"sgd": lambda: fo.sgd(0.1), "adam": lambda: fo.adam(0.05)}
EVERY_K = {"k1": 1, "k3": 3, "schedule": schedule}


def run(tx, params, grads):
    """Every call's updates and the params after it, from one jitted scan over `grads`
    (leaves with a leading call axis); and the final state."""

    @jax.jit
    def scan(params, grads):
        def body(carry, g):
            p, state = carry
            updates, state = tx.update(g, state, p)
            p = fo.apply_updates(p, updates)
            return (p, state), (updates, p)

        (_, state), (updates, path) = lax.scan(body, (params, tx.init(params)), grads)
        return updates, path, state

    return scan(params, grads)


def _close(a, b, **tolerance):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_allclose(x, y, **tolerance)


@pytest.mark.parametrize("every_k", sorted(EVERY_K))
@pytest.mark.parametrize("inner", sorted(INNER))
def test_matches_optax_multisteps_in_float64(inner, every_k, x64):
    params = random_tree(0, dtype=np.float64)
    grads = random_tree(1, lead=(CALLS,), dtype=np.float64)
    ours = fo.multi_steps(INNER[inner](), EVERY_K[every_k])
    theirs = optax.MultiSteps(
        INNER[inner](), EVERY_K[every_k], accumulator_dtype=jnp.float64
    ).gradient_transformation()
    updates, path, state = run(ours, params, grads)
    ref_updates, ref_path, ref_state = run(theirs, params, grads)
    _close(updates, ref_updates, rtol=1e-10, atol=1e-12)
    _close(path, ref_path, rtol=1e-10, atol=1e-12)
    assert type(state).__name__ == "MultiStepsState"
    assert state._fields == ref_state._fields
    assert int(state.mini_step) == int(ref_state.mini_step)
    assert int(state.gradient_step) == int(ref_state.gradient_step)
    _close(state.acc_grads, ref_state.acc_grads, rtol=1e-10, atol=1e-12)
    _close(state.inner_opt_state, ref_state.inner_opt_state, rtol=1e-10, atol=1e-12)
    expected_steps = {"k1": CALLS, "k3": CALLS // 3, "schedule": 15}[every_k]
    assert int(state.gradient_step) == expected_steps


def test_summed_gradients_match_optax(x64):
    params = random_tree(0, dtype=np.float64)
    grads = random_tree(2, lead=(12,), dtype=np.float64)
    ours = fo.multi_steps(fo.adam(0.05), 4, use_grad_mean=False)
    theirs = optax.MultiSteps(
        fo.adam(0.05), 4, use_grad_mean=False, accumulator_dtype=jnp.float64
    ).gradient_transformation()
    _close(run(ours, params, grads)[:2], run(theirs, params, grads)[:2], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("inner", sorted(INNER))
def test_k_calls_are_one_call_on_the_mean(inner, x64):
    """Zero updates on the first k − 1 calls of a cycle; on the k-th, the inner optimizer's
    update for the mean gradient. Two cycles, so the inner state carries over."""
    k = 4
    params = random_tree(0, dtype=np.float64)
    grads = [random_tree(10 + i, dtype=np.float64) for i in range(2 * k)]
    tx, reference = fo.multi_steps(INNER[inner](), k), INNER[inner]()
    state, ref_state, ref_params = tx.init(params), reference.init(params), params
    p = params
    for cycle in range(2):
        chunk = grads[cycle * k : (cycle + 1) * k]
        for i, g in enumerate(chunk):
            updates, state = tx.update(g, state, p)
            p = fo.apply_updates(p, updates)
            if i < k - 1:
                assert all(not np.any(u) for u in jax.tree.leaves(updates))
        mean = jax.tree.map(lambda *gs: sum(gs) / k, *chunk)
        ref_updates, ref_state = reference.update(mean, ref_state, ref_params)
        ref_params = fo.apply_updates(ref_params, ref_updates)
        _close(updates, ref_updates, rtol=1e-12, atol=1e-14)
        _close(p, ref_params, rtol=1e-12, atol=1e-14)
        assert int(state.gradient_step) == cycle + 1 and int(state.mini_step) == 0


def test_jit_and_vmap_over_learning_rates():
    params = random_tree(0)
    grads = random_tree(1, lead=(9,))
    rates = jnp.asarray([0.01, 0.03, 0.1])

    def final_params(rate):
        return run(fo.multi_steps(fo.adam(rate), 3), params, grads)[1]

    batched = jax.jit(jax.vmap(final_params))(rates)
    for i, rate in enumerate([0.01, 0.03, 0.1]):
        _close(jax.tree.map(lambda x, i=i: x[i], batched), final_params(rate), rtol=1e-6)


def test_vmap_over_k_steps_each_member_on_its_own_cycle():
    """A k that differs per member makes the step condition batched (the cond becomes a
    select); each member matches its own unbatched run."""
    params = random_tree(0)
    grads = random_tree(1, lead=(12,))

    def updates_for(k):
        return run(fo.multi_steps(fo.sgd(0.1, momentum=0.9), lambda step: k), params, grads)

    ks = jnp.asarray([1, 2, 3], jnp.int32)
    batched = jax.vmap(updates_for)(ks)
    for i, k in enumerate([1, 2, 3]):
        single = updates_for(jnp.asarray(k, jnp.int32))
        _close(jax.tree.map(lambda x, i=i: x[i], batched), single, rtol=1e-6, atol=1e-7)
        assert int(single[2].gradient_step) == 12 // k


def test_extra_args_reach_the_inner_optimizer():
    """An inner optimizer that needs extra args sees those of the k-th call."""

    def init(params):
        return fo.EmptyState()

    def update(updates, state, params=None, *, value, **extra_args):
        del params, extra_args
        return jax.tree.map(lambda g: -value * g, updates), state

    inner = fo.GradientTransformationExtraArgs(init, update)
    tx = fo.multi_steps(inner, 2)
    assert fo.accepts_extra_args(tx)
    assert not fo.accepts_extra_args(fo.multi_steps(fo.sgd(0.1), 2))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    first, state = tx.update({"w": jnp.full(3, 2.0)}, state, params, value=5.0, key=None)
    second, state = tx.update({"w": jnp.full(3, 4.0)}, state, params, value=0.5, key=None)
    np.testing.assert_array_equal(first["w"], np.zeros(3))
    np.testing.assert_array_equal(second["w"], np.full(3, -0.5 * 3.0))
    # Under jit, with the extra args traced.
    jitted = jax.jit(lambda g, s, v: tx.update(g, s, params, value=v))
    out, _ = jitted(
        {"w": jnp.full(3, 4.0)}, jitted({"w": jnp.full(3, 2.0)}, tx.init(params), 1.0)[1], 2.0
    )
    np.testing.assert_array_equal(out["w"], np.full(3, -6.0))


def test_the_inner_update_runs_only_on_the_kth_call():
    calls = []
    sgd = fo.sgd(0.1)

    def update(updates, state, params=None):
        jax.debug.callback(lambda: calls.append(1))
        return sgd.update(updates, state, params)

    tx = fo.multi_steps(fo.GradientTransformation(sgd.init, update), 3)
    params = random_tree(0)
    run(tx, params, random_tree(1, lead=(9,)))
    assert len(calls) == 3


def test_hessian_free_accumulates_with_its_extra_args(x64):
    """A curvature optimizer under multi_steps: the step of the k-th call is its step on the
    mean gradient, with the loss function of that call."""
    a = jnp.asarray([[3.0, 1.0], [1.0, 2.0]])

    def value_fn(params):
        return 0.5 * params["x"] @ a @ params["x"]

    hf = fo.hessian_free(curvature="hessian", initial_damping=0.1, cg_iters=2, cg_tol=0.0)
    tx = fo.multi_steps(hf, 2)
    params = {"x": jnp.asarray([1.0, -1.0])}
    g1, g2 = {"x": jnp.asarray([1.0, 0.0])}, {"x": jnp.asarray([0.0, 3.0])}
    extra = {"value": value_fn(params), "value_fn": value_fn, "grad": g2}
    state = tx.init(params)
    _, state = tx.update(g1, state, params, **extra)
    updates, _ = tx.update(g2, state, params, **extra)
    mean = {"x": jnp.asarray([0.5, 1.5])}
    expected, _ = hf.update(mean, hf.init(params), params, **extra)
    _close(updates, expected, rtol=1e-12)


def test_half_precision_params_accumulate_in_float32():
    params = {"w": jnp.ones(4, jnp.bfloat16)}
    tx = fo.multi_steps(fo.sgd(1.0), 3)
    state = tx.init(params)
    assert state.acc_grads["w"].dtype == jnp.float32
    g = {"w": jnp.full(4, 1.0 + 2.0**-8, jnp.bfloat16)}  # not representable: rounds to 1
    small = {"w": jnp.full(4, 2.0**-7, jnp.bfloat16)}
    for grads in (g, small, small):
        updates, state = tx.update(grads, state, params)
    assert updates["w"].dtype == jnp.bfloat16
    expected = -(1.0 + 2 * 2.0**-7) / 3
    np.testing.assert_allclose(np.asarray(updates["w"], np.float32), expected, rtol=2**-8)
    explicit = fo.multi_steps(fo.sgd(1.0), 3, accumulator_dtype=jnp.bfloat16).init(params)
    assert explicit.acc_grads["w"].dtype == jnp.bfloat16


@pytest.mark.parametrize("every_k", [0, -2, 2.5, True, "3", None])
def test_refuses_a_bad_k(every_k):
    with pytest.raises(ValueError, match=r"^multi_steps: every_k_schedule must be an int >= 1"):
        fo.multi_steps(fo.sgd(0.1), every_k)


def test_refuses_a_schedule_returning_a_bad_k():
    params = {"w": jnp.ones(2)}
    zero = fo.multi_steps(fo.sgd(0.1), lambda step: 0)
    with pytest.raises(ValueError, match=r"^multi_steps: every_k_schedule returned 0"):
        zero.update(params, zero.init(params), params)
    fractional = fo.multi_steps(fo.sgd(0.1), lambda step: step / 2 + 1)
    with pytest.raises(ValueError, match=r"^multi_steps: every_k_schedule must return an integer"):
        fractional.update(params, fractional.init(params), params)
