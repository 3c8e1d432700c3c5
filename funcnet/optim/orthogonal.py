"""Muon: momentum orthogonalised by a Newton–Schulz iteration, for matrix-shaped weights.

Follows optax's `contrib.muon` and `contrib.scale_by_muon` (their formula and defaults, with
the Frobenius pre-scaling and the 2-D weights of a dense layer, `(in, out)`), so that the two
agree to float64 round-off (tests/optim/test_optim_contrib.py). The other leaves (biases,
norm scales, convolution kernels) go to a named fallback rule, Adam, chosen by rank or by a
mask; a leaf given to Muon that is not a matrix is refused in one line that names its path
and shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcnet._checks import check_decay, check_float_dtype, check_int, check_positive, check_rate
from funcnet.optim.adaptive import _debiased_mean
from funcnet.optim.base import (
    GradientTransformation,
    Params,
    PyTree,
    ScalarOrSchedule,
    Updates,
    bias_correction,
    chain,
    increment,
    update_moment,
    zeros_like,
)
from funcnet.optim.transforms import (
    MomentsState,
    _adam_moments,
    add_decayed_weights,
    checked_mask,
    masked,
    scale_by_learning_rate,
)

__all__ = ["ScaleByMuonState", "muon", "orthogonalize_via_newton_schulz", "scale_by_muon"]

Mask = PyTree | Callable[[Params], PyTree]

# Jordan's quintic: the coefficients that maximise the slope at zero (modded-nanogpt).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _coeff_steps(
    owner: str, ns_coeffs: Sequence[float] | Sequence[Sequence[float]], ns_steps: int
) -> tuple[tuple[float, float, float], ...]:
    """One `(a, b, c)` per iteration: `ns_coeffs` repeated `ns_steps` times, or, given one
    triple per iteration, those."""
    check_int(owner, "ns_steps", ns_steps)
    try:
        try:
            rows = [tuple(float(c) for c in row) for row in ns_coeffs]  # type: ignore[union-attr]
        except TypeError:
            rows = [tuple(float(c) for c in ns_coeffs)] * ns_steps  # type: ignore[union-attr]
    except (TypeError, ValueError):
        rows = []
    if not rows or any(len(row) != 3 for row in rows):
        raise ValueError(
            f"{owner}: ns_coeffs must be a triple (a, b, c) or a sequence of triples, "
            f"got {ns_coeffs!r:.80}"
        )
    return tuple(rows)  # type: ignore[return-value]


def orthogonalize_via_newton_schulz(
    x: jax.Array,
    ns_coeffs: Sequence[float] | Sequence[Sequence[float]] = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-8,
) -> jax.Array:
    """Maps a matrix `x` of shape `(m, n)` near its orthogonal polar factor `U·Vᵀ`
    (`x = U·S·Vᵀ`), by the quintic Newton–Schulz iteration of Jordan et al. (2024)::

        X ← x / (‖x‖_F + ε)                 (transposed first if m > n, so X·Xᵀ is the
        A ← X·Xᵀ                             smaller Gram matrix)
        X ← a·X + (b·A + c·A²)·X            per step, (a, b, c) = ns_coeffs

    The coefficients push every singular value into about [0.7, 1.2] in 5 steps rather
    than to 1 exactly, which training does not mind. Returns an array of shape `(m, n)`.
    """
    if jnp.ndim(x) != 2:
        raise ValueError(
            f"orthogonalize_via_newton_schulz: needs a matrix, got shape {jnp.shape(x)}"
        )
    steps = _coeff_steps("orthogonalize_via_newton_schulz", ns_coeffs, ns_steps)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (jnp.linalg.norm(x, ord="fro") + eps)
    for a, b, c in steps:
        gram = x @ x.T.conj()
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def _refuse_non_matrices(owner: str, tree: PyTree, advice: str) -> None:
    """One ValueError line naming the first leaf of `tree` that is not 2-D, and its shape."""
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.ndim(leaf) != 2:
            raise ValueError(
                f"{owner}: param {jax.tree_util.keystr(path)} of shape {jnp.shape(leaf)} is "
                f"not a matrix; Muon orthogonalises 2-D (in, out) weights only: {advice}"
            )


class ScaleByMuonState(NamedTuple):
    """`count`: int32 scalar; `mu`: the momentum, one matrix per param."""

    count: jax.Array
    mu: Updates


def scale_by_muon(
    *,
    ns_coeffs: Sequence[float] | Sequence[Sequence[float]] = NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    nesterov: bool = True,
    adaptive: bool = False,
    mu_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Muon's direction (Jordan et al., 2024), as optax's `contrib.scale_by_muon`: the
    momentum, bias-corrected, orthogonalised::

        m ← β·m + (1 − β)·g
        m̂ ← m/(1 − βᵗ)     (Nesterov: β·m/(1 − βᵗ⁺¹) + (1 − β)·g/(1 − βᵗ))
        u ← NS(m̂)           (`orthogonalize_via_newton_schulz`)
        u ← ⟨m̂, u⟩·u        (adaptive only: Bernstein & Newhouse, 2024)

    Every leaf must be a matrix `(in, out)`; a leaf that is not is refused, by path and
    shape (put Muon under `masked`, or use `muon`, which routes the others to Adam).

    Args:
      ns_coeffs: `(a, b, c)` of each Newton–Schulz step, or one triple per step.
      ns_steps: the number of steps (when `ns_coeffs` is one triple).
      beta: `β`, the decay of the momentum.
      eps: `ε` of the Frobenius pre-scaling.
      nesterov: use Nesterov's look-ahead momentum.
      adaptive: scale each update by its inner product with `m̂`.
      mu_dtype: the dtype of `m` (default: each param's).
    """
    _coeff_steps("scale_by_muon", ns_coeffs, ns_steps)
    check_decay("scale_by_muon", "beta", beta)
    check_positive("scale_by_muon", "eps", eps, allow_zero=True)
    check_float_dtype("scale_by_muon", mu_dtype, name="mu_dtype")
    advice = "leave it out of Muon (masked) or use muon(), which gives it to Adam"

    def init_fn(params: Params) -> ScaleByMuonState:
        _refuse_non_matrices("scale_by_muon", params, advice)
        return ScaleByMuonState(jnp.zeros([], jnp.int32), zeros_like(params, mu_dtype))

    def update_fn(
        updates: Updates, state: ScaleByMuonState, params: Params | None = None
    ) -> tuple[Updates, ScaleByMuonState]:
        del params
        _refuse_non_matrices("scale_by_muon", updates, advice)
        mu = update_moment(updates, state.mu, beta, 1)  # refuses a state of another tree
        count = increment(state.count)
        mu_hat = _debiased_mean(mu, updates, beta, count, nesterov)
        out = jax.tree.map(
            lambda m: orthogonalize_via_newton_schulz(m, ns_coeffs, ns_steps, eps), mu_hat
        )
        if adaptive:
            out = jax.tree.map(lambda m, u: jnp.sum(m.conj() * u) * u, mu_hat, out)
        out = jax.tree.map(lambda u, g: u.astype(g.dtype), out, updates)
        return out, ScaleByMuonState(count, mu)

    return GradientTransformation(init_fn, update_fn)


