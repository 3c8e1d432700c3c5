"""Optimizers of optax's contrib level: wrappers that change how another optimizer's steps
become params.

Each follows optax's function of the same name (its formula and its defaults), so that the
two agree to float64 round-off (tests/optim/test_optim_contrib.py), with one difference of
interface, kept where optax's would not fit funcnet's train step: the params a train step
holds stay the plain params pytree. Where optax's optimizer keeps a second copy of the params
(`optax.lookahead`'s `LookaheadParams(fast, slow)`), funcnet keeps it in the optimizer state
and the train step's params are the ones the gradient is taken at.

- `lookahead` (Zhang et al., 2019): `k` steps of a fast optimizer, then the slow params move
  a fraction `α` of the way to the fast ones and the fast ones restart from there.
- `schedule_free`, `schedule_free_sgd`, `schedule_free_adamw` (Defazio et al., 2024):
  momentum replaced by interpolation and averaging, so that no decaying schedule is needed;
  `schedule_free_eval_params` gives the params to evaluate.

Wrappers pass the extra args of `update` (`GradientTransformationExtraArgs`) on to the
optimizer they wrap when it takes them, and are then of that class themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcnet._checks import check_decay, check_float_dtype, check_int, check_positive, check_rate
from funcnet.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    ScalarOrSchedule,
    TransformUpdateExtraArgsFn,
    Updates,
    accepts_extra_args,
    bias_correction,
    chain,
    check_fits,
    check_transformation,
    increment,
    update_moment,
    zeros_like,
)
from funcnet.optim.schedules import constant_schedule, join_schedules, polynomial_schedule
from funcnet.optim.transforms import _check_betas, add_decayed_weights, scale_by_learning_rate

__all__ = [
    "LookaheadState",
    "ScheduleFreeState",
    "lookahead",
    "lookahead_slow_params",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
]


def _wrapper(
    inner: GradientTransformation,
    init_fn: Callable[[Params], OptState],
    update_fn: TransformUpdateExtraArgsFn,
) -> GradientTransformation:
    """`(init_fn, update_fn)` as a transformation that takes extra args exactly when `inner`
    does; otherwise `update_fn(updates, state, params)` is called without any."""
    if accepts_extra_args(inner):
        return GradientTransformationExtraArgs(init_fn, update_fn)

    def update_plain(
        updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]:
        return update_fn(updates, state, params)

    return GradientTransformation(init_fn, update_plain)


def _inner_update(
    inner: GradientTransformation,
    updates: Updates,
    state: OptState,
    params: Params | None,
    extra_args: dict[str, Any],
) -> tuple[Updates, OptState]:
    if extra_args:
        return inner.update(updates, state, params, **extra_args)
    return inner.update(updates, state, params)


def _needs_params(owner: str, params: Params | None) -> None:
    if params is None:
        raise ValueError(f"{owner}: update needs the params, got params=None")


def _copy(tree: Params) -> Params:
    """A copy of `tree` in buffers of its own, so that a state holding it can be donated
    beside the params."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# Lookahead.


class LookaheadState(NamedTuple):
    """The state of `lookahead`: the fast optimizer's state, the slow params (a tree like the
    params) and the number of fast steps since the last synchronisation (int32 scalar)."""

    fast_state: OptState
    slow: Params
    steps_since_sync: jax.Array


