"""Initializers: sample statistics against the closed-form variances, orthogonality."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet.nn import gru
from funcnet.nn import initializers as init

SHAPE = (300, 200)  # fan_in = 300, fan_out = 200
FAN_IN, FAN_OUT = 300, 200

# name -> (factory, expected std, uniform limit or None)
CASES = {
    "normal": (lambda: init.normal(0.05), 0.05, None),
    "uniform": (lambda: init.uniform(0.2), 0.2 / math.sqrt(3), 0.2),
    "glorot_normal": (init.glorot_normal, math.sqrt(2 / (FAN_IN + FAN_OUT)), None),
    "glorot_uniform": (
        init.glorot_uniform,
        math.sqrt(2 / (FAN_IN + FAN_OUT)),
        math.sqrt(6 / (FAN_IN + FAN_OUT)),
    ),
    "he_normal": (init.he_normal, math.sqrt(2 / FAN_IN), None),
    "he_uniform": (init.he_uniform, math.sqrt(2 / FAN_IN), math.sqrt(6 / FAN_IN)),
    "lecun_normal": (init.lecun_normal, math.sqrt(1 / FAN_IN), None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_std_matches_the_formula(name):
    factory, std, limit = CASES[name]
    w = np.asarray(factory()(jax.random.key(0), SHAPE))
    assert w.shape == SHAPE and w.dtype == np.float32
    # 60,000 draws: the sample std is within 1% of the true one with overwhelming probability.
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    assert abs(w.mean()) < 4 * std / math.sqrt(w.size)
    if limit is not None:
        assert np.abs(w).max() <= limit
        assert np.abs(w).max() > 0.99 * limit


def test_names_resolve_to_the_same_rule():
    a = init.get("kaiming_normal")(jax.random.key(1), (5, 4))
    b = init.he_normal()(jax.random.key(1), (5, 4))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="unknown initializer"):
        init.get("nope")


def test_conv_kernel_fans_count_the_receptive_field():
    assert init.fans((3, 3, 8, 16)) == (72, 144)
    w = init.he_normal()(jax.random.key(0), (5, 5, 40, 64))
    np.testing.assert_allclose(np.std(w), math.sqrt(2 / (25 * 40)), rtol=0.02)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 3, 4, 8)])
def test_orthogonal(shape):
    w = np.asarray(init.orthogonal(gain=2.0)(jax.random.key(0), shape), np.float64)
    m = w.reshape(-1, shape[-1])
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    np.testing.assert_allclose(gram, 4.0 * np.eye(gram.shape[0]), atol=1e-4)


def test_constant_zeros_ones_and_dtype(x64):
    assert init.zeros(None, (2,)).dtype == jnp.float64
    np.testing.assert_array_equal(init.ones(None, (2,), jnp.float32), [1.0, 1.0])
    np.testing.assert_array_equal(init.constant(3.0)(None, (2,)), [3.0, 3.0])
    assert init.he_uniform()(jax.random.key(0), (3, 3), jnp.bfloat16).dtype == jnp.bfloat16


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_orthogonal_in_half_precision_is_the_float32_draw_rounded(dtype):
    # QR has no half-precision kernel; the draw is made in float32 and cast.
    key = jax.random.key(0)
    half = init.orthogonal()(key, (4, 3), dtype)
    assert half.dtype == dtype
    full = init.orthogonal()(key, (4, 3), jnp.float32)
    np.testing.assert_array_equal(np.asarray(half), np.asarray(full.astype(dtype)))
    _, params, _ = gru(2, dtype=jnp.bfloat16).init(key, (2, 3, 2))
    assert params["w_hh"].dtype == jnp.bfloat16