def _scale_by_shape(consistent_rms: float | None) -> GradientTransformation:
    """Muon's per-matrix scale from its shape `(in, out)`: `√max(1, out/in)`, or, with
    `consistent_rms = r`, `r·√max(in, out)` (the RMS of AdamW's updates, Liu et al., 2025)."""

    def factor(shape: tuple[int, ...]) -> float:
        fan_in, fan_out = shape
        if consistent_rms is None:
            return math.sqrt(max(1.0, fan_out / fan_in))
        return math.sqrt(max(fan_in, fan_out)) * consistent_rms

    def init_fn(params: Params) -> tuple[()]:
        del params
        return ()

    def update_fn(
        updates: Updates, state: tuple[()], params: Params | None = None
    ) -> tuple[Updates, tuple[()]]:
        del params
        return jax.tree.map(lambda u: (factor(u.shape) * u).astype(u.dtype), updates), state

    return GradientTransformation(init_fn, update_fn)


def _scale_by_adam(
    b1: float, b2: float, eps: float, eps_root: float, nesterov: bool, mu_dtype: DTypeLike | None
) -> GradientTransformation:
    """optax's `scale_by_adam` (with its Nesterov option, which funcnet's `scale_by_adam`,
    torch's rule, lacks): `u ← m̂ / (√(v/(1 − β₂ᵗ) + ε_root) + ε)`."""

    def init_fn(params: Params) -> MomentsState:
        return MomentsState(
            jnp.zeros([], jnp.int32), zeros_like(params, mu_dtype), zeros_like(params)
        )

    def update_fn(
        updates: Updates, state: MomentsState, params: Params | None = None
    ) -> tuple[Updates, MomentsState]:
        del params
        count, mu, nu = _adam_moments(updates, state, b1, b2)
        mu_hat = _debiased_mean(mu, updates, b1, count, nesterov)
        nu_hat = bias_correction(nu, b2, count)
        out = jax.tree.map(
            lambda m, v, g: (m / (jnp.sqrt(v + eps_root) + eps)).astype(g.dtype),
            mu_hat,
            nu_hat,
            updates,
        )
        return out, MomentsState(count, mu, nu)

    return GradientTransformation(init_fn, update_fn)


