"""Building blocks: small gradient transformations that named optimizers chain together.

Each rule acts leaf by leaf on a pytree of updates `g` and returns a pytree of the same
structure, shapes and dtypes. Per-parameter buffers (moments) live in the params' dtype unless
`moment_dtype` says otherwise. Step counters are int32 scalars; `t` below is the 1-based step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from funcnet._checks import (
    check_decay,
    check_finite,
    check_float_dtype,
    check_int,
    check_positive,
    check_rate,
)
from funcnet._keys import typed_key
from funcnet.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    PyTree,
    ScalarOrSchedule,
    Updates,
    accepts_extra_args,
    check_fits,
    check_transformation,
    global_norm,
    increment,
    is_zero,
    one_minus_power,
    stateless,
    update_moment,
    zeros_like,
)
from funcnet.optim.base import bias_correction as correct_bias  # `bias_correction` is a flag

__all__ = [
    "AddDecayedWeightsState",
    "AddNoiseState",
    "ApplyIfFiniteState",
    "EmaState",
    "MaskedNode",
    "MaskedState",
    "MomentsState",
    "ScaleByAdadeltaState",
    "ScaleByAdagradState",
    "ScaleByAdamState",
    "ScaleByAdamaxState",
    "ScaleByLearningRateState",
    "ScaleByLionState",
    "ScaleByNadamState",
    "ScaleByOptimisticGradientState",
    "ScaleByRmsState",
    "TraceState",
    "add_decayed_weights",
    "add_noise",
    "apply_if_finite",
    "clip",
    "clip_by_global_norm",
    "ema",
    "freeze",
    "masked",
    "scale",
    "scale_by_adadelta",
    "scale_by_adagrad",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_nadam",
    "scale_by_optimistic_gradient",
    "scale_by_rms",
    "set_to_zero",
    "trace",
]


def _cast_like(tree: PyTree, like: PyTree) -> PyTree:
    """Casts each leaf of `tree` to the dtype of the matching leaf of `like`."""
    return jax.tree.map(lambda x, y: x.astype(y.dtype), tree, like)


def _zero_count() -> jax.Array:
    return jnp.zeros([], jnp.int32)


# What a rule without an eps (Lion) passes to `_check_betas` as its eps.
_NO_EPS: Any = object()


def _check_betas(
    owner: str,
    b1: float,
    b2: float,
    eps: float,
    *,
    eps_root: float = 0.0,
    allow_one: bool = False,
) -> None:
    """Refuses the betas of an Adam-like rule `owner` outside [0, 1) ([0, 1] with `allow_one`),
    an `eps` that is not > 0 (`_NO_EPS`: the rule has none) and an `eps_root` below 0."""
    check_decay(owner, "b1", b1, allow_one=allow_one)
    check_decay(owner, "b2", b2, allow_one=allow_one)
    if eps is not _NO_EPS:
        check_positive(owner, "eps", eps)
    check_positive(owner, "eps_root", eps_root, allow_zero=True)


# Scaling.


def scale(step_size: float | jax.Array) -> GradientTransformation:
    """Multiplies every update by a constant: `u ← step_size · g`."""
    if isinstance(step_size, tuple | list):
        raise ValueError(f"scale: step_size must be a number or an array, got {step_size!r:.40}")
    check_finite("scale", "step_size", step_size)

    def rule(updates: Updates, params: Params | None) -> Updates:
        return jax.tree.map(lambda g: (step_size * g).astype(g.dtype), updates)

    return stateless(rule)


class ScaleByLearningRateState(NamedTuple):
    """`count`: int32 scalar, the number of updates made, fed to a schedule."""

    count: jax.Array


def scale_by_learning_rate(
    learning_rate: ScalarOrSchedule, *, flip_sign: bool = True
) -> GradientTransformation:
    """Scales updates by the learning rate `α_t` and, by default, turns them into descent steps.

    `u ← −α_t · g` (or `+α_t · g` with `flip_sign=False`), where `α_t = learning_rate` for a
    number and `α_t = learning_rate(t − 1)` for a schedule `step -> rate` (steps count from 0).
    This is the one place where funcnet turns a learning rate into a step. A constant rate
    keeps no state (`EmptyState`); a schedule keeps the step count it is fed.
    """
    check_rate("scale_by_learning_rate", learning_rate)
    sign = -1.0 if flip_sign else 1.0

    def scaled(updates: Updates, rate) -> Updates:
        step = sign * jnp.asarray(rate)
        return jax.tree.map(lambda g: step.astype(g.dtype) * g, updates)

    if not callable(learning_rate):
        return stateless(lambda updates, params: scaled(updates, learning_rate))

    def init_fn(params: Params) -> ScaleByLearningRateState:
        del params
        return ScaleByLearningRateState(count=_zero_count())

    def update_fn(
        updates: Updates, state: ScaleByLearningRateState, params: Params | None = None
    ) -> tuple[Updates, ScaleByLearningRateState]:
        del params
        updates = scaled(updates, learning_rate(state.count))
        return updates, ScaleByLearningRateState(count=increment(state.count))

    return GradientTransformation(init_fn, update_fn)


# Momentum.


class TraceState(NamedTuple):
    """`count`: int32 scalar; `trace`: the momentum buffer `b`, one array per param."""

    count: jax.Array
    trace: Updates


def trace(
    decay: float,
    *,
    dampening: float = 0.0,
    nesterov: bool = False,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Momentum, as `torch.optim.SGD` keeps it.

    With `μ = decay` and `τ = dampening`::

        b ← g                        on the first step
        b ← μ·b + (1 − τ)·g          afterwards
        u ← g + μ·b  if nesterov  else  b

    With `τ = 0` this is optax's `trace`: `b ← μ·b + g` from `b = 0`.

    Args:
      decay: the momentum factor `μ`.
      dampening: `τ`, the share of the gradient held back from the buffer after step one.
      nesterov: return the Nesterov look-ahead `g + μ·b` instead of `b`.
      moment_dtype: dtype of the buffer; `None` keeps each param's dtype.
    """
    check_float_dtype("trace", moment_dtype, name="moment_dtype")
    check_decay("trace", "dampening", dampening, allow_one=True)
    if nesterov and not is_zero(dampening):
        raise ValueError(f"Nesterov momentum needs dampening=0, got dampening={dampening}.")
    check_decay("trace", "decay", decay)

    def init_fn(params: Params) -> TraceState:
        return TraceState(count=_zero_count(), trace=zeros_like(params, moment_dtype))

    def update_fn(
        updates: Updates, state: TraceState, params: Params | None = None
    ) -> tuple[Updates, TraceState]:
        del params
        gain = jnp.where(state.count == 0, 1.0, 1.0 - dampening)

        def accumulate(g: jax.Array, b: jax.Array) -> jax.Array:
            return (decay * b + gain.astype(b.dtype) * g.astype(b.dtype)).astype(b.dtype)

        check_fits(updates, state.trace)
        new_trace = jax.tree.map(accumulate, updates, state.trace)
        if nesterov:
            out = jax.tree.map(lambda g, b: g + decay * b.astype(g.dtype), updates, new_trace)
        else:
            out = new_trace
        return _cast_like(out, updates), TraceState(increment(state.count), new_trace)

    return GradientTransformation(init_fn, update_fn)


