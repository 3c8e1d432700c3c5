"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse, 2015), with KFC's conv
blocks (Grosse & Martens, 2016).

Each dense and conv layer's curvature block is approximated by `A ⊗ G`
(`funcnet.diff.kronecker_factors`), acting on its kernel and bias together as the matrix
``W̄ = [W; bᵀ]`` of shape ``(d_in + 1, d_out)``, `F̂ vec(W̄) = vec(A W̄ G)` with `vec`
row-major. With factored Tikhonov damping (M&G §6.3), `γ = λ + η` (`λ` the damping, `η` the
l2 coefficient) and `π = √((tr A / dim A) / (tr G / dim G))`, the preconditioned gradient of
a layer is::

    F̆⁻¹ ∇h:   (A + π√γ·I)⁻¹ · ∇_W̄ h · (G + (√γ/π)·I)⁻¹

Every other leaf (norm scales, embeddings, weights used more than once or inside a scan)
takes the diagonal fallback `∇h / (v + γ)`, `v` the moving average of the squared gradient.
The factor statistics are moving averages refreshed every few steps; their damped inverses
are recomputed every few more, inside `lax.cond` on the step count, so a jitted step pays
only when due. State shapes are fixed by `init`, so the state jits, scans and checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from funcnet._checks import check_decay, check_int, check_positive, check_rate
from funcnet.diff.kronecker import (
    KroneckerLayer,
    _factors,
    _Plan,
    check_choice,
    kernel_matrix,
    leaf_name,
    split_kernel_matrix,
)
from funcnet.diff.modes import gnvp
from funcnet.optim.base import (
    GradientTransformationExtraArgs,
    Params,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    increment,
)
from funcnet.optim.curvature import _require
from funcnet.optim.preconditioned import _after

__all__ = ["KfacState", "kfac", "scale_by_kfac"]

_HIGHEST = lax.Precision.HIGHEST


class KfacState(NamedTuple):
    """`count`: int32 steps taken. Per layer, in the sorted order of the kernel paths:
    `a`, `g` (the moving averages of the factors), `a_inv`, `g_inv` (their damped inverses in
    use). `diagonal`: per leaf of no layer, in the params' order, the moving average `v` of
    its squared gradient. `damping`: `λ`. `update`: the previous step `δ₀`, shaped like the
    params (None for `scale_by_kfac`). `rho`: the last reduction ratio `ρ` (0 before one)."""

    count: jax.Array
    a: tuple[jax.Array, ...]
    g: tuple[jax.Array, ...]
    a_inv: tuple[jax.Array, ...]
    g_inv: tuple[jax.Array, ...]
    diagonal: tuple[jax.Array, ...]
    damping: jax.Array
    update: Updates | None
    rho: jax.Array


class _Structure(NamedTuple):
    """Which leaves form which layers: `layers` by sorted kernel path, and the other leaves."""

    layers: dict[str, KroneckerLayer]
    unmatched: tuple[str, ...]


class _Settings(NamedTuple):
    """The settings `scale_by_kfac` and `kfac` share (`_checked` checks them): `owner` names
    the optimizer in errors, `needs` the extra args every update requires."""

    owner: str
    layers: Mapping[str, KroneckerLayer] | None
    max_factor_dim: int
    factor_decay: float
    curvature_update_frequency: int
    inverse_update_frequency: int
    curvature: str
    likelihood: str
    needs: tuple[str, ...] = ()


def _by_convention(named: dict[str, jax.Array]) -> dict[str, KroneckerLayer]:
    """funcnet's naming: a leaf ``…/w`` of 2 axes ``(in, out)`` (dense) or 4 ``(h, w, in,
    out)`` (conv), with its sibling ``…/b`` of shape ``(out,)`` as bias when there is one."""
    layers = {}
    for name, w in named.items():
        if not (name == "w" or name.endswith("/w")) or jnp.ndim(w) not in (2, 4):
            continue
        shape = tuple(jnp.shape(w))
        bias = name[:-1] + "b"
        bias = bias if bias in named and tuple(jnp.shape(named[bias])) == shape[-1:] else None
        kind = "dense" if len(shape) == 2 else "conv"
        axes = tuple(range(len(shape)))
        layers[name] = KroneckerLayer(
            kind, name, bias, shape, axes, math.prod(shape[:-1]), shape[-1]
        )
    return layers