def lookahead(
    fast_optimizer: GradientTransformation,
    sync_period: int,
    slow_step_size: float,
    *,
    reset_state: bool = False,
) -> GradientTransformation:
    """Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back"),
    optax's `lookahead` with the slow params kept in the optimizer state.

    With `θ` the fast params (the params the train step holds and the gradient is taken at),
    `φ` the slow params, `u_t` the fast optimizer's update, `k` the sync period and `α` the
    slow step size::

        θ ← θ + u_t                                    at each step
        φ ← φ + α·(θ − φ);  θ ← φ                      after every k-th step

    The returned update moves `θ` to its new value (`u_t`, or `φ_new − θ` at a sync step), so
    the trajectory of `θ` is optax's `params.fast` and `lookahead_slow_params(state)` is
    optax's `params.slow`, to round-off. optax's `update` takes and moves a
    `LookaheadParams(fast, slow)`; here `init` and `update` take the fast params alone (the
    slow ones start equal to them). Evaluate at the slow params, as the paper does.

    The updates must be applied unchanged (`apply_updates`), as with optax: the slow params
    follow the fast ones by assuming so.

    Args:
      fast_optimizer: the inner optimizer. Its extra args, if it takes any, are passed on.
      sync_period: `k ≥ 1`, fast steps per synchronisation.
      slow_step_size: `α ∈ [0, 1]`.
      reset_state: restart the fast optimizer's state (its `init` at the new params) after
        each synchronisation.
    """
    check_transformation("lookahead", "fast_optimizer", fast_optimizer)
    check_int("lookahead", "sync_period", sync_period)
    check_decay("lookahead", "slow_step_size", slow_step_size, allow_one=True)

    def init_fn(params: Params) -> LookaheadState:
        return LookaheadState(
            fast_state=fast_optimizer.init(params),
            slow=_copy(params),
            steps_since_sync=jnp.zeros([], jnp.int32),
        )

    def update_fn(
        updates: Updates, state: LookaheadState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, LookaheadState]:
        _needs_params("lookahead", params)
        check_fits(params, state.slow)
        updates, fast_state = _inner_update(
            fast_optimizer, updates, state.fast_state, params, extra_args
        )
        sync = state.steps_since_sync == sync_period - 1
        # The fast params' distance from the slow ones after this step: at a sync step the
        # slow params move α of it and the fast ones come back the other (1 − α).
        gap = jax.tree.map(lambda x, u, s: x + u - s, params, updates, state.slow)
        slow = jax.tree.map(
            lambda s, d: (s + slow_step_size * sync.astype(d.dtype) * d).astype(s.dtype),
            state.slow,
            gap,
        )
        updates = jax.tree.map(
            lambda u, d: (u - sync.astype(d.dtype) * (1 - slow_step_size) * d).astype(u.dtype),
            updates,
            gap,
        )
        if reset_state:
            fresh = fast_optimizer.init(params)
            fast_state = jax.tree.map(
                lambda current, initial: jnp.where(sync, initial, current), fast_state, fresh
            )
        steps = (state.steps_since_sync + 1) % sync_period
        return updates, LookaheadState(fast_state, slow, steps.astype(jnp.int32))

    return _wrapper(fast_optimizer, init_fn, update_fn)


def lookahead_slow_params(state: LookaheadState) -> Params:
    """The slow params `φ` of a `lookahead` state, the ones to evaluate."""
    if not isinstance(state, LookaheadState):
        raise ValueError(
            f"lookahead_slow_params: needs a LookaheadState, got {type(state).__name__}"
        )
    return state.slow


# Schedule-Free.


class ScheduleFreeState(NamedTuple):
    """The state of `schedule_free`: `β₁`, the sum of the averaging weights, the 1-based step
    count (int32), the largest rate so far, the base optimizer's state and the sequence `z`
    (a tree like the params)."""

    b1: jax.Array
    weight_sum: jax.Array
    step_count: jax.Array
    max_lr: jax.Array
    base_optimizer_state: OptState
    z: Params


def _lowest_dtype(params: Params) -> jnp.dtype:
    """The float dtype of the fewest bits among the leaves (the state's scalars take it, so
    they do not promote the updates)."""
    dtypes = [jnp.result_type(x) for x in jax.tree.leaves(params)]
    if not dtypes:
        return jnp.result_type(float)
    return min(dtypes, key=lambda d: jnp.finfo(d).bits if jnp.issubdtype(d, jnp.floating) else 64)


