"""Schedules against optax's equivalents and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import funcnet.optim as fo

STEPS = jnp.arange(0, 400, dtype=jnp.int32)

OPTAX_EQUIVALENTS = {
    "constant": (fo.constant_schedule(0.3), optax.constant_schedule(0.3)),
    "exponential": (
        fo.exponential_decay(0.5, 50, 0.3, transition_begin=20),
        optax.exponential_decay(0.5, 50, 0.3, transition_begin=20),
    ),
    "exponential_staircase_end": (
        fo.exponential_decay(0.5, 50, 0.3, staircase=True, end_value=0.02),
        optax.exponential_decay(0.5, 50, 0.3, staircase=True, end_value=0.02),
    ),
    "exponential_growth_capped": (
        fo.exponential_decay(0.01, 40, 2.0, end_value=0.1),
        optax.exponential_decay(0.01, 40, 2.0, end_value=0.1),
    ),
    "piecewise_constant": (
        fo.piecewise_constant_schedule(1.0, {100: 0.1, 30: 0.5, 250: 0.0}),
        optax.piecewise_constant_schedule(1.0, {100: 0.1, 30: 0.5, 250: 0.0}),
    ),
    "polynomial": (
        fo.polynomial_schedule(1.0, 0.1, 2.0, 200, transition_begin=50),
        optax.polynomial_schedule(1.0, 0.1, 2.0, 200, transition_begin=50),
    ),
    # optax's alpha is end_value / init_value.
    "cosine": (
        fo.cosine_decay_schedule(0.4, 300, end_value=0.04),
        optax.cosine_decay_schedule(0.4, 300, alpha=0.1),
    ),
    "warmup_cosine": (
        fo.warmup_cosine_decay_schedule(0.0, 1.0, 50, 300, end_value=0.05),
        optax.warmup_cosine_decay_schedule(0.0, 1.0, 50, 300, end_value=0.05),
    ),
    "join": (
        fo.join_schedules(
            [
                fo.constant_schedule(1.0),
                fo.cosine_decay_schedule(1.0, 100),
                fo.constant_schedule(0.1),
            ],
            [50, 200],
        ),
        optax.join_schedules(
            [
                optax.constant_schedule(1.0),
                optax.cosine_decay_schedule(1.0, 100),
                optax.constant_schedule(0.1),
            ],
            [50, 200],
        ),
    ),
}


@pytest.mark.parametrize("case", list(OPTAX_EQUIVALENTS))
def test_schedule_matches_optax(case):
    ours, theirs = OPTAX_EQUIVALENTS[case]
    # Both act elementwise, so a vector of steps gives the whole curve at once.
    got = ours(STEPS) * jnp.ones(STEPS.shape)
    want = theirs(STEPS) * jnp.ones(STEPS.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_closed_forms():
    def at(schedule, *steps):
        return [float(schedule(jnp.int32(t))) for t in steps]

    approx = lambda *values: pytest.approx(list(values), rel=1e-6)
    # torch's StepLR(step_size=10, gamma=0.5).
    assert at(fo.exponential_decay(1.0, 10, 0.5, staircase=True), 0, 9, 10, 25) == approx(
        1.0, 1.0, 0.5, 0.25
    )
    # r₀·γ^(t/T) between the stairs.
    assert at(fo.exponential_decay(1.0, 10, 0.5), 5, 15) == approx(2**-0.5, 2**-1.5)
    ramp = fo.polynomial_schedule(0.0, 2.0, 1.0, 100)
    assert at(ramp, 0, 50, 100, 500) == approx(0.0, 1.0, 2.0, 2.0)
    assert at(fo.polynomial_schedule(1.0, 0.0, 2.0, 100), 50) == approx(0.25)
    # Halfway through a cosine decay the rate is the mean of its ends.
    assert at(fo.cosine_decay_schedule(1.0, 100, end_value=0.2), 0, 50, 100, 1000) == approx(
        1.0, 0.6, 0.2, 0.2
    )
    warm = fo.warmup_cosine_decay_schedule(0.1, 1.0, 10, 110)
    assert at(warm, 0, 5, 10, 60, 110) == approx(0.1, 0.55, 1.0, 0.5, 0.0)
    joined = fo.join_schedules([fo.constant_schedule(3.0), ramp], [20])
    assert at(joined, 19, 20, 70) == approx(3.0, 0.0, 1.0)
    steps = fo.piecewise_constant_schedule(2.0, {10: 0.5, 20: 0.1})
    assert at(steps, 9, 10, 19, 20) == approx(2.0, 1.0, 1.0, 0.1)


def test_schedules_accept_python_ints_and_traced_counts():
    schedule = fo.warmup_cosine_decay_schedule(0.0, 1.0, 10, 100)
    assert float(schedule(5)) == pytest.approx(0.5)
    assert float(jax.jit(schedule)(jnp.int32(5))) == pytest.approx(0.5)


def test_optimizer_with_a_schedule_takes_the_scheduled_step():
    # With sgd the t-th update (t = 0, 1, …) is −rate(t)·g.
    schedule = fo.exponential_decay(0.1, 1, 0.5)
    opt = fo.sgd(schedule)
    params, state = {"x": jnp.zeros(2)}, None
    state = opt.init(params)
    for t in range(4):
        updates, state = opt.update({"x": jnp.ones(2)}, state, params)
        np.testing.assert_allclose(updates["x"], [-0.1 * 0.5**t] * 2, rtol=1e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: fo.exponential_decay(1.0, 0, 0.5), "positive number of steps"),
        (lambda: fo.polynomial_schedule(1.0, 0.0, 1.0, 0), "positive number of steps"),
        (lambda: fo.cosine_decay_schedule(1.0, 0), "positive number of steps"),
        (lambda: fo.warmup_cosine_decay_schedule(0.0, 1.0, 100, 100), "warmup_steps < decay"),
        (lambda: fo.piecewise_constant_schedule(1.0, {10: -1.0}), "non-negative"),
        (lambda: fo.join_schedules([fo.constant_schedule(1.0)], [10]), "one boundary fewer"),
        (
            lambda: fo.join_schedules([fo.constant_schedule(1.0)] * 3, [20, 10]),
            "increasing boundaries",
        ),
    ],
)
def test_bad_arguments_raise(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@settings(max_examples=25, deadline=None)
@given(
    init=st.floats(1e-4, 1.0),
    end_fraction=st.floats(0.0, 1.0),
    steps=st.integers(1, 500),
    power=st.floats(0.5, 3.0),
)
def test_decays_run_monotonically_between_their_ends(init, end_fraction, steps, power):
    end = init * end_fraction
    # One grid for every draw, past twice the longest decay (steps ≤ 500): the same shapes
    # each time, so each operation compiles once, not once per draw.
    ts = jnp.arange(0, 1002, dtype=jnp.int32)
    for schedule in [
        fo.cosine_decay_schedule(init, steps, end_value=end),
        fo.polynomial_schedule(init, end, power, steps),
    ]:
        rates = np.asarray(schedule(ts) * jnp.ones(ts.shape), np.float64)
        assert np.all(np.diff(rates) <= 1e-6 * init)
        np.testing.assert_allclose(rates[[0, -1]], [init, end], rtol=1e-5, atol=1e-7)
