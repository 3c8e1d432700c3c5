"""Optimizers that use curvature: Hessian-free Newton-CG, Sophia and AdaHessian.

Each needs more than the gradient and takes it as keyword arguments of `update` (optax's
extra-args convention, see `GradientTransformationExtraArgs`). `funcnet.train.make_step` and
`funcnet.train.fit` pass them; called by hand, pass the ones the optimizer names::

    updates, state = opt.update(g, state, params, value=L(params), value_fn=L, key=key)

Curvature products come from `funcnet.diff`: `hvp` (Hessian-vector, forward over reverse) and
`gnvp` (Gauss-Newton-vector); no matrix is formed. In the rules below `θ` is the params,
`g = ∇L(θ)` the incoming update (the gradient when the rule comes first in a chain), `H` the
Hessian of the batch loss, `G = Jᵀ H_ℓ J` its Gauss-Newton matrix, and `t` the 1-based step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from funcnet._keys import typed_key
from funcnet.diff._linear_solve import conjugate_gradient
from funcnet.diff.modes import gnvp, hvp
from funcnet.losses import softmax_cross_entropy
from funcnet.optim.alias import _decoupled_decay
from funcnet.optim.base import (
    GradientTransformationExtraArgs,
    Params,
    PyTree,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    bias_correction,
    increment,
    one_minus_power,
    update_moment,
    zeros_like,
)
from funcnet.optim.transforms import MomentsState, _init_moments

__all__ = [
    "HessianFreeState",
    "ScaleByAdaHessianState",
    "ScaleBySophiaState",
    "adahessian",
    "hessian_free",
    "scale_by_adahessian",
    "scale_by_sophia",
    "sophia",
]

Probe = Literal["rademacher", "gaussian"]

_EXTRA_ARGS = {
    "value": "the loss L(θ) of the batch",
    "grad": "the gradient ∇L(θ) of the batch loss, shaped like the params",
    "value_fn": "the function θ ↦ L(θ) on the batch",
    "outputs_fn": "the function θ ↦ model outputs on the batch",
    "loss_of_outputs": "the function outputs ↦ L",
    "key": "a random key, fresh at every step",
}


def _require(who: str, params: Params | None, extra_args: dict[str, Any], names: tuple[str, ...]):
    """Refuses a call of `who`'s update without the params or without the extra args `names`."""
    missing = [name for name in names if extra_args.get(name) is None]
    if missing:
        listed = "; ".join(f"`{name}` ({_EXTRA_ARGS[name]})" for name in missing)
        raise TypeError(
            f"{who}.update needs the keyword argument{'s' if len(missing) > 1 else ''} {listed}. "
            "funcnet.train.make_step and fit pass them; called by hand, pass them as "
            f"update(g, state, params, {', '.join(f'{name}=...' for name in missing)})."
        )
    if params is None:
        raise ValueError(f"{who}.update needs the params: call update(g, state, params, ...).")


def _probe_like(key: jax.Array, tree: PyTree, distribution: Probe) -> PyTree:
    """A random vector shaped like `tree`: leaf `i` drawn from ``fold_in(key, i)``, with
    entries ±1 with equal odds (`"rademacher"`) or standard normal (`"gaussian"`), so that
    ``E[u uᵀ] = I``."""
    key = typed_key(key, caller="the probe of a curvature optimizer")
    leaves, treedef = jax.tree.flatten(tree)
    draw = jax.random.rademacher if distribution == "rademacher" else jax.random.normal
    probes = [
        draw(jax.random.fold_in(key, i), jnp.shape(leaf), jnp.result_type(leaf))
        for i, leaf in enumerate(leaves)
    ]
    return treedef.unflatten(probes)


def _hutchinson_diagonal(
    value_fn: Callable[[Params], jax.Array], params: Params, key: jax.Array, probe: Probe
) -> Updates:
    """Hutchinson's estimate of diag(H): `u ⊙ (H u)` with one random `u`, `E[u uᵀ] = I`."""
    u = _probe_like(key, params, probe)
    return jax.tree.map(jnp.multiply, u, hvp(value_fn, params, u))