def schedule_free(
    base_optimizer: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    weight_lr_power: float = 2.0,
    state_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Schedule-Free (Defazio et al., 2024, "The Road Less Scheduled") around
    `base_optimizer`, as optax's `contrib.schedule_free`, with optax's defaults.

    The params `y` the train step holds (and the gradient is taken at) interpolate between the
    base optimizer's iterates `z` and their weighted average `x`, the params to evaluate::

        z ← z + base_update(g)                     (for SGD: z ← z − γ_t·g)
        c_t = w_t / Σ_{s≤t} w_s,  w_t = (max_{s≤t} γ_s)^r
        x ← (1 − c_t)·x + c_t·z
        y ← β₁·x + (1 − β₁)·z

    `x` is not stored: it is recomputed as `(y − (1 − β₁)·z)/β₁`; `schedule_free_eval_params`
    returns it. The base optimizer should have no momentum of its own (Schedule-Free's
    interpolation replaces it); `γ_t` is `learning_rate`, a constant or a warm-up schedule
    without decay, evaluated at the 1-based step as optax does.

    Args:
      base_optimizer: gives `z`'s updates. Its extra args, if it takes any, are passed on.
      learning_rate: `γ_t`, which weights the average.
      b1: `β₁ ∈ (0, 1)`, the interpolation.
      weight_lr_power: `r ≥ 0`.
      state_dtype: the dtype of `z` (default: each param's).
    """
    check_transformation("schedule_free", "base_optimizer", base_optimizer)
    check_float_dtype("schedule_free", state_dtype, name="state_dtype")
    check_rate("schedule_free", learning_rate)
    check_decay("schedule_free", "b1", b1)
    check_positive("schedule_free", "b1", b1)
    check_positive("schedule_free", "weight_lr_power", weight_lr_power, allow_zero=True)

    def init_fn(params: Params) -> ScheduleFreeState:
        dtype = _lowest_dtype(params)
        z = params if state_dtype is None else jax.tree.map(lambda x: x.astype(state_dtype), params)
        return ScheduleFreeState(
            b1=jnp.asarray(b1, dtype),
            weight_sum=jnp.zeros([], dtype),
            step_count=jnp.ones([], jnp.int32),
            max_lr=jnp.zeros([], dtype),
            base_optimizer_state=base_optimizer.init(params),
            z=_copy(z),
        )

    def update_fn(
        updates: Updates, state: ScheduleFreeState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, ScheduleFreeState]:
        _needs_params("schedule_free", params)
        check_fits(params, state.z)
        lr = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
        max_lr = jnp.maximum(state.max_lr, jnp.asarray(lr, state.max_lr.dtype))
        weight = max_lr**weight_lr_power
        weight_sum = state.weight_sum + weight
        # 0/0 in the first steps of a warm-up from 0 gives c = 0, not NaN; a NaN weight stays
        # NaN.
        c = jnp.where(
            jnp.isnan(weight) | jnp.isnan(weight_sum),
            jnp.full(weight.shape, jnp.nan, weight.dtype),
            jnp.nan_to_num(weight / weight_sum, nan=0.0, posinf=jnp.inf),
        )
        base_updates, base_state = _inner_update(
            base_optimizer, updates, state.base_optimizer_state, params, extra_args
        )
        z = jax.tree.map(lambda zi, u: (zi + u).astype(zi.dtype), state.z, base_updates)
        x = jax.tree.map(lambda y, zi: (y - (1.0 - b1) * zi) / b1, params, state.z)
        x = jax.tree.map(lambda xi, zi: (1.0 - c) * xi + c * zi, x, z)
        new_y = jax.tree.map(lambda xi, zi: b1 * xi + (1.0 - b1) * zi, x, z)
        updates = jax.tree.map(lambda n, y: (n - y).astype(jnp.result_type(y)), new_y, params)
        return updates, ScheduleFreeState(
            b1=state.b1,
            weight_sum=weight_sum,
            step_count=increment(state.step_count),
            max_lr=max_lr,
            base_optimizer_state=base_state,
            z=z,
        )

    return _wrapper(base_optimizer, init_fn, update_fn)


def schedule_free_eval_params(state: ScheduleFreeState, params: Params) -> Params:
    """The params to evaluate a `schedule_free` optimizer at: the average
    `x = (y − (1 − β₁)·z)/β₁`, from the train-step params `y` and the state's `z`."""
    if not isinstance(state, ScheduleFreeState):
        raise ValueError(
            f"schedule_free_eval_params: needs a ScheduleFreeState, got {type(state).__name__}"
        )
    b1 = state.b1
    return jax.tree.map(
        lambda y, z: ((y - (1.0 - b1) * z) / b1).astype(jnp.result_type(y)), params, state.z
    )


def _warmup(learning_rate: float, warmup_steps: int | None) -> ScalarOrSchedule:
    """`learning_rate`, or a linear warm-up to it from 0 over `warmup_steps` steps."""
    if warmup_steps is None:
        return learning_rate
    check_int("schedule_free", "warmup_steps", warmup_steps)
    warmup = join_schedules(
        [
            polynomial_schedule(0.0, learning_rate, 1.0, warmup_steps),
            constant_schedule(learning_rate),
        ],
        [warmup_steps],
    )
    # The count as a float of the default precision: from an int32 count the ramp would be
    # computed in float32 even under jax_enable_x64.
    return lambda count: warmup(jnp.asarray(count, jnp.result_type(float)))


def schedule_free_sgd(
    learning_rate: float = 1.0,
    *,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    weight_decay: float | None = None,
    weight_lr_power: float = 2.0,
    state_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Schedule-Free SGD (Defazio et al., 2024), as optax's `contrib.schedule_free_sgd`, with
    optax's defaults: `schedule_free` around plain SGD, `z ← z − γ_t·(g + λ·y)`.

    Args:
      learning_rate: the peak rate `γ`.
      warmup_steps: a linear warm-up of `γ_t` from 0 over this many steps (default none).
      b1: `β₁ ∈ (0, 1)`, the interpolation.
      weight_decay: `λ ≥ 0` (default none), at the gradient point `y`, scaled by `γ_t`.
      weight_lr_power: `r ≥ 0`, see `schedule_free`.
      state_dtype: the dtype of `z`.
    """
    check_rate("schedule_free_sgd", learning_rate)
    if weight_decay is not None:
        check_positive("schedule_free_sgd", "weight_decay", weight_decay, allow_zero=True)
    rate = _warmup(learning_rate, warmup_steps)
    sgd_step = scale_by_learning_rate(rate)
    if weight_decay is not None:
        sgd_step = chain(add_decayed_weights(weight_decay), sgd_step)
    return schedule_free(
        sgd_step, rate, b1=b1, weight_lr_power=weight_lr_power, state_dtype=state_dtype
    )


class _ScaleByRmsState(NamedTuple):
    count: jax.Array
    nu: Params


def _scale_by_debiased_rms(b2: float, eps: float) -> GradientTransformation:
    """Adam without its first moment: `v ← β₂·v + (1 − β₂)·g²`,
    `u ← g / (√(v/(1 − β₂ᵗ)) + ε)`."""

    def init_fn(params: Params) -> _ScaleByRmsState:
        return _ScaleByRmsState(jnp.zeros([], jnp.int32), zeros_like(params))

    def update_fn(
        updates: Updates, state: _ScaleByRmsState, params: Params | None = None
    ) -> tuple[Updates, _ScaleByRmsState]:
        del params
        nu = update_moment(updates, state.nu, b2, 2)
        count = increment(state.count)
        nu_hat = bias_correction(nu, b2, count)
        updates = jax.tree.map(
            lambda g, v: (g / (jnp.sqrt(v) + eps)).astype(g.dtype), updates, nu_hat
        )
        return updates, _ScaleByRmsState(count, nu)

    return GradientTransformation(init_fn, update_fn)


def schedule_free_adamw(
    learning_rate: float = 0.0025,
    *,
    warmup_steps: int | None = None,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    state_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Schedule-Free AdamW (Defazio et al., 2024), as optax's `contrib.schedule_free_adamw`,
    with optax's defaults: `schedule_free` around AdamW without its first moment::

        v ← β₂·v + (1 − β₂)·g²
        z ← z − γ_t·[g / (√(v/(1 − β₂ᵗ)) + ε) + λ·y]

    Args:
      learning_rate: the peak rate `γ`.
      warmup_steps: a linear warm-up of `γ_t` from 0 over this many steps (default none).
      b1: `β₁ ∈ (0, 1)`, the interpolation (not a moment decay).
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      weight_decay: `λ ≥ 0`, at the gradient point `y`, scaled by `γ_t`.
      weight_lr_power: `r ≥ 0`, see `schedule_free`.
      state_dtype: the dtype of `z`.
    """
    check_rate("schedule_free_adamw", learning_rate)
    _check_betas("schedule_free_adamw", 0.0, b2, eps)
    check_positive("schedule_free_adamw", "weight_decay", weight_decay, allow_zero=True)
    rate = _warmup(learning_rate, warmup_steps)
    adamw_step = chain(
        _scale_by_debiased_rms(b2, eps),
        add_decayed_weights(weight_decay),
        scale_by_learning_rate(rate),
    )
    return schedule_free(
        adamw_step, rate, b1=b1, weight_lr_power=weight_lr_power, state_dtype=state_dtype
    )
