"""Jacobians in forward or reverse mode, Hessians, and the products built from them.

Every function takes a plain function and a pytree point, returns pytrees shaped like the
ones `jax.jacobian` and `jax.hessian` return, and traces under `jax.jit` and `jax.vmap`.
"""

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from funcnet._checks import check_function
from funcnet._trees import check_same_shapes

PyTree = Any
JacobianMode = Literal["auto", "fwd", "rev"]
HvpMode = Literal["fwd_rev", "rev_rev", "rev_fwd"]

__all__ = [
    "flat_hessian",
    "gnvp",
    "hessian",
    "hvp",
    "jacobian",
]


def _tree_size(tree: PyTree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _offsets(sizes: list[int]) -> list[int]:
    """Split points between consecutive blocks of the given sizes."""
    points, total = [], 0
    for size in sizes[:-1]:
        total += size
        points.append(total)
    return points


def _jacobian_fwd(f: Callable[[PyTree], PyTree], x: PyTree) -> PyTree:
    """One Jacobian-vector product per input coordinate, batched with `vmap`."""
    x_flat, unravel = ravel_pytree(x)
    _, f_jvp = jax.linearize(f, x)
    basis = jnp.eye(x_flat.size, dtype=x_flat.dtype)
    # Each output leaf gets a leading axis over the n_in input coordinates.
    columns = jax.vmap(lambda t: f_jvp(unravel(t)))(basis)
    in_leaves, in_def = jax.tree.flatten(x)
    split_at = _offsets([math.prod(leaf.shape) for leaf in in_leaves])

    def to_blocks(column: jax.Array) -> PyTree:
        column = jnp.moveaxis(column, 0, -1)
        pieces = jnp.split(column, split_at, axis=-1)
        out_shape = column.shape[:-1]
        return in_def.unflatten(
            [
                piece.reshape(out_shape + leaf.shape)
                for piece, leaf in zip(pieces, in_leaves, strict=True)
            ]
        )

    return jax.tree.map(to_blocks, columns)


def _jacobian_rev(f: Callable[[PyTree], PyTree], x: PyTree) -> PyTree:
    """One vector-Jacobian product per output coordinate, batched with `vmap`."""
    y, f_vjp = jax.vjp(f, x)
    y_flat, unravel_y = ravel_pytree(y)
    basis = jnp.eye(y_flat.size, dtype=y_flat.dtype)
    # Each input leaf gets a leading axis over the n_out output coordinates.
    rows = jax.vmap(lambda c: f_vjp(unravel_y(c))[0])(basis)
    out_leaves, out_def = jax.tree.flatten(y)
    row_leaves, in_def = jax.tree.flatten(rows)
    sizes = [math.prod(jnp.shape(leaf)) for leaf in out_leaves]
    starts = [0, *_offsets(sizes)]
    blocks = [
        in_def.unflatten(
            [
                row[start : start + size].reshape(jnp.shape(out) + row.shape[1:])
                for row in row_leaves
            ]
        )
        for out, start, size in zip(out_leaves, starts, sizes, strict=True)
    ]
    return out_def.unflatten(blocks)


def jacobian(f: Callable[[PyTree], PyTree], x: PyTree, *, mode: JacobianMode = "auto") -> PyTree:
    """Jacobian of `f` at `x`, by forward or by reverse mode.

    For f: ℝⁿ → ℝᵐ, J[i, j] = ∂fᵢ/∂xⱼ. Forward mode builds J column by column, one
    Jacobian-vector product J·eⱼ per input coordinate (n passes); reverse mode builds it row
    by row, one vector-Jacobian product eᵢᵀ·J per output coordinate (m passes). Both batch
    their passes with `vmap`.

    Args:
      f: function of one pytree argument returning a pytree of arrays.
      x: the point, a pytree of float arrays.
      mode: `"fwd"`, `"rev"`, or `"auto"`, which picks forward mode when `x` has fewer
        scalars than `f(x)` and reverse mode otherwise.

    Returns:
      The same nesting as `jax.jacobian(f)(x)`: the structure of `f(x)` whose every leaf of
      shape `out` is replaced by the structure of `x` whose every leaf of shape `in` is an
      array of shape `out + in`. For array in and out, an array of shape
      `f(x).shape + x.shape`.
    """
    check_function("jacobian", "f", f)
    x = jax.tree.map(jnp.asarray, x)
    if mode == "auto":
        n_in = _tree_size(x)
        n_out = _tree_size(jax.eval_shape(f, x))
        mode = "fwd" if n_in < n_out else "rev"
    if mode == "fwd":
        return _jacobian_fwd(f, x)
    if mode == "rev":
        return _jacobian_rev(f, x)
    raise ValueError(f"mode must be 'auto', 'fwd' or 'rev', got {mode!r}")


def hessian(f: Callable[[PyTree], jax.Array], x: PyTree) -> PyTree:
    """Hessian of a scalar function by forward-over-reverse: the forward-mode Jacobian of ∇f.

    H[i, j] = ∂²f/∂xᵢ∂xⱼ. Reverse mode gives ∇f for the price of a few evaluations of f, and
    forward mode differentiates it along each of the n input coordinates.

    Args:
      f: scalar function of one pytree argument.
      x: the point, a pytree of float arrays.

    Returns:
      The same nesting as `jax.hessian(f)(x)`: the structure of `x` nested in itself, the
      block for leaves of shapes `a` and `b` of shape `a + b`. For an array `x` of shape
      `s`, an array of shape `s + s`.
    """
    check_function("hessian", "f", f)
    return jacobian(jax.grad(f), x, mode="fwd")


def flat_hessian(
    f: Callable[[PyTree], jax.Array], params: PyTree
) -> tuple[jax.Array, Callable[[jax.Array], PyTree]]:
    """Dense Hessian of a scalar function of a params pytree, over its flattened vector.

    The leaves of `params` are flattened and concatenated in `jax.tree.leaves` order into a
    vector θ of length n, and H = ∇²_θ f.

    Args:
      f: scalar function of the params pytree.
      params: pytree of float arrays with n scalars in total.

    Returns:
      `(matrix, unravel)`: the symmetric `(n, n)` Hessian, and the function mapping a vector
      of shape `(n,)` (a column of `matrix`, an eigenvector) back to a params-shaped pytree.
    """
    check_function("flat_hessian", "f", f)
    flat, unravel = ravel_pytree(params)
    matrix = hessian(lambda theta: f(unravel(theta)), flat)
    return matrix, unravel


def _tree_dot(a: PyTree, b: PyTree) -> jax.Array:
    products = jax.tree.leaves(jax.tree.map(lambda u, w: jnp.sum(u * w), a, b))
    return sum(products[1:], products[0])


def hvp(
    f: Callable[[PyTree], jax.Array], x: PyTree, v: PyTree, *, mode: HvpMode = "fwd_rev"
) -> PyTree:
    """Hessian-vector product H(x)·v without forming the Hessian.

    The three compositions give the same vector at different costs:

    - `"fwd_rev"`, forward-over-reverse: H·v = ∂/∂ε ∇f(x + εv) at ε = 0, a `jvp` of `grad`.
      The gradient computation run once with a tangent alongside: about twice the
      gradient's memory, and the usual choice.
    - `"rev_rev"`, reverse-over-reverse: H·v = ∇ₓ ⟨∇f(x), v⟩, a `grad` of a `grad`, which
      must also store the first backward pass.
    - `"rev_fwd"`, reverse-over-forward: H·v = ∇ₓ (∇f(x)·v), a `grad` of a `jvp`.

    Args:
      f: scalar function of one pytree argument.
      x: the point, a pytree of float arrays.
      v: the direction, a pytree with the structure, shapes and dtypes of `x`.
      mode: which composition to use (above).

    Returns:
      H·v, a pytree shaped like `x`.
    """
    check_function("hvp", "f", f)
    check_same_shapes(
        x, v, what="hvp: v must have the structure and shapes of x", source="v", one_line=True
    )
    if mode == "fwd_rev":
        return jax.jvp(jax.grad(f), (x,), (v,))[1]
    if mode == "rev_rev":
        return jax.grad(lambda y: _tree_dot(jax.grad(f)(y), v))(x)
    if mode == "rev_fwd":
        return jax.grad(lambda y: jax.jvp(f, (y,), (v,))[1])(x)
    raise ValueError(f"mode must be 'fwd_rev', 'rev_rev' or 'rev_fwd', got {mode!r}")


def gnvp(
    model_fn: Callable[[PyTree], PyTree],
    loss_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    v: PyTree,
) -> PyTree:
    """Gauss-Newton-vector product G·v for a loss composed with a model.

    With z = model_fn(params), J = ∂z/∂params and H_L = ∇²_z loss_fn(z), the generalised
    Gauss-Newton matrix is G = Jᵀ H_L J: the Hessian of loss_fn ∘ model_fn without the term
    that carries the model's own curvature. G is positive semi-definite whenever loss_fn is
    convex in z. For a softmax cross-entropy or any exponential-family negative
    log-likelihood on the model's natural parameters, G is the Fisher information matrix and
    G·v the Fisher-vector product.

    Computed as a `jvp` of the model (u = J·v), a Hessian-vector product of the loss at z
    (H_L·u), and the transpose of the same linearisation (Jᵀ·H_L·u); J is never formed and
    the model runs forward once.

    Args:
      model_fn: params pytree -> model output pytree z (close over the inputs).
      loss_fn: z -> scalar loss (close over the targets).
      params: the point, a pytree of float arrays.
      v: the direction, a pytree shaped like `params`.

    Returns:
      G·v, a pytree shaped like `params`.
    """
    check_function("gnvp", "model_fn", model_fn)
    check_function("gnvp", "loss_fn", loss_fn)
    check_same_shapes(
        params,
        v,
        what="gnvp: v must have the structure and shapes of params",
        source="v",
        one_line=True,
    )
    z, model_jvp = jax.linearize(model_fn, params)
    hu = hvp(loss_fn, z, model_jvp(v))
    (gv,) = jax.linear_transpose(model_jvp, params)(hu)
    return gv
