"""Adaptive rescalings from optax's catalogue: the building blocks of `funcnet.optim.catalogue`.

Each rule follows optax's transformation of the same name: its formula, its defaults and its
state (field for field where optax's fields are arrays). Where a rule's optax form departs from
the rule its paper and other libraries state, the docstring says so and which one is kept.

Each acts leaf by leaf on a pytree of updates `g` and returns a pytree of the same structure,
shapes and dtypes, except the layer-wise rules (`scale_by_novograd`, `scale_by_trust_ratio`,
`clip_by_block_rms`, `scale_by_param_block_rms`), which take one norm per leaf (a leaf is a
layer's kernel, bias or scale). Step counters are int32 scalars and `t` is the 1-based step.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet._checks import check_decay, check_int, check_positive
from funcnet.optim.base import (
    EmptyState,
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    PyTree,
    Updates,
    check_fits,
    increment,
    is_zero,
    stateless,
    update_moment,
    zeros_like,
)
from funcnet.optim.base import bias_correction as correct_bias
from funcnet.optim.transforms import (
    MomentsState,
    ScaleByAdamState,
    _adam_moments,
    _cast_like,
    _check_betas,
    _init_moments,
    _zero_count,
)

__all__ = [
    "ScaleByAdanState",
    "ScaleByAmsgradState",
    "ScaleByBeliefState",
    "ScaleByFactoredRmsState",
    "ScaleByNovogradState",
    "ScaleByRAdamState",
    "ScaleByRpropState",
    "ScaleBySm3State",
    "ScaleByYogiState",
    "clip_by_block_rms",
    "scale_by_adan",
    "scale_by_amsgrad",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_novograd",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rprop",
    "scale_by_sm3",
    "scale_by_trust_ratio",
    "scale_by_yogi",
]

# optax's Polyak step refuses to divide by a squared gradient norm below float64's ε.
_MACHINE_EPS = float(np.finfo(np.float64).eps)


def _scalar_dtype() -> jnp.dtype:
    """The default float dtype (float64 under `jax_enable_x64`), for scalars made from counts."""
    return jnp.result_type(float)


def _norm(x: jax.Array) -> jax.Array:
    """The Euclidean (Frobenius) norm of all entries of one leaf."""
    return jnp.sqrt(jnp.sum(jnp.square(x)))


def _rms(x: jax.Array) -> jax.Array:
    """The root mean square of all entries of one leaf."""
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def _debiased_mean(
    mu: Updates, updates: Updates, b1: float, count: jax.Array, nesterov: bool
) -> Updates:
    """The bias-corrected first moment `m / (1 − β₁ᵗ)`, or with `nesterov` its look-ahead
    `β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ)`."""
    if not nesterov:
        return correct_bias(mu, b1, count)
    ahead = correct_bias(mu, b1, increment(count))
    now = correct_bias(_cast_like(updates, mu), b1, count)
    return jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, ahead, now)


# Adam's relatives. Those that keep a count and two moments share `MomentsState`; the old
# names of their states stay importable.

ScaleByAmsgradState = ScaleByAdamState
ScaleByBeliefState = MomentsState
ScaleByRAdamState = MomentsState
ScaleByYogiState = MomentsState


def scale_by_amsgrad(
    *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> GradientTransformation:
    """AMSGrad's rescaling (Reddi et al., 2018), as optax's `scale_by_amsgrad`.

    ::

        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        v̂_max ← max(v̂_max, v / (1 − β₂ᵗ))
        u ← [m / (1 − β₁ᵗ)] / (√(v̂_max + ε_root) + ε)

    The maximum is of the bias-corrected `v` (optax); torch's `Adam(amsgrad=True)`, which is
    `scale_by_adam(amsgrad=True)`, keeps the maximum of the raw `v` and corrects it after.
    The state is a `ScaleByAdamState` with `nu_max` = `v̂_max`.

    Args:
      b1: decay `β₁` of the first moment.
      b2: decay `β₂` of the second moment.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
    """
    _check_betas("scale_by_amsgrad", b1, b2, eps, eps_root=eps_root)

    def init_fn(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            _zero_count(), zeros_like(params), zeros_like(params), zeros_like(params)
        )

    def update_fn(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamState]:
        del params
        count, mu, nu = _adam_moments(updates, state, b1, b2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, correct_bias(nu, b2, count))
        out = jax.tree.map(
            lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), correct_bias(mu, b1, count), nu_max
        )
        return _cast_like(out, updates), ScaleByAdamState(count, mu, nu, nu_max)

    return GradientTransformation(init_fn, update_fn)


def scale_by_belief(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief's rescaling (Zhuang et al., 2020), as optax's `scale_by_belief`.

    ::

        m ← β₁·m + (1 − β₁)·g
        s ← β₂·s + (1 − β₂)·(g − m)² + ε_root
        m̂ ← m / (1 − β₁ᵗ)      (Nesterov: β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ))
        u ← m̂ / (√(s / (1 − β₂ᵗ)) + ε)

    The state is a `MomentsState` whose `nu` is `s`, the mean square of the prediction error.

    Args:
      b1: decay `β₁` of the first moment.
      b2: decay `β₂` of the mean square of the prediction error.
      eps: `ε`, added to the root (the paper's is 1e-8; optax's default 1e-16 is kept).
      eps_root: `ε_root`, added to `s` at every step (the paper's is 0).
      nesterov: use Nesterov's look-ahead first moment.
    """
    _check_betas("scale_by_belief", b1, b2, eps, eps_root=eps_root)

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None
    ) -> tuple[Updates, MomentsState]:
        del params
        mu = update_moment(updates, state.mu, b1, 1)
        error = jax.tree.map(lambda g, m: g.astype(m.dtype) - m, updates, mu)
        nu = jax.tree.map(lambda s: s + eps_root, update_moment(error, state.nu, b2, 2))
        count = increment(state.count)
        mu_hat = _debiased_mean(mu, updates, b1, count, nesterov)
        out = jax.tree.map(
            lambda m, s: m / (jnp.sqrt(s) + eps), mu_hat, correct_bias(nu, b2, count)
        )
        return _cast_like(out, updates), MomentsState(count, mu, nu)

    return GradientTransformation(_init_moments, update_fn)


