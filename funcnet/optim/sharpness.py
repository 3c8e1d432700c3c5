"""Sharpness-aware minimisation: the gradient taken at the worst nearby point.

`sam` wraps any optimizer. Its second gradient needs the loss as a function of the params,
which it takes as the extra arg `value_fn` of `update` (or `grad_fn`, the gradient as a
function of the params); `funcnet.train`'s steps pass `value_fn`, so
`fit(model, sam(adam(1e-3)), ...)` trains with SAM. optax's `contrib.sam` computes the same
step in its `opaque_mode` from an adversarial optimizer and a `grad_fn(params, i)`; its default
mode instead spreads SAM's two gradients over two calls of `update`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet._checks import check_positive
from funcnet.optim.base import (
    GradientTransformation,
    GradientTransformationExtraArgs,
    OptState,
    Params,
    Updates,
    accepts_extra_args,
    check_transformation,
    global_norm,
)

__all__ = ["SAMState", "sam"]


class SAMState(NamedTuple):
    """The state of `sam`: the wrapped optimizer's."""

    opt_state: OptState


def sam(
    optimizer: GradientTransformation,
    *,
    rho: float = 0.05,
    adaptive: bool = False,
    eta: float = 0.01,
) -> GradientTransformationExtraArgs:
    """SAM (Foret et al., 2021, "Sharpness-Aware Minimization for Efficiently Improving
    Generalization") around `optimizer`, or, with `adaptive=True`, ASAM (Kwon et al., 2021,
    "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of Deep Neural
    Networks").

    With `g = ∇L(θ)` the gradient the update is given, at every step::

        ε = ρ·g/‖g‖                          (SAM)
        ε = ρ·T²·g/‖T·g‖,  T = |θ| + η       (ASAM, T element-wise)
        g_SAM = ∇L(θ + ε)
        θ ← θ + optimizer's update of g_SAM  (its state advances once per step)

    `‖·‖` is the norm over all the params together; where it is 0, `ε = 0`. The second
    gradient comes from the extra args of `update`: `grad_fn` (`θ ↦ ∇L(θ)`) if given, else
    the gradient of `value_fn` (`θ ↦ L(θ)`, which `funcnet.train`'s steps pass, on the step's
    batch). A step costs a second forward and backward pass. The other extra args are handed
    to `optimizer` if it takes any.

    Args:
      optimizer: the base optimizer, fed `g_SAM`.
      rho: `ρ > 0`, the radius of the neighbourhood (the papers use 0.05 for SAM, 0.5 to 2
        for ASAM).
      adaptive: ASAM's scale-invariant neighbourhood.
      eta: `η ≥ 0`, ASAM's offset (ignored by SAM).
    """
    check_transformation("sam", "optimizer", optimizer)
    check_positive("sam", "rho", rho)
    check_positive("sam", "eta", eta, allow_zero=True)
    inner_extra = accepts_extra_args(optimizer)

    def init_fn(params: Params) -> SAMState:
        return SAMState(optimizer.init(params))

    def perturbation(grads: Updates, params: Params) -> Updates:
        if adaptive:
            scale = jax.tree.map(lambda x: jnp.abs(x) + eta, params)
            scaled = jax.tree.map(lambda t, g: t * g, scale, grads)
            norm = global_norm(scaled)
            factor = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1), 0)
            return jax.tree.map(lambda t, g: (factor * t * t * g).astype(g.dtype), scale, grads)
        norm = global_norm(grads)
        factor = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1), 0)
        return jax.tree.map(lambda g: (factor * g).astype(g.dtype), grads)

    def update_fn(
        updates: Updates,
        state: SAMState,
        params: Params | None = None,
        *,
        grad_fn: Callable[[Params], Updates] | None = None,
        value_fn: Callable[[Params], jax.Array] | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, SAMState]:
        if params is None:
            raise ValueError("sam: update needs the params, got params=None")
        if grad_fn is None:
            if value_fn is None:
                raise TypeError(
                    "sam: update needs the extra arg `value_fn` (θ ↦ L(θ)) or `grad_fn` "
                    "(θ ↦ ∇L(θ)); funcnet.train's steps pass `value_fn`"
                )
            grad_fn = jax.grad(value_fn)
        epsilon = perturbation(updates, params)
        shifted = jax.tree.map(lambda x, e: x + e, params, epsilon)
        sam_grads = grad_fn(shifted)
        if inner_extra:
            if value_fn is not None:
                extra_args["value_fn"] = value_fn
            new_updates, opt_state = optimizer.update(
                sam_grads, state.opt_state, params, **extra_args
            )
        else:
            new_updates, opt_state = optimizer.update(sam_grads, state.opt_state, params)
        return new_updates, SAMState(opt_state)

    return GradientTransformationExtraArgs(init_fn, update_fn)