def _structure(settings: _Settings, params: Params) -> _Structure:
    owner, layers, max_factor_dim = settings.owner, settings.layers, settings.max_factor_dim
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    named = {leaf_name(path): leaf for path, leaf in flat}
    chosen = _by_convention(named) if layers is None else dict(layers)
    for name, layer in chosen.items():
        for part, shape in ((layer.kernel, layer.kernel_shape), (layer.bias, None)):
            if part is not None and part not in named:
                raise ValueError(f"{owner}: layer {name!r} names the param {part!r}, not in params")
            if shape is not None and tuple(jnp.shape(named[part])) != shape:
                raise ValueError(
                    f"{owner}: layer {name!r} has a kernel of shape {shape}, the params' "
                    f"{part!r} has shape {tuple(jnp.shape(named[part]))}"
                )
        dims = (layer.in_dim + (layer.bias is not None), layer.out_dim)
        for which, dim in zip(("input", "output-gradient"), dims, strict=True):
            if dim > max_factor_dim:
                raise ValueError(
                    f"{owner}: layer {name!r} has an {which} factor of {dim} × {dim} > "
                    f"max_factor_dim={max_factor_dim}: raise max_factor_dim, or pass layers= "
                    "without it so that it takes the diagonal fallback"
                )
    held = {layer.kernel for layer in chosen.values()}
    held |= {layer.bias for layer in chosen.values() if layer.bias is not None}
    unmatched = tuple(name for name in named if name not in held)
    return _Structure(dict(sorted(chosen.items())), unmatched)


def _check_against_jaxpr(owner: str, structure: _Structure, plan: _Plan) -> None:
    """Refuses layers that the model's jaxpr does not show as such, in one line."""
    for name, layer in structure.layers.items():
        found = plan.layers.get(name)
        if found is None:
            raise ValueError(
                f"{owner}: layer {name!r} ({layer.kind}, kernel {layer.kernel_shape}) is not used "
                "once as a dense or conv kernel in the model's outputs; pass "
                "layers=funcnet.diff.kronecker_layers(outputs_fn, params)"
            )
        mine = (layer.bias, layer.kernel_axes, layer.in_dim, layer.out_dim)
        theirs = (found.bias, found.kernel_axes, found.in_dim, found.out_dim)
        if mine != theirs:
            raise ValueError(
                f"{owner}: layer {name!r} is (bias, kernel axes, in, out) = {mine} here but "
                f"{theirs} in the model's outputs; pass "
                "layers=funcnet.diff.kronecker_layers(outputs_fn, params)"
            )


def _dtype(params: Params) -> jnp.dtype:
    leaves = jax.tree.leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    return jnp.promote_types(dtype, jnp.float32)