def _check_radam(
    owner: str, b1: float, b2: float, eps: float, eps_root: float, threshold: float
) -> None:
    """Refuses, in the name of `owner`, what `scale_by_radam` refuses."""
    _check_betas(owner, b1, b2, eps, eps_root=eps_root)
    check_positive(owner, "threshold", threshold)
    if isinstance(threshold, int | float) and threshold < 4:
        raise ValueError(f"{owner}: threshold must be >= 4, got {threshold!r}")


def scale_by_radam(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rectified Adam's rescaling (Liu et al., 2020), as optax's `scale_by_radam`.

    With `ρ_∞ = 2/(1 − β₂) − 1` and `ρ_t = ρ_∞ − 2t·β₂ᵗ/(1 − β₂ᵗ)`, the length of the
    approximated simple moving average::

        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        m̂ ← m / (1 − β₁ᵗ)       (Nesterov: as in `scale_by_belief`)
        r_t = √[(ρ_t − 4)(ρ_t − 2)·ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2)·ρ_t)]
        u ← r_t·m̂ / (√(v / (1 − β₂ᵗ) + ε_root) + ε)    if ρ_t ≥ threshold
        u ← m̂                                           otherwise (momentum SGD)

    The state is a `MomentsState`.

    Args:
      b1: decay `β₁` of the first moment.
      b2: decay `β₂` of the second moment.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
      threshold: the `ρ_t` from which the variance is taken as tractable; at least 4, below
        which `r_t` is not real.
      nesterov: use Nesterov's look-ahead first moment.
    """
    _check_radam("scale_by_radam", b1, b2, eps, eps_root, threshold)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None
    ) -> tuple[Updates, MomentsState]:
        del params
        count, mu, nu = _adam_moments(updates, state, b1, b2)
        t = count.astype(_scalar_dtype())
        b2t = b2**t
        rho = rho_inf - 2 * t * b2t / (1 - b2t)
        r = jnp.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        mu_hat = _debiased_mean(mu, updates, b1, count, nesterov)

        def rectified(m: jax.Array, v: jax.Array) -> jax.Array:
            adapted = r.astype(m.dtype) * m / (jnp.sqrt(v + eps_root) + eps)
            return jnp.where(rho >= threshold, adapted, m)

        out = jax.tree.map(rectified, mu_hat, correct_bias(nu, b2, count))
        return _cast_like(out, updates), MomentsState(count, mu, nu)

    return GradientTransformation(_init_moments, update_fn)


def scale_by_yogi(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
    eps_root: float = 0.0,
    initial_accumulator_value: float = 1e-6,
) -> GradientTransformation:
    """Yogi's rescaling (Zaheer et al., 2018), as optax's `scale_by_yogi`.

    ::

        m ← β₁·m + (1 − β₁)·g                 from m = initial_accumulator_value
        v ← v − (1 − β₂)·sign(v − g²)·g²      from v = initial_accumulator_value
        u ← [m / (1 − β₁ᵗ)] / (√(v / (1 − β₂ᵗ) + ε_root) + ε)

    `v` moves towards `g²` by an additive step, where Adam's moves by a multiplicative one, so
    a burst of large gradients cannot make the effective rate jump. The state is a
    `MomentsState`.

    Args:
      b1: decay `β₁` of the first moment.
      b2: `β₂`, the step of the second moment.
      eps: `ε`, added to the root (the paper's default 1e-3).
      eps_root: `ε_root`, added inside the root.
      initial_accumulator_value: the starting value of both moments.
    """
    _check_betas("scale_by_yogi", b1, b2, eps, eps_root=eps_root)
    check_positive(
        "scale_by_yogi", "initial_accumulator_value", initial_accumulator_value, allow_zero=True
    )

    def init_fn(params: Params) -> MomentsState:
        def start() -> Updates:  # one buffer per moment, so that a donated state stays valid
            return jax.tree.map(lambda z: z + initial_accumulator_value, zeros_like(params))

        return MomentsState(_zero_count(), start(), start())

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None
    ) -> tuple[Updates, MomentsState]:
        del params
        mu = update_moment(updates, state.mu, b1, 1)

        def second(g: jax.Array, v: jax.Array) -> jax.Array:
            g2 = jnp.square(g.astype(v.dtype))
            return (v - (1 - b2) * jnp.sign(v - g2) * g2).astype(v.dtype)

        check_fits(updates, state.nu)
        nu = jax.tree.map(second, updates, state.nu)
        count = increment(state.count)
        out = jax.tree.map(
            lambda m, v: m / (jnp.sqrt(v + eps_root) + eps),
            correct_bias(mu, b1, count),
            correct_bias(nu, b2, count),
        )
        return _cast_like(out, updates), MomentsState(count, mu, nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdanState(NamedTuple):
    """`count`: int32 scalar; `mu`: mean of the gradients; `delta`: mean of their changes
    `g_t − g_{t−1}`; `nu`: mean square of the look-ahead gradient; `previous_gradient`: the
    last `g`."""

    count: jax.Array
    mu: Updates
    delta: Updates
    nu: Updates
    previous_gradient: Updates


def _check_adan(owner: str, b1: float, b2: float, b3: float, eps: float, eps_root: float) -> None:
    """Refuses, in the name of `owner`, what `scale_by_adan` refuses."""
    _check_betas(owner, b1, b2, eps)
    check_decay(owner, "b3", b3)
    check_positive(owner, "eps_root", eps_root, allow_zero=True)


def scale_by_adan(
    *,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> GradientTransformation:
    """Adan's rescaling (Xie et al., 2022, Algorithm 1), as optax's `scale_by_adan`.

    With `Δ_t = g_t − g_{t−1}` (`Δ_1 = 0`)::

        m ← β₁·m + (1 − β₁)·g
        d ← β₂·d + (1 − β₂)·Δ
        n ← β₃·n + (1 − β₃)·(g + (1 − β₂)·Δ)²
        u ← [m̂ + (1 − β₂)·d̂] / (√(n̂ + ε_root) + ε)

    where `m̂, d̂, n̂` are the three averages divided by ``1 − β₁ᵗ``, ``1 − β₂ᵗ``, ``1 − β₃ᵗ``.
    The betas are optax's: `β` here weighs the old average (the paper's `1 − β`).

    Args:
      b1: decay `β₁` of the mean gradient.
      b2: decay `β₂` of the mean gradient change.
      b3: decay `β₃` of the mean square.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
    """
    _check_adan("scale_by_adan", b1, b2, b3, eps, eps_root)

    def init_fn(params: Params) -> ScaleByAdanState:
        return ScaleByAdanState(
            _zero_count(),
            zeros_like(params),
            zeros_like(params),
            zeros_like(params),
            zeros_like(params),
        )

    def update_fn(
        updates: Updates, state: ScaleByAdanState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdanState]:
        del params
        mu = update_moment(updates, state.mu, b1, 1)
        check_fits(updates, state.previous_gradient)
        change = jax.tree.map(
            lambda g, p: jnp.where(state.count == 0, 0, g.astype(p.dtype) - p),
            updates,
            state.previous_gradient,
        )
        delta = update_moment(change, state.delta, b2, 1)
        ahead = jax.tree.map(lambda g, c: g.astype(c.dtype) + (1 - b2) * c, updates, change)
        nu = update_moment(ahead, state.nu, b3, 2)
        count = increment(state.count)
        out = jax.tree.map(
            lambda m, d, n: (m + (1 - b2) * d) / (jnp.sqrt(n + eps_root) + eps),
            correct_bias(mu, b1, count),
            correct_bias(delta, b2, count),
            correct_bias(nu, b3, count),
        )
        previous = _cast_like(updates, state.previous_gradient)
        return _cast_like(out, updates), ScaleByAdanState(count, mu, delta, nu, previous)

    return GradientTransformation(init_fn, update_fn)


# Layer-wise rules: one norm per leaf.


ScaleByNovogradState = MomentsState


def scale_by_novograd(
    *,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """NovoGrad's rescaling (Ginsburg et al., 2019), as optax's `scale_by_novograd`.

    For each leaf (layer) `l`, with `‖·‖` the norm of the whole leaf::

        n_l ← ‖g_l‖²                                at t = 1
        n_l ← β₂·n_l + (1 − β₂)·‖g_l‖²              afterwards
        m_l ← β₁·m_l + g_l / (√(n_l + ε_root) + ε) + λ·x_l
        u_l ← m_l

    The state is a `MomentsState`: `mu` is the momentum `m`, `nu` the mean squared norm `n`
    of each leaf's gradient, one scalar per param.

    Args:
      b1: `β₁`, the momentum factor.
      b2: decay `β₂` of the squared norms.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
      weight_decay: `λ`, the weight decay inside the momentum (needs the params).
    """
    _check_betas("scale_by_novograd", b1, b2, eps, eps_root=eps_root)
    check_positive("scale_by_novograd", "weight_decay", weight_decay, allow_zero=True)

    def init_fn(params: Params) -> MomentsState:
        norms = jax.tree.map(lambda x: jnp.zeros([], jnp.result_type(x)), params)
        return MomentsState(_zero_count(), zeros_like(params), norms)

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None
    ) -> tuple[Updates, MomentsState]:
        if params is None and not is_zero(weight_decay):
            raise ValueError("scale_by_novograd with weight_decay needs the params.")
        check_fits(updates, state.mu)
        count = increment(state.count)

        def second(g: jax.Array, n: jax.Array) -> jax.Array:
            squared = jnp.sum(jnp.square(g.astype(n.dtype)))
            return jnp.where(count == 1, squared, b2 * n + (1 - b2) * squared).astype(n.dtype)

        nu = jax.tree.map(second, updates, state.nu)
        decay = zeros_like(updates) if params is None else params

        def first(g: jax.Array, n: jax.Array, x: jax.Array, m: jax.Array) -> jax.Array:
            g = g.astype(m.dtype)
            step = g / (jnp.sqrt(n + eps_root) + eps) + weight_decay * x.astype(m.dtype)
            return (b1 * m + step).astype(m.dtype)

        mu = jax.tree.map(first, updates, nu, decay, state.mu)
        return _cast_like(mu, updates), MomentsState(count, mu, nu)

    return GradientTransformation(init_fn, update_fn)


def scale_by_trust_ratio(
    *, min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0
) -> GradientTransformation:
    """Scales each leaf by its trust ratio (LARS, You et al., 2017), as optax.

    For each leaf (layer), with `‖·‖` the norm of the whole leaf floored at `min_norm`::

        u ← g · c·‖x‖ / (‖g‖ + ε)     (u ← g where ‖x‖ = 0 or ‖g‖ = 0)

    It reads the params: call `update(g, state, params)`. Used by `lars`, `lamb` and `fromage`.

    Args:
      min_norm: the floor of both norms.
      trust_coefficient: `c`.
      eps: `ε`, added to the norm of the update.
    """
    check_positive("scale_by_trust_ratio", "min_norm", min_norm, allow_zero=True)
    check_positive("scale_by_trust_ratio", "trust_coefficient", trust_coefficient)
    check_positive("scale_by_trust_ratio", "eps", eps, allow_zero=True)

    def ratio(g: jax.Array, x: jax.Array) -> jax.Array:
        x_norm = jnp.maximum(_norm(x), min_norm)
        g_norm = jnp.maximum(_norm(g), min_norm)
        trust = trust_coefficient * x_norm / (g_norm + eps)
        trust = jnp.where((x_norm == 0) | (g_norm == 0), 1.0, trust)
        return (g * trust.astype(g.dtype)).astype(g.dtype)

    def rule(updates: Updates, params: Params | None) -> Updates:
        if params is None:
            raise ValueError(
                "scale_by_trust_ratio needs the params: call update(g, state, params)."
            )
        return jax.tree.map(ratio, updates, params)

    return stateless(rule)


def clip_by_block_rms(threshold: float) -> GradientTransformation:
    """Clips each leaf to a root mean square of at most `d = threshold` (Adafactor's update
    clipping, Shazeer & Stern, 2018, §6): `u ← g / max(1, RMS(g)/d)`."""
    check_positive("clip_by_block_rms", "threshold", threshold)

    def rule(updates: Updates, params: Params | None) -> Updates:
        return jax.tree.map(lambda g: g / jnp.maximum(1.0, _rms(g) / threshold), updates)

    return stateless(rule)


def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Scales each leaf by the root mean square of its param (Adafactor's relative step):
    `u ← g · max(RMS(x), ε₂)`, `ε₂ = min_scale`. It reads the params."""
    check_positive("scale_by_param_block_rms", "min_scale", min_scale, allow_zero=True)

    def rule(updates: Updates, params: Params | None) -> Updates:
        if params is None:
            raise ValueError(
                "scale_by_param_block_rms needs the params: call update(g, state, params)."
            )
        return jax.tree.map(
            lambda g, x: g * jnp.maximum(_rms(x), min_scale).astype(g.dtype), updates, params
        )

    return stateless(rule)