class EmaState(NamedTuple):
    """`count`: int32 scalar; `ema`: the moving average `m`, one array per param."""

    count: jax.Array
    ema: Updates


def ema(
    decay: float, *, debias: bool = True, moment_dtype: DTypeLike | None = None
) -> GradientTransformation:
    """An exponential moving average of the updates, as optax's `ema`.

    ::

        m ← β·m + (1 − β)·g          from m = 0
        u ← m / (1 − βᵗ)   with debias,   else   u ← m

    Args:
      decay: `β`, in [0, 1).
      debias: divide by ``1 − βᵗ``, so that the first steps are not shrunk towards 0.
      moment_dtype: dtype of `m`; `None` keeps each param's dtype.
    """
    check_float_dtype("ema", moment_dtype, name="moment_dtype")
    check_decay("ema", "decay", decay)

    def init_fn(params: Params) -> EmaState:
        return EmaState(count=_zero_count(), ema=zeros_like(params, moment_dtype))

    def update_fn(
        updates: Updates, state: EmaState, params: Params | None = None
    ) -> tuple[Updates, EmaState]:
        del params
        count = increment(state.count)
        average = update_moment(updates, state.ema, decay, 1)
        out = correct_bias(average, decay, count) if debias else average
        return _cast_like(out, updates), EmaState(count, average)

    return GradientTransformation(init_fn, update_fn)


class ScaleByOptimisticGradientState(NamedTuple):
    """`is_initial_step`: bool scalar, True before the first update; `previous_gradient`:
    the last incoming `g`, one array per param."""

    is_initial_step: jax.Array
    previous_gradient: Updates


def scale_by_optimistic_gradient(
    *, alpha: float = 1.0, beta: float = 1.0
) -> GradientTransformation:
    """The optimistic gradient (Popov, 1980; Daskalakis et al., 2018), as optax.

    ::

        u ← (α + β)·g_t − β·g_{t−1}        with g_0 = g_1 (so u = α·g_1 at the first step)

    `β` weighs the negative momentum that damps the rotation of gradient descent-ascent in
    min-max games; `α = β = 1` is the optimistic step `2·g_t − g_{t−1}`.

    Args:
      alpha: `α`, ``>= 0``, the weight of the current gradient.
      beta: `β`, ``>= 0``, the weight of the change since the last gradient.
    """
    check_positive("scale_by_optimistic_gradient", "alpha", alpha, allow_zero=True)
    check_positive("scale_by_optimistic_gradient", "beta", beta, allow_zero=True)

    def init_fn(params: Params) -> ScaleByOptimisticGradientState:
        return ScaleByOptimisticGradientState(
            is_initial_step=jnp.array(True), previous_gradient=zeros_like(params)
        )

    def update_fn(
        updates: Updates, state: ScaleByOptimisticGradientState, params: Params | None = None
    ) -> tuple[Updates, ScaleByOptimisticGradientState]:
        del params
        check_fits(updates, state.previous_gradient)

        def rule(g: jax.Array, previous: jax.Array) -> jax.Array:
            previous = jnp.where(state.is_initial_step, g, previous.astype(g.dtype))
            return ((alpha + beta) * g - beta * previous).astype(g.dtype)

        out = jax.tree.map(rule, updates, state.previous_gradient)
        previous = _cast_like(updates, state.previous_gradient)
        return out, ScaleByOptimisticGradientState(jnp.array(False), previous)

    return GradientTransformation(init_fn, update_fn)


