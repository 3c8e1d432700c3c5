"""Learning-rate-free optimizers: the step size estimated from the run itself.

`prodigy` follows optax's `contrib.prodigy` (its formula and defaults), so that the two agree
to float64 round-off (tests/optim/test_optim_contrib.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from funcnet._checks import check_decay, check_positive, check_rate
from funcnet.optim.base import (
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Updates,
    check_fits,
    increment,
    zeros_like,
)
from funcnet.optim.contrib import _copy, _lowest_dtype

__all__ = ["ProdigyState", "prodigy"]


class ProdigyState(NamedTuple):
    """The state of `prodigy`: Adam's two moments `m`, `v` (of the scaled gradients), the
    weighted gradient sum `s` and the starting params `x₀` (trees like the params), the
    estimate `d` and the weighted numerator `r` (scalars), and the step count (int32)."""

    exp_avg: Updates
    exp_avg_sq: Updates
    grad_sum: Updates
    params0: Params
    estim_lr: jax.Array
    numerator_weighted: jax.Array
    count: jax.Array


def _vdot(a: Updates, b: Updates) -> jax.Array:
    """`Σ_leaves ⟨a, b⟩`, a scalar."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def prodigy(
    learning_rate: ScalarOrSchedule = 1.0,
    *,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
) -> GradientTransformation:
    """Prodigy (Mishchenko & Defazio, 2023, "Prodigy: An Expeditiously Adaptive
    Parameter-Free Learner"), as optax's `contrib.prodigy`, with optax's defaults.

    AdamW whose step `d` (the distance to the solution) is estimated as it runs. With
    `γ_t` the learning rate (a multiplier, 1 by default, or a schedule fed the 0-based step),
    `x₀` the starting params, and `β₃ = √β₂` by default::

        η_t = d·γ_t·√(1 − β₂ᵗ)/(1 − β₁ᵗ)
        m ← β₁·m + (1 − β₁)·d·g
        v ← β₂·v + (1 − β₂)·d²·g²
        s ← β₃·s + (η_t/d₀)·d·g                 (safeguard_warmup: (d/d₀)·d·g)
        r ← β₃·r + (d/d₀)·η_t·⟨g, x₀ − x⟩
        d ← max(d, c·r/‖s‖₁)
        x ← x − η_t·(m/(√v + d·ε) + λ·x)          (the new d in d·ε)

    `d` starts at `d₀ = estim_lr0`. optax's is an extra-args transformation that ignores its
    extra args; this one takes none.

    Args:
      learning_rate: `γ_t`, a number or a schedule (1 at its peak, as the paper schedules it).
      betas: `(β₁, β₂)`, Adam's decays.
      beta3: `β₃`, the decay of `s` and `r` (default `√β₂`).
      eps: `ε`.
      estim_lr0: `d₀ > 0`, the starting (under-)estimate.
      estim_lr_coef: `c > 0`, multiplies each estimate.
      weight_decay: `λ ≥ 0`, AdamW's decoupled decay, scaled by `η_t`.
      safeguard_warmup: leave `γ_t` out of `s`, for a warm-up from small rates.
    """
    check_rate("prodigy", learning_rate)
    if not isinstance(betas, tuple | list) or len(betas) != 2:
        raise ValueError(f"prodigy: betas must be a pair (β₁, β₂), got {betas!r:.40}")
    beta1, beta2 = betas
    check_decay("prodigy", "betas[0]", beta1)
    check_decay("prodigy", "betas[1]", beta2)
    if beta3 is None:
        beta3 = beta2**0.5
    check_decay("prodigy", "beta3", beta3)
    check_positive("prodigy", "eps", eps, allow_zero=True)
    check_positive("prodigy", "estim_lr0", estim_lr0)
    check_positive("prodigy", "estim_lr_coef", estim_lr_coef)
    check_positive("prodigy", "weight_decay", weight_decay, allow_zero=True)

    def init_fn(params: Params) -> ProdigyState:
        dtype = _lowest_dtype(params)
        return ProdigyState(
            exp_avg=zeros_like(params),
            exp_avg_sq=zeros_like(params),
            grad_sum=zeros_like(params),
            params0=_copy(params),
            estim_lr=jnp.asarray(estim_lr0, dtype),
            numerator_weighted=jnp.zeros([], dtype),
            count=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Updates, state: ProdigyState, params: Params | None = None
    ) -> tuple[Updates, ProdigyState]:
        if params is None:
            raise ValueError("prodigy: update needs the params, got params=None")
        check_fits(updates, state.exp_avg)
        count = increment(state.count)
        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        d = state.estim_lr
        correction = (1 - beta2**count) ** 0.5 / (1 - beta1**count)
        dlr = jnp.asarray(d * rate * correction, d.dtype)
        dg = jax.tree.map(lambda g: d * g, updates)
        numerator = _vdot(updates, jax.tree.map(lambda x0, x: x0 - x, state.params0, params))
        exp_avg = jax.tree.map(lambda m, u: beta1 * m + (1 - beta1) * u, state.exp_avg, dg)
        exp_avg_sq = jax.tree.map(
            lambda v, u: beta2 * v + (1 - beta2) * u * u, state.exp_avg_sq, dg
        )
        weight = d if safeguard_warmup else dlr
        grad_sum = jax.tree.map(lambda s, u: beta3 * s + weight * u / estim_lr0, state.grad_sum, dg)
        numerator_weighted = beta3 * state.numerator_weighted
        numerator_weighted = numerator_weighted + (d / estim_lr0) * dlr * numerator
        denominator = sum(jnp.sum(jnp.abs(s)) for s in jax.tree.leaves(grad_sum))
        new_d = jnp.maximum(d, estim_lr_coef * numerator_weighted / denominator)
        step = jax.tree.map(
            lambda m, v, x: (
                -weight_decay * dlr * x - dlr * m / (jnp.sqrt(v) + new_d * eps)
            ).astype(jnp.result_type(x)),
            exp_avg,
            exp_avg_sq,
            params,
        )
        return step, ProdigyState(
            exp_avg, exp_avg_sq, grad_sum, state.params0, new_d, numerator_weighted, count
        )

    return GradientTransformation(init_fn, update_fn)