def _check_probe(who: str, probe: str) -> None:
    if probe not in ("rademacher", "gaussian"):
        raise ValueError(f"{who}: probe must be 'rademacher' or 'gaussian', got {probe!r}")


def _check_unit_interval(who: str, name: str, value: float) -> None:
    if isinstance(value, int | float) and not 0 <= value < 1:
        raise ValueError(f"{who}: {name} must lie in [0, 1), got {value}")


# Hessian-free (truncated Newton-CG).


class HessianFreeState(NamedTuple):
    """`count`: int32 steps taken; `damping`: `λ`; `direction`: the last CG solution `p`
    (before the learning rate), shaped like the params; `ratio`: the last reduction ratio `ρ`."""

    count: jax.Array
    damping: jax.Array
    direction: Updates
    ratio: jax.Array


def hessian_free(
    learning_rate: ScalarOrSchedule = 1.0,
    *,
    curvature: Literal["gauss_newton", "hessian"] = "gauss_newton",
    initial_damping: float = 1.0,
    min_damping: float = 0.0,
    cg_iters: int = 50,
    cg_tol: float = 1e-4,
    warm_start: float = 0.95,
) -> GradientTransformationExtraArgs:
    """Hessian-free optimisation (Martens, 2010): a damped Newton step found by truncated CG.

    With `B` the Gauss-Newton matrix `G` (default) or the Hessian `H` of the batch loss, `λ`
    the damping, `ζ = warm_start`, `α_t` the learning rate and `p₋` the previous direction::

        p ← CG on (B + λI) p = −g, from p₀ = ζ·p₋, for at most `cg_iters` products
             (stopping early when ‖(B + λI) p + g‖ ≤ cg_tol·‖g‖)
        s ← α_t·p;    θ ← θ + s
        ρ ← (L(θ + s) − L(θ)) / q(s),   q(s) = gᵀs + ½ sᵀB s   (the undamped model)
        λ ← 3/2·λ if ρ < 1/4;   λ ← 2/3·λ if ρ > 3/4;   λ ← max(λ, λ_min)

    `ρ` is taken as 0 when `q(s) ≥ 0` or `L(θ + s)` is not finite. `sᵀB s` comes from the CG
    residual (`B p = r − g − λp`), so each step costs the CG products, one more for the warm
    start, and one loss evaluation. Without Martens' line search and CG backtracking; `α_t`
    (default 1) scales the step instead. The Levenberg–Marquardt rule and the decayed warm
    start are Martens' (2010, §4.1 and §4.5); `q` is the undamped quadratic, as in Martens &
    Sutskever (2012).

    Extra args of `update`: `value` (`L(θ)`), `value_fn` (`θ ↦ L(θ)`), and for the
    Gauss-Newton products `outputs_fn` (`θ ↦ z`) with `loss_of_outputs` (`z ↦ L`), which give
    `G v` through `funcnet.diff.gnvp`; the Hessian's products use `funcnet.diff.hvp` on
    `value_fn`.

    Args:
      learning_rate: `α_t`, a number or a schedule `step -> rate`.
      curvature: `"gauss_newton"` (positive semi-definite for a loss convex in the outputs) or
        `"hessian"`.
      initial_damping: `λ` at the first step, positive.
      min_damping: `λ_min`, the floor of `λ` (0, Martens' rule, by default). On small
        minibatches the ratio measured on the batch itself stays near 1, `λ` falls towards 0
        and the step overfits the batch; a floor (or larger batches, as Martens uses) keeps
        the steps of one batch sensible for the next.
      cg_iters: the most curvature products CG makes in one step.
      cg_tol: CG stops once the residual is below `cg_tol` times ‖g‖.
      warm_start: `ζ` in [0, 1], the decay of the previous direction CG starts from.

    Returns:
      A `GradientTransformationExtraArgs` with state `HessianFreeState`; its updates are
      shaped like the params.
    """
    who = "hessian_free"
    if curvature not in ("gauss_newton", "hessian"):
        raise ValueError(f"{who}: curvature must be 'gauss_newton' or 'hessian', got {curvature!r}")
    if not initial_damping > 0:
        raise ValueError(f"{who}: initial_damping must be positive, got {initial_damping}")
    if not 0 <= min_damping <= initial_damping:
        raise ValueError(
            f"{who}: min_damping must lie in [0, initial_damping = {initial_damping}], "
            f"got {min_damping}"
        )
    if not (isinstance(cg_iters, int) and cg_iters >= 1):
        raise ValueError(f"{who}: cg_iters must be a positive integer, got {cg_iters!r}")
    if not cg_tol >= 0:
        raise ValueError(f"{who}: cg_tol must be non-negative, got {cg_tol}")
    if not 0 <= warm_start <= 1:
        raise ValueError(f"{who}: warm_start must lie in [0, 1], got {warm_start}")
    needs = ("value", "value_fn")
    needs += ("outputs_fn", "loss_of_outputs") if curvature == "gauss_newton" else ()

    def init_fn(params: Params) -> HessianFreeState:
        dtype = ravel_pytree(params)[0].dtype
        return HessianFreeState(
            count=jnp.zeros([], jnp.int32),
            damping=jnp.asarray(initial_damping, dtype),
            direction=zeros_like(params),
            ratio=jnp.zeros([], dtype),
        )

    def update_fn(
        updates: Updates, state: HessianFreeState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, HessianFreeState]:
        _require(who, params, extra_args, needs)
        value_fn = extra_args["value_fn"]
        g, unravel = ravel_pytree(updates)
        damping = state.damping.astype(g.dtype)

        def curvature_product(v: jax.Array) -> jax.Array:
            if curvature == "gauss_newton":
                bv = gnvp(
                    extra_args["outputs_fn"], extra_args["loss_of_outputs"], params, unravel(v)
                )
            else:
                bv = hvp(value_fn, params, unravel(v))
            return ravel_pytree(bv)[0].astype(g.dtype) + damping * v

        x0 = warm_start * ravel_pytree(state.direction)[0].astype(g.dtype)
        p, r = conjugate_gradient(curvature_product, g, x0, max_iters=cg_iters, tol=cg_tol)

        rate = learning_rate(state.count) if callable(learning_rate) else learning_rate
        rate = jnp.asarray(rate, g.dtype)
        p_b_p = jnp.vdot(p, r - g) - damping * jnp.vdot(p, p)
        model_change = rate * jnp.vdot(g, p) + 0.5 * rate**2 * p_b_p
        step = unravel(rate * p)
        loss_change = value_fn(apply_updates(params, step)) - extra_args["value"]
        trusted = (model_change < 0) & jnp.isfinite(loss_change)
        ratio = jnp.where(trusted, loss_change / jnp.where(trusted, model_change, 1), 0)
        ratio = ratio.astype(g.dtype)
        damping = jnp.where(
            ratio < 0.25, damping * 1.5, jnp.where(ratio > 0.75, damping * (2 / 3), damping)
        )
        damping = jnp.maximum(damping, min_damping)
        new_state = HessianFreeState(
            count=increment(state.count),
            damping=damping.astype(state.damping.dtype),
            direction=jax.tree.map(lambda d, old: d.astype(old.dtype), unravel(p), state.direction),
            ratio=ratio.astype(state.ratio.dtype),
        )
        step = jax.tree.map(lambda s, u: s.astype(u.dtype), step, updates)
        return step, new_state

    return GradientTransformationExtraArgs(init_fn, update_fn)