def muon(
    learning_rate: ScalarOrSchedule,
    *,
    ns_coeffs: Sequence[float] | Sequence[Sequence[float]] = NS_COEFFS,
    ns_steps: int = 5,
    beta: float = 0.95,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_decay_mask: Mask | None = None,
    mu_dtype: DTypeLike | None = None,
    nesterov: bool = True,
    adaptive: bool = False,
    consistent_rms: float | None = None,
    muon_mask: Mask | None = None,
    fallback: Literal["adam"] | None = "adam",
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps_root: float = 0.0,
    adam_weight_decay: float = 0.0,
    adam_learning_rate: ScalarOrSchedule | None = None,
) -> GradientTransformation:
    """Muon (Jordan et al., 2024, "Muon: An optimizer for hidden layers in neural networks"),
    as optax's `contrib.muon`, with optax's defaults.

    On the matrices (by default every 2-D leaf, or the leaves `muon_mask` selects)::

        x ← x − α_t·(s·NS(m̂) + λ·x)      m̂, NS: see `scale_by_muon`
        s = √max(1, out/in)               (or r·√max(in, out) with consistent_rms = r)

    on the others, the fallback rule: AdamW (optax's `adamw`, Nesterov when `nesterov`) with
    `adam_b1`, `adam_b2`, `eps`, `adam_eps_root`, `adam_weight_decay` and the rate
    `adam_learning_rate` (default `learning_rate`). With `fallback=None` every leaf goes to
    Muon, and a leaf that is not a matrix is refused (ValueError naming its path and shape),
    as is one that `muon_mask` selects.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      ns_coeffs, ns_steps, beta, eps, nesterov, adaptive, mu_dtype: see `scale_by_muon`
        (`eps` is Adam's too).
      weight_decay: `λ ≥ 0` on the matrices, scaled by `α_t`.
      weight_decay_mask: which matrices `λ` applies to (a bool tree or a function of the
        params; default all).
      consistent_rms: `r`, or None for the width scale.
      muon_mask: a bool tree (or prefix of one) or a function of the params, `True` for the
        leaves Muon takes; default: the 2-D leaves.
      fallback: `"adam"` for the leaves Muon does not take, or None (then it takes all).
      adam_b1, adam_b2, adam_eps_root, adam_weight_decay, adam_learning_rate: the fallback's.
    """
    check_rate("muon", learning_rate)
    _coeff_steps("muon", ns_coeffs, ns_steps)
    check_decay("muon", "beta", beta)
    check_positive("muon", "eps", eps)
    check_positive("muon", "weight_decay", weight_decay, allow_zero=True)
    if consistent_rms is not None:
        check_positive("muon", "consistent_rms", consistent_rms)
    if fallback not in ("adam", None):
        raise ValueError(f"muon: fallback must be 'adam' or None, got {fallback!r:.80}")
    adam_learning_rate = learning_rate if adam_learning_rate is None else adam_learning_rate
    check_rate("muon", adam_learning_rate, name="adam_learning_rate")
    check_decay("muon", "adam_b1", adam_b1)
    check_decay("muon", "adam_b2", adam_b2)
    check_positive("muon", "adam_eps_root", adam_eps_root, allow_zero=True)
    check_positive("muon", "adam_weight_decay", adam_weight_decay, allow_zero=True)

    advice = (
        "give it to the fallback (fallback='adam')"
        if fallback is None
        else "leave it out of muon_mask (the fallback, Adam, takes it)"
    )

    def selected(tree: PyTree) -> PyTree:
        """A bool per leaf of `tree`, True for Muon's; refuses a non-matrix among them."""
        if muon_mask is None:
            if fallback is None:
                chosen = jax.tree.map(lambda x: True, tree)
            else:
                chosen = jax.tree.map(lambda x: jnp.ndim(x) == 2, tree)
        else:
            mask = checked_mask("muon", "muon_mask", muon_mask, tree)
            chosen = jax.tree.map(lambda m, sub: jax.tree.map(lambda x: bool(m), sub), mask, tree)
        picked = jax.tree.map(lambda m, x: x if m else None, chosen, tree)
        _refuse_non_matrices("muon", picked, advice)
        if fallback is None and muon_mask is not None:
            rest = jax.tree.map(lambda m, x: None if m else x, chosen, tree)
            for path, leaf in jax.tree_util.tree_flatten_with_path(rest)[0]:
                raise ValueError(
                    f"muon: param {jax.tree_util.keystr(path)} of shape {jnp.shape(leaf)} is "
                    "left out of muon_mask and fallback is None: give it a fallback "
                    "(fallback='adam')"
                )
        return chosen

    decay = add_decayed_weights(weight_decay)
    muon_step = chain(
        scale_by_muon(
            ns_coeffs=ns_coeffs,
            ns_steps=ns_steps,
            beta=beta,
            eps=eps,
            nesterov=nesterov,
            adaptive=adaptive,
            mu_dtype=mu_dtype,
        ),
        _scale_by_shape(consistent_rms),
        decay if weight_decay_mask is None else masked(decay, weight_decay_mask),
        scale_by_learning_rate(learning_rate),
    )
    steps = [masked(muon_step, selected)]
    if fallback == "adam":
        adam_step = chain(
            _scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root, nesterov, mu_dtype),
            add_decayed_weights(adam_weight_decay),
            scale_by_learning_rate(adam_learning_rate),
        )
        not_selected = lambda tree: jax.tree.map(lambda m: not m, selected(tree))
        steps.append(masked(adam_step, not_selected))
    return chain(*steps)
