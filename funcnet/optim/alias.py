"""Named optimizers, each a short `chain` of building blocks.

Each follows the formulas and defaults of the `torch.optim` class of the same name; `momentum`,
`nesterov` and `lion` have no torch class and follow their papers. In the rules below `x` is a
parameter, `g` its gradient, `α_t` the learning rate (a number or a schedule `step -> rate`),
`t` the 1-based step, and an update `x ← x − α_t·d` is returned as the update `−α_t·d`.

Each refuses bad hyperparameters when it is built, in one ValueError line naming the optimizer,
the argument and the value: the rate must be a finite positive number or a schedule, momenta
and betas lie in [0, 1) (Lion's betas and Adadelta's `rho` in [0, 1]), `eps` is positive (Adagrad's
may be 0) and decays are non-negative. Traced values (an ensemble's hyperparameters under `vmap`)
pass unchecked.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.typing import DTypeLike

from funcnet._checks import check_decay, check_positive, check_rate
from funcnet.optim.base import (
    GradientTransformation,
    Params,
    PyTree,
    ScalarOrSchedule,
    chain,
    identity,
    is_zero,
)
from funcnet.optim.transforms import (
    _NO_EPS,
    _check_betas,
    add_decayed_weights,
    masked,
    scale_by_adadelta,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_adamax,
    scale_by_learning_rate,
    scale_by_lion,
    scale_by_nadam,
    scale_by_rms,
    trace,
)

__all__ = [
    "adadelta",
    "adagrad",
    "adam",
    "adamax",
    "adamw",
    "lion",
    "momentum",
    "nadam",
    "nesterov",
    "rmsprop",
    "sgd",
]


def _decay(
    weight_decay: float, mask: PyTree | Callable[[Params], PyTree] | None = None
) -> GradientTransformation:
    """`g ← g + λ·x` (only on the leaves `mask` selects), or `identity()` when `λ` is 0."""
    if is_zero(weight_decay):
        return identity()
    decay = add_decayed_weights(weight_decay)
    return decay if mask is None else masked(decay, mask)


def _coupled_decay(
    direction: GradientTransformation, learning_rate: ScalarOrSchedule, weight_decay: float
) -> GradientTransformation:
    """`direction` with torch's coupled weight decay, an L2 penalty added to the gradient
    before it, and the rate: `x ← x − α_t·d(g + λ·x)`."""
    return chain(_decay(weight_decay), direction, scale_by_learning_rate(learning_rate))


def _decoupled_decay(
    direction: GradientTransformation,
    learning_rate: ScalarOrSchedule,
    weight_decay: ScalarOrSchedule,
    mask: PyTree | Callable[[Params], PyTree] | None = None,
) -> GradientTransformation:
    """`direction` with decoupled weight decay (AdamW's), added after it on the leaves `mask`
    selects, and the rate: `x ← x − α_t·(d(g) + λ_t·x)`."""
    return chain(direction, _decay(weight_decay, mask), scale_by_learning_rate(learning_rate))


def _check_moments(
    owner: str,
    learning_rate: ScalarOrSchedule,
    b1: float,
    b2: float,
    eps: float,
    weight_decay: float,
    *,
    allow_one: bool = False,
) -> None:
    """The checks an Adam-like optimizer `owner` makes: a finite positive rate or a schedule,
    betas in [0, 1) ([0, 1] with `allow_one`), ε > 0 and a weight decay ≥ 0."""
    check_rate(owner, learning_rate)
    _check_betas(owner, b1, b2, eps, allow_one=allow_one)
    check_positive(owner, "weight_decay", weight_decay, allow_zero=True)


def sgd(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    momentum: float = 0.0,
    dampening: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Stochastic gradient descent, as `torch.optim.SGD` (default `lr=1e-3`).

    With `μ = momentum`, `τ = dampening`, `λ = weight_decay`::

        g ← g + λ·x
        b ← g  (t = 1),   b ← μ·b + (1 − τ)·g  (t > 1)     if μ ≠ 0
        d ← g + μ·b  if nesterov  else  b                  (d = g if μ = 0)
        x ← x − α_t·d

    Args:
      learning_rate: `α_t`, a number or a schedule.
      momentum: `μ`; 0 turns momentum off.
      dampening: `τ`.
      nesterov: use Nesterov momentum (needs `μ > 0` and `τ = 0`).
      weight_decay: `λ`, the L2 penalty.
      moment_dtype: dtype of the momentum buffer; `None` keeps each param's dtype.
    """
    check_rate("sgd", learning_rate)
    check_decay("sgd", "momentum", momentum)
    check_decay("sgd", "dampening", dampening, allow_one=True)
    check_positive("sgd", "weight_decay", weight_decay, allow_zero=True)
    if nesterov and is_zero(momentum):
        raise ValueError("sgd with nesterov=True needs a non-zero momentum.")
    direction = (
        identity()
        if is_zero(momentum)
        else trace(momentum, dampening=dampening, nesterov=nesterov, moment_dtype=moment_dtype)
    )
    return _coupled_decay(direction, learning_rate, weight_decay)


def momentum(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    beta: float = 0.9,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Heavy-ball momentum (Polyak, 1964) in torch's form, `sgd(lr, momentum=β)`.

    ::

        v ← β·v + g        (v = 0 before step one)
        x ← x − α_t·v

    Args:
      learning_rate: `α_t`, a number or a schedule.
      beta: `β`, the momentum factor.
      moment_dtype: dtype of `v`; `None` keeps each param's dtype.
    """
    check_rate("momentum", learning_rate)
    check_decay("momentum", "beta", beta)
    return chain(trace(beta, moment_dtype=moment_dtype), scale_by_learning_rate(learning_rate))


def nesterov(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    beta: float = 0.9,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Nesterov momentum (Sutskever et al., 2013) in torch's form, `sgd(lr, β, nesterov=True)`.

    ::

        v ← β·v + g        (v = 0 before step one)
        x ← x − α_t·(g + β·v)

    Args:
      learning_rate: `α_t`, a number or a schedule.
      beta: `β`, the momentum factor.
      moment_dtype: dtype of `v`; `None` keeps each param's dtype.
    """
    check_rate("nesterov", learning_rate)
    check_decay("nesterov", "beta", beta)
    return chain(
        trace(beta, nesterov=True, moment_dtype=moment_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adagrad(
    learning_rate: ScalarOrSchedule = 1e-2,
    *,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adagrad (Duchi et al., 2011), as `torch.optim.Adagrad`.

    With `η = lr_decay`, `λ = weight_decay`::

        g ← g + λ·x
        G ← G + g²                     from G = initial_accumulator_value
        x ← x − α_t / (1 + (t − 1)·η) · g / (√G + ε)

    Args:
      learning_rate: `α_t`, a number or a schedule.
      lr_decay: `η`, torch's inverse-time decay of the rate.
      weight_decay: `λ`, the L2 penalty.
      initial_accumulator_value: the starting value of `G`.
      eps: `ε`, added to `√G`.
      moment_dtype: dtype of `G`; `None` keeps each param's dtype.
    """
    check_rate("adagrad", learning_rate)
    check_positive("adagrad", "lr_decay", lr_decay, allow_zero=True)
    check_positive("adagrad", "weight_decay", weight_decay, allow_zero=True)
    check_positive(
        "adagrad", "initial_accumulator_value", initial_accumulator_value, allow_zero=True
    )
    check_positive("adagrad", "eps", eps, allow_zero=True)
    rate = learning_rate
    if not is_zero(lr_decay):
        base = learning_rate if callable(learning_rate) else lambda count: learning_rate

        def rate(count: jax.Array) -> jax.Array:
            return base(count) / (1 + count * lr_decay)

    direction = scale_by_adagrad(
        initial_accumulator_value=initial_accumulator_value, eps=eps, moment_dtype=moment_dtype
    )
    return _coupled_decay(direction, rate, weight_decay)


def rmsprop(
    learning_rate: ScalarOrSchedule = 1e-2,
    *,
    decay: float = 0.99,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    centered: bool = False,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """RMSprop (Hinton, 2012), as `torch.optim.RMSprop`: `ε` outside the root.

    With `α = decay` (torch's `alpha`), `μ = momentum`, `λ = weight_decay`::

        g ← g + λ·x
        v ← α·v + (1 − α)·g²
        ḡ ← α·ḡ + (1 − α)·g;   v ← v − ḡ²            (centred only, v here a local)
        d ← g / (√v + ε)
        b ← μ·b + d;   d ← b                          (if μ ≠ 0, b = 0 before step one)
        x ← x − α_t·d

    Args:
      learning_rate: `α_t`, a number or a schedule.
      decay: `α`, the smoothing constant.
      eps: `ε`, added to the root.
      weight_decay: `λ`, the L2 penalty.
      momentum: `μ`; 0 turns momentum off.
      centered: normalise by an estimate of the variance instead of the mean square.
      moment_dtype: dtype of the buffers; `None` keeps each param's dtype.
    """
    check_rate("rmsprop", learning_rate)
    check_decay("rmsprop", "decay", decay)
    check_positive("rmsprop", "eps", eps)
    check_positive("rmsprop", "weight_decay", weight_decay, allow_zero=True)
    check_decay("rmsprop", "momentum", momentum)
    return chain(
        _decay(weight_decay),
        scale_by_rms(decay=decay, eps=eps, centered=centered, moment_dtype=moment_dtype),
        identity() if is_zero(momentum) else trace(momentum, moment_dtype=moment_dtype),
        scale_by_learning_rate(learning_rate),
    )


def adadelta(
    learning_rate: ScalarOrSchedule = 1.0,
    *,
    rho: float = 0.9,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adadelta (Zeiler, 2012), as `torch.optim.Adadelta`.

    With `λ = weight_decay`::

        g ← g + λ·x
        v ← ρ·v + (1 − ρ)·g²
        δ ← √(w + ε) / √(v + ε) · g
        w ← ρ·w + (1 − ρ)·δ²
        x ← x − α_t·δ

    Args:
      learning_rate: `α_t`, a number or a schedule; the paper's rule is `α_t = 1`.
      rho: `ρ`, the decay of both averages.
      eps: `ε`, added inside both roots.
      weight_decay: `λ`, the L2 penalty.
      moment_dtype: dtype of `v` and `w`; `None` keeps each param's dtype.
    """
    check_rate("adadelta", learning_rate)
    check_decay("adadelta", "rho", rho, allow_one=True)
    check_positive("adadelta", "eps", eps)
    check_positive("adadelta", "weight_decay", weight_decay, allow_zero=True)
    direction = scale_by_adadelta(rho=rho, eps=eps, moment_dtype=moment_dtype)
    return _coupled_decay(direction, learning_rate, weight_decay)


def adam(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
    bias_correction: bool = True,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015), as `torch.optim.Adam` (torch's `betas` are `(b1, b2)`).

    With `λ = weight_decay`::

        g ← g + λ·x
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        v_max ← max(v_max, v);   v ← v_max            (amsgrad only, v here a local)
        x ← x − α_t · [m / (1 − β₁ᵗ)] / (√(v / (1 − β₂ᵗ)) + ε)

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      weight_decay: `λ`, the L2 penalty (coupled; see `adamw` for the decoupled form).
      amsgrad: keep the running maximum of `v` (Reddi et al., 2018), bias-corrected as torch.
      bias_correction: divide by ``1 − β₁ᵗ`` and ``1 − β₂ᵗ``; ``False`` gives the update
        ``m / (√v + ε)`` of the moments alone, whose first step is ``(1 − β₁)/√(1 − β₂) ≈ 3.2``
        times Adam's for the defaults (docs/optimizers.md, the lecture's forms).
      moment_dtype: dtype of the moments; `None` keeps each param's dtype.
    """
    _check_moments("adam", learning_rate, b1, b2, eps, weight_decay)
    direction = scale_by_adam(
        b1=b1,
        b2=b2,
        eps=eps,
        amsgrad=amsgrad,
        bias_correction=bias_correction,
        moment_dtype=moment_dtype,
    )
    return _coupled_decay(direction, learning_rate, weight_decay)


def adamw(
    learning_rate: ScalarOrSchedule = 1e-3,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    amsgrad: bool = False,
    mask: PyTree | Callable[[Params], PyTree] | None = None,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter, 2019), Adam with decoupled weight decay, as `torch.optim.AdamW`.

    With `λ = weight_decay` and `d` Adam's direction (see `adam`, without its L2 term)::

        x ← x − α_t·λ·x − α_t·d   =   x − α_t·(d + λ·x)

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      weight_decay: `λ`.
      amsgrad: keep the running maximum of `v`, bias-corrected as torch.
      mask: which params decay (see `masked`); `None` decays all, as torch.
      moment_dtype: dtype of the moments; `None` keeps each param's dtype.
    """
    _check_moments("adamw", learning_rate, b1, b2, eps, weight_decay)
    decay = add_decayed_weights(weight_decay)
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps, amsgrad=amsgrad, moment_dtype=moment_dtype),
        decay if mask is None else masked(decay, mask),
        scale_by_learning_rate(learning_rate),
    )


def nadam(
    learning_rate: ScalarOrSchedule = 2e-3,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    momentum_decay: float = 4e-3,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """NAdam (Dozat, 2016), as `torch.optim.NAdam`, with its momentum schedule `μ_t`.

    With `λ = weight_decay`, `ψ = momentum_decay` and `μ_t = β₁·(1 − ½·0.96^(tψ))`::

        g ← g + λ·x
        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        x ← x − α_t · [(1 − μ_t)/(1 − Π_{i≤t} μ_i)·g + μ_{t+1}/(1 − Π_{i≤t+1} μ_i)·m]
                     / (√(v / (1 − β₂ᵗ)) + ε)

    optax's `nadam` has no `μ_t` schedule; it is this rule in the limit `ψ → ∞`.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      weight_decay: `λ`, the L2 penalty.
      momentum_decay: `ψ`.
      moment_dtype: dtype of the moments; `None` keeps each param's dtype.
    """
    _check_moments("nadam", learning_rate, b1, b2, eps, weight_decay)
    check_positive("nadam", "momentum_decay", momentum_decay, allow_zero=True)
    direction = scale_by_nadam(
        b1=b1, b2=b2, eps=eps, momentum_decay=momentum_decay, moment_dtype=moment_dtype
    )
    return _coupled_decay(direction, learning_rate, weight_decay)


def adamax(
    learning_rate: ScalarOrSchedule = 2e-3,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Adamax (Kingma & Ba, 2015), Adam with the infinity norm, as `torch.optim.Adamax`.

    With `λ = weight_decay`::

        g ← g + λ·x
        m ← β₁·m + (1 − β₁)·g
        n ← max(β₂·n, |g| + ε)
        x ← x − α_t / (1 − β₁ᵗ) · m / n

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the infinity norm.
      eps: `ε`, added to `|g|`.
      weight_decay: `λ`, the L2 penalty.
      moment_dtype: dtype of `m` and `n`; `None` keeps each param's dtype.
    """
    _check_moments("adamax", learning_rate, b1, b2, eps, weight_decay)
    direction = scale_by_adamax(b1=b1, b2=b2, eps=eps, moment_dtype=moment_dtype)
    return _coupled_decay(direction, learning_rate, weight_decay)


def lion(
    learning_rate: ScalarOrSchedule = 1e-4,
    *,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
    moment_dtype: DTypeLike | None = None,
) -> GradientTransformation:
    """Lion (Chen et al., 2023), the sign of an interpolated momentum, with decoupled decay.

    With `λ = weight_decay`::

        d ← sign(β₁·m + (1 − β₁)·g)
        m ← β₂·m + (1 − β₂)·g
        x ← x − α_t·(d + λ·x)

    Its steps have unit size per coordinate, so its rate is usually 3–10 times smaller than
    Adam's.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the interpolation weight of the momentum.
      b2: `β₂`, the decay of the momentum.
      weight_decay: `λ`, decoupled as in AdamW.
      moment_dtype: dtype of `m`; `None` keeps each param's dtype.
    """
    _check_moments("lion", learning_rate, b1, b2, _NO_EPS, weight_decay, allow_one=True)
    direction = scale_by_lion(b1=b1, b2=b2, moment_dtype=moment_dtype)
    return _decoupled_decay(direction, learning_rate, weight_decay)