# Adaptive scalings.


class MomentsState(NamedTuple):
    """The state of a rule that keeps a step count and two moments, as Adam's relatives do:
    `count`, an int32 scalar; `mu`, the first moment `m`; `nu`, the rule's second moment (its
    docstring says which), one array per param (one scalar per param for NovoGrad)."""

    count: jax.Array
    mu: Updates
    nu: Updates


def _init_moments(params: Params, dtype: DTypeLike | None = None) -> MomentsState:
    """A `MomentsState` at step 0: both moments zeros shaped like `params`, in `dtype` if given."""
    return MomentsState(_zero_count(), zeros_like(params, dtype), zeros_like(params, dtype))


def _adam_moments(
    updates: Updates, state: MomentsState | ScaleByAdamState, b1: float, b2: float
) -> tuple[jax.Array, Updates, Updates]:
    """The step count and Adam's moments of `state` after `updates`: `t ← t + 1`,
    `m ← β₁·m + (1 − β₁)·g`, `v ← β₂·v + (1 − β₂)·g²`."""
    count = increment(state.count)
    return count, update_moment(updates, state.mu, b1, 1), update_moment(updates, state.nu, b2, 2)


class ScaleByAdamState(NamedTuple):
    """`count`: int32 scalar; `mu`, `nu`: first and second moments; `nu_max`: the running
    maximum of the second moment (AMSGrad: of `nu` for `scale_by_adam`, as torch, of the
    bias-corrected `nu` for `scale_by_amsgrad`, as optax), `None` when not used."""

    count: jax.Array
    mu: Updates
    nu: Updates
    nu_max: Updates | None