# Sophia.


class ScaleBySophiaState(NamedTuple):
    """`count`: int32 steps taken; `mu`: the gradient EMA `m`; `hessian`: the diagonal EMA `h`."""

    count: jax.Array
    mu: Updates
    hessian: Updates


def _gauss_newton_bartlett(
    outputs_fn: Callable[[Params], jax.Array], params: Params, key: jax.Array
) -> Updates:
    """Sophia's GNB estimate of diag(G): `B·ĝ ⊙ ĝ`, `ĝ` the gradient of the mean cross-entropy
    on labels `ŷ ~ softmax(z)` drawn by ``jax.random.categorical(key, z)``, `B` the number
    of class vectors in the outputs `z` of shape ``(..., classes)``."""
    logits, pullback = jax.vjp(outputs_fn, params)
    if jnp.ndim(logits) < 1 or not jnp.issubdtype(jnp.result_type(logits), jnp.floating):
        raise ValueError(
            "sophia's Gauss-Newton-Bartlett estimator needs class logits of shape "
            f"(..., classes) from the model, got outputs of shape {jnp.shape(logits)} and dtype "
            f"{jnp.result_type(logits)}; use estimator='hutchinson' for other losses"
        )
    key = typed_key(key, caller="sophia")
    labels = jax.random.categorical(key, lax.stop_gradient(logits))
    count = math.prod(jnp.shape(logits)[:-1])
    cotangent = jax.grad(softmax_cross_entropy)(logits, labels)
    (g_hat,) = pullback(cotangent)
    return jax.tree.map(lambda g: count * jnp.square(g), g_hat)


