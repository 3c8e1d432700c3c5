"""Dropout and alpha dropout: random masks in training, the identity in evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from funcnet._checks import check_probability
from funcnet.nn.activations import SELU_ALPHA, SELU_SCALE
from funcnet.nn.core import Layer, LayerError, check_floating

__all__ = ["alpha_dropout", "dropout"]

Array = jax.Array

# The value SELU saturates to for large negative inputs, -λα: alpha dropout's "dropped" value.
_SELU_FLOOR = -SELU_SCALE * SELU_ALPHA


def _random_mask(kind: str, rate: float, drop: Callable[[Array, Array], Array]) -> Layer:
    """A layer computing ``drop(x, keep)`` in training, with ``keep ~ Bernoulli(1 − rate)``
    per element, and the identity in evaluation or when ``rate = 0``."""

    def init(key, in_shape):
        del key
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params
        if not train or rate == 0.0:
            return x, state
        if key is None:
            raise LayerError(
                kind,
                "train=True draws a random mask and needs a key: apply(..., key=key, "
                "train=True); pass train=False to evaluate",
            )
        check_floating(kind, x)
        return drop(x, jax.random.bernoulli(key, 1.0 - rate, x.shape)), state

    return Layer(init, apply, kind=kind)


def dropout(rate: float) -> Layer:
    """Inverted dropout (Srivastava et al., 2014); `rate` is the probability of dropping.

    ``train=True``: ``y = x ⊙ m / (1 − rate)`` with ``m ~ Bernoulli(1 − rate)`` drawn per
    element from `key`, so ``E[y] = x``. ``train=False``: ``y = x``. Any input shape; output
    the same. No params. A key is required in training unless ``rate = 0``.
    """
    check_probability("dropout", "rate", rate, of="dropping")

    def drop(x, keep):
        return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))

    return _random_mask("dropout", rate, drop)


def alpha_dropout(rate: float) -> Layer:
    """Alpha dropout (Klambauer et al., 2017), the dropout for self-normalising SELU networks.

    ``train=True``: dropped units are set to SELU's negative saturation ``α' = −λα ≈ −1.7581``
    rather than 0, then an affine map restores zero mean and unit variance::

        y = a·(x ⊙ m + α'·(1 − m)) + b,    m ~ Bernoulli(q),  q = 1 − rate,
        a = (q + α'²·q·(1 − q))^(−1/2),    b = −a·α'·(1 − q)

    so an input with mean 0 and variance 1 keeps them. ``train=False``: ``y = x``. Any input
    shape; output the same. No params. A key is required in training unless ``rate = 0``.
    """
    check_probability("alpha_dropout", "rate", rate, of="dropping")
    q = 1.0 - rate
    a = 1.0 / math.sqrt(q + _SELU_FLOOR**2 * q * (1.0 - q))
    b = -a * _SELU_FLOOR * (1.0 - q)

    def drop(x, keep):
        return a * jnp.where(keep, x, jnp.full_like(x, _SELU_FLOOR)) + b

    return _random_mask("alpha_dropout", rate, drop)
