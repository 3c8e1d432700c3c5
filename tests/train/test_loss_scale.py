"""Dynamic loss scaling against a plain Python loop of jmp's rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.train.loss_scale import (
    DynamicLossScale,
    adjust,
    all_finite,
    dynamic_loss_scale,
    scale_loss,
    unscale_grads,
)


def reference(finite_steps, scale, period, factor, min_scale):
    """jmp's DynamicLossScale.adjust written as a loop: the (scale, counter) after each step."""
    counter, out = 0, []
    for finite in finite_steps:
        if finite:
            counter += 1
            if counter == period:
                counter = 0
                grown = np.float32(scale) * np.float32(factor)
                scale = grown if np.isfinite(grown) else scale
        else:
            counter = 0
            scale = max(min_scale, scale / factor)
        out.append((float(scale), counter))
    return out


def steps(seed, n=200, p_finite=0.8):
    return np.random.default_rng(seed).random(n) < p_finite


def run(ls, finite_steps):
    """`adjust` over a sequence of steps in one jitted scan; stacked scales and counters."""

    @jax.jit
    def scan(ls, finite_steps):
        def body(ls, finite):
            ls = adjust(ls, finite)
            return ls, (ls.scale, ls.counter)

        return jax.lax.scan(body, ls, finite_steps)

    return scan(ls, jnp.asarray(finite_steps))


def test_state_is_a_pytree_of_scalar_arrays():
    ls = dynamic_loss_scale()
    assert isinstance(ls, DynamicLossScale)
    assert [(x.dtype, x.shape) for x in jax.tree.leaves(ls)] == [
        (jnp.float32, ()),
        (jnp.int32, ()),
        (jnp.int32, ()),
        (jnp.float32, ()),
        (jnp.float32, ()),
    ]
    assert float(ls.scale) == 2.0**15 and int(ls.period) == 2000 and float(ls.factor) == 2.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rule_matches_a_python_loop(seed):
    finite_steps = steps(seed)
    ls = dynamic_loss_scale(initial=2.0**4, period=3, factor=2.0, min_scale=1.0)
    _, (scales, counters) = run(ls, finite_steps)
    expected = reference(finite_steps, 2.0**4, 3, 2.0, 1.0)
    np.testing.assert_array_equal(np.asarray(scales), [s for s, _ in expected])
    np.testing.assert_array_equal(np.asarray(counters), [c for _, c in expected])
    # The sequence exercises growth, shrinkage and the floor.
    assert len(set(np.asarray(scales).tolist())) > 2 and float(np.min(scales)) == 1.0


def test_eager_steps_match_the_scan():
    finite_steps = steps(3, n=40)
    ls = dynamic_loss_scale(initial=8.0, period=3)
    eager = []
    for finite in finite_steps:
        ls = adjust(ls, bool(finite))
        eager.append((float(ls.scale), int(ls.counter)))
    assert eager == reference(finite_steps, 8.0, 3, 2.0, 1.0)


def test_growth_that_overflows_keeps_the_scale():
    big = float(np.finfo(np.float32).max) / 1.5
    ls = adjust(dynamic_loss_scale(initial=big, period=1), True)
    assert float(ls.scale) == np.float32(big) and int(ls.counter) == 0


def test_vmap_over_members_with_their_own_settings():
    settings = [(1, 2.0), (3, 2.0), (4, 4.0)]
    finite_steps = np.stack([steps(s, n=60) for s in range(3)])
    members = jax.tree.map(
        lambda *xs: jnp.stack(xs),
        *[dynamic_loss_scale(initial=2.0**6, period=p, factor=f) for p, f in settings],
    )
    _, (scales, counters) = jax.vmap(run)(members, finite_steps)
    for i, (p, f) in enumerate(settings):
        expected = reference(finite_steps[i], 2.0**6, p, f, 1.0)
        np.testing.assert_array_equal(np.asarray(scales[i]), [s for s, _ in expected])
        np.testing.assert_array_equal(np.asarray(counters[i]), [c for _, c in expected])


