"""L-BFGS's direction and the zoom line search that sets its step, as optax writes them.

`scale_by_lbfgs` turns the gradient into the L-BFGS direction; `scale_by_zoom_linesearch`
scales a direction by a step that satisfies the strong Wolfe conditions; `catalogue.lbfgs`
chains the two. The line search needs more than the gradient and takes it as extra args of
`update` (optax's convention): `value` (`f(w)`), `grad` (`∇f(w)`) and `value_fn` (`w ↦ f(w)`),
which `funcnet.train`'s steps pass. In the rules below `w` is the params, `f` the loss and
`⟨·,·⟩` the inner product of whole trees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from funcnet._checks import check_int, check_positive
from funcnet.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    PyTree,
    Updates,
    check_fits,
    increment,
    zeros_like,
)
from funcnet.optim.curvature import _require

__all__ = [
    "ScaleByLbfgsState",
    "ScaleByZoomLinesearchState",
    "ZoomLinesearchInfo",
    "scale_by_lbfgs",
    "scale_by_zoom_linesearch",
]


def _vdot(a: PyTree, b: PyTree) -> jax.Array:
    """`⟨a, b⟩`, summed over all leaves."""
    products = [
        jnp.vdot(x, y, precision=lax.Precision.HIGHEST)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    ]
    return sum(products[1:], products[0]).real


def _axpy(scalar: jax.Array, x: PyTree, y: PyTree) -> PyTree:
    """`y + scalar·x`, leaf by leaf, in the dtype of `y`."""
    return jax.tree.map(lambda a, b: (b + scalar * a).astype(b.dtype), x, y)


def _select(condition: jax.Array, if_true: PyTree, if_false: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), if_true, if_false)


# The L-BFGS direction.


class ScaleByLbfgsState(NamedTuple):
    """`count`: int32 steps taken; `params`, `updates`: the last `w` and `g`; the memory of
    the last `m` differences, stacked on a leading axis of size `m` in each leaf:
    `diff_params_memory` (`s_i = w_{i+1} − w_i`), `diff_updates_memory` (`y_i = g_{i+1} − g_i`),
    and `weights_memory`, the `ρ_i = 1/⟨y_i, s_i⟩` (0 for an unused slot)."""

    count: jax.Array
    params: Params
    updates: Updates
    diff_params_memory: PyTree
    diff_updates_memory: PyTree
    weights_memory: jax.Array


def _two_loop(
    g: Updates,
    s_memory: PyTree,
    y_memory: PyTree,
    rho: jax.Array,
    gamma: jax.Array,
    newest: jax.Array,
) -> Updates:
    """`H g` by the two-loop recursion (Nocedal & Wright, Algorithm 7.4), with `H₀ = γ·I`
    and the memory read from slot `newest − 1` back to slot `newest` (oldest)."""
    m = rho.shape[0]
    order = (newest + jnp.arange(m)) % m

    def slot(tree: PyTree, i: jax.Array) -> PyTree:
        return jax.tree.map(lambda x: x[i], tree)

    def backward(q, i):
        alpha = rho[i] * _vdot(slot(s_memory, i), q)
        return _axpy(-alpha, slot(y_memory, i), q), alpha

    q, alphas = lax.scan(backward, g, order, reverse=True)
    r = jax.tree.map(lambda x: (gamma * x).astype(x.dtype), q)

    def forward(r, i_alpha):
        i, alpha = i_alpha
        beta = rho[i] * _vdot(slot(y_memory, i), r)
        return _axpy(alpha - beta, slot(s_memory, i), r), None

    r, _ = lax.scan(forward, r, (order, alphas))
    return r


def scale_by_lbfgs(
    *, memory_size: int = 10, scale_init_precond: bool = True
) -> GradientTransformation:
    """The L-BFGS direction (Liu & Nocedal, 1989), as optax's `scale_by_lbfgs`.

    With `s_i = w_{i+1} − w_i`, `y_i = g_{i+1} − g_i` and `ρ_i = 1/⟨y_i, s_i⟩` for the last
    `m = memory_size` steps, the inverse-Hessian estimate is::

        H_{k,j+1} = (I − ρ_j s_j y_jᵀ) H_{k,j} (I − ρ_j y_j s_jᵀ) + ρ_j s_j s_jᵀ,  j = k−m … k−1
        H_{k,k−m} = γ_k·I,   γ_k = ⟨s_{k−1}, y_{k−1}⟩ / ⟨y_{k−1}, y_{k−1}⟩
                             (1 without `scale_init_precond`)
        u ← H_k g                                (the two-loop recursion, no matrix formed)

    and at the first step `γ_0 = min(1, 1/‖g‖)`, so that the first trial step has length at
    most 1. The memory is updated from the params and gradient of the call before, so chained
    before a line search it records the step the line search took. The result is the direction
    `H g`, not yet signed: `catalogue.lbfgs` negates it and the line search scales it.

    It reads the params: call `update(g, state, params)`. The memory holds `2m` copies of the
    params.

    Args:
      memory_size: `m`, the number of pairs `(s, y)` kept.
      scale_init_precond: use `γ_k` above for `H₀` (else the identity).
    """
    check_int("scale_by_lbfgs", "memory_size", memory_size)

    def init_fn(params: Params) -> ScaleByLbfgsState:
        def stacked() -> PyTree:  # one buffer each, so that a donated state stays valid
            return jax.tree.map(
                lambda x: jnp.zeros((memory_size, *jnp.shape(x)), jnp.result_type(x)), params
            )

        return ScaleByLbfgsState(
            count=jnp.zeros([], jnp.int32),
            params=zeros_like(params),
            updates=zeros_like(params),
            diff_params_memory=stacked(),
            diff_updates_memory=stacked(),
            weights_memory=jnp.zeros(memory_size),
        )

    def update_fn(
        updates: Updates, state: ScaleByLbfgsState, params: Params | None = None
    ) -> tuple[Updates, ScaleByLbfgsState]:
        if params is None:
            raise ValueError("scale_by_lbfgs needs the params: call update(g, state, params).")
        check_fits(updates, state.updates)
        newest = state.count % memory_size
        previous = (state.count - 1) % memory_size
        started = state.count > 0
        s = jax.tree.map(jnp.subtract, params, state.params)
        y = jax.tree.map(jnp.subtract, updates, state.updates)
        sy = _vdot(y, s)
        rho = jnp.where(sy == 0.0, 0.0, 1.0 / sy)
        s, y, rho = jax.tree.map(lambda x: jnp.where(started, x, jnp.zeros_like(x)), (s, y, rho))
        s_memory, y_memory, weights = jax.tree.map(
            lambda memory, new: memory.at[previous].set(new),
            (state.diff_params_memory, state.diff_updates_memory, state.weights_memory),
            (s, y, rho),
        )
        if scale_init_precond:
            yy = _vdot(y, y)
            gamma = jnp.where(yy > 0.0, _vdot(y, s) / yy, 1.0)
            first = jnp.minimum(1.0, 1.0 / jnp.sqrt(_vdot(*[lax.stop_gradient(updates)] * 2)))
            gamma = jnp.where(started, gamma, first)
        else:
            gamma = jnp.asarray(1.0)
        direction = _two_loop(updates, s_memory, y_memory, weights, gamma, newest)
        new_state = ScaleByLbfgsState(
            increment(state.count), params, updates, s_memory, y_memory, weights
        )
        return direction, new_state

    return GradientTransformation(init_fn, update_fn)


# The zoom line search.


class ZoomLinesearchInfo(NamedTuple):
    """`num_linesearch_steps`: the evaluations of `f` the last search made;
    `decrease_error`, `curvature_error`: how far its step is from the sufficient decrease and
    the curvature condition (0 when met)."""

    num_linesearch_steps: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array


class ScaleByZoomLinesearchState(NamedTuple):
    """`learning_rate`: the last step found (the next guess with ``"keep"``); `value`, `grad`:
    `f` and `∇f` at the point it stepped to; `info`: a `ZoomLinesearchInfo`."""

    learning_rate: jax.Array
    value: jax.Array
    grad: Updates
    info: ZoomLinesearchInfo


class _Search(NamedTuple):
    """The loop state of one search along `w + η·d` (optax's `ZoomLinesearchState`)."""

    count: jax.Array
    guess: jax.Array
    stepsize: jax.Array
    value: jax.Array
    grad: Updates
    slope: jax.Array
    value_init: jax.Array
    slope_init: jax.Array
    decrease_error: jax.Array
    curvature_error: jax.Array
    interval_found: jax.Array
    done: jax.Array
    failed: jax.Array
    low: jax.Array
    value_low: jax.Array
    slope_low: jax.Array
    high: jax.Array
    value_high: jax.Array
    slope_high: jax.Array
    cubic_ref: jax.Array
    value_cubic_ref: jax.Array
    safe_stepsize: jax.Array
    safe_value: jax.Array
    safe_grad: Updates


def _cubic_minimum(a, fa, fpa, b, fb, c, fc):
    """The critical point of the cubic through `(a, fa)`, `(b, fb)`, `(c, fc)` with slope `fpa`
    at `a` (NaN when it has none), as scipy's line search computes it."""
    db, dc = b - a, c - a
    denominator = (db * dc) ** 2 * (db - dc)
    d1 = jnp.array([[dc**2, -(db**2)], [-(dc**3), db**3]])
    rhs = jnp.array([fb - fa - fpa * db, fc - fa - fpa * dc])
    cubic, quadratic = jnp.dot(d1, rhs, precision=lax.Precision.HIGHEST) / denominator
    radical = quadratic * quadratic - 3.0 * cubic * fpa
    return a + (-quadratic + jnp.sqrt(radical)) / (3.0 * cubic)


def _quadratic_minimum(a, fa, fpa, b, fb):
    """The critical point of the parabola through `(a, fa)`, `(b, fb)` with slope `fpa` at `a`."""
    curvature = (fb - fa - fpa * (b - a)) / (b - a) ** 2
    return a - fpa / (2.0 * curvature)


def scale_by_zoom_linesearch(
    max_linesearch_steps: int,
    *,
    max_learning_rate: float | None = None,
    tol: float = 0.0,
    increase_factor: float = 2.0,
    slope_rtol: float = 1e-4,
    curv_rtol: float = 0.9,
    approx_dec_rtol: float | None = 1e-6,
    stepsize_precision: float = 1e-5,
    initial_guess_strategy: Literal["one", "keep"] = "keep",
) -> GradientTransformationExtraArgs:
    """A step `η` along the incoming direction `d` by the zoom line search (Nocedal & Wright,
    Algorithms 3.5 and 3.6), as optax's `scale_by_zoom_linesearch`.

    With `φ(η) = f(w + η·d)`, `c₁ = slope_rtol`, `c₂ = curv_rtol`, `ε = tol`, it looks for
    an `η` with::

        φ(η) ≤ φ(0) + c₁·η·φ'(0) + ε                  (sufficient decrease)
        |φ'(η)| ≤ c₂·|φ'(0)| + ε                       (small curvature, strong Wolfe)

    It grows a trial step from the guess (1, or the last step with ``"keep"``) by
    `increase_factor` until an interval holding such an `η` is bracketed, then narrows it by
    cubic, quadratic or bisection steps. Near a minimum, where `φ(η) − φ(0)` is lost to
    round-off, Hager & Zhang's approximate decrease `φ'(η) ≤ (2c₁ − 1)·φ'(0)` stands in for
    the first condition once `φ(η) ≤ φ(0) + c₃·|φ(0)|` (`c₃ = approx_dec_rtol`; None turns it
    off). After `max_linesearch_steps` evaluations, or once the interval is shorter than
    `stepsize_precision`, it takes the best step that decreased `f` enough, if any. It
    returns `u ← η·d`.

    Extra args of `update`: `value` (`f(w)`), `grad` (`∇f(w)`) and `value_fn` (`w ↦ f(w)`, a
    function of the params alone); it needs the params. Each trial costs one value and
    gradient of `f`. The others extra args are ignored.

    Args:
      max_linesearch_steps: the most evaluations of `f` one search makes.
      max_learning_rate: the largest `η` tried, or None.
      tol: `ε`.
      increase_factor: the growth of the trial step while bracketing.
      slope_rtol: `c₁`.
      curv_rtol: `c₂`.
      approx_dec_rtol: `c₃`, or None for the plain sufficient decrease.
      stepsize_precision: the interval length below which the search settles.
      initial_guess_strategy: ``"one"`` (for Newton-like directions such as L-BFGS's) or
        ``"keep"`` (the last step; for gradient directions).
    """
    who = "scale_by_zoom_linesearch"
    check_int(who, "max_linesearch_steps", max_linesearch_steps)
    if max_learning_rate is not None:
        check_positive(who, "max_learning_rate", max_learning_rate)
    check_positive(who, "tol", tol, allow_zero=True)
    check_positive(who, "increase_factor", increase_factor)
    check_positive(who, "slope_rtol", slope_rtol)
    check_positive(who, "curv_rtol", curv_rtol)
    if approx_dec_rtol is not None:
        check_positive(who, "approx_dec_rtol", approx_dec_rtol, allow_zero=True)
    check_positive(who, "stepsize_precision", stepsize_precision, allow_zero=True)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(
            f"{who}: initial_guess_strategy must be 'one' or 'keep', got {initial_guess_strategy!r}"
        )

    def decrease_error(stepsize, value, slope, value_init, slope_init):
        error = value - value_init - slope_rtol * stepsize * slope_init
        if approx_dec_rtol is not None:
            approx = jnp.maximum(
                slope - (2 * slope_rtol - 1.0) * slope_init,
                value - value_init - approx_dec_rtol * jnp.abs(value_init),
            )
            error = jnp.minimum(approx, error)
        error = jnp.maximum(error, 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def curvature_error(slope, slope_init):
        error = jnp.maximum(jnp.abs(slope) - curv_rtol * jnp.abs(slope_init), 0.0)
        return jnp.where(jnp.isnan(error), jnp.inf, error)

    def search(params, direction, value, grad, guess, value_fn):
        value_and_grad = jax.value_and_grad(value_fn)

        def on_line(stepsize):
            value, grad = value_and_grad(_axpy(stepsize, direction, params))
            return value, grad, _vdot(grad, direction)

        def bracket(state: _Search) -> _Search:
            """Algorithm 3.5: grow the step until an interval holds an acceptable one."""
            stepsize = jnp.where(state.count == 0, state.guess, increase_factor * state.stepsize)
            if max_learning_rate is not None:
                at_max = stepsize >= max_learning_rate
                stepsize = jnp.minimum(stepsize, max_learning_rate)
            else:
                at_max = jnp.asarray(False)
            new_value, new_grad, new_slope = on_line(stepsize)
            dec = decrease_error(stepsize, new_value, new_slope, state.value_init, state.slope_init)
            curv = curvature_error(new_slope, state.slope_init)
            error = jnp.maximum(dec, curv)
            safe = _select(
                dec <= tol,
                (stepsize, new_value, new_grad),
                (state.safe_stepsize, state.safe_value, state.safe_grad),
            )
            high_is_new = (dec > 0.0) | ((new_value >= state.value) & (state.count > 0))
            low_is_new = (new_slope >= 0.0) & ~high_is_new
            previous = (state.stepsize, state.value, state.slope)
            latest = (stepsize, new_value, new_slope)
            low, value_low, slope_low = _select(low_is_new, latest, previous)
            high, value_high, slope_high = _select(low_is_new, previous, latest)
            found = high_is_new | low_is_new | (error <= tol)
            done = (error <= tol) | (at_max & ~found)
            return _Search(
                count=increment(state.count),
                guess=state.guess,
                stepsize=stepsize,
                value=new_value,
                grad=new_grad,
                slope=new_slope,
                value_init=state.value_init,
                slope_init=state.slope_init,
                decrease_error=dec,
                curvature_error=curv,
                interval_found=found,
                done=done,
                failed=(state.count + 1 >= max_linesearch_steps) & ~done,
                low=low,
                value_low=value_low,
                slope_low=slope_low,
                high=high,
                value_high=value_high,
                slope_high=slope_high,
                cubic_ref=low,
                value_cubic_ref=value_low,
                safe_stepsize=safe[0],
                safe_value=safe[1],
                safe_grad=safe[2],
            )

        def zoom(state: _Search) -> _Search:
            """Algorithm 3.6: narrow the interval [low, high] by interpolation."""
            low, high = state.low, state.high
            delta = jnp.abs(high - low)
            left, right = jnp.minimum(high, low), jnp.maximum(high, low)
            cubic = _cubic_minimum(
                low,
                state.value_low,
                state.slope_low,
                high,
                state.value_high,
                state.cubic_ref,
                state.value_cubic_ref,
            )
            use_cubic = (cubic > left + 0.2 * delta) & (cubic < right - 0.2 * delta)
            quadratic = _quadratic_minimum(
                low, state.value_low, state.slope_low, high, state.value_high
            )
            use_quadratic = ~use_cubic & (
                (quadratic > left + 0.1 * delta) & (quadratic < right - 0.1 * delta)
            )
            middle = jnp.where(use_cubic, cubic, state.cubic_ref)
            middle = jnp.where(use_quadratic, quadratic, middle)
            middle = jnp.where(~use_cubic & ~use_quadratic, (low + high) / 2.0, middle)
            new_value, new_grad, new_slope = on_line(middle)
            dec = decrease_error(middle, new_value, new_slope, state.value_init, state.slope_init)
            curv = curvature_error(new_slope, state.slope_init)
            done = jnp.maximum(dec, curv) <= tol
            safe = _select(
                (dec <= tol) & (new_value < state.safe_value),
                (middle, new_value, new_grad),
                (state.safe_stepsize, state.safe_value, state.safe_grad),
            )
            high_is_middle = (dec > 0.0) | (new_value >= state.value_low)
            high_is_low = (new_slope * (high - low) >= 0.0) & ~high_is_middle
            middle_point = (middle, new_value, new_slope)
            low_point = (low, state.value_low, state.slope_low)
            high_point = (high, state.value_high, state.slope_high)
            new_high = _select(
                high_is_low, low_point, _select(high_is_middle, middle_point, high_point)
            )
            new_low = _select(~high_is_middle, middle_point, low_point)
            cubic_ref = _select(high_is_middle | high_is_low, high_point[:2], low_point[:2])
            settled = (state.count + 1 >= max_linesearch_steps) | (
                (delta <= stepsize_precision) & (safe[0] > 0.0)
            )
            return state._replace(
                count=increment(state.count),
                stepsize=middle,
                value=new_value,
                grad=new_grad,
                slope=new_slope,
                decrease_error=dec,
                curvature_error=curv,
                done=done,
                failed=settled & ~done,
                low=new_low[0],
                value_low=new_low[1],
                slope_low=new_low[2],
                high=new_high[0],
                value_high=new_high[1],
                slope_high=new_high[2],
                cubic_ref=cubic_ref[0],
                value_cubic_ref=cubic_ref[1],
                safe_stepsize=safe[0],
                safe_value=safe[1],
                safe_grad=safe[2],
            )

        def fall_back(state: _Search) -> _Search:
            """Out of steps: the best safe step if there is one (or if even the first trial
            left the domain of `f`), else the last one tried."""
            use_safe = (state.safe_stepsize > 0.0) | jnp.isinf(state.decrease_error)
            stepsize, value, grad = _select(
                use_safe,
                (state.safe_stepsize, state.safe_value, state.safe_grad),
                (state.stepsize, state.value, state.grad),
            )
            return state._replace(stepsize=stepsize, value=value, grad=grad)

        def step(state: _Search) -> _Search:
            state = lax.cond(state.interval_found, zoom, bracket, state)
            return lax.cond(state.failed, fall_back, lambda state: state, state)

        dtype = jnp.result_type(jax.tree.leaves(params)[0])
        slope = _vdot(direction, grad)
        zero = jnp.asarray(0.0)
        start = _Search(
            count=jnp.asarray(0),
            guess=guess,
            stepsize=jnp.asarray(0.0, dtype),
            value=jnp.asarray(value, dtype),
            grad=grad,
            slope=slope,
            value_init=value,
            slope_init=slope,
            decrease_error=jnp.asarray(jnp.inf),
            curvature_error=jnp.asarray(jnp.inf),
            interval_found=jnp.asarray(False),
            done=jnp.asarray(False),
            failed=jnp.asarray(False),
            low=zero,
            value_low=value,
            slope_low=slope,
            high=zero,
            value_high=value,
            slope_high=slope,
            cubic_ref=zero,
            value_cubic_ref=value,
            safe_stepsize=zero,
            safe_value=value,
            safe_grad=grad,
        )
        start = jax.tree.map(jnp.asarray, start)
        types = jax.tree.map(lambda x: x.dtype, start)

        def typed_step(state: _Search) -> _Search:
            new = step(state)
            return jax.tree.map(lambda x, t: x.astype(t), new, types)

        return lax.while_loop(lambda s: ~(s.done | s.failed), typed_step, start)

    def init_fn(params: Params) -> ScaleByZoomLinesearchState:
        dtype = jnp.result_type(jax.tree.leaves(params)[0])
        return ScaleByZoomLinesearchState(
            learning_rate=jnp.asarray(1.0, dtype),
            value=jnp.asarray(jnp.inf, dtype),
            grad=zeros_like(params),
            info=ZoomLinesearchInfo(
                num_linesearch_steps=jnp.asarray(0),
                decrease_error=jnp.asarray(jnp.inf),
                curvature_error=jnp.asarray(jnp.inf),
            ),
        )

    def update_fn(
        updates: Updates,
        state: ScaleByZoomLinesearchState,
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, ScaleByZoomLinesearchState]:
        _require(who, params, extra_args, ("value", "grad", "value_fn"))
        value_fn: Callable[[Params], jax.Array] = extra_args["value_fn"]
        guess = jnp.asarray(1.0) if initial_guess_strategy == "one" else state.learning_rate
        found = search(params, updates, extra_args["value"], extra_args["grad"], guess, value_fn)
        stepsize = found.stepsize
        scaled = jax.tree.map(lambda d: (stepsize * d).astype(d.dtype), updates)
        new_state = ScaleByZoomLinesearchState(
            learning_rate=stepsize,
            value=found.value,
            grad=found.grad,
            info=ZoomLinesearchInfo(found.count, found.decrease_error, found.curvature_error),
        )
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)
        return scaled, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)