def scale_by_adam(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    amsgrad: bool = False,
    bias_correction: bool = True,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adam's rescaling (Kingma & Ba, 2015), with torch's AMSGrad variant.

    ::

        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        v_max ← max(v_max, v)                         (amsgrad only)
        u ← [m / (1 − β₁ᵗ)] / (√(v / (1 − β₂ᵗ)) + ε)  with v_max in place of v for amsgrad

    Without bias correction the divisions by ``1 − βᵗ`` are dropped, ``u ← m / (√v + ε)``.

    As in `torch.optim.Adam`, AMSGrad keeps the maximum of the raw `v` and bias-corrects it;
    optax's `scale_by_amsgrad` takes the maximum of the bias-corrected `v` instead.

    Args:
      b1: decay `β₁` of the first moment.
      b2: decay `β₂` of the second moment.
      eps: `ε`, added to the root of the second moment.
      amsgrad: use the running maximum of the second moment.
      bias_correction: divide the moments by ``1 − βᵗ``; off, the moments start biased
        towards 0 and the first steps differ (the slides' "not quite Adam").
      moment_dtype: dtype of `m`, `v` (and `v_max`); `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_adam", moment_dtype, name="moment_dtype")
    _check_betas("scale_by_adam", b1, b2, eps)

    def init_fn(params: Params) -> ScaleByAdamState:
        return ScaleByAdamState(
            count=_zero_count(),
            mu=zeros_like(params, moment_dtype),
            nu=zeros_like(params, moment_dtype),
            nu_max=zeros_like(params, moment_dtype) if amsgrad else None,
        )

    def update_fn(
        updates: Updates, state: ScaleByAdamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdamState]:
        del params
        count, mu, nu = _adam_moments(updates, state, b1, b2)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu) if amsgrad else None
        mu_hat, nu_hat = mu, nu_max if amsgrad else nu
        if bias_correction:
            mu_hat = correct_bias(mu_hat, b1, count)
            nu_hat = correct_bias(nu_hat, b2, count)
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
        return _cast_like(out, updates), ScaleByAdamState(count, mu, nu, nu_max)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRmsState(NamedTuple):
    """`nu`: mean square of the gradients; `mu`: their mean (centred variant), else `None`."""

    nu: Updates
    mu: Updates | None


def scale_by_rms(
    *,
    decay: float = 0.99,
    eps: float = 1e-8,
    centered: bool = False,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """RMSprop's rescaling (Hinton, 2012), with `ε` outside the root as in `torch.optim.RMSprop`.

    ::

        v ← α·v + (1 − α)·g²
        ḡ ← α·ḡ + (1 − α)·g                   (centred only)
        u ← g / (√v + ε)     or, centred,  u ← g / (√(v − ḡ²) + ε)

    optax's `scale_by_rms` defaults to `ε` inside the root (`eps_in_sqrt=True`); its
    `eps_in_sqrt=False` is this rule.

    Args:
      decay: the smoothing constant `α` (torch's `alpha`).
      eps: `ε`, added to the root.
      centered: divide by an estimate of the standard deviation instead of the root mean square.
      moment_dtype: dtype of `v` (and `ḡ`); `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_rms", moment_dtype, name="moment_dtype")
    check_decay("scale_by_rms", "decay", decay)
    check_positive("scale_by_rms", "eps", eps)

    def init_fn(params: Params) -> ScaleByRmsState:
        return ScaleByRmsState(
            nu=zeros_like(params, moment_dtype),
            mu=zeros_like(params, moment_dtype) if centered else None,
        )

    def update_fn(
        updates: Updates, state: ScaleByRmsState, params: Params | None = None
    ) -> tuple[Updates, ScaleByRmsState]:
        del params
        nu = update_moment(updates, state.nu, decay, 2)
        if centered:
            mu = update_moment(updates, state.mu, decay, 1)
            # Rounding can push v − ḡ² a hair below zero when the gradients barely vary.
            var = jax.tree.map(lambda v, m: jnp.maximum(v - jnp.square(m), 0), nu, mu)
        else:
            mu, var = None, nu
        out = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, var)
        return _cast_like(out, updates), ScaleByRmsState(nu, mu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdagradState(NamedTuple):
    """`sum_of_squares`: the running sum `G` of squared gradients, one array per param."""

    sum_of_squares: Updates


def scale_by_adagrad(
    *,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adagrad's rescaling (Duchi et al., 2011), as in `torch.optim.Adagrad`.

    ::

        G ← G + g²          from G = initial_accumulator_value
        u ← g / (√G + ε)

    optax's `scale_by_rss` differs: `G` starts at 0.1 and `ε` sits inside the root.

    Args:
      initial_accumulator_value: the starting value of `G`.
      eps: `ε`, added to the root.
      moment_dtype: dtype of `G`; `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_adagrad", moment_dtype, name="moment_dtype")
    check_positive(
        "scale_by_adagrad", "initial_accumulator_value", initial_accumulator_value, allow_zero=True
    )
    check_positive("scale_by_adagrad", "eps", eps, allow_zero=True)

    def init_fn(params: Params) -> ScaleByAdagradState:
        sums = jax.tree.map(
            lambda z: z + initial_accumulator_value, zeros_like(params, moment_dtype)
        )
        return ScaleByAdagradState(sum_of_squares=sums)

    def update_fn(
        updates: Updates, state: ScaleByAdagradState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdagradState]:
        del params
        check_fits(updates, state.sum_of_squares)
        sums = jax.tree.map(
            lambda g, s: (s + jnp.square(g.astype(s.dtype))).astype(s.dtype),
            updates,
            state.sum_of_squares,
        )
        out = jax.tree.map(lambda g, s: g / (jnp.sqrt(s) + eps), updates, sums)
        return _cast_like(out, updates), ScaleByAdagradState(sums)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdadeltaState(NamedTuple):
    """`avg_sq_grad`: mean square `v` of the gradients; `avg_sq_delta`: mean square `w` of the
    steps taken."""

    avg_sq_grad: Updates
    avg_sq_delta: Updates


def scale_by_adadelta(
    *, rho: float = 0.9, eps: float = 1e-6, moment_dtype: DTypeLike | None = None
) -> GradientTransformation:
    """Adadelta's rescaling (Zeiler, 2012), as in `torch.optim.Adadelta` and optax.

    ::

        v ← ρ·v + (1 − ρ)·g²
        δ ← √(w + ε) / √(v + ε) · g
        w ← ρ·w + (1 − ρ)·δ²
        u ← δ

    Args:
      rho: the decay `ρ` of both averages.
      eps: `ε`, added inside both roots.
      moment_dtype: dtype of `v` and `w`; `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_adadelta", moment_dtype, name="moment_dtype")
    check_decay("scale_by_adadelta", "rho", rho, allow_one=True)
    check_positive("scale_by_adadelta", "eps", eps)

    def init_fn(params: Params) -> ScaleByAdadeltaState:
        return ScaleByAdadeltaState(
            avg_sq_grad=zeros_like(params, moment_dtype),
            avg_sq_delta=zeros_like(params, moment_dtype),
        )

    def update_fn(
        updates: Updates, state: ScaleByAdadeltaState, params: Params | None = None
    ) -> tuple[Updates, ScaleByAdadeltaState]:
        del params
        avg_sq_grad = update_moment(updates, state.avg_sq_grad, rho, 2)
        delta = jax.tree.map(
            lambda g, v, w: jnp.sqrt(w + eps) / jnp.sqrt(v + eps) * g.astype(v.dtype),
            updates,
            avg_sq_grad,
            state.avg_sq_delta,
        )
        avg_sq_delta = update_moment(delta, state.avg_sq_delta, rho, 2)
        return _cast_like(delta, updates), ScaleByAdadeltaState(avg_sq_grad, avg_sq_delta)

    return GradientTransformation(init_fn, update_fn)


class ScaleByNadamState(NamedTuple):
    """`count`: int32 scalar; `mu_product`: `Π_{i≤t} μ_i`, a float scalar; `mu`, `nu`: first and
    second moments."""

    count: jax.Array
    mu_product: jax.Array
    mu: Updates
    nu: Updates


def scale_by_nadam(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    momentum_decay: float = 4e-3,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """NAdam's rescaling (Dozat, 2016), as in `torch.optim.NAdam` with its momentum schedule.

    With `ψ = momentum_decay` and `μ_t = β₁·(1 − ½·0.96^(tψ))`::

        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        u ← [(1 − μ_t)/(1 − Π_{i≤t} μ_i)·g + μ_{t+1}/(1 − Π_{i≤t+1} μ_i)·m]
            / (√(v / (1 − β₂ᵗ)) + ε)

    optax's `nadam` is the limit `ψ → ∞` of this rule (`μ_t = β₁` for all `t`).

    Args:
      b1: decay `β₁` of the first moment, and the scale of the momentum schedule.
      b2: decay `β₂` of the second moment.
      eps: `ε`, added to the root of the second moment.
      momentum_decay: `ψ`, how fast `μ_t` rises from `β₁/2` towards `β₁`.
      moment_dtype: dtype of `m` and `v`; `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_nadam", moment_dtype, name="moment_dtype")
    _check_betas("scale_by_nadam", b1, b2, eps)
    check_positive("scale_by_nadam", "momentum_decay", momentum_decay, allow_zero=True)

    def init_fn(params: Params) -> ScaleByNadamState:
        return ScaleByNadamState(
            count=_zero_count(),
            mu_product=jnp.ones([], jnp.result_type(float)),
            mu=zeros_like(params, moment_dtype),
            nu=zeros_like(params, moment_dtype),
        )

    def update_fn(
        updates: Updates, state: ScaleByNadamState, params: Params | None = None
    ) -> tuple[Updates, ScaleByNadamState]:
        del params
        count = increment(state.count)
        dtype = state.mu_product.dtype
        t = count.astype(dtype)
        mu_t = b1 * (1.0 - 0.5 * jnp.power(0.96, t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * jnp.power(0.96, (t + 1.0) * momentum_decay))
        mu_product = (state.mu_product * mu_t).astype(dtype)
        grad_coef = (1.0 - mu_t) / (1.0 - mu_product)
        moment_coef = mu_next / (1.0 - mu_product * mu_next)
        mu = update_moment(updates, state.mu, b1, 1)
        nu = update_moment(updates, state.nu, b2, 2)
        nu_hat = correct_bias(nu, b2, count)

        def rule(g: jax.Array, m: jax.Array, v: jax.Array) -> jax.Array:
            g = g.astype(m.dtype)
            numerator = grad_coef.astype(m.dtype) * g + moment_coef.astype(m.dtype) * m
            return numerator / (jnp.sqrt(v) + eps)

        out = jax.tree.map(rule, updates, mu, nu_hat)
        return _cast_like(out, updates), ScaleByNadamState(count, mu_product, mu, nu)

    return GradientTransformation(init_fn, update_fn)


ScaleByAdamaxState = MomentsState  # `nu`: the decayed infinity norm `n`


def scale_by_adamax(
    *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, moment_dtype: DTypeLike | None = None
) -> GradientTransformation:
    """Adamax's rescaling (Kingma & Ba, 2015, §7.1), as in `torch.optim.Adamax` and optax.

    ::

        m ← β₁·m + (1 − β₁)·g
        n ← max(β₂·n, |g| + ε)
        u ← m / ((1 − β₁ᵗ)·n)

    Args:
      b1: decay `β₁` of the first moment.
      b2: decay `β₂` of the infinity norm.
      eps: `ε`, added to `|g|` so that `n` never vanishes.
      moment_dtype: dtype of `m` and `n`; `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_adamax", moment_dtype, name="moment_dtype")
    _check_betas("scale_by_adamax", b1, b2, eps)

    def init_fn(params: Params) -> MomentsState:
        return _init_moments(params, moment_dtype)

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None
    ) -> tuple[Updates, MomentsState]:
        del params
        mu = update_moment(updates, state.mu, b1, 1)
        nu = jax.tree.map(
            lambda g, n: jnp.maximum(b2 * n, jnp.abs(g.astype(n.dtype)) + eps).astype(n.dtype),
            updates,
            state.nu,
        )
        count = increment(state.count)
        correction = one_minus_power(b1, count)
        out = jax.tree.map(lambda m, n: m / (correction.astype(m.dtype) * n), mu, nu)
        return _cast_like(out, updates), MomentsState(count, mu, nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByLionState(NamedTuple):
    """`mu`: the momentum `m`, one array per param."""

    mu: Updates


def scale_by_lion(
    *, b1: float = 0.9, b2: float = 0.99, moment_dtype: DTypeLike | None = None
) -> GradientTransformation:
    """Lion's sign update (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    ::

        u ← sign(β₁·m + (1 − β₁)·g)
        m ← β₂·m + (1 − β₂)·g

    Args:
      b1: weight `β₁` of the momentum in the interpolation whose sign is the update.
      b2: decay `β₂` of the momentum.
      moment_dtype: dtype of `m`; `None` keeps each param's dtype.
    """
    check_float_dtype("scale_by_lion", moment_dtype, name="moment_dtype")
    _check_betas("scale_by_lion", b1, b2, _NO_EPS, allow_one=True)

    def init_fn(params: Params) -> ScaleByLionState:
        return ScaleByLionState(mu=zeros_like(params, moment_dtype))

    def update_fn(
        updates: Updates, state: ScaleByLionState, params: Params | None = None
    ) -> tuple[Updates, ScaleByLionState]:
        del params
        out = jax.tree.map(jnp.sign, update_moment(updates, state.mu, b1, 1))
        mu = update_moment(updates, state.mu, b2, 1)
        return _cast_like(out, updates), ScaleByLionState(mu)

    return GradientTransformation(init_fn, update_fn)


# Weight decay and clipping.


class AddDecayedWeightsState(NamedTuple):
    """`count`: int32 scalar, the number of updates made, fed to a weight-decay schedule."""

    count: jax.Array


def add_decayed_weights(weight_decay: ScalarOrSchedule) -> GradientTransformation:
    """Adds the params, scaled, to the updates: `u ← g + λ_t·x`.

    `λ_t = weight_decay` for a number and `λ_t = weight_decay(t − 1)` for a schedule
    `step -> λ` (steps count from 0, as for learning rates). Placed before an adaptive
    rescaling this is an L2 penalty (torch's `weight_decay`); placed after it, right before the
    learning rate, it is decoupled weight decay (AdamW). Wrap it in `masked` to decay only some
    params. A constant `λ` keeps no state (`EmptyState`); a schedule keeps the step count.
    """
    if not callable(weight_decay):
        check_positive("add_decayed_weights", "weight_decay", weight_decay, allow_zero=True)

    def decayed(updates: Updates, params: Params | None, rate) -> Updates:
        if params is None:
            raise ValueError("add_decayed_weights needs the params: call update(g, state, params).")
        return jax.tree.map(
            lambda g, x: (g + rate * x.astype(g.dtype)).astype(g.dtype), updates, params
        )

    if not callable(weight_decay):
        return stateless(lambda updates, params: decayed(updates, params, weight_decay))

    def init_fn(params: Params) -> AddDecayedWeightsState:
        del params
        return AddDecayedWeightsState(count=_zero_count())

    def update_fn(
        updates: Updates, state: AddDecayedWeightsState, params: Params | None = None
    ) -> tuple[Updates, AddDecayedWeightsState]:
        updates = decayed(updates, params, weight_decay(state.count))
        return updates, AddDecayedWeightsState(count=increment(state.count))

    return GradientTransformation(init_fn, update_fn)


class AddNoiseState(NamedTuple):
    """`count`: int32 scalar, the steps taken; `key`: the typed key of the next step's noise."""

    count: jax.Array
    key: jax.Array


def add_noise(eta: float, gamma: float, *, key: jax.Array) -> GradientTransformation:
    """Adds annealed Gaussian noise to the updates (Neelakantan et al., 2015), as optax.

    ::

        σ_t = √(η / tᵞ)
        u ← g + σ_t·ξ,   ξ ~ N(0, I), drawn afresh at every step

    The key lives in the state: each step splits it into the next state's key and the key of
    this step's noise, which is split once more into one key per leaf (in the order of
    `jax.tree.leaves`), the draws of optax's `add_noise` from the same key.

    Args:
      eta: `η`, the variance of the noise at the first step, ``>= 0``.
      gamma: `γ`, the exponent of its decay, ``>= 0``.
      key: a `jax.random.key` (or a legacy uint32 key), the seed of the noise.
    """
    check_positive("add_noise", "eta", eta, allow_zero=True)
    check_positive("add_noise", "gamma", gamma, allow_zero=True)
    key = typed_key(key, caller="add_noise")

    def init_fn(params: Params) -> AddNoiseState:
        del params
        # A copy: donating the state must not delete the caller's key or another state's.
        return AddNoiseState(count=_zero_count(), key=jax.random.clone(key))

    def update_fn(
        updates: Updates, state: AddNoiseState, params: Params | None = None
    ) -> tuple[Updates, AddNoiseState]:
        del params
        count = increment(state.count)
        std = jnp.sqrt(eta / count**gamma)
        next_key, draw_key = jax.random.split(state.key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(draw_key, len(leaves))
        noisy = [
            (g + std * jax.random.normal(k, jnp.shape(g), jnp.result_type(g))).astype(g.dtype)
            for g, k in zip(leaves, keys, strict=True)
        ]
        return treedef.unflatten(noisy), AddNoiseState(count=count, key=next_key)

    return GradientTransformation(init_fn, update_fn)


def clip(max_delta: float | jax.Array) -> GradientTransformation:
    """Clips every coordinate of the updates to `[−δ, δ]`: `u ← min(max(g, −δ), δ)`, δ ≥ 0."""
    check_positive("clip", "max_delta", max_delta, allow_zero=True)

    def rule(updates: Updates, params: Params | None) -> Updates:
        return jax.tree.map(lambda g: jnp.clip(g, -max_delta, max_delta).astype(g.dtype), updates)

    return stateless(rule)


def clip_by_global_norm(max_norm: float | jax.Array) -> GradientTransformation:
    """Rescales the whole update tree so that its global norm is at most `c = max_norm`.

    `u ← g · min(1, c / ‖g‖)`, where `‖g‖` is the norm of all leaves together
    (see `global_norm`), `c > 0`. Unlike `torch.nn.utils.clip_grad_norm_`, no `1e-6` joins
    `‖g‖`.
    """
    check_positive("clip_by_global_norm", "max_norm", max_norm)

    def rule(updates: Updates, params: Params | None) -> Updates:
        norm = global_norm(updates)
        factor = jnp.where(norm > max_norm, max_norm / norm, 1.0)
        return jax.tree.map(lambda g: (g * factor.astype(g.dtype)).astype(g.dtype), updates)

    return stateless(rule)


# Wrappers.


def _is_static_bool(leaf: Any) -> bool:
    """Whether `leaf` is a bool known before tracing: Python's, NumPy's, or a concrete 0-d
    boolean array."""
    if isinstance(leaf, bool | np.bool_):
        return True
    return (
        isinstance(leaf, np.ndarray | jax.Array)
        and not isinstance(leaf, jax.core.Tracer)
        and leaf.dtype == np.bool_
        and leaf.ndim == 0
    )


class MaskedNode(NamedTuple):
    """Stands in, inside a masked transformation, for a leaf the mask leaves out.

    It is an empty pytree node, so tree maps skip it.
    """


class MaskedState(NamedTuple):
    """`inner_state`: the wrapped transformation's state, built on the masked-in leaves only."""

    inner_state: OptState


def checked_mask(
    owner: str, name: str, mask: PyTree | Callable[[Params], PyTree], tree: PyTree
) -> PyTree:
    """`mask`, or ``mask(tree)`` for a function, checked against `tree`: a tree of static
    bools with `tree`'s structure or a prefix of it, else a ValueError naming `owner`, `name`
    and where it is wrong."""
    selected = mask(tree) if callable(mask) else mask
    if selected is None:
        raise ValueError(f"{owner}: {name} is None; give a tree of True/False or a function")
    for path, leaf in jax.tree_util.tree_leaves_with_path(selected):
        if not _is_static_bool(leaf):
            where = jax.tree_util.keystr(path) or "its root"
            raise ValueError(
                f"{owner}: {name} must hold True or False at every leaf, got "
                f"{type(leaf).__name__} {leaf!r:.40} at {where}"
            )
    structure = jax.tree.structure(selected)
    try:
        structure.flatten_up_to(tree)
    except ValueError:
        raise ValueError(
            f"{owner}: {name} must have the params' structure or a prefix of it, got "
            f"{structure!s:.200} for params {jax.tree.structure(tree)!s:.200}"
        ) from None
    return selected


def masked(
    inner: GradientTransformation, mask: PyTree | Callable[[Params], PyTree]
) -> GradientTransformation:
    """Applies `inner` to the leaves that `mask` selects and passes the others through unchanged.

    Unchanged means the raw gradient: to hold the other leaves still, chain `freeze` after it.

    Args:
      inner: the transformation to apply to the selected leaves.
      mask: a pytree of Python bools with the structure of the params (or a prefix of it, a
        bool then covering a whole subtree), or a function `params -> such a tree`. `True`
        selects a leaf. The function is called on the params in `init` and on the updates
        (same structure) in `update`, and must return static bools.

    The inner state holds buffers only for the selected leaves; the others appear in it as
    `MaskedNode()`.

    When `inner` takes extra args (`accepts_extra_args`, e.g. `hessian_free`), so does the
    mask, and it hands them on restricted to the selected leaves: `grad` keeps those leaves,
    and `value_fn` and `outputs_fn` become functions of them, the other params held at their
    current values (``θ_sel ↦ f(θ_sel ∪ θ_rest)``), so the curvature is that of the selected
    block. Other extra args go through as they are.
    """

    check_transformation("masked", "inner", inner)

    def mask_tree(tree: PyTree) -> PyTree:
        return checked_mask("masked", "the mask", mask, tree)

    def keep_selected(tree: PyTree, selected: PyTree) -> PyTree:
        return jax.tree.map(lambda m, x: x if m else MaskedNode(), selected, tree)

    def init_fn(params: Params) -> MaskedState:
        selected = mask_tree(params)
        return MaskedState(inner_state=inner.init(keep_selected(params, selected)))

    def merge(selected: PyTree, chosen: PyTree, rest: PyTree) -> PyTree:
        return jax.tree.map(lambda m, new, old: new if m else old, selected, chosen, rest)

    def restrict(selected: PyTree, params: Params | None, extra_args: dict) -> dict:
        """The extra args of `inner` seen on the selected leaves only (see above)."""
        if params is None and ({"value_fn", "outputs_fn"} & extra_args.keys()):
            raise ValueError(
                "masked: the extra args value_fn and outputs_fn need the params: call "
                "update(grads, state, params, ...)"
            )
        out = dict(extra_args)
        if "grad" in out:
            out["grad"] = keep_selected(out["grad"], selected)
        for name in ("value_fn", "outputs_fn"):
            if name in out:
                fn = out[name]
                out[name] = lambda chosen, fn=fn: fn(merge(selected, chosen, params))
        return out

    def update_fn(
        updates: Updates, state: MaskedState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MaskedState]:
        selected = mask_tree(updates)
        inner_params = None if params is None else keep_selected(params, selected)
        if takes_extra:
            extra_args = restrict(selected, params, extra_args)
        new_inner, inner_state = inner.update(
            keep_selected(updates, selected), state.inner_state, inner_params, **extra_args
        )
        return merge(selected, new_inner, updates), MaskedState(inner_state=inner_state)

    takes_extra = accepts_extra_args(inner)
    if takes_extra:
        return GradientTransformationExtraArgs(init_fn, update_fn)
    return GradientTransformation(init_fn, update_fn)


def set_to_zero() -> GradientTransformation:
    """Replaces every update by zeros: ``u ← 0`` (exactly, even where ``g`` is not finite)."""
    return stateless(lambda updates, params: jax.tree.map(jnp.zeros_like, updates))


def freeze(mask: PyTree | Callable[[Params], PyTree]) -> GradientTransformation:
    """Zeroes the updates of the leaves that `mask` selects, so those params never move.

    `masked` alone does not freeze: the leaves it leaves out pass through unchanged, gradient
    and all. To train only a head on a frozen trunk, apply the optimizer to the trainable
    leaves and freeze the rest::

        chain(masked(adam(1e-3), trainable), freeze(frozen))   # frozen = not trainable

    `mask` is as in `masked` (`True` selects a leaf, here to freeze it).
    """
    return masked(set_to_zero(), mask)


class ApplyIfFiniteState(NamedTuple):
    """`notfinite_count`: int32, consecutive non-finite steps so far; `last_finite`: bool,
    whether the last step was finite; `total_notfinite`: int32, all non-finite steps so far;
    `inner_state`: the wrapped transformation's state."""

    notfinite_count: jax.Array
    last_finite: jax.Array
    total_notfinite: jax.Array
    inner_state: OptState


def apply_if_finite(
    inner: GradientTransformation, max_consecutive_errors: int
) -> GradientTransformation:
    """Skips a step whose updates hold a NaN or an infinity, and counts such steps.

    A skipped step returns zero updates and leaves the inner state as it was. After more than
    `max_consecutive_errors` non-finite steps in a row the step is taken anyway, so a run
    that keeps producing NaNs shows them instead of stalling silently.

    Args:
      inner: the transformation to guard.
      max_consecutive_errors: how many non-finite steps in a row are skipped.

    When `inner` takes extra args (`accepts_extra_args`), so does the guard, and it passes
    them on.
    """
    check_transformation("apply_if_finite", "inner", inner)
    check_int("apply_if_finite", "max_consecutive_errors", max_consecutive_errors, minimum=0)

    def init_fn(params: Params) -> ApplyIfFiniteState:
        return ApplyIfFiniteState(
            notfinite_count=_zero_count(),
            last_finite=jnp.array(True),
            total_notfinite=_zero_count(),
            inner_state=inner.init(params),
        )

    def update_fn(
        updates: Updates, state: ApplyIfFiniteState, params: Params | None = None, **extra_args
    ) -> tuple[Updates, ApplyIfFiniteState]:
        finite = jnp.array(True)
        for g in jax.tree.leaves(updates):
            finite = finite & jnp.all(jnp.isfinite(g))
        notfinite_count = jnp.where(finite, 0, increment(state.notfinite_count))
        total_notfinite = jnp.where(finite, state.total_notfinite, increment(state.total_notfinite))
        take = finite | (notfinite_count > max_consecutive_errors)

        new_updates, new_inner = inner.update(updates, state.inner_state, params, **extra_args)
        new_updates = jax.tree.map(lambda u: jnp.where(take, u, jnp.zeros_like(u)), new_updates)
        inner_state = jax.tree.map(
            lambda new, old: jnp.where(take, new, old), new_inner, state.inner_state
        )
        return new_updates, ApplyIfFiniteState(
            notfinite_count=notfinite_count.astype(jnp.int32),
            last_finite=finite,
            total_notfinite=total_notfinite.astype(jnp.int32),
            inner_state=inner_state,
        )

    if accepts_extra_args(inner):  # a curvature optimizer: pass the step's extra args on
        return GradientTransformationExtraArgs(init_fn, update_fn)
    return GradientTransformation(init_fn, update_fn)