def scale_by_sophia(
    *,
    b1: float = 0.96,
    b2: float = 0.99,
    gamma: float = 0.01,
    eps: float = 1e-12,
    update_every: int = 10,
    estimator: Literal["gnb", "hutchinson"] = "gnb",
    probe: Probe = "gaussian",
) -> GradientTransformationExtraArgs:
    """Sophia's clipped, curvature-scaled direction (Liu et al., 2023, Algorithm 3)::

        m ← β₁·m + (1 − β₁)·g
        h ← β₂·h + (1 − β₂)·ĥ     when (t − 1) mod k = 0 (steps 1, k + 1, …), else kept
        u ← clip(m / max(γ·h, ε), 1),   clip(z, 1) = min(max(z, −1), 1) per coordinate

    with `k = update_every` and `ĥ` an estimate of the Hessian's diagonal, made only on the
    steps that refresh `h`:

    - `"gnb"` (Sophia-G), Gauss-Newton-Bartlett: `ĥ = B·ĝ ⊙ ĝ`, `ĝ` the gradient of the mean
      cross-entropy of the model's logits on labels `ŷ ~ softmax(logits)` (drawn with `key`),
      `B` the number of class vectors (rows, or tokens) in the batch. Extra args: `outputs_fn`
      (`θ ↦ logits` of shape ``(..., classes)``) and `key`.
    - `"hutchinson"` (Sophia-H): `ĥ = u ⊙ (H u)` with `u` Gaussian (as the paper) or
      Rademacher (`probe`), drawn with `key`. Extra args: `value_fn` (`θ ↦ L(θ)`) and `key`.

    Args:
      b1: `β₁`, the decay of the gradient EMA.
      b2: `β₂`, the decay of the diagonal EMA.
      gamma: `γ`, the scale of `h` in the denominator (the released code's `rho`).
      eps: `ε`, the floor of the denominator.
      update_every: `k`, the steps between two refreshes of `h`.
      estimator: `"gnb"` or `"hutchinson"` (above).
      probe: the distribution of Hutchinson's `u`, `"gaussian"` or `"rademacher"`.

    Returns:
      A `GradientTransformationExtraArgs` with state `ScaleBySophiaState`.
    """
    who = "scale_by_sophia"
    _check_unit_interval(who, "b1", b1)
    _check_unit_interval(who, "b2", b2)
    if not gamma > 0:
        raise ValueError(f"{who}: gamma must be positive, got {gamma}")
    if not eps > 0:
        raise ValueError(f"{who}: eps must be positive, got {eps}")
    if not (isinstance(update_every, int) and update_every >= 1):
        raise ValueError(f"{who}: update_every must be a positive integer, got {update_every!r}")
    if estimator not in ("gnb", "hutchinson"):
        raise ValueError(f"{who}: estimator must be 'gnb' or 'hutchinson', got {estimator!r}")
    _check_probe(who, probe)
    needs = ("outputs_fn", "key") if estimator == "gnb" else ("value_fn", "key")

    def init_fn(params: Params) -> ScaleBySophiaState:
        return ScaleBySophiaState(
            count=jnp.zeros([], jnp.int32), mu=zeros_like(params), hessian=zeros_like(params)
        )

    def update_fn(
        updates: Updates, state: ScaleBySophiaState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, ScaleBySophiaState]:
        _require("sophia", params, extra_args, needs)
        key = extra_args["key"]

        def refreshed() -> Updates:
            if estimator == "gnb":
                estimate = _gauss_newton_bartlett(extra_args["outputs_fn"], params, key)
            else:
                estimate = _hutchinson_diagonal(extra_args["value_fn"], params, key, probe)
            return update_moment(estimate, state.hessian, b2, 1)

        hessian = lax.cond(state.count % update_every == 0, refreshed, lambda: state.hessian)
        mu = update_moment(updates, state.mu, b1, 1)
        out = jax.tree.map(
            lambda m, h, u: jnp.clip(m / jnp.maximum(gamma * h, eps), -1, 1).astype(u.dtype),
            mu,
            hessian,
            updates,
        )
        return out, ScaleBySophiaState(increment(state.count), mu, hessian)

    return GradientTransformationExtraArgs(init_fn, update_fn)


