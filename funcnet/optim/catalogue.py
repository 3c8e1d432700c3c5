"""Named optimizers of optax's catalogue, each a short `chain` of building blocks.

`alias.py` holds the optimizers named after a `torch.optim` class, with torch's defaults; the
ones here follow optax's function of the same name: its formula, its defaults, and its order
of building blocks, so that they agree with optax to float64 round-off (tests/optim/
test_optim_catalogue.py). Where torch has a class of the same name (`RAdam`, `Rprop`,
`Adafactor`) the docstring says how its defaults differ. Like optax's, most have no default
learning rate.

In the rules below `x` is a parameter, `g` its gradient, `α_t` the learning rate (a number or
a schedule `step -> rate`), `t` the 1-based step, and an update `x ← x − α_t·d` is returned as
the update `−α_t·d`. Each refuses bad hyperparameters when it is built, in one ValueError line
naming the optimizer, the argument and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import DTypeLike

from funcnet._checks import check_decay, check_int, check_positive, check_rate
from funcnet.optim.adaptive import (
    _check_adan,
    _check_radam,
    _check_rprop,
    clip_by_block_rms,
    scale_by_adan,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_factored_rms,
    scale_by_novograd,
    scale_by_param_block_rms,
    scale_by_polyak,
    scale_by_radam,
    scale_by_rprop,
    scale_by_sm3,
    scale_by_trust_ratio,
    scale_by_yogi,
)
from funcnet.optim.alias import _check_moments, _decay, _decoupled_decay
from funcnet.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    Params,
    PyTree,
    ScalarOrSchedule,
    chain,
    identity,
    is_zero,
)
from funcnet.optim.quasi_newton import scale_by_lbfgs, scale_by_zoom_linesearch
from funcnet.optim.transforms import (
    _check_betas,
    add_decayed_weights,
    add_noise,
    ema,
    masked,
    scale,
    scale_by_adam,
    scale_by_learning_rate,
    scale_by_optimistic_gradient,
    trace,
)

__all__ = [
    "adabelief",
    "adafactor",
    "adan",
    "amsgrad",
    "fromage",
    "lamb",
    "lars",
    "lbfgs",
    "noisy_sgd",
    "novograd",
    "optimistic_gradient_descent",
    "polyak_sgd",
    "radam",
    "rprop",
    "sm3",
    "yogi",
]

Mask = PyTree | Callable[[Params], PyTree]


def _check_rate_and_decay(
    owner: str, learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule
) -> None:
    """A finite positive rate or a schedule, and a weight decay ≥ 0 or a schedule."""
    check_rate(owner, learning_rate)
    if not callable(weight_decay):
        check_positive(owner, "weight_decay", weight_decay, allow_zero=True)


def _on(mask: bool | Mask, tx: GradientTransformation) -> GradientTransformation:
    """`tx` on the leaves `mask` selects (see `masked`); `True` selects all of them."""
    return tx if mask is True else masked(tx, mask)


# Adam's relatives.


def amsgrad(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> GradientTransformation:
    """AMSGrad (Reddi et al., 2018, "On the Convergence of Adam and Beyond"), as optax's
    `amsgrad`, with optax's defaults.

    ::

        m ← β₁·m + (1 − β₁)·g
        v ← β₂·v + (1 − β₂)·g²
        v̂_max ← max(v̂_max, v / (1 − β₂ᵗ))
        x ← x − α_t · [m / (1 − β₁ᵗ)] / (√(v̂_max + ε_root) + ε)

    The running maximum is of the bias-corrected `v`. torch has no AMSGrad class;
    `torch.optim.Adam(amsgrad=True)`, which is funcnet's `adam(amsgrad=True)`, keeps the
    maximum of the raw `v` and corrects it afterwards, so its first steps differ.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
    """
    check_rate("amsgrad", learning_rate)
    _check_betas("amsgrad", b1, b2, eps, eps_root=eps_root)
    return chain(
        scale_by_amsgrad(b1=b1, b2=b2, eps=eps, eps_root=eps_root),
        scale_by_learning_rate(learning_rate),
    )


def adabelief(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-16,
    eps_root: float = 1e-16,
    nesterov: bool = False,
) -> GradientTransformation:
    """AdaBelief (Zhuang et al., 2020, "AdaBelief Optimizer: Adapting Stepsizes by the Belief
    in Observed Gradients"), as optax's `adabelief`, with optax's defaults.

    Adam with the variance of the gradient around its mean in place of its mean square::

        m ← β₁·m + (1 − β₁)·g
        s ← β₂·s + (1 − β₂)·(g − m)² + ε_root
        m̂ ← m / (1 − β₁ᵗ)      (Nesterov: β₁·m/(1 − β₁ᵗ⁺¹) + (1 − β₁)·g/(1 − β₁ᵗ))
        x ← x − α_t · m̂ / (√(s / (1 − β₂ᵗ)) + ε)

    The paper's defaults are `ε = 1e-8`, `ε_root = 0`; optax's (kept here) are 1e-16 for both.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of `s`.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added to `s` at every step.
      nesterov: use Nesterov's look-ahead first moment.
    """
    check_rate("adabelief", learning_rate)
    _check_betas("adabelief", b1, b2, eps, eps_root=eps_root)
    return chain(
        scale_by_belief(b1=b1, b2=b2, eps=eps, eps_root=eps_root, nesterov=nesterov),
        scale_by_learning_rate(learning_rate),
    )


def radam(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 5.0,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rectified Adam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and
    Beyond"), as optax's `radam`, with optax's defaults.

    With `ρ_∞ = 2/(1 − β₂) − 1`, `ρ_t = ρ_∞ − 2t·β₂ᵗ/(1 − β₂ᵗ)` and
    `r_t = √[(ρ_t − 4)(ρ_t − 2)·ρ_∞ / ((ρ_∞ − 4)(ρ_∞ − 2)·ρ_t)]`::

        m ← β₁·m + (1 − β₁)·g;   v ← β₂·v + (1 − β₂)·g²
        x ← x − α_t · r_t · [m/(1 − β₁ᵗ)] / (√(v/(1 − β₂ᵗ) + ε_root) + ε)   if ρ_t ≥ threshold
        x ← x − α_t · m/(1 − β₁ᵗ)                                          otherwise

    `torch.optim.RAdam` has the same rule with `lr=1e-3` as default, rectifies when
    `ρ_t > 5` (strictly), and adds `ε` to `√v` before the bias correction,
    `√(1 − β₂ᵗ)/(√v + ε)`, where optax (and this) adds it after, `1/(√(v/(1 − β₂ᵗ)) + ε)`.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
      threshold: the `ρ_t` from which the adaptive step is taken, at least 4.
      nesterov: use Nesterov's look-ahead first moment.
    """
    check_rate("radam", learning_rate)
    _check_radam("radam", b1, b2, eps, eps_root, threshold)
    return chain(
        scale_by_radam(
            b1=b1, b2=b2, eps=eps, eps_root=eps_root, threshold=threshold, nesterov=nesterov
        ),
        scale_by_learning_rate(learning_rate),
    )


def yogi(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-3,
) -> GradientTransformation:
    """Yogi (Zaheer et al., 2018, "Adaptive Methods for Nonconvex Optimization"), as optax's
    `yogi`, with optax's defaults.

    ::

        m ← β₁·m + (1 − β₁)·g                 from m = 1e-6
        v ← v − (1 − β₂)·sign(v − g²)·g²      from v = 1e-6
        x ← x − α_t · [m / (1 − β₁ᵗ)] / (√(v / (1 − β₂ᵗ)) + ε)

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the step of the second moment.
      eps: `ε`, added to the root (the paper's 1e-3).
    """
    _check_moments("yogi", learning_rate, b1, b2, eps, 0.0)
    return chain(scale_by_yogi(b1=b1, b2=b2, eps=eps), scale_by_learning_rate(learning_rate))


def adan(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.98,
    b2: float = 0.92,
    b3: float = 0.99,
    eps: float = 1e-8,
    eps_root: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
) -> GradientTransformation:
    """Adan (Xie et al., 2022, "Adan: Adaptive Nesterov Momentum Algorithm for Faster
    Optimizing Deep Models"), as optax's `adan`, with optax's defaults.

    With `Δ = g_t − g_{t−1}` (0 at `t = 1`) and `λ_t = weight_decay`::

        m ← β₁·m + (1 − β₁)·g
        d ← β₂·d + (1 − β₂)·Δ
        n ← β₃·n + (1 − β₃)·(g + (1 − β₂)·Δ)²
        x ← x − α_t·([m̂ + (1 − β₂)·d̂] / (√(n̂ + ε_root) + ε) + λ_t·x)

    with `m̂, d̂, n̂` the averages divided by ``1 − β₁ᵗ``, ``1 − β₂ᵗ``, ``1 − β₃ᵗ``. The weight
    decay is decoupled (added after the rescaling), as optax's; the paper's proximal form
    `x ← (x − α·d)/(1 + αλ)` differs from it at second order in `αλ`.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the mean gradient.
      b2: `β₂`, the decay of the mean gradient change.
      b3: `β₃`, the decay of the mean square.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
      weight_decay: `λ_t`, a number or a schedule.
      mask: which params decay (see `masked`); `None` decays all.
    """
    _check_rate_and_decay("adan", learning_rate, weight_decay)
    _check_adan("adan", b1, b2, b3, eps, eps_root)
    direction = scale_by_adan(b1=b1, b2=b2, b3=b3, eps=eps, eps_root=eps_root)
    return _decoupled_decay(direction, learning_rate, weight_decay, mask)


# Layer-wise rates.


def novograd(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.25,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> GradientTransformation:
    """NovoGrad (Ginsburg et al., 2019, "Stochastic Gradient Methods with Layer-wise Adaptive
    Moments for Training of Deep Networks"), as optax's `novograd`, with optax's defaults.

    For each leaf (layer) `l`, with `‖g_l‖` the norm of the whole leaf and `λ = weight_decay`::

        n_l ← ‖g_l‖²  (t = 1),    n_l ← β₂·n_l + (1 − β₂)·‖g_l‖²  (t > 1)
        m_l ← β₁·m_l + g_l / (√(n_l + ε_root) + ε) + λ·x_l
        x_l ← x_l − α_t·m_l

    The second moment is one number per layer, so the state is about one copy of the params.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the momentum factor.
      b2: `β₂`, the decay of the squared norms.
      eps: `ε`, added to the root.
      eps_root: `ε_root`, added inside the root.
      weight_decay: `λ`, added inside the momentum (a number).
    """
    _check_moments("novograd", learning_rate, b1, b2, eps, weight_decay)
    check_positive("novograd", "eps_root", eps_root, allow_zero=True)
    return chain(
        scale_by_novograd(b1=b1, b2=b2, eps=eps, eps_root=eps_root, weight_decay=weight_decay),
        scale_by_learning_rate(learning_rate),
    )


def lamb(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: ScalarOrSchedule = 0.0,
    mask: Mask | None = None,
) -> GradientTransformation:
    """LAMB (You et al., 2020, "Large Batch Optimization for Deep Learning: Training BERT in
    76 minutes"), as optax's `lamb`, with optax's defaults.

    Adam's direction plus decoupled decay, rescaled per leaf (layer) by its trust ratio::

        d ← [m/(1 − β₁ᵗ)] / (√(v/(1 − β₂ᵗ)) + ε) + λ_t·x       (m, v as in `adam`)
        x_l ← x_l − α_t · ‖x_l‖/‖d_l‖ · d_l                     (ratio 1 where a norm is 0)

    optax's `eps_root` (default 0) is not offered: funcnet's `scale_by_adam` has none.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1: `β₁`, the decay of the first moment.
      b2: `β₂`, the decay of the second moment.
      eps: `ε`, added to the root.
      weight_decay: `λ_t`, a number or a schedule.
      mask: which params decay (see `masked`); `None` decays all.
    """
    _check_rate_and_decay("lamb", learning_rate, weight_decay)
    _check_betas("lamb", b1, b2, eps)
    return chain(
        scale_by_adam(b1=b1, b2=b2, eps=eps),
        _decay(weight_decay, mask),
        scale_by_trust_ratio(),
        scale_by_learning_rate(learning_rate),
    )


def lars(
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: ScalarOrSchedule = 0.0,
    weight_decay_mask: bool | Mask = True,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    trust_ratio_mask: bool | Mask = True,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> GradientTransformation:
    """LARS (You et al., 2017, "Large Batch Training of Convolutional Networks"), as optax's
    `lars`, with optax's defaults.

    With `η = trust_coefficient`, `λ_t = weight_decay`, `μ = momentum`, per leaf (layer) `l`::

        d_l ← g_l + λ_t·x_l
        d_l ← η·‖x_l‖/(‖d_l‖ + ε) · d_l           (ratio 1 where a norm is 0)
        b_l ← μ·b_l + α_t·d_l                      (b = 0 before step one)
        x_l ← x_l − b_l     (Nesterov: x_l − (α_t·d_l + μ·b_l))

    The rate enters before the momentum, as in optax (and the paper); with a schedule this
    differs from applying it after.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      weight_decay: `λ_t`, a number or a schedule.
      weight_decay_mask: which params decay (see `masked`); `True` decays all.
      trust_coefficient: `η`.
      eps: `ε`, added to the norm of the direction.
      trust_ratio_mask: which params get the trust ratio; `True` all. Biases and norm scales
        are often left out.
      momentum: `μ`; 0 turns momentum off.
      nesterov: use Nesterov momentum.
    """
    _check_rate_and_decay("lars", learning_rate, weight_decay)
    check_positive("lars", "trust_coefficient", trust_coefficient)
    check_positive("lars", "eps", eps, allow_zero=True)
    check_decay("lars", "momentum", momentum)
    if nesterov and is_zero(momentum):
        raise ValueError("lars with nesterov=True needs a non-zero momentum.")
    return chain(
        identity()
        if is_zero(weight_decay)
        else _on(weight_decay_mask, add_decayed_weights(weight_decay)),
        _on(trust_ratio_mask, scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps)),
        scale_by_learning_rate(learning_rate),
        identity() if is_zero(momentum) else trace(momentum, nesterov=nesterov),
    )


def fromage(learning_rate: ScalarOrSchedule, *, min_norm: float = 1e-6) -> GradientTransformation:
    """Fromage (Bernstein et al., 2020, "On the distance between two neural networks and the
    stability of learning"), as optax's `fromage`, with optax's defaults.

    Per leaf (layer) `l`, with its norms floored at `min_norm`::

        x_l ← (x_l − α_t·‖x_l‖/‖g_l‖ · g_l) / √(1 + α_t²)

    The division by `√(1 + α_t²)` undoes the growth of `‖x_l‖` a step orthogonal to it causes,
    so the norm of each layer stays put.

    Args:
      learning_rate: `α_t`, a number or a schedule (the paper uses 0.01).
      min_norm: the floor of the norms in the trust ratio.
    """
    check_rate("fromage", learning_rate)
    check_positive("fromage", "min_norm", min_norm, allow_zero=True)
    rate = learning_rate if callable(learning_rate) else lambda count: learning_rate

    def shrink(count: jax.Array) -> jax.Array:
        return 1 / jnp.sqrt(1 + jnp.square(rate(count)))

    # After the rate, `+ (s − 1)·x` is the pull towards 0: `x + s·u + (s − 1)·x = s·(x + u)`.
    return chain(
        scale_by_trust_ratio(min_norm=min_norm),
        scale_by_learning_rate(lambda count: rate(count) * shrink(count)),
        add_decayed_weights(lambda count: shrink(count) - 1),
    )


# Memory-light second moments.


def adafactor(
    learning_rate: ScalarOrSchedule | None = None,
    *,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    decay_offset: int = 0,
    multiply_by_parameter_scale: bool = True,
    clipping_threshold: float | None = 1.0,
    momentum: float | None = None,
    momentum_dtype: DTypeLike | None = jnp.float32,
    weight_decay_rate: ScalarOrSchedule | None = None,
    eps: float = 1e-30,
    factored: bool = True,
    weight_decay_mask: Mask | None = None,
) -> GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with Sublinear
    Memory Cost"), as optax's `adafactor`, with optax's defaults.

    With `β̂_t = 1 − (t − t₀)^(−c)` (`c = decay_rate`, `t₀ = decay_offset`), `G = g² + ε₁`,
    `d = clipping_threshold`, `λ_t = weight_decay_rate`::

        V ← β̂_t·V + (1 − β̂_t)·G,  or factored: R, C the row and column means of that
        a ← g / √V̂                 (V̂ = V, or R·C / mean(R) for a factored leaf)
        a ← a / max(1, RMS(a)/d)                     (per leaf)
        a ← α_t · max(RMS(x), 1e-3) · a              (per leaf; α_t = 1 without a rate)
        a ← β·a_prev + (1 − β)·a                     (with momentum β only)
        x ← x − (a + λ_t·x)

    A leaf is factored when its two largest axes both have at least `min_dim_size_to_factor`
    entries (see `scale_by_factored_rms`); its moments then cost the sum of its two largest
    sizes instead of their product. The weight decay is added after the rate, so it is not
    scaled by it.

    `torch.optim.Adafactor` (torch ≥ 2.5; `lr=1e-2`, `beta2_decay=-0.8`, `eps=(None, 1e-3)`,
    `d=1.0`, `weight_decay=0.0`) factors every param of two or more axes, divides by
    `max(V̂, ε₁)` instead of adding `ε₁` to `g²`, uses the relative step
    `min(lr, 1/√t)·max(RMS(x), ε₂)`, scales its weight decay by the rate and has no momentum.

    Args:
      learning_rate: `α_t`, a number or a schedule, or `None` for `α_t = 1` (the step is then
        the relative one, `max(RMS(x), 1e-3)`, alone).
      min_dim_size_to_factor: the size both factored axes must reach.
      decay_rate: `c`.
      decay_offset: `t₀`, for fine-tuning from step `t₀` (a state restored at step `t₀` or
        later: before it, `(t − t₀)^(−c)` is not real and the moments become NaN, as in optax).
      multiply_by_parameter_scale: scale each leaf's step by `max(RMS(x), 1e-3)`.
      clipping_threshold: `d`, or `None` for no clipping.
      momentum: `β` in [0, 1), or `None` for none.
      momentum_dtype: dtype of the momentum buffer; float32 (optax's) by default, `None`
        keeps each param's dtype.
      weight_decay_rate: `λ_t`, a number, a schedule, or `None`.
      eps: `ε₁`, added to `g²`.
      factored: factor the large leaves; `False` keeps every second moment whole.
      weight_decay_mask: which params decay (see `masked`); `None` decays all.
    """
    who = "adafactor"
    if learning_rate is not None:
        check_rate(who, learning_rate)
    check_int(who, "min_dim_size_to_factor", min_dim_size_to_factor)
    check_positive(who, "decay_rate", decay_rate)
    check_int(who, "decay_offset", decay_offset, minimum=0)
    if clipping_threshold is not None:
        check_positive(who, "clipping_threshold", clipping_threshold)
    if momentum is not None:
        check_decay(who, "momentum", momentum)
    if weight_decay_rate is not None and not callable(weight_decay_rate):
        check_positive(who, "weight_decay_rate", weight_decay_rate, allow_zero=True)
    check_positive(who, "eps", eps)
    return chain(
        scale_by_factored_rms(
            factored=factored,
            decay_rate=decay_rate,
            step_offset=decay_offset,
            min_dim_size_to_factor=min_dim_size_to_factor,
            epsilon=eps,
        ),
        identity() if clipping_threshold is None else clip_by_block_rms(clipping_threshold),
        identity()
        if learning_rate is None
        else scale_by_learning_rate(learning_rate, flip_sign=False),
        scale_by_param_block_rms() if multiply_by_parameter_scale else identity(),
        identity()
        if momentum is None
        else ema(momentum, debias=False, moment_dtype=momentum_dtype),
        identity() if weight_decay_rate is None else _decay(weight_decay_rate, weight_decay_mask),
        scale(-1.0),
    )


def sm3(learning_rate: ScalarOrSchedule, *, momentum: float = 0.9) -> GradientTransformation:
    """SM3 (Anil et al., 2019, "Memory-Efficient Adaptive Optimization"), as optax's `sm3`,
    with optax's defaults.

    A param of axes `1…k` keeps one vector `μ_a` per axis instead of Adagrad's full sum of
    squares; at each entry `i = (i₁, …, i_k)`::

        ν_i ← g_i² + min_a μ_a[i_a];     μ_a[j] ← max over the entries with i_a = j of ν_i
        m ← β·m + (1 − β)·g / √(ν + 1e-8)       (0 where ν = 0)
        x ← x − α_t·m

    Params of fewer than two axes keep their whole `ν` (Adagrad). optax's `sm3` takes a
    number only; a schedule works here too.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      momentum: `β` in [0, 1).
    """
    check_rate("sm3", learning_rate)
    check_decay("sm3", "momentum", momentum)
    return chain(scale_by_sm3(b1=momentum), scale_by_learning_rate(learning_rate))


# Other step rules.


def rprop(
    learning_rate: float,
    *,
    eta_minus: float = 0.5,
    eta_plus: float = 1.2,
    min_step_size: float = 1e-6,
    max_step_size: float = 50.0,
) -> GradientTransformation:
    """Rprop (Riedmiller & Braun, 1993, "A direct adaptive method for faster backpropagation
    learning: the RPROP algorithm"; iRprop⁻ of Igel & Hüsken, 2003), with optax's defaults.

    Each coordinate keeps its own step size `η`, from `η = learning_rate`; with `p` the last
    step (0 before the first) and `s = g·p`::

        η ← min(η·η⁺, η_max)  if s > 0;   max(η·η⁻, η_min)  if s < 0;   η  if s = 0
        p ← 0  if s < 0  else  η·sign(g)
        x ← x − p

    This is `torch.optim.Rprop`'s rule (whose defaults are `lr=1e-2`, `etas=(0.5, 1.2)`,
    `step_sizes=(1e-6, 50)`; torch also clamps the first step size to
    `[η_min, η_max]`). optax 0.2.8's `rprop` computes the same `η` and `p` but returns the
    previous step's `p` (zero at the first step; google-deepmind/optax pull request 1725),
    which this does not copy: see `scale_by_rprop`.

    Args:
      learning_rate: the initial step size `η` (a number, not a schedule: the steps set their
        own sizes).
      eta_minus: `η⁻` in (0, 1).
      eta_plus: `η⁺ > 1`.
      min_step_size: `η_min`.
      max_step_size: `η_max`.
    """
    _check_rprop("rprop", learning_rate, eta_minus, eta_plus, min_step_size, max_step_size)
    return chain(
        scale_by_rprop(
            learning_rate,
            eta_minus=eta_minus,
            eta_plus=eta_plus,
            min_step_size=min_step_size,
            max_step_size=max_step_size,
        ),
        scale(-1.0),
    )


def noisy_sgd(
    learning_rate: ScalarOrSchedule,
    *,
    key: jax.Array,
    eta: float = 0.01,
    gamma: float = 0.55,
) -> GradientTransformation:
    """SGD with annealed Gaussian gradient noise (Neelakantan et al., 2015, "Adding Gradient
    Noise Improves Learning for Very Deep Networks"), as optax's `noisy_sgd`, with optax's
    defaults.

    ::

        x ← x − α_t·(g + σ_t·ξ),   σ_t = √(η / tᵞ),   ξ ~ N(0, I)

    The noise comes from `key`, which the state carries and splits at every step the way
    optax's `add_noise` does, so the same key gives optax's draws.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      key: a `jax.random.key` (or a legacy uint32 key); required (optax's default of seed 0
        is deprecated there).
      eta: `η ≥ 0`, the variance of the noise at step one.
      gamma: `γ ≥ 0`, the decay exponent of the variance.
    """
    check_rate("noisy_sgd", learning_rate)
    check_positive("noisy_sgd", "eta", eta, allow_zero=True)
    check_positive("noisy_sgd", "gamma", gamma, allow_zero=True)
    return chain(add_noise(eta, gamma, key=key), scale_by_learning_rate(learning_rate))


def optimistic_gradient_descent(
    learning_rate: ScalarOrSchedule, *, alpha: float = 1.0, beta: float = 1.0
) -> GradientTransformation:
    """Optimistic gradient descent (Popov, 1980; Daskalakis et al., 2018, "Training GANs with
    Optimism"), as optax's `optimistic_gradient_descent`, with optax's defaults.

    ::

        x ← x − α_t·((α + β)·g_t − β·g_{t−1})       (g_0 = g_1: the first step is −α_1·α·g_1)

    For min-max games (train both players with it), where plain gradient descent-ascent
    circles or diverges and this converges in the last iterate.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      alpha: `α ≥ 0`, the weight of the current gradient.
      beta: `β ≥ 0`, the weight of the negative momentum `g_t − g_{t−1}`.
    """
    check_rate("optimistic_gradient_descent", learning_rate)
    check_positive("optimistic_gradient_descent", "alpha", alpha, allow_zero=True)
    check_positive("optimistic_gradient_descent", "beta", beta, allow_zero=True)
    return chain(
        scale_by_optimistic_gradient(alpha=alpha, beta=beta),
        scale_by_learning_rate(learning_rate),
    )


def polyak_sgd(
    max_learning_rate: float = 1.0,
    *,
    scaling: ScalarOrSchedule = 1.0,
    f_min: float = 0.0,
    eps: float = 0.0,
    variant: Literal["sps", "sps+"] = "sps",
) -> GradientTransformationExtraArgs:
    """SGD with Polyak's step size (Loizou et al., 2021, "Stochastic Polyak Step-size for
    SGD: An Adaptive Learning Rate for Fast Convergence"), as optax's `polyak_sgd`, with
    optax's defaults.

    With `f` the loss at `x`, `f* = f_min`, `s_t = scaling` and `d = s_t·g`::

        γ ← min((f − f*) / (‖d‖² + ε), γ_max)      ("sps+": max(f − f*, 0) in place of f − f*)
        x ← x − γ·d                                 (no step where ‖d‖² + ε ≤ 2.2e-16)

    `‖d‖` is the norm of the whole update tree. It needs the loss: `update` takes the extra arg
    `value` (`f`), which `funcnet.train`'s steps pass; by hand,
    ``opt.update(g, state, params, value=loss)``.

    Args:
      max_learning_rate: `γ_max`, the cap of the step.
      scaling: `s_t`, a number or a schedule scaling the gradient before the Polyak step.
      f_min: `f*`, a lower bound of the loss (0 for a loss that can be fitted exactly).
      eps: `ε ≥ 0`, added to the squared norm.
      variant: ``"sps"`` or ``"sps+"``.
    """
    who = "polyak_sgd"
    check_positive(who, "max_learning_rate", max_learning_rate)
    check_rate(who, scaling, name="scaling")
    check_positive(who, "eps", eps, allow_zero=True)
    if variant not in ("sps", "sps+"):
        raise ValueError(f"{who}: variant must be 'sps' or 'sps+', got {variant!r}")
    return chain(
        scale_by_learning_rate(scaling),
        scale_by_polyak(f_min=f_min, max_learning_rate=max_learning_rate, eps=eps, variant=variant),
    )


# Quasi-Newton.

# optax's default line search for L-BFGS: trial step 1, at most 20 evaluations.
_LBFGS_LINESEARCH = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


def lbfgs(
    learning_rate: ScalarOrSchedule | None = None,
    *,
    memory_size: int = 10,
    scale_init_precond: bool = True,
    linesearch: GradientTransformation | None = _LBFGS_LINESEARCH,
) -> GradientTransformationExtraArgs:
    """L-BFGS (Liu & Nocedal, 1989, "On the limited memory BFGS method for large scale
    optimization") with a zoom line search, as optax's `lbfgs`, with optax's defaults.

    With `H_k` the inverse-Hessian estimate from the last `m = memory_size` steps `s_i` and
    gradient changes `y_i` (see `scale_by_lbfgs`)::

        d ← −α_t·H_k g                 (α_t = 1 without a learning rate)
        η ← a step along d meeting the strong Wolfe conditions (see `scale_by_zoom_linesearch`:
            trial step 1, at most 20 evaluations)
        x ← x + η·d

    The line search evaluates the loss along `d`, so `update` takes the extra args `value`
    (`f(x)`), `grad` (`∇f(x)`) and `value_fn` (`x ↦ f(x)` on the same batch), which
    `funcnet.train`'s steps pass; by hand,
    ``opt.update(g, state, params, value=f(params), grad=g, value_fn=f)``. Each step costs one
    gradient and as many values and gradients of `f` as the line search tries (one, once the
    estimate is good); the state holds `2m + 3` copies of the params. For full-batch, smooth,
    deterministic problems; torch's `LBFGS` (a closure-based optimizer) has another interface
    and defaults (`history_size=100`, no line search by default).

    Args:
      learning_rate: `α_t`, a number or a schedule, or None (the line search alone sets the
        step).
      memory_size: `m`.
      scale_init_precond: start each estimate from `γ_k·I`, `γ_k = ⟨s, y⟩/⟨y, y⟩` of the last
        pair (else `I`).
      linesearch: the transformation that scales the direction (None: no line search, the
        step `−α_t·H_k g` as it is).
    """
    if learning_rate is not None:
        check_rate("lbfgs", learning_rate)
    check_int("lbfgs", "memory_size", memory_size)
    return chain(
        scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond),
        scale(-1.0) if learning_rate is None else scale_by_learning_rate(learning_rate),
        identity() if linesearch is None else linesearch,
    )
