"""Building blocks against optax's equivalents and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optim_helpers import flat, random_tree

import funcnet.optim as fo

STEPS = 6


def _updates(tx, grads, params):
    """The updates `tx` returns for each gradient in the list `grads`, run eagerly, stacked."""
    state, out = tx.init(params), []
    for g in grads:
        u, state = tx.update(g, state, params)
        out.append(u)
    return jax.tree.map(lambda *xs: np.stack(xs), *out), state


def _grads(seed=1, steps=STEPS):
    stacked = random_tree(seed, lead=(steps,))
    return [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(steps)]


OPTAX_EQUIVALENTS = {
    "scale": (fo.scale(-0.3), optax.scale(-0.3)),
    "scale_by_learning_rate": (fo.scale_by_learning_rate(0.1), optax.scale_by_learning_rate(0.1)),
    "scale_by_learning_rate_schedule": (
        fo.scale_by_learning_rate(lambda t: 0.1 / (1.0 + t)),
        optax.scale_by_learning_rate(lambda t: 0.1 / (1.0 + t)),
    ),
    "scale_by_learning_rate_ascent": (
        fo.scale_by_learning_rate(0.1, flip_sign=False),
        optax.scale_by_learning_rate(0.1, flip_sign=False),
    ),
    "trace": (fo.trace(0.9), optax.trace(0.9)),
    "trace_nesterov": (fo.trace(0.9, nesterov=True), optax.trace(0.9, nesterov=True)),
    "scale_by_adam": (
        fo.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6),
        optax.scale_by_adam(0.8, 0.99, 1e-6),
    ),
    # torch's placement of ε, outside the root, is optax's eps_in_sqrt=False.
    "scale_by_rms": (fo.scale_by_rms(decay=0.9), optax.scale_by_rms(0.9, 1e-8, eps_in_sqrt=False)),
    "scale_by_rms_centered": (
        fo.scale_by_rms(decay=0.9, centered=True),
        optax.scale_by_stddev(0.9, 1e-8, eps_in_sqrt=False),
    ),
    # optax's scale_by_rss divides by √(G + ε) from G = 0.1: with ε = 0 and G₀ set alike it
    # is torch's g/(√G + ε) with ε = 0.
    "scale_by_adagrad": (
        fo.scale_by_adagrad(initial_accumulator_value=0.2, eps=0.0),
        optax.scale_by_rss(initial_accumulator_value=0.2, eps=0.0),
    ),
    "scale_by_adadelta": (
        fo.scale_by_adadelta(rho=0.8, eps=1e-5),
        optax.scale_by_adadelta(0.8, 1e-5),
    ),
    # Without the μ_t schedule (ψ → ∞) NAdam is optax's Nesterov Adam.
    "scale_by_nadam": (
        fo.scale_by_nadam(momentum_decay=1e9),
        optax.scale_by_adam(nesterov=True),
    ),
    "scale_by_adamax": (fo.scale_by_adamax(b1=0.8, b2=0.99), optax.scale_by_adamax(0.8, 0.99)),
    "scale_by_lion": (fo.scale_by_lion(b1=0.8, b2=0.95), optax.scale_by_lion(0.8, 0.95)),
    "add_decayed_weights": (fo.add_decayed_weights(0.3), optax.add_decayed_weights(0.3)),
    "clip": (fo.clip(0.5), optax.clip(0.5)),
    "clip_by_global_norm": (fo.clip_by_global_norm(1.5), optax.clip_by_global_norm(1.5)),
}


@pytest.mark.parametrize("case", list(OPTAX_EQUIVALENTS))
def test_building_block_matches_optax(case):
    ours, theirs = OPTAX_EQUIVALENTS[case]
    params, grads = random_tree(0), _grads()
    got, _ = _updates(ours, grads, params)
    want, _ = _updates(theirs, grads, params)
    np.testing.assert_allclose(flat(got, 1), flat(want, 1), rtol=1e-5, atol=1e-6)


def test_scale_by_learning_rate_feeds_the_step_count_to_the_schedule():
    seen = []
    tx = fo.scale_by_learning_rate(lambda t: seen.append(int(t)) or 2.0)
    got, state = _updates(tx, [{"x": jnp.ones(2)}] * 3, {"x": jnp.ones(2)})
    assert seen == [0, 1, 2]
    assert int(state.count) == 3 and state.count.dtype == jnp.int32
    np.testing.assert_array_equal(got["x"][-1], [-2.0, -2.0])


def test_trace_with_dampening_copies_the_first_gradient():
    # b₁ = g₁; then b ← 0.5·b + 0.75·g.
    tx = fo.trace(0.5, dampening=0.25)
    got, _ = _updates(tx, [{"x": jnp.array(2.0)}, {"x": jnp.array(4.0)}], {"x": jnp.array(0.0)})
    np.testing.assert_array_equal(got["x"], [2.0, 0.5 * 2.0 + 0.75 * 4.0])


def test_trace_rejects_nesterov_with_dampening():
    with pytest.raises(ValueError, match="dampening=0"):
        fo.trace(0.9, dampening=0.1, nesterov=True)


def test_clip_by_global_norm_closed_form():
    grads = {"a": jnp.array([3.0, 0.0]), "b": [jnp.array(4.0)]}  # norm 5
    clipped, _ = _updates(fo.clip_by_global_norm(1.0), [grads], grads)
    np.testing.assert_allclose(flat(clipped), [0.6, 0.0, 0.8], rtol=1e-6)
    kept, _ = _updates(fo.clip_by_global_norm(10.0), [grads], grads)
    np.testing.assert_array_equal(flat(kept), flat(grads))


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=6),
    max_norm=st.floats(1e-2, 1e2),
)
def test_clip_by_global_norm_bounds_the_norm_and_keeps_the_direction(values, max_norm):
    grads = {
        "a": jnp.array(values[: len(values) // 2 + 1]),
        "b": jnp.array(values[len(values) // 2 + 1 :]),
    }
    tx = fo.clip_by_global_norm(max_norm)
    clipped, _ = tx.update(grads, tx.init(grads))
    norm, new_norm = np.linalg.norm(flat(grads)), np.linalg.norm(flat(clipped))
    assert new_norm <= max(max_norm, norm) * (1 + 1e-6)
    np.testing.assert_allclose(new_norm, min(norm, max_norm), rtol=1e-5, atol=1e-30)
    # A non-negative multiple of the input.
    np.testing.assert_allclose(flat(clipped) * norm, flat(grads) * new_norm, rtol=1e-4, atol=1e-3)


def test_clip_closed_form():
    got, _ = _updates(fo.clip(1.0), [{"x": jnp.array([-3.0, 0.5, 2.0])}], None)
    np.testing.assert_array_equal(got["x"], [[-1.0, 0.5, 1.0]])


def test_add_decayed_weights_needs_params():
    tx = fo.add_decayed_weights(0.1)
    with pytest.raises(ValueError, match="needs the params"):
        tx.update({"x": jnp.ones(2)}, tx.init({"x": jnp.ones(2)}))


# masked


MASK = {"dense": {"w": True, "b": False}, "blocks": [True]}


@pytest.mark.parametrize(
    "mask",
    [
        MASK,
        lambda p: jax.tree.map(lambda x: x.ndim != 1, p),
        {"dense": {"w": True, "b": False}, "blocks": True},  # a prefix of the params tree
    ],
    ids=["tree", "callable", "prefix"],
)
def test_masked_weight_decay_touches_only_selected_leaves(mask):
    params, (grads,) = random_tree(0), _grads(steps=1)
    got, _ = _updates(fo.masked(fo.add_decayed_weights(0.5), mask), [grads], params)
    got = jax.tree.map(lambda x: x[0], got)
    decayed = jax.tree.map(lambda g, p: g + 0.5 * p, grads, params)
    np.testing.assert_allclose(got["dense"]["w"], decayed["dense"]["w"], rtol=1e-6)
    np.testing.assert_allclose(got["blocks"][0], decayed["blocks"][0], rtol=1e-6)
    np.testing.assert_array_equal(got["dense"]["b"], grads["dense"]["b"])


def test_masked_stateful_inner_matches_optax_and_keeps_state_for_selected_leaves():
    params, grads = random_tree(0), _grads()
    got, state = _updates(fo.masked(fo.scale_by_adam(), MASK), grads, params)
    want, _ = _updates(optax.masked(optax.scale_by_adam(), MASK), grads, params)
    np.testing.assert_allclose(flat(got, 1), flat(want, 1), rtol=1e-5, atol=1e-6)
    assert isinstance(state.inner_state.mu["dense"]["b"], fo.MaskedNode)
    assert state.inner_state.mu["dense"]["w"].shape == (3, 4)


def test_masked_runs_under_jit():
    tx = fo.masked(fo.scale_by_adam(), MASK)
    params, (grads,) = random_tree(0), _grads(steps=1)
    got, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    want, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(flat(got), flat(want), rtol=1e-6)


def test_freeze_holds_the_selected_leaves_still_and_matches_optax():
    params, grads = random_tree(0), _grads()
    frozen = {"dense": {"w": False, "b": True}, "blocks": [False]}
    trainable = jax.tree.map(lambda f: not f, frozen)
    tx = fo.chain(fo.masked(fo.adam(1e-2), trainable), fo.freeze(frozen))
    state, moved = tx.init(params), params
    for g in grads:
        g = {**g, "dense": {**g["dense"], "b": g["dense"]["b"].at[0].set(jnp.inf)}}
        updates, state = tx.update(g, state, moved)
        moved = fo.apply_updates(moved, updates)
    np.testing.assert_array_equal(moved["dense"]["b"], params["dense"]["b"])
    assert not np.allclose(moved["dense"]["w"], params["dense"]["w"])
    # optax's own freeze: zero updates for the frozen leaves, the optimizer on the rest.
    want = optax.chain(
        optax.masked(optax.adam(1e-2), trainable), optax.masked(optax.set_to_zero(), frozen)
    )
    got, _ = _updates(tx, grads, params)
    expected, _ = _updates(want, grads, params)
    np.testing.assert_allclose(flat(got, 1), flat(expected, 1), rtol=1e-5, atol=1e-7)
    # masked alone passes the raw gradient of the left-out leaves through: it does not freeze.
    passed, _ = _updates(fo.masked(fo.adam(1e-2), trainable), grads[:1], params)
    np.testing.assert_array_equal(passed["dense"]["b"][0], grads[0]["dense"]["b"])


# apply_if_finite


def _poisoned_grads():
    grads = _grads()
    grads[1] = jax.tree.map(lambda x: x.at[...].set(jnp.nan), grads[1])
    grads[2] = {**grads[2], "blocks": [jnp.array(jnp.inf)]}
    return grads


def test_apply_if_finite_skips_non_finite_steps_and_counts_them():
    params, grads = random_tree(0), _poisoned_grads()
    tx = fo.apply_if_finite(fo.adam(0.1), max_consecutive_errors=3)
    state = tx.init(params)
    clean_state = state
    for i, g in enumerate(grads):
        before = state
        updates, state = tx.update(g, state, params)
        if i in (1, 2):
            assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
            for new, old in zip(
                jax.tree.leaves(state.inner_state), jax.tree.leaves(before.inner_state), strict=True
            ):
                np.testing.assert_array_equal(new, old)
            assert not bool(state.last_finite)
        else:
            assert bool(state.last_finite)
            clean_state = state
    assert int(state.total_notfinite) == 2 and int(state.notfinite_count) == 0
    # The finite steps alone, run through adam, give the same inner state.
    ref = fo.adam(0.1)
    ref_state = ref.init(params)
    for i, g in enumerate(grads):
        if i not in (1, 2):
            _, ref_state = ref.update(g, ref_state, params)
    for a, b in zip(
        jax.tree.leaves(clean_state.inner_state), jax.tree.leaves(ref_state), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_apply_if_finite_matches_optax():
    params, grads = random_tree(0), _poisoned_grads()
    got, state = _updates(fo.apply_if_finite(fo.sgd(0.1, momentum=0.9), 1), grads, params)
    want, their_state = _updates(
        optax.apply_if_finite(optax.sgd(0.1, momentum=0.9), 1), grads, params
    )
    # With max_consecutive_errors=1 the second bad step in a row goes through, NaN and all.
    np.testing.assert_allclose(flat(got, 1), flat(want, 1), rtol=1e-6)
    assert int(state.total_notfinite) == int(their_state.total_notfinite) == 2
    assert int(state.notfinite_count) == int(their_state.notfinite_count)


def test_apply_if_finite_under_jit_counts_in_int32():
    """The counters keep their dtype across steps, so the jitted update is traced once (counted
    by the trace itself: the size of jit's dispatch cache depends on what else the process
    ran, and was 0 in two runs of the whole suite)."""
    params = {"x": jnp.ones(3)}
    tx = fo.apply_if_finite(fo.sgd(0.1), max_consecutive_errors=5)
    traces = []

    def update(grads, state, params):
        traces.append(jax.tree.map(lambda leaf: (leaf.shape, leaf.dtype), state))
        return tx.update(grads, state, params)

    step = jax.jit(update)
    state = tx.init(params)
    for value in [jnp.nan, 1.0, -jnp.inf]:
        g = jnp.full(3, value, jnp.float32)
        _, state = step({"x": g}, state, params)
    assert state.total_notfinite.dtype == jnp.int32
    assert (int(state.total_notfinite), int(state.notfinite_count)) == (2, 1)
    assert len(traces) == 1


# Helpers shared by the rules.


def test_update_moment_closed_form():
    got = fo.update_moment({"x": jnp.array([2.0])}, {"x": jnp.array([1.0])}, 0.75, 2)
    np.testing.assert_allclose(got["x"], [0.75 * 1.0 + 0.25 * 4.0])
    with pytest.raises(ValueError, match="order 1 or 2"):
        fo.update_moment({"x": jnp.ones(1)}, {"x": jnp.ones(1)}, 0.5, 3)


@pytest.mark.parametrize("decay", [0.0, 0.9, 0.999, 0.9999])
def test_bias_correction_keeps_its_digits(decay):
    for t in [1, 2, 10, 1000]:
        got = fo.bias_correction({"m": jnp.array(1.0)}, decay, jnp.array(t, jnp.int32))["m"]
        np.testing.assert_allclose(float(got), 1 / (1 - decay**t), rtol=5e-7)


def test_global_norm_closed_form_and_half_precision():
    tree = {"a": jnp.array([3.0, 4.0]), "b": [jnp.array(12.0)]}
    assert float(fo.global_norm(tree)) == 13.0
    big = {"a": jnp.full(4, 300.0, jnp.bfloat16)}  # Σx² = 360000, beyond bfloat16 precision
    assert fo.global_norm(big).dtype == jnp.float32
    assert math.isclose(float(fo.global_norm(big)), 600.0, rel_tol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: fo.adam(b1=1.0), "b1 must lie in \\[0, 1\\)"),
        (lambda: fo.adamw(b2=1.5), "b2 must lie in \\[0, 1\\)"),
        (lambda: fo.rmsprop(decay=-0.5), "decay must lie in \\[0, 1\\)"),
        (lambda: fo.adadelta(rho=1.1), "rho must lie in \\[0, 1\\]"),
        (lambda: fo.nadam(b2=1.0), "b2 must lie in \\[0, 1\\)"),
        (lambda: fo.adamax(b1=-0.1), "b1 must lie in \\[0, 1\\)"),
        (lambda: fo.lion(b2=2.0), "b2 must lie in \\[0, 1\\]"),
        (lambda: fo.sgd(momentum=-0.9), "non-negative"),
        (lambda: fo.sgd(nesterov=True), "non-zero momentum"),
        (lambda: fo.sgd(momentum=0.9, dampening=0.1, nesterov=True), "dampening=0"),
    ],
)
def test_bad_hyperparameters_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()