def sophia(
    learning_rate: ScalarOrSchedule = 2e-4,
    *,
    b1: float = 0.96,
    b2: float = 0.99,
    gamma: float = 0.01,
    eps: float = 1e-12,
    weight_decay: float = 0.2,
    update_every: int = 10,
    estimator: Literal["gnb", "hutchinson"] = "gnb",
    probe: Probe = "gaussian",
    mask: PyTree | Callable[[Params], PyTree] | None = None,
) -> GradientTransformationExtraArgs:
    """Sophia (Liu et al., 2023): a clipped step preconditioned by a diagonal curvature EMA.

    With `u` the direction of `scale_by_sophia` (Sophia-G with `estimator="gnb"`, Sophia-H
    with `"hutchinson"`) and `λ = weight_decay` (decoupled)::

        θ ← θ − η_t·λ·θ − η_t·clip(m / max(γ·h, ε), 1)

    Defaults: `β₁ = 0.96`, `β₂ = 0.99`, `ε = 1e-12` and `k = 10` are the paper's (§3,
    experimental setup); `λ = 0.2` is the released GPT-2 configuration's weight decay; `γ =
    0.01` and `η = 2e-4` are the released code's general-usage example (its `rho`, which
    multiplies the batch size there, is `γ` here since `ĥ` already carries `B`). The clip
    bounds every coordinate's step by `η_t`; where it does not act the step is `η_t·m/(γ·h)`,
    a Newton step scaled by `η_t/γ`.

    Extra args of `update`: `key` and `outputs_fn` (Sophia-G) or `value_fn` (Sophia-H); see
    `scale_by_sophia`. `mask` selects the params that decay (see `masked`); `None` decays all.

    Returns:
      A `GradientTransformationExtraArgs`: ``chain(scale_by_sophia(…), decay, lr)``.
    """
    direction = scale_by_sophia(
        b1=b1,
        b2=b2,
        gamma=gamma,
        eps=eps,
        update_every=update_every,
        estimator=estimator,
        probe=probe,
    )
    return _decoupled_decay(direction, learning_rate, weight_decay, mask)


# AdaHessian.


ScaleByAdaHessianState = MomentsState


def _spatial_average(diagonal: jax.Array) -> jax.Array:
    """`mean |D|` over the spatial axes of a conv kernel ``(*window, in, out)``, broadcast back."""
    if diagonal.ndim < 3:
        return diagonal
    axes = tuple(range(diagonal.ndim - 2))
    return jnp.broadcast_to(jnp.mean(jnp.abs(diagonal), axis=axes, keepdims=True), diagonal.shape)


