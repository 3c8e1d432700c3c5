"""Per-example blocks of a batch loss's Hessian over the model outputs, and their factors.

A batch loss L(F) of outputs F of shape (B, C) that sums (or averages) independent terms,
L = Σ_n l_n(F_n), has a block-diagonal Hessian: ∂²L/∂F_n∂F_m = 0 for n ≠ m. Its B diagonal
blocks H_n = ∂²L/∂F_n², each (C, C), come from C Hessian-vector products, the n-th row of
the product with the direction that is e_c in every row being H_n e_c. Outputs of shape
(B, …) are taken per example as one flattened vector. They are the blocks
of L itself, so a mean over the batch leaves its 1/B in them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp


def output_hessian_blocks(
    loss_of_outputs: Callable[[jax.Array], jax.Array], outputs: jax.Array
) -> jax.Array:
    """The (B, M, M) blocks H_n = ∂²L/∂F_n² of the batch loss L at outputs F of shape (B, …),
    each example's M outputs flattened ((B, C, C) for outputs (B, C)).

    M forward-over-reverse Hessian-vector products, one per one-hot direction broadcast over
    the batch; exact when the loss has no term coupling two examples.
    """
    size = math.prod(outputs.shape[1:])
    eye = jnp.eye(size, dtype=outputs.dtype)
    grad = jax.grad(loss_of_outputs)

    def column(e: jax.Array) -> jax.Array:
        direction = jnp.broadcast_to(e, (outputs.shape[0], size)).reshape(outputs.shape)
        return jax.jvp(grad, (outputs,), (direction,))[1].reshape(-1, size)  # row n: H_n e

    columns = jax.vmap(column)(eye)  # (M, B, M): [c, n, :] = H_n e_c
    blocks = jnp.transpose(columns, (1, 2, 0))
    return (blocks + jnp.swapaxes(blocks, 1, 2)) / 2


def eigen_factors(blocks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """H_n = Q_n diag(λ_n) Q_nᵀ for each block: `(λ, Q)` of shapes (B, C) and (B, C, C).

    Any symmetric block factors this way, so Σ_c λ_c (Jᵀ q_c)² is the diagonal of JᵀHJ
    whether H is positive semi-definite or not; for a convex loss, λ ≥ 0 and the columns
    √λ_c q_c are a square root S with S Sᵀ = H.
    """
    return jnp.linalg.eigh(blocks)
