"""Learning-rate schedules: pure functions `step -> rate`.

A schedule takes the number of updates made so far, `t = 0, 1, 2, …` (an int32 scalar or a
Python int), and returns the rate for the next update as a float scalar. Every optimizer's
`learning_rate` accepts one in place of a number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from funcnet.optim.base import Schedule

__all__ = [
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "join_schedules",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "warmup_cosine_decay_schedule",
]


def _float(x: float | jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.result_type(float))


def _check_steps(name: str, steps: int) -> None:
    if not steps > 0:
        raise ValueError(f"{name} must be a positive number of steps, got {steps}.")


def constant_schedule(value: float | jax.Array) -> Schedule:
    """`rate(t) = value` for every `t`."""

    def schedule(count: jax.Array | int) -> jax.Array:
        del count
        return _float(value)

    return schedule


def exponential_decay(
    init_value: float,
    transition_steps: int,
    decay_rate: float,
    *,
    transition_begin: int = 0,
    staircase: bool = False,
    end_value: float | None = None,
) -> Schedule:
    """Exponential decay: `rate(t) = r₀ · γ^(max(t − B, 0) / T)`.

    With `staircase=True` the exponent is floored, so the rate drops by `γ` every `T` steps
    (torch's `StepLR(step_size=T, gamma=γ)`). `end_value` bounds the rate: from below when
    `γ < 1`, from above when `γ > 1`.

    Args:
      init_value: `r₀`, the rate at `t = 0`.
      transition_steps: `T`, the steps over which the rate is multiplied by `γ`.
      decay_rate: `γ`.
      transition_begin: `B`, the steps during which the rate holds at `r₀`.
      staircase: decay in steps of `T` instead of continuously.
      end_value: optional bound the rate never crosses.
    """
    _check_steps("exponential_decay's transition_steps", transition_steps)

    def schedule(count: jax.Array | int) -> jax.Array:
        exponent = jnp.maximum(jnp.asarray(count) - transition_begin, 0) / transition_steps
        if staircase:
            exponent = jnp.floor(exponent)
        rate = init_value * jnp.power(_float(decay_rate), exponent)
        if end_value is not None:
            rate = jnp.maximum(rate, end_value) if decay_rate < 1 else jnp.minimum(rate, end_value)
        return _float(rate)

    return schedule


def piecewise_constant_schedule(
    init_value: float, boundaries_and_scales: dict[int, float] | None = None
) -> Schedule:
    """Piecewise constant: `rate(t) = r₀ · Π_{b ≤ t} s_b`.

    From step `b` on, the rate is multiplied by `s_b` (torch's `MultiStepLR` with all
    `s_b = γ`).

    Args:
      init_value: `r₀`, the rate before the first boundary.
      boundaries_and_scales: `{b: s_b}`, the steps where the rate jumps and the factors.
    """
    jumps = sorted((boundaries_and_scales or {}).items())
    if any(s < 0 for _, s in jumps):
        raise ValueError(f"piecewise_constant_schedule needs non-negative scales, got {jumps}.")

    def schedule(count: jax.Array | int) -> jax.Array:
        count = jnp.asarray(count)
        rate = _float(init_value)
        for boundary, factor in jumps:
            rate = jnp.where(count >= boundary, rate * factor, rate)
        return rate

    return schedule


def polynomial_schedule(
    init_value: float,
    end_value: float,
    power: float,
    transition_steps: int,
    *,
    transition_begin: int = 0,
) -> Schedule:
    """Polynomial decay: `rate(t) = (r₀ − r₁) · (1 − s/T)^p + r₁` with `s = clip(t − B, 0, T)`.

    `power=1` gives a linear ramp, which also serves as a warm-up when `r₁ > r₀`.

    Args:
      init_value: `r₀`, the rate until step `B`.
      end_value: `r₁`, the rate from step `B + T` on.
      power: `p`.
      transition_steps: `T`.
      transition_begin: `B`.
    """
    _check_steps("polynomial_schedule's transition_steps", transition_steps)

    def schedule(count: jax.Array | int) -> jax.Array:
        steps = jnp.clip(jnp.asarray(count) - transition_begin, 0, transition_steps)
        # (T − s)/T, not 1 − s/T: exactly 0 at the end even if the division becomes a product
        # with 1/T.
        frac = (transition_steps - steps) / transition_steps
        return _float((init_value - end_value) * frac**power + end_value)

    return schedule


def cosine_decay_schedule(
    init_value: float, decay_steps: int, *, end_value: float = 0.0
) -> Schedule:
    """Cosine decay (Loshchilov & Hutter, 2017) from `r₀` to `r₁` over `T` steps.

    `rate(t) = r₁ + (r₀ − r₁) · ½(1 + cos(π·min(t, T)/T))`, torch's `CosineAnnealingLR`
    without restarts (its `eta_min` is `r₁`). optax's `alpha` is `r₁ / r₀`.

    Args:
      init_value: `r₀`, the rate at `t = 0`.
      decay_steps: `T`.
      end_value: `r₁`, the rate from step `T` on.
    """
    _check_steps("cosine_decay_schedule's decay_steps", decay_steps)

    def schedule(count: jax.Array | int) -> jax.Array:
        frac = jnp.minimum(jnp.asarray(count), decay_steps) / decay_steps
        cosine = 0.5 * (1 + jnp.cos(math.pi * frac))
        return _float(end_value + (init_value - end_value) * cosine)

    return schedule


def warmup_cosine_decay_schedule(
    init_value: float,
    peak_value: float,
    warmup_steps: int,
    decay_steps: int,
    *,
    end_value: float = 0.0,
) -> Schedule:
    """Linear warm-up from `r₀` to `r_peak` over `W` steps, then cosine decay to `r₁`.

    ::

        rate(t) = r₀ + (r_peak − r₀) · t / W                     for t < W
        rate(t) = cosine_decay_schedule(r_peak, T − W, r₁)(t − W)  for t ≥ W

    Args:
      init_value: `r₀`, the rate at `t = 0`.
      peak_value: `r_peak`, the rate at the end of the warm-up.
      warmup_steps: `W`.
      decay_steps: `T`, the total length of warm-up and decay, as in optax.
      end_value: `r₁`, the rate from step `T` on.
    """
    if not 0 <= warmup_steps < decay_steps:
        raise ValueError(
            "warmup_cosine_decay_schedule needs 0 <= warmup_steps < decay_steps, got "
            f"warmup_steps={warmup_steps}, decay_steps={decay_steps}."
        )
    decay = cosine_decay_schedule(peak_value, decay_steps - warmup_steps, end_value=end_value)
    if warmup_steps == 0:
        return decay
    warmup = polynomial_schedule(init_value, peak_value, 1.0, warmup_steps)
    return join_schedules([warmup, decay], [warmup_steps])


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Runs `schedules[i]` from `boundaries[i-1]` on, each restarted at its boundary.

    `rate(t) = schedules[i](t − boundaries[i-1])` for `boundaries[i-1] ≤ t < boundaries[i]`,
    with `boundaries[-1] = 0`; `len(boundaries)` must be `len(schedules) − 1`, increasing.
    """
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(
            f"join_schedules needs one boundary fewer than schedules, got {len(schedules)} "
            f"schedules and {len(boundaries)} boundaries."
        )
    if list(boundaries) != sorted(boundaries):
        raise ValueError(f"join_schedules needs increasing boundaries, got {list(boundaries)}.")

    def schedule(count: jax.Array | int) -> jax.Array:
        count = jnp.asarray(count)
        rate = _float(schedules[0](count))
        for boundary, later in zip(boundaries, schedules[1:], strict=True):
            rate = jnp.where(count < boundary, rate, _float(later(count - boundary)))
        return rate

    return schedule