def scale_by_adahessian(
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    hessian_power: float = 1.0,
    spatial_average: bool = True,
) -> GradientTransformationExtraArgs:
    """AdaHessian's rescaling (Yao et al., 2021, Algorithm 1)::

        D ← z ⊙ (H z),   z Rademacher (drawn with `key`)
        D ← mean over the kernel window of |D|    (conv kernels, `spatial_average`)
        m ← β₁·m + (1 − β₁)·g;     v ← β₂·v + (1 − β₂)·D²
        u ← [m / (1 − β₁ᵗ)] / ((√v / √(1 − β₂ᵗ))^k + ε)

    with `k = hessian_power`. A conv kernel is a leaf of three or more axes in funcnet's
    layout ``(*window, in, out)``: its window is every axis but the last two, and each
    ``(in, out)`` entry gets the mean of `|D|` over its window (the paper's spatial averaging;
    its code averages `|D|` over the 3×3 window of a torch kernel the same way). Extra args:
    `value_fn` (`θ ↦ L(θ)`) and `key`.

    Args:
      b1: `β₁`, the decay of the gradient EMA.
      b2: `β₂`, the decay of the EMA of `D²`.
      eps: `ε`, added to the denominator.
      hessian_power: `k` in [0, 1]; 1 is the Hessian's scale, 0 turns the rule into momentum.
      spatial_average: average `|D|` over conv kernel windows.

    Returns:
      A `GradientTransformationExtraArgs` with state `MomentsState`: `mu` is the gradient EMA
      `m`, `nu` the EMA `v` of `D²`.
    """
    who = "scale_by_adahessian"
    _check_unit_interval(who, "b1", b1)
    _check_unit_interval(who, "b2", b2)
    if not eps >= 0:
        raise ValueError(f"{who}: eps must be non-negative, got {eps}")
    if not 0 <= hessian_power <= 1:
        raise ValueError(f"{who}: hessian_power must lie in [0, 1], got {hessian_power}")

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, MomentsState]:
        _require("adahessian", params, extra_args, ("value_fn", "key"))
        value_fn, key = extra_args["value_fn"], extra_args["key"]
        diagonal = _hutchinson_diagonal(value_fn, params, key, "rademacher")
        if spatial_average:
            diagonal = jax.tree.map(_spatial_average, diagonal)
        count = increment(state.count)
        mu = update_moment(updates, state.mu, b1, 1)
        nu = update_moment(diagonal, state.nu, b2, 2)
        mu_hat = bias_correction(mu, b1, count)
        root_correction = jnp.sqrt(one_minus_power(b2, count))

        def rescale(m: jax.Array, v: jax.Array, u: jax.Array) -> jax.Array:
            denom = (jnp.sqrt(v) / root_correction.astype(v.dtype)) ** hessian_power + eps
            return (m / denom).astype(u.dtype)

        out = jax.tree.map(rescale, mu_hat, nu, updates)
        return out, MomentsState(count, mu, nu)

    return GradientTransformationExtraArgs(_init_moments, update_fn)


def adahessian(
    learning_rate: ScalarOrSchedule = 0.15,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-4,
    weight_decay: float = 0.0,
    hessian_power: float = 1.0,
    spatial_average: bool = True,
    mask: PyTree | Callable[[Params], PyTree] | None = None,
) -> GradientTransformationExtraArgs:
    """AdaHessian (Yao et al., 2021): Adam with the Hessian's diagonal in place of `g²`.

    With `u` the direction of `scale_by_adahessian` and `λ = weight_decay` (decoupled, as the
    released code applies it)::

        θ ← θ − η_t·(u + λ·θ)

    Defaults are the released code's (`lr = 0.15`, `betas = (0.9, 0.999)`, `eps = 1e-4`,
    `weight_decay = 0`, `hessian_power = 1`). Extra args of `update`: `value_fn` and `key`.
    `mask` selects the params that decay (see `masked`); `None` decays all.

    Returns:
      A `GradientTransformationExtraArgs`: ``chain(scale_by_adahessian(…), decay, lr)``.
    """
    direction = scale_by_adahessian(
        b1=b1, b2=b2, eps=eps, hessian_power=hessian_power, spatial_average=spatial_average
    )
    return _decoupled_decay(direction, learning_rate, weight_decay, mask)
