"""Every named optimizer: convergence, compilation, vmap over learning rates, and dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from optim_helpers import flat, random_tree

import funcnet.optim as fo

NAMES = [
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adadelta",
    "adam",
    "adamw",
    "nadam",
    "adamax",
    "lion",
]

SMALL = {"w": (3, 2), "b": [(2,)]}  # a nested tree with few leaves, quick to compile
A, C = jnp.array([1.0, 4.0]), jnp.array([1.0, -2.0])


def quadratic(p):
    """½ Σ aᵢ(xᵢ − cᵢ)², minimum 0 at x = c, condition number 4."""
    return 0.5 * jnp.sum(A * (p["xy"] - C) ** 2)


def rosenbrock(p):
    """(1 − x)² + 100(y − x²)², minimum 0 at (1, 1)."""
    x, y = p["xy"]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def minimize(opt, loss, start, steps):
    @jax.jit
    def run(xy):
        def step(carry, _):
            params, state = carry
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            return (fo.apply_updates(params, updates), state), None

        params = {"xy": xy}
        (params, _), _ = lax.scan(step, (params, opt.init(params)), None, length=steps)
        return params["xy"]

    return run(jnp.asarray(start, jnp.float32))


cosine = fo.cosine_decay_schedule

# Adaptive methods with a constant rate hover around the minimum at a distance set by the rate;
# those runs decay the rate to zero with a cosine schedule. AdamW runs without weight decay,
# whose fixed point is not the minimum of the loss.
QUADRATIC = {
    "sgd": (fo.sgd(0.2), 200),
    "momentum": (fo.momentum(0.1), 300),
    "nesterov": (fo.nesterov(0.1), 300),
    "adagrad": (fo.adagrad(1.0), 500),
    "rmsprop": (fo.rmsprop(cosine(0.1, 1000)), 1000),
    "adadelta": (fo.adadelta(10.0), 1000),
    "adam": (fo.adam(cosine(0.1, 1000)), 1000),
    "adamw": (fo.adamw(cosine(0.1, 1000), weight_decay=0.0), 1000),
    "nadam": (fo.nadam(cosine(0.1, 1000)), 1000),
    "adamax": (fo.adamax(cosine(0.1, 1000)), 1000),
    "lion": (fo.lion(cosine(0.03, 1000)), 1000),
}

ROSENBROCK = {
    "sgd": (fo.sgd(1e-3), 20_000),
    "momentum": (fo.momentum(1e-3), 5_000),
    "nesterov": (fo.nesterov(1e-3), 5_000),
    "adagrad": (fo.adagrad(1.0), 20_000),
    "rmsprop": (fo.rmsprop(cosine(3e-3, 20_000)), 20_000),
    "adadelta": (fo.adadelta(cosine(1.0, 30_000)), 30_000),
    "adam": (fo.adam(cosine(0.02, 10_000)), 10_000),
    "adamw": (fo.adamw(cosine(0.02, 10_000), weight_decay=0.0), 10_000),
    "nadam": (fo.nadam(cosine(0.02, 10_000)), 10_000),
    "adamax": (fo.adamax(cosine(0.02, 10_000)), 10_000),
    "lion": (fo.lion(cosine(0.01, 3_000)), 3_000),
}


@pytest.mark.parametrize("name", NAMES)
def test_reaches_the_minimum_of_a_convex_quadratic(name):
    opt, steps = QUADRATIC[name]
    xy = minimize(opt, quadratic, [-3.0, 3.0], steps)
    assert float(jnp.linalg.norm(xy - C)) < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_reaches_the_minimum_of_rosenbrock(name):
    opt, steps = ROSENBROCK[name]
    xy = minimize(opt, rosenbrock, [-1.2, 1.0], steps)
    assert float(jnp.linalg.norm(xy - 1.0)) < 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rate", ["float", "schedule"])
def test_second_jitted_step_does_not_recompile(name, rate):
    learning_rate = 1e-2 if rate == "float" else fo.exponential_decay(1e-2, 10, 0.9)
    opt = getattr(fo, name)(learning_rate)

    @jax.jit
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    params = random_tree(0, SMALL)
    state = opt.init(params)
    for seed in range(1, 4):
        params, state = step(params, state, random_tree(seed, SMALL))
    assert step._cache_size() == 1


@pytest.mark.parametrize("name", NAMES)
def test_state_survives_vmap_over_learning_rates(name):
    rates = jnp.array([1e-3, 1e-2, 1e-1])
    params, grads = random_tree(0, SMALL), random_tree(1, SMALL, lead=(5,))

    def run(rate, params):
        opt = getattr(fo, name)(rate)

        def step(carry, g):
            p, state = carry
            updates, state = opt.update(g, state, p)
            return (fo.apply_updates(p, updates), state), None

        (p, state), _ = lax.scan(step, (params, opt.init(params)), grads)
        return p, state

    batched_params, batched_state = jax.jit(jax.vmap(run, in_axes=(0, None)))(rates, params)
    single = jax.jit(run)
    for i, rate in enumerate(rates):
        want_params, want_state = single(rate, params)
        got_state = jax.tree.map(lambda x, i=i: x[i], batched_state)
        assert jax.tree.structure(got_state) == jax.tree.structure(want_state)
        np.testing.assert_allclose(
            flat(jax.tree.map(lambda x, i=i: x[i], batched_params)), flat(want_params), rtol=1e-6
        )
        for got, want in zip(jax.tree.leaves(got_state), jax.tree.leaves(want_state), strict=True):
            assert got.dtype == want.dtype
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _three_steps(opt, params):
    state = opt.init(params)
    for seed in range(1, 4):
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), random_tree(seed), params)
        updates, state = opt.update(grads, state, params)
        params = fo.apply_updates(params, updates)
    return params, updates, state


def _per_param_buffers(state, params):
    """The state leaves shaped like some param: moments and other per-parameter buffers."""
    shapes = {p.shape for p in jax.tree.leaves(params)} - {()}
    return [x for x in jax.tree.leaves(state) if x.shape in shapes]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_param_dtype_is_preserved(name, dtype):
    params = jax.tree.map(lambda x: x.astype(dtype), random_tree(0))
    new_params, updates, state = _three_steps(getattr(fo, name)(1e-2), params)
    assert all(p.dtype == dtype for p in jax.tree.leaves(new_params))
    assert all(u.dtype == dtype for u in jax.tree.leaves(updates))
    buffers = _per_param_buffers(state, params)
    assert all(b.dtype == dtype for b in buffers)
    if name != "sgd":
        assert buffers


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_params_with_float32_moments_track_float32(name):
    params = random_tree(0)
    want, _, _ = _three_steps(getattr(fo, name)(1e-2), params)
    half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    opt = getattr(fo, name)(1e-2, moment_dtype=jnp.float32) if name != "sgd" else fo.sgd(1e-2)
    got, _, state = _three_steps(opt, half)
    assert all(p.dtype == jnp.bfloat16 for p in jax.tree.leaves(got))
    assert all(b.dtype == jnp.float32 for b in _per_param_buffers(state, half))
    np.testing.assert_allclose(flat(got), flat(want), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_float64_params_stay_float64(name, x64):
    params = random_tree(0, dtype=jnp.float64)
    new_params, _, state = _three_steps(getattr(fo, name)(1e-2), params)
    assert all(p.dtype == jnp.float64 for p in jax.tree.leaves(new_params))
    assert all(b.dtype == jnp.float64 for b in _per_param_buffers(state, params))
