"""Matrix-free solvers of symmetric linear systems, shared by the curvature tools."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax


def conjugate_gradient(
    matvec: Callable[[jax.Array], jax.Array],
    g: jax.Array,
    x0: jax.Array,
    *,
    max_iters: int,
    tol: float,
) -> tuple[jax.Array, jax.Array]:
    """Truncated CG on `A x = −g` from `x0`; returns `x` and its residual `r = A x + g`.

    Stops after `max_iters` products, when ‖r‖ ≤ tol·‖g‖, or at a direction of non-positive
    curvature `dᵀA d ≤ 0` (possible with the Hessian), which is then not taken.
    """
    r = matvec(x0) + g
    stop = tol**2 * jnp.vdot(g, g)

    def not_done(carry):
        i, _, _, _, rr, negative = carry
        return (i < max_iters) & (rr > stop) & ~negative

    def iterate(carry):
        i, x, r, d, rr, _ = carry
        ad = matvec(d)
        dad = jnp.vdot(d, ad)
        negative = dad <= 0
        alpha = jnp.where(negative, 0.0, rr / jnp.where(negative, 1.0, dad)).astype(x.dtype)
        x = x + alpha * d
        r = r + alpha * ad
        rr_new = jnp.vdot(r, r)
        d = -r + (rr_new / rr).astype(x.dtype) * d
        return i + 1, x, r, d, rr_new, negative

    carry = (jnp.zeros([], jnp.int32), x0, r, -r, jnp.vdot(r, r), jnp.array(False))
    _, x, r, _, _, _ = lax.while_loop(not_done, iterate, carry)
    return x, r