def _init_state(structure: _Structure, params: Params, damping: float, update: bool) -> KfacState:
    dtype = _dtype(params)
    named = {leaf_name(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    dims = [
        (layer.in_dim + (layer.bias is not None), layer.out_dim)
        for layer in structure.layers.values()
    ]
    zeros = lambda d: jnp.zeros((d, d), dtype)
    eye = lambda d: jnp.eye(d, dtype=dtype)
    return KfacState(
        count=jnp.zeros([], jnp.int32),
        a=tuple(zeros(da) for da, _ in dims),
        g=tuple(zeros(dg) for _, dg in dims),
        a_inv=tuple(eye(da) for da, _ in dims),
        g_inv=tuple(eye(dg) for _, dg in dims),
        diagonal=tuple(jnp.zeros(jnp.shape(named[n]), dtype) for n in structure.unmatched),
        damping=jnp.asarray(damping, dtype),
        update=jax.tree.map(jnp.zeros_like, params) if update else None,
        rho=jnp.zeros([], dtype),
    )


def _ema(old: jax.Array, new: jax.Array, decay: float, first: jax.Array) -> jax.Array:
    """`decay·old + (1 − decay)·new`, or `new` at the first update."""
    return jnp.where(first, new, decay * old + (1 - decay) * new)


def _damped_inverses(
    a: tuple[jax.Array, ...], g: tuple[jax.Array, ...], gamma: jax.Array
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, ...]]:
    """`(A + π√γ·I)⁻¹` and `(G + (√γ/π)·I)⁻¹` for each layer, one inversion at a time."""
    a_inv, g_inv, previous = [], [], None
    for fa, fg in zip(a, g, strict=True):
        ta, tg = jnp.trace(fa) / fa.shape[0], jnp.trace(fg) / fg.shape[0]
        pi = jnp.sqrt(ta / tg)
        pi = jnp.where(jnp.isfinite(pi) & (pi > 0), pi, 1.0)
        root = jnp.sqrt(gamma)
        for f, shift, out in ((fa, pi * root, a_inv), (fg, root / pi, g_inv)):
            eye = jnp.eye(f.shape[0], dtype=f.dtype)
            previous = jnp.linalg.solve(_after(f, previous) + shift * eye, eye)
            out.append(previous)
    return tuple(a_inv), tuple(g_inv)


def _named(tree: Any) -> tuple[dict[str, jax.Array], Any]:
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return {leaf_name(path): leaf for path, leaf in flat}, treedef


def _precondition(
    structure: _Structure, grads: dict[str, jax.Array], state: KfacState, gamma: jax.Array
) -> dict[str, jax.Array]:
    """`F̆⁻¹ ∇h` leaf by leaf with the state's inverses: `A⁻¹ ∇_W̄ G⁻¹` per layer,
    `∇h / (v + γ)` for the rest."""
    out = {}
    for layer, ai, gi in zip(structure.layers.values(), state.a_inv, state.g_inv, strict=True):
        bias = None if layer.bias is None else grads[layer.bias]
        mat = kernel_matrix(layer, grads[layer.kernel].astype(ai.dtype), bias)
        mat = jnp.matmul(jnp.matmul(ai, mat, precision=_HIGHEST), gi, precision=_HIGHEST)
        w, b = split_kernel_matrix(layer, mat, None if bias is None else bias.shape)
        out[layer.kernel] = w
        if layer.bias is not None:
            out[layer.bias] = b
    for name, v in zip(structure.unmatched, state.diagonal, strict=True):
        out[name] = grads[name].astype(v.dtype) / (v + gamma)
    return out


def _refresh(
    settings: _Settings,
    structure: _Structure,
    state: KfacState,
    params: Params,
    grads: dict[str, jax.Array],
    extra_args: dict[str, Any],
    gamma: jax.Array,
) -> KfacState:
    """The state with new factors (every `curvature_update_frequency` steps), diagonal and
    inverses (every `inverse_update_frequency` steps, from the new factors and `γ`)."""
    count, first = state.count, state.count == 0
    decay = settings.factor_decay
    names = tuple(structure.layers)
    if names:
        plan = _Plan(extra_args["outputs_fn"], params)
        _check_against_jaxpr(settings.owner, structure, plan)

        def refreshed():
            fresh = _factors(
                plan,
                params,
                names,
                settings.curvature,
                settings.likelihood,
                extra_args.get("loss_of_outputs"),
                extra_args.get("key"),
            )
            a = tuple(
                _ema(old, fresh[n].a.astype(old.dtype), decay, first)
                for n, old in zip(names, state.a, strict=True)
            )
            g = tuple(
                _ema(old, fresh[n].g.astype(old.dtype), decay, first)
                for n, old in zip(names, state.g, strict=True)
            )
            return a, g

        due = count % settings.curvature_update_frequency == 0
        a, g = lax.cond(due, refreshed, lambda: (state.a, state.g))
        due = count % settings.inverse_update_frequency == 0
        a_inv, g_inv = lax.cond(
            due, lambda: _damped_inverses(a, g, gamma), lambda: (state.a_inv, state.g_inv)
        )
    else:
        a, g, a_inv, g_inv = state.a, state.g, state.a_inv, state.g_inv
    diagonal = tuple(
        _ema(v, jnp.square(grads[n].astype(v.dtype)), decay, first)
        for n, v in zip(structure.unmatched, state.diagonal, strict=True)
    )
    return state._replace(a=a, g=g, a_inv=a_inv, g_inv=g_inv, diagonal=diagonal)


def _checked(settings: _Settings, *more_needs: str) -> _Settings:
    """`settings` once checked, with what every update needs: `outputs_fn`, `key` for the
    Fisher or `loss_of_outputs` otherwise, then `more_needs`."""
    owner, curvature = settings.owner, settings.curvature
    check_decay(owner, "factor_decay", settings.factor_decay)
    check_int(owner, "curvature_update_frequency", settings.curvature_update_frequency)
    check_int(owner, "inverse_update_frequency", settings.inverse_update_frequency)
    check_choice(owner, "curvature", curvature, ("ggn", "fisher", "empirical"))
    check_choice(owner, "likelihood", settings.likelihood, ("categorical", "gaussian"))
    check_int(owner, "max_factor_dim", settings.max_factor_dim)
    needs = ("outputs_fn", "key" if curvature == "fisher" else "loss_of_outputs")
    return settings._replace(needs=needs + tuple(n for n in more_needs if n not in needs))


_Rule = Callable[
    [_Structure, dict[str, jax.Array], Any, KfacState, Params, dict[str, Any]],
    tuple[dict[str, jax.Array], KfacState],
]


def _transformation(
    settings: _Settings, damping: float, keep_update: bool, rule: _Rule
) -> GradientTransformationExtraArgs:
    """K-FAC's `init` (the layers found in the params, zero factors, identity inverses; the
    previous step kept with `keep_update`) and its `update`: the extra args checked, the
    layers found again, then ``rule(structure, grads, treedef, state, params, extra_args)``
    on the gradients by leaf path, which returns the updates by leaf path and the new state."""

    def init_fn(params: Params) -> KfacState:
        return _init_state(_structure(settings, params), params, damping, keep_update)

    def update_fn(
        updates: Updates, state: KfacState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, KfacState]:
        _require(settings.owner, params, extra_args, settings.needs)
        structure = _structure(settings, params)
        grads, treedef = _named(updates)
        out, state = rule(structure, grads, treedef, state, params, extra_args)
        return treedef.unflatten([out[name].astype(grads[name].dtype) for name in grads]), state

    return GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_kfac(
    *,
    damping: float = 1e-3,
    factor_decay: float = 0.95,
    curvature_update_frequency: int = 1,
    inverse_update_frequency: int = 20,
    curvature: Literal["ggn", "fisher", "empirical"] = "ggn",
    likelihood: Literal["categorical", "gaussian"] = "categorical",
    layers: Mapping[str, KroneckerLayer] | None = None,
    max_factor_dim: int = 4096,
) -> GradientTransformationExtraArgs:
    """K-FAC's preconditioned direction `u = F̆⁻¹ g` with a fixed damping `γ = damping`.

    Per layer (kernel and bias together as `W̄`, module docstring), with `A`, `G` the moving
    averages of the factors of `funcnet.diff.kronecker_factors`::

        A ← Â, G ← Ĝ at the first step; then every k₁ steps
        A ← ε·A + (1 − ε)·Â,   G ← ε·G + (1 − ε)·Ĝ
        every k₂ steps (from the first):  Ā⁻¹ = (A + π√γ·I)⁻¹,  Ḡ⁻¹ = (G + (√γ/π)·I)⁻¹
        u_W̄ = Ā⁻¹ · g_W̄ · Ḡ⁻¹

    with `ε = factor_decay`, `k₁ = curvature_update_frequency`, `k₂ =
    inverse_update_frequency`, `π = √((tr A/dim A)/(tr G/dim G))`. Any other leaf gets
    `u = g / (v + γ)`, `v ← g²` at the first step then `ε·v + (1 − ε)·g²`. The sign is that
    of the gradient: chain with `scale_by_learning_rate` for a step.

    Layers (fixed by `init`, which sees only the params): with `layers=None`, funcnet's
    naming, each leaf ``…/w`` of 2 axes ``(in, out)`` or 4 ``(h, w, in, out)`` with its
    sibling ``…/b`` of shape ``(out,)`` folded in; `update` checks each against the model's
    jaxpr (`funcnet.diff.kronecker_layers`) and refuses, in one line, one that is not a dense
    or conv kernel there (a ``w`` used twice, or inside `nn.repeat`'s scan): pass
    `layers=kronecker_layers(outputs_fn, params)` then, which also catches kernels of other
    names (attention's projections).

    Extra args of `update`: `outputs_fn`, and `loss_of_outputs` (for "ggn", "empirical") or
    `key` (for "fisher").

    Args:
      damping: `γ > 0`.
      factor_decay: `ε` in [0, 1).
      curvature_update_frequency: `k₁`, steps between refreshes of the factors.
      inverse_update_frequency: `k₂`, steps between recomputations of the inverses.
      curvature: ``"ggn"``, ``"fisher"`` or ``"empirical"`` (`kronecker_factors`).
      likelihood: ``"categorical"`` or ``"gaussian"``, for "fisher".
      layers: ``{kernel path: KroneckerLayer}``, or None for funcnet's naming.
      max_factor_dim: the largest factor a layer may have; a larger one is refused at `init`.

    Returns:
      A `GradientTransformationExtraArgs` with state `KfacState` (`update` None).
    """
    owner = "scale_by_kfac"
    check_positive(owner, "damping", damping)
    settings = _Settings(
        owner,
        layers,
        max_factor_dim,
        factor_decay,
        curvature_update_frequency,
        inverse_update_frequency,
        curvature,
        likelihood,
    )
    settings = _checked(settings)

    def rule(structure, grads, treedef, state, params, extra_args):
        del treedef
        state = _refresh(settings, structure, state, params, grads, extra_args, state.damping)
        out = _precondition(structure, grads, state, state.damping)
        return out, state._replace(count=increment(state.count))

    return _transformation(settings, damping, keep_update=False, rule=rule)


def _vdot(x: dict[str, jax.Array], y: dict[str, jax.Array]) -> jax.Array:
    return sum(jnp.vdot(x[n], y[n]) for n in x)


def kfac(
    learning_rate: ScalarOrSchedule | None = None,
    momentum: float | None = None,
    *,
    damping: float = 1e-3,
    adapt_damping: bool = True,
    min_damping: float = 1e-8,
    max_damping: float = 1e4,
    damping_adaptation_interval: int = 5,
    l2_reg: float = 0.0,
    norm_constraint: float | None = None,
    factor_decay: float = 0.95,
    curvature_update_frequency: int = 1,
    inverse_update_frequency: int = 20,
    curvature: Literal["ggn", "fisher", "empirical"] = "ggn",
    likelihood: Literal["categorical", "gaussian"] = "categorical",
    layers: Mapping[str, KroneckerLayer] | None = None,
    max_factor_dim: int = 4096,
) -> GradientTransformationExtraArgs:
    """K-FAC (Martens & Grosse, 2015): steps and momentum from the quadratic model.

    With `h(θ) = L(θ) + (η/2)‖θ‖²` (`η = l2_reg`), `λ` the damping, `γ = λ + η`, `F` the
    exact Gauss-Newton matrix of `L` (its products by `funcnet.diff.gnvp`) and `δ₀` the
    previous step, each step (`t` from 0)::

        Δ = −F̆⁻¹ ∇h                    (scale_by_kfac's preconditioner with damping γ)
        δ = α·Δ + μ·δ₀,   (α, μ) = argmin M(δ),   M(δ) = ½ δᵀ(F + γI)δ + ∇hᵀδ
        θ ← θ + δ

    the 2 × 2 linear system of M&G §7 (at t = 0, `δ₀ = 0`: `α = −∇hᵀΔ / Δᵀ(F + γI)Δ`). A
    fixed `learning_rate` (a number or a schedule) fixes `α`, a fixed `momentum` fixes `μ`,
    and the other, if None, still minimises `M`; with both fixed, `δ = α_t·Δ + μ·δ₀` (then
    `norm_constraint` `c` may scale `Δ` by `min(1, √(c / (α_t²·|∇hᵀΔ|))))`, the F̆-norm
    bound of kfac-jax's `norm_constraint`).

    With `adapt_damping`, every `T` steps (`t mod T = 0`), the Levenberg–Marquardt rule of
    M&G §6.5 on the undamped model `M₀(δ) = ½ δᵀ(F + ηI)δ + ∇hᵀδ`::

        ρ = (h(θ + δ) − h(θ)) / M₀(δ);   λ ← ω·λ if ρ > 3/4,   λ ← λ/ω if ρ < 1/4
        ω = (19/20)^T;   λ ← min(max(λ, λ_min), λ_max)

    (a non-finite `ρ` counts as below 1/4). The damping a step uses is the one before its
    own adaptation; the inverses take `γ` of the step they are recomputed at (M&G adapt `γ`
    apart from `λ` by a search; here `γ = λ + η` throughout, as in kfac-jax).

    Extra args of `update`: `outputs_fn`, `loss_of_outputs` (the curvature products; "ggn"
    and "empirical" factors), `key` ("fisher"), and `value`, `value_fn` (`ρ`).
    `funcnet.train.make_step` and `fit` pass them.

    Args:
      learning_rate: None (from the quadratic model), a number or a schedule.
      momentum: None (from the quadratic model) or a number.
      damping: the initial `λ > 0`.
      adapt_damping: adapt `λ` by the rule above; False keeps it fixed.
      min_damping, max_damping: the bounds of `λ`.
      damping_adaptation_interval: `T`.
      l2_reg: `η ≥ 0`, added to the gradient as `η·θ` (coupled weight decay).
      norm_constraint: `c > 0` or None; only with a fixed learning rate and momentum.
      factor_decay, curvature_update_frequency, inverse_update_frequency, curvature,
        likelihood, layers, max_factor_dim: as in `scale_by_kfac`.

    Returns:
      A `GradientTransformationExtraArgs` with state `KfacState`; its updates are the steps
      `δ`, shaped like the params.
    """
    owner = "kfac"
    if learning_rate is not None:
        check_rate(owner, learning_rate)
    if momentum is not None:
        check_decay(owner, "momentum", momentum)
    check_positive(owner, "damping", damping)
    check_positive(owner, "min_damping", min_damping, allow_zero=True)
    check_positive(owner, "max_damping", max_damping)
    if not min_damping <= damping <= max_damping:
        raise ValueError(
            f"{owner}: damping must lie in [min_damping, max_damping] = [{min_damping}, "
            f"{max_damping}], got {damping}"
        )
    check_int(owner, "damping_adaptation_interval", damping_adaptation_interval)
    check_positive(owner, "l2_reg", l2_reg, allow_zero=True)
    if norm_constraint is not None:
        check_positive(owner, "norm_constraint", norm_constraint)
        if learning_rate is None or momentum is None:
            raise ValueError(
                f"{owner}: norm_constraint acts with a fixed learning_rate and momentum only "
                "(the quadratic model rescales the step itself); set both or drop it"
            )
    quadratic = learning_rate is None or momentum is None
    more_needs = ("loss_of_outputs",) if quadratic or adapt_damping else ()
    more_needs += ("value", "value_fn") if adapt_damping else ()
    settings = _Settings(
        owner,
        layers,
        max_factor_dim,
        factor_decay,
        curvature_update_frequency,
        inverse_update_frequency,
        curvature,
        likelihood,
    )
    settings = _checked(settings, *more_needs)
    omega = (19 / 20) ** damping_adaptation_interval

    def rule(structure, grads, treedef, state, params, extra_args):
        theta, _ = _named(params)
        dtype = state.damping.dtype
        lam, count = state.damping, state.count
        gamma = lam + l2_reg
        state = _refresh(settings, structure, state, params, grads, extra_args, gamma)
        grad_h = {n: grads[n].astype(dtype) + l2_reg * theta[n].astype(dtype) for n in grads}
        precond = _precondition(structure, grad_h, state, gamma)
        delta = {n: -precond[n] for n in grads}
        previous = {n: v.astype(dtype) for n, v in _named(state.update)[0].items()}
        b1, b2 = _vdot(grad_h, delta), _vdot(grad_h, previous)

        rate = learning_rate(count) if callable(learning_rate) else learning_rate
        if norm_constraint is not None:
            nu = jnp.minimum(1.0, jnp.sqrt(norm_constraint / (rate**2 * jnp.abs(b1))))
            delta = {n: nu * d for n, d in delta.items()}
            b1 = nu * b1

        def curvature_terms() -> tuple[jax.Array, jax.Array]:
            """`[Δ δ₀]ᵀ F [Δ δ₀]` and `[Δ δ₀]ᵀ [Δ δ₀]`, 2 × 2."""

            def product(v: dict[str, jax.Array]) -> dict[str, jax.Array]:
                tree = treedef.unflatten([v[n].astype(grads[n].dtype) for n in grads])
                fv = gnvp(extra_args["outputs_fn"], extra_args["loss_of_outputs"], params, tree)
                return {n: x.astype(dtype) for n, x in _named(fv)[0].items()}

            f_delta, f_prev = product(delta), product(previous)
            m = jnp.array(
                [
                    [_vdot(delta, f_delta), _vdot(delta, f_prev)],
                    [_vdot(previous, f_delta), _vdot(previous, f_prev)],
                ]
            )
            m = 0.5 * (m + m.T)
            n = jnp.array(
                [
                    [_vdot(delta, delta), _vdot(delta, previous)],
                    [_vdot(previous, delta), _vdot(previous, previous)],
                ]
            )
            return m, n

        first = count == 0
        terms = curvature_terms() if quadratic else None
        if quadratic:
            m, n = terms
            c = m + gamma * n
            b = jnp.array([b1, b2])
            if learning_rate is None and momentum is None:
                both = -jnp.linalg.solve(jnp.where(first, jnp.eye(2, dtype=dtype), c), b)
                alpha = jnp.where(first, -b1 / c[0, 0], both[0])
                mu = jnp.where(first, 0.0, both[1])
            elif learning_rate is None:
                mu = jnp.asarray(momentum, dtype)
                alpha = -(b1 + mu * c[0, 1]) / c[0, 0]
            else:
                alpha = jnp.asarray(rate, dtype)
                mu = jnp.where(first, 0.0, -(b2 + alpha * c[0, 1]) / jnp.where(first, 1, c[1, 1]))
        else:
            alpha, mu = jnp.asarray(rate, dtype), jnp.asarray(momentum, dtype)
        step = {n: alpha * delta[n] + mu * previous[n] for n in grads}
        step_tree = treedef.unflatten([step[n].astype(grads[n].dtype) for n in grads])

        rho = state.rho
        if adapt_damping:

            def adapted() -> tuple[jax.Array, jax.Array]:
                m, n = terms if terms is not None else curvature_terms()
                coef = jnp.array([alpha, mu])
                model = 0.5 * coef @ (m + l2_reg * n) @ coef + alpha * b1 + mu * b2
                sq = lambda tree: sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree))
                h_old = extra_args["value"] + 0.5 * l2_reg * sq(params)
                moved = apply_updates(params, step_tree)
                h_new = extra_args["value_fn"](moved) + 0.5 * l2_reg * sq(moved)
                ratio = ((h_new - h_old) / model).astype(dtype)
                new = jnp.where(
                    ratio > 0.75, lam * omega, jnp.where(ratio >= 0.25, lam, lam / omega)
                )
                return jnp.clip(new, min_damping, max_damping).astype(dtype), ratio

            due = count % damping_adaptation_interval == 0
            lam, rho = lax.cond(due, adapted, lambda: (lam, rho))

        new_state = state._replace(
            count=increment(count),
            damping=lam,
            update=jax.tree.map(lambda s, u: s.astype(u.dtype), step_tree, state.update),
            rho=rho,
        )
        return step, new_state

    return _transformation(settings, damping, keep_update=True, rule=rule)