# Memory-light second moments: Adafactor and SM3.


class ScaleByFactoredRmsState(NamedTuple):
    """`count`: int32 scalar; per param, either the factored moments `v_row` (the param's
    shape without its largest axis) and `v_col` (without its second largest), or the full
    moment `v`; the unused ones are empty arrays of shape ``(0,)``."""

    count: jax.Array
    v_row: Updates
    v_col: Updates
    v: Updates


def _factored_axes(
    shape: tuple[int, ...], factored: bool, min_dim_size_to_factor: int
) -> tuple[int, int] | None:
    """The axes `(second largest, largest)` a moment of `shape` is factored over, or None
    when it is kept whole (fewer than two axes, or the second largest below the minimum)."""
    if not factored or len(shape) < 2:
        return None
    order = np.argsort(shape)  # optax's order, so that ties pick the same axes
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return int(order[-2]), int(order[-1])


def _adafactor_decay(step: jax.Array, exponent: float) -> jax.Array:
    """`β̂ = 1 − (step + 1)^(−exponent)`, in float32 as optax and the paper's code compute it."""
    t = jnp.asarray(step + 1, jnp.float32)
    return 1.0 - t ** (-exponent)


def scale_by_factored_rms(
    *,
    factored: bool = True,
    decay_rate: float = 0.8,
    step_offset: int = 0,
    min_dim_size_to_factor: int = 128,
    epsilon: float = 1e-30,
) -> GradientTransformation:
    """Adafactor's rescaling by a factored second moment (Shazeer & Stern, 2018), as optax's
    `scale_by_factored_rms`.

    With `β̂_t = 1 − (t − t₀)^(−c)` (`c = decay_rate`, `t₀ = step_offset`) and `G = g² + ε₁`:
    a leaf whose two largest axes (`r`, the second largest, and `c`, the largest) both have at
    least `min_dim_size_to_factor` entries keeps a row and a column average::

        R ← β̂_t·R + (1 − β̂_t)·mean_c(G)          (the leaf's shape without axis c)
        C ← β̂_t·C + (1 − β̂_t)·mean_r(G)          (without axis r)
        u ← g / √(R·C / mean_r(R))                (R, C broadcast back along c, r)

    and any other leaf the full average, ``V ← β̂_t·V + (1 − β̂_t)·G``, ``u ← g / √V``.
    `β̂_t` is computed in float32 whatever the params' dtype, as optax computes it.

    Args:
      factored: factor the leaves that are large enough; `False` keeps every `V` whole.
      decay_rate: `c`, the exponent of the decay schedule.
      step_offset: `t₀`, the step at which a fine-tuning run restarts the schedule.
      min_dim_size_to_factor: the size both factored axes must reach.
      epsilon: `ε₁`, added to `g²`.
    """
    check_positive("scale_by_factored_rms", "decay_rate", decay_rate)
    check_int("scale_by_factored_rms", "step_offset", step_offset, minimum=0)
    check_int("scale_by_factored_rms", "min_dim_size_to_factor", min_dim_size_to_factor)
    check_positive("scale_by_factored_rms", "epsilon", epsilon)

    def init_fn(params: Params) -> ScaleByFactoredRmsState:
        def one(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
            dtype, shape = jnp.result_type(x), jnp.shape(x)
            axes = _factored_axes(shape, factored, min_dim_size_to_factor)
            if axes is None:
                return jnp.zeros((0,), dtype), jnp.zeros((0,), dtype), jnp.zeros(shape, dtype)
            r, c = axes
            row = jnp.zeros(shape[:c] + shape[c + 1 :], dtype)
            col = jnp.zeros(shape[:r] + shape[r + 1 :], dtype)
            return row, col, jnp.zeros((0,), dtype)

        leaves, treedef = jax.tree.flatten(params)
        rows, cols, fulls = zip(*map(one, leaves), strict=True) if leaves else ((), (), ())
        return ScaleByFactoredRmsState(
            _zero_count(),
            treedef.unflatten(rows),
            treedef.unflatten(cols),
            treedef.unflatten(fulls),
        )

    def update_fn(
        updates: Updates, state: ScaleByFactoredRmsState, params: Params | None = None
    ) -> tuple[Updates, ScaleByFactoredRmsState]:
        del params
        check_fits(jax.eval_shape(init_fn, updates), state)  # the moments init makes for them
        beta = _adafactor_decay(state.count - step_offset, decay_rate)

        def one(g, row, col, full):
            squared = jnp.square(g) + epsilon
            axes = _factored_axes(jnp.shape(g), factored, min_dim_size_to_factor)
            if axes is None:
                full = (beta * full + (1.0 - beta) * squared).astype(full.dtype)
                return g * full**-0.5, row, col, full
            r, c = axes
            row = (beta * row + (1.0 - beta) * jnp.mean(squared, axis=c)).astype(row.dtype)
            col = (beta * col + (1.0 - beta) * jnp.mean(squared, axis=r)).astype(col.dtype)
            r_in_row = r - 1 if r > c else r
            row_factor = (row / jnp.mean(row, axis=r_in_row, keepdims=True)) ** -0.5
            col_factor = col**-0.5
            out = g * jnp.expand_dims(row_factor, c) * jnp.expand_dims(col_factor, r)
            return out, row, col, full

        leaves, treedef = jax.tree.flatten(updates)
        parts = [treedef.flatten_up_to(tree) for tree in (state.v_row, state.v_col, state.v)]
        results = [one(g, *rest) for g, *rest in zip(leaves, *parts, strict=True)]
        out, rows, cols, fulls = (
            [treedef.unflatten(column) for column in zip(*results, strict=True)]
            if results
            else [treedef.unflatten([])] * 4
        )
        new_state = ScaleByFactoredRmsState(increment(state.count), rows, cols, fulls)
        return _cast_like(out, updates), new_state

    return GradientTransformation(init_fn, update_fn)


class ScaleBySm3State(NamedTuple):
    """`accumulators`: per param, a tuple of the per-axis maxima of its accumulator (one
    vector per axis; for a param of fewer than two axes the whole accumulator, one array);
    `momentum`: the averaged update, one array per param."""

    accumulators: PyTree
    momentum: Updates


def _sm3_cover(x: jax.Array) -> tuple[jax.Array, ...]:
    shape, dtype = jnp.shape(x), jnp.result_type(x)
    if len(shape) < 2:
        return (jnp.zeros(shape, dtype),)
    return tuple(jnp.zeros((n,), dtype) for n in shape)


def scale_by_sm3(*, b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8) -> GradientTransformation:
    """SM3's rescaling (Anil et al., 2019, SM3-II), as optax's `scale_by_sm3`.

    A param of axes `1…k` keeps one vector `μ_a` per axis in place of Adagrad's full sum. At
    each entry `i = (i₁, …, i_k)`::

        ν_i ← c₁·g_i² + c₂·min_a μ_a[i_a]      (c₁, c₂) = (1, 1) if β₂ = 1, else (1 − β₂, β₂)
        μ_a[j] ← max over the entries with i_a = j of ν_i
        m ← β₁·m + (1 − β₁)·g / √(ν + ε)       (0 where ν = 0)
        u ← m

    A param of fewer than two axes keeps its whole `ν` (the cover by single entries).
    `β₂ = 1` (default) sums squares as Adagrad does.

    Args:
      b1: `β₁`, the momentum's decay.
      b2: `β₂`, the decay of the accumulator (1: none).
      eps: `ε`, added inside the root.
    """
    check_decay("scale_by_sm3", "b1", b1)
    check_decay("scale_by_sm3", "b2", b2, allow_one=True)
    check_positive("scale_by_sm3", "eps", eps, allow_zero=True)
    c1, c2 = (1.0, 1.0) if b2 == 1.0 else (1.0 - b2, b2)

    def init_fn(params: Params) -> ScaleBySm3State:
        return ScaleBySm3State(jax.tree.map(_sm3_cover, params), zeros_like(params))

    def accumulate(g: jax.Array, cover: tuple[jax.Array, ...]) -> jax.Array:
        if g.ndim < 2:
            previous = cover[0]
        else:
            expanded = [
                jnp.reshape(mu, [1] * a + [g.shape[a]] + [1] * (g.ndim - a - 1))
                for a, mu in enumerate(cover)
            ]
            previous = functools.reduce(jnp.minimum, expanded)
        return c1 * g**2 + c2 * previous

    def maxima(nu: jax.Array, cover: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        dtype = cover[0].dtype
        if nu.ndim < 2:
            return (nu.astype(dtype),)
        axes = range(nu.ndim)
        return tuple(jnp.max(nu, axis=tuple(b for b in axes if b != a)).astype(dtype) for a in axes)

    def update_fn(
        updates: Updates, state: ScaleBySm3State, params: Params | None = None
    ) -> tuple[Updates, ScaleBySm3State]:
        del params
        check_fits(updates, state.momentum)
        nu = jax.tree.map(accumulate, updates, state.accumulators)
        scaled = jax.tree.map(
            lambda g, v: g * jnp.where(v > 0, lax.rsqrt(v + eps), 0.0), updates, nu
        )
        momentum = update_moment(scaled, state.momentum, b1, 1)
        accumulators = jax.tree.map(maxima, nu, state.accumulators)
        return _cast_like(momentum, updates), ScaleBySm3State(accumulators, momentum)

    return GradientTransformation(init_fn, update_fn)


# Sign-based steps.


class ScaleByRpropState(NamedTuple):
    """`step_sizes`: the step size `η` of each coordinate; `prev_updates`: the last step
    `p = η·sign(g)` returned (0 where it was skipped), one array per param."""

    step_sizes: Updates
    prev_updates: Updates


def _check_rprop(
    owner: str,
    learning_rate: float,
    eta_minus: float,
    eta_plus: float,
    min_step_size: float,
    max_step_size: float,
) -> None:
    """Refuses, in the name of `owner`, what `scale_by_rprop` refuses."""
    check_positive(owner, "learning_rate", learning_rate)
    check_positive(owner, "eta_minus", eta_minus)
    check_decay(owner, "eta_minus", eta_minus)
    if isinstance(eta_plus, int | float) and not eta_plus > 1:
        raise ValueError(f"{owner}: eta_plus must be > 1, got {eta_plus!r}")
    check_positive(owner, "eta_plus", eta_plus)
    check_positive(owner, "min_step_size", min_step_size, allow_zero=True)
    check_positive(owner, "max_step_size", max_step_size)
    if isinstance(min_step_size, int | float) and isinstance(max_step_size, int | float):
        if min_step_size > max_step_size:
            raise ValueError(
                f"{owner}: min_step_size must be <= max_step_size = {max_step_size!r}, "
                f"got {min_step_size!r}"
            )


def scale_by_rprop(
    learning_rate: float,
    *,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> GradientTransformation:
    """Rprop's per-coordinate step sizes (Riedmiller & Braun, 1993; iRprop⁻ of Igel & Hüsken,
    2003), the rule of `torch.optim.Rprop` and of optax's `scale_by_rprop` state.

    With `p` the last step (0 before the first) and `s = g·p`::

        η ← min(η·η⁺, η_max)  if s > 0;   max(η·η⁻, η_min)  if s < 0;   η  if s = 0
        p ← 0  if s < 0  else  η·sign(g)
        u ← p

    from `η = learning_rate`. The sign of `g` sets the direction, `η` the length; a sign flip
    shrinks `η` and skips the coordinate for one step.

    optax 0.2.8's `scale_by_rprop` keeps `p` in its state as above but returns the step of
    the *previous* call (zeros at the first; google-deepmind/optax pull request 1725); this
    returns the step just computed, as torch does.

    Args:
      learning_rate: the initial step size `η` of every coordinate (a number).
      eta_minus: `η⁻` in (0, 1), the shrink factor after a sign flip.
      eta_plus: `η⁺ > 1`, the growth factor while the sign holds.
      min_step_size: `η_min`.
      max_step_size: `η_max`.
    """
    _check_rprop("scale_by_rprop", learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)

    def init_fn(params: Params) -> ScaleByRpropState:
        sizes = jax.tree.map(lambda z: z + learning_rate, zeros_like(params))
        return ScaleByRpropState(sizes, zeros_like(params))

    def update_fn(
        updates: Updates, state: ScaleByRpropState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRpropState]:
        del params
        check_fits(updates, state.step_sizes)
        sign = jax.tree.map(lambda g, p: g.astype(p.dtype) * p, updates, state.prev_updates)
        sizes = jax.tree.map(
            lambda s, eta: jnp.where(
                s == 0,
                eta,
                jnp.clip(eta * jnp.where(s > 0, eta_plus, eta_minus), min_step_size, max_step_size),
            ).astype(eta.dtype),
            sign,
            state.step_sizes,
        )
        steps = jax.tree.map(
            lambda s, g, eta: jnp.where(s < 0, 0, eta * jnp.sign(g.astype(eta.dtype))),
            sign,
            updates,
            sizes,
        )
        return _cast_like(steps, updates), ScaleByRpropState(sizes, steps)

    return GradientTransformation(init_fn, update_fn)


# Step sizes from the loss.


def scale_by_polyak(
    *,
    f_min: float = 0.0,
    max_learning_rate: float = 1.0,
    eps: float = 0.0,
    variant: Literal["sps", "sps+"] = "sps",
) -> GradientTransformationExtraArgs:
    """Polyak's step size (Loizou et al., 2021, SPS_max), as optax's `scale_by_polyak`.

    With `f = value` the loss at the params and `f*  = f_min` a lower bound of it::

        γ ← min((f − f*) / (‖g‖² + ε), γ_max)      ("sps+": (f − f*) replaced by max(f − f*, 0))
        γ ← 0                                      where ‖g‖² + ε ≤ 2.2e-16 (float64's ε)
        u ← γ·g

    `‖g‖` is the norm of the whole update tree. Extra arg of `update`: `value` (`f`), which
    `funcnet.train`'s steps pass; called by hand, ``update(g, state, params, value=f)``.

    Args:
      f_min: `f*`, the optimal value or a lower bound of it (0 for a non-negative loss that
        can be fitted exactly).
      max_learning_rate: `γ_max`, the cap of the step.
      eps: `ε`, added to the squared norm.
      variant: ``"sps"`` or ``"sps+"`` (the gap clipped at 0).
    """
    who = "scale_by_polyak"
    if variant not in ("sps", "sps+"):
        raise ValueError(f"{who}: variant must be 'sps' or 'sps+', got {variant!r}")
    check_positive(who, "max_learning_rate", max_learning_rate)
    check_positive(who, "eps", eps, allow_zero=True)

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: EmptyState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, EmptyState]:
        del params
        value = extra_args.get("value")
        if value is None:
            raise TypeError(
                f"{who}.update needs the keyword argument `value` (the loss L(θ) of the batch). "
                "funcnet.train.make_step and fit pass it; called by hand, pass it as "
                "update(g, state, params, value=...)."
            )
        leaves = jax.tree.leaves(updates)
        squared = sum((jnp.sum(jnp.square(g)) for g in leaves), jnp.zeros([], _scalar_dtype()))
        gap = jnp.asarray(value - f_min).astype(squared.dtype)
        if variant == "sps+":
            gap = jnp.maximum(gap, 0)
        step = jnp.where(
            squared + eps <= _MACHINE_EPS,
            0.0,
            jnp.minimum(gap / (squared + eps), max_learning_rate),
        )
        return jax.tree.map(lambda g: (step * g).astype(g.dtype), updates), state

    return GradientTransformationExtraArgs(init_fn, update_fn)
