"""Small real and synthetic data sets, all available offline."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import check_int, check_positive, is_real
from funcnet._keys import typed_key

Array = jax.Array


class Split(NamedTuple):
    """A train/test split: inputs ``x_*`` and integer labels ``y_*``."""

    x_train: Array
    y_train: Array
    x_test: Array
    y_test: Array


def xor() -> tuple[Array, Array]:
    """The four XOR points: ``x`` of shape ``(4, 2)`` and ``y = x₁ ⊕ x₂`` of shape ``(4,)``."""
    x = jnp.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    return x, jnp.array([0, 1, 1, 0])


def moons(key: Array, *, n: int = 200, noise: float = 0.1) -> tuple[Array, Array]:
    """Two interleaved half circles in 2-D with Gaussian noise of std `noise`.

    Class 0: ``(cos t, sin t)``; class 1: ``(1 − cos t, ½ − sin t)``, ``t ∈ [0, π]``.
    Returns ``x`` of shape ``(n, 2)`` and labels of shape ``(n,)``.
    """
    key = typed_key(key, caller="moons")
    check_int("moons", "n", n)
    check_positive("moons", "noise", noise, allow_zero=True)
    t_key, noise_key = jax.random.split(key)
    n0 = n // 2
    t = jax.random.uniform(t_key, (n,), minval=0.0, maxval=math.pi)
    label = (jnp.arange(n) >= n0).astype(jnp.int32)
    upper = jnp.stack([jnp.cos(t), jnp.sin(t)], axis=1)
    lower = jnp.stack([1 - jnp.cos(t), 0.5 - jnp.sin(t)], axis=1)
    x = jnp.where(label[:, None] == 0, upper, lower)
    return x + noise * jax.random.normal(noise_key, x.shape), label


def spirals(
    key: Array, *, n: int = 300, classes: int = 2, turns: float = 1.5, noise: float = 0.05
) -> tuple[Array, Array]:
    """`classes` interleaved Archimedean spiral arms in 2-D.

    Arm ``c`` holds the points ``r (cos(θ + 2πc/C), sin(θ + 2πc/C))`` with ``r ∈ [0.05, 1]``
    and ``θ = 2π·turns·r``, plus Gaussian noise. Returns ``x`` ``(n, 2)`` and labels ``(n,)``.
    """
    key = typed_key(key, caller="spirals")
    check_int("spirals", "n", n)
    check_int("spirals", "classes", classes)
    check_positive("spirals", "turns", turns)
    check_positive("spirals", "noise", noise, allow_zero=True)
    r_key, noise_key = jax.random.split(key)
    label = jnp.arange(n) % classes
    r = jax.random.uniform(r_key, (n,), minval=0.05, maxval=1.0)
    theta = 2 * math.pi * turns * r + 2 * math.pi * label / classes
    x = jnp.stack([r * jnp.cos(theta), r * jnp.sin(theta)], axis=1)
    return x + noise * jax.random.normal(noise_key, x.shape), label


def digits(*, test_fraction: float = 0.2, seed: int = 0, images: bool = False) -> Split:
    """The 1,797 handwritten 8×8 digits bundled with scikit-learn, split by class.

    Pixels are scaled to ``[0, 1]``. ``x`` has shape ``(n, 64)``, or ``(n, 8, 8, 1)`` with
    ``images=True``; labels are integers 0–9. The split is stratified and fixed by `seed`.
    """
    if not is_real(test_fraction) or not 0 < test_fraction < 1:
        raise ValueError(f"digits: test_fraction must lie in (0, 1), got {test_fraction!r:.40}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    if images:
        x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
    return Split(*(jnp.asarray(a) for a in (x_train, y_train, x_test, y_test)))


def standardize(x_train: Array, *others: Array, eps: float = 1e-8) -> tuple[Array, ...]:
    """Scales features to zero mean and unit variance with statistics of `x_train` alone.

    ``z = (x − μ_train) / (σ_train + eps)`` per feature (all axes but the first), applied to
    `x_train` and to each array in `others` (e.g. the test set).
    """
    mean = jnp.mean(x_train, axis=0)
    std = jnp.std(x_train, axis=0)
    return tuple((x - mean) / (std + eps) for x in (x_train, *others))