def test_scale_loss_promotes_half_losses():
    ls = dynamic_loss_scale(initial=2.0**15)
    scaled = scale_loss(ls, jnp.asarray(4.0, jnp.float16))
    assert scaled.dtype == jnp.float32 and float(scaled) == 4.0 * 2.0**15
    assert scale_loss(ls, jnp.asarray(0.5)).dtype == jnp.float32


def test_unscale_float16_grads():
    ls = dynamic_loss_scale(initial=2.0**15)
    true = np.array([3e-7, -1e-6, 2e-3, 0.0], np.float64)
    # The scaled gradient is representable in float16; the unscaled one rounds in float16.
    scaled = jnp.asarray(true * 2.0**15, jnp.float16)
    grads = {"w": scaled, "ids": jnp.arange(3), "b": jnp.asarray([1.0], jnp.float32)}
    out = unscale_grads(ls, grads)
    assert out["w"].dtype == jnp.float16 and out["b"].dtype == jnp.float32
    np.testing.assert_array_equal(out["ids"], np.arange(3))
    expected = (np.asarray(scaled, np.float32) / np.float32(2.0**15)).astype(np.float16)
    np.testing.assert_array_equal(np.asarray(out["w"]), expected)
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), true, rtol=2e-3, atol=6e-8)
    assert float(out["b"][0]) == 2.0**-15


def test_all_finite():
    assert bool(all_finite({"a": jnp.ones(3), "b": jnp.arange(2)}))
    assert not bool(all_finite({"a": jnp.ones(3), "b": jnp.asarray([1.0, jnp.nan])}))
    assert not bool(all_finite([jnp.asarray([jnp.inf], jnp.float16)]))
    assert bool(all_finite({}))
    batched = jax.vmap(all_finite)(jnp.asarray([[1.0, 2.0], [1.0, jnp.inf]]))
    np.testing.assert_array_equal(batched, [True, False])


def test_a_scaled_float16_step_end_to_end():
    """float32 params computed in float16: a backward value of 1e-8, which float16 flushes to
    zero, survives with the scale; a scale too large overflows and is seen."""
    x, c = jnp.asarray(1e-4, jnp.float16), jnp.asarray(1e-4, jnp.float16)

    def loss(w, weight=1.0):
        return (jnp.sum(w.astype(jnp.float16) * x * c) * weight).astype(jnp.float32)

    w = jnp.asarray([1.0], jnp.float32)
    assert float(jax.grad(loss)(w)[0]) == 0.0
    ls = dynamic_loss_scale(initial=2.0**15)
    g = unscale_grads(ls, jax.grad(lambda w: scale_loss(ls, loss(w)))(w))
    assert g.dtype == jnp.float32 and bool(all_finite(g))
    np.testing.assert_allclose(float(g[0]), 1e-8, rtol=2e-3)
    too_large = unscale_grads(ls, jax.grad(lambda w: scale_loss(ls, loss(w, 1e4)))(w))
    assert not bool(all_finite(too_large))
    assert float(adjust(ls, all_finite(too_large)).scale) == 2.0**14


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"period": 0}, "period must be an int >= 1, got 0"),
        ({"period": 2.5}, "period must be an int >= 1, got 2.5"),
        ({"factor": 1.0}, "factor must be a finite number greater than 1, got 1.0"),
        ({"factor": 0.5}, "factor must be a finite number greater than 1, got 0.5"),
        ({"initial": 0.0}, "initial must be a finite number greater than 0, got 0.0"),
        ({"initial": -1.0}, "initial must be a finite number greater than 0, got -1.0"),
        ({"initial": math.inf}, "initial must be a finite number greater than 0, got inf"),
        ({"initial": math.nan}, "initial must be a finite number greater than 0, got nan"),
        ({"min_scale": 0.0}, "min_scale must be a finite number greater than 0, got 0.0"),
    ],
)
def test_refusals(kwargs, message):
    with pytest.raises(ValueError, match=r"^dynamic_loss_scale: ") as err:
        dynamic_loss_scale(**kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)
