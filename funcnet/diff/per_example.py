"""Per-example gradients: `vmap(grad)` with every transposed kernel gradient folded away.

For a dense layer y = x W + b inside a one-example loss, reverse mode computes the kernel's
gradient as ∂L/∂W = x ⊗ δ = xᵀ δ, with δ = ∂L/∂y. JAX's transpose rule of `dot_general`
forms that product with the cotangent first, δᵀ x of shape (out, in), and then `transpose`s
it to W's (in, out) layout. Under `vmap` over B examples the product becomes a
`dot_general` with a batch dimension (for a dense layer, with a contraction of size 1,
which XLA turns into a broadcast multiply), and XLA:CPU writes the B matrices as (B, out, in)
and then copies them to (B, in, out): every per-example gradient is written, read back
and written again.

`per_example_grads` traces `vmap(grad(loss))` to a jaxpr and replaces each `transpose`
that swaps the two operands' free dimensions of a `dot_general` result by one `dot_general`
of the swapped operands, which yields the (B, in, out) layout directly; the first product
is dropped when nothing else reads it. The sums are the same sums, so the result is the
same; every other equation, including every product it does not match, is left as
`vmap(grad)` wrote it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, Literal

import jax
from jax.extend import core

PyTree = Any
PerExampleMethod = Literal["auto", "vmap"]
_JAXPRS = (core.ClosedJaxpr, core.Jaxpr)

__all__ = ["per_example_grads"]


def per_example_grads(
    loss: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    batch: PyTree,
    *,
    method: PerExampleMethod = "auto",
) -> PyTree:
    """Gradient of the loss of each example in a batch, in one vectorised pass.

    gᵢ = ∇_params loss(params, exampleᵢ) for each of the B examples, `params` shared. For a
    dense layer y = x W + b of the model, gᵢ's kernel block is the outer product
    xᵢ ⊗ δᵢ, of shape (in, out), of the layer's input xᵢ and the signal δᵢ = ∂lossᵢ/∂yᵢ
    propagated back to its output, and its bias block is δᵢ.

    Args:
      loss: `loss(params, example) -> scalar` for a single example, its arrays without the
        batch axis. Any JAX-traceable function: dense, convolutional, recurrent (`lax.scan`)
        or attention models, with any pytree of params and of example data.
      params: pytree of float arrays.
      batch: pytree whose leaves share a leading axis of size B (integer labels included).
      method: `"vmap"` runs `vmap(grad(loss))` over the leading axis of `batch` as JAX
        writes it. `"auto"` (the default) traces that same program and rewrites each
        per-example kernel gradient that JAX forms transposed (a `dot_general` followed by
        a `transpose` of its result) into one `dot_general` that writes it in its final
        layout, xᵢ ⊗ δᵢ of shape (B, in, out) for a dense kernel, without a transposed
        copy. Where the program holds no such pair, `"auto"` is `"vmap"`.

    Returns:
      A params-shaped pytree whose leaves have an extra leading axis of size B: a kernel
      of shape (in, out) gives per-example gradients of shape (B, in, out).
    """
    grads = jax.vmap(jax.grad(loss), in_axes=(None, 0))
    if method == "vmap":
        return grads(params, batch)
    if method != "auto":
        raise ValueError(f"method must be 'auto' or 'vmap', got {method!r}")
    closed, out_shape = jax.make_jaxpr(grads, return_shape=True)(params, batch)
    jaxpr = _fold_transposed_dots(closed.jaxpr)
    if jaxpr is closed.jaxpr:
        return grads(params, batch)
    flat = core.jaxpr_as_fun(closed.replace(jaxpr=jaxpr))(*jax.tree.leaves((params, batch)))
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)


def _swapping_permutation(dot: core.JaxprEqn) -> tuple[int, ...]:
    """The `transpose` of a `dot_general` result that swapping its operands makes for free.

    `dot_general` orders its result (batch dims, lhs free dims, rhs free dims); with the
    operands swapped it gives (batch dims, rhs free dims, lhs free dims).
    """
    (lhs_contract, rhs_contract), (lhs_batch, _) = dot.params["dimension_numbers"]
    lhs, rhs = dot.invars
    n_batch = len(lhs_batch)
    n_lhs = lhs.aval.ndim - len(lhs_contract) - n_batch
    n_rhs = rhs.aval.ndim - len(rhs_contract) - n_batch
    lhs_free = range(n_batch, n_batch + n_lhs)
    rhs_free = range(n_batch + n_lhs, n_batch + n_lhs + n_rhs)
    return (*range(n_batch), *rhs_free, *lhs_free)


def _transposed_dot(eqn: core.JaxprEqn, dots: dict) -> core.JaxprEqn | None:
    """The `dot_general` that `eqn` transposes by swapping its operands, or None."""
    if eqn.primitive.name != "transpose" or not isinstance(eqn.invars[0], core.Var):
        return None
    dot = dots.get(eqn.invars[0])
    if dot is None or dot.params.get("out_sharding") is not None:
        return None
    if tuple(eqn.params["permutation"]) != _swapping_permutation(dot):
        return None
    return dot


def _swapped(dot: core.JaxprEqn, outvars: list) -> core.JaxprEqn:
    """`dot` with its operands (and their dimension numbers and precisions) swapped."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dot.params["dimension_numbers"]
    precision = dot.params.get("precision")
    if isinstance(precision, tuple):
        precision = precision[::-1]
    params = dict(
        dot.params,
        dimension_numbers=((rhs_contract, lhs_contract), (rhs_batch, lhs_batch)),
        precision=precision,
    )
    return dot.replace(invars=dot.invars[::-1], outvars=outvars, params=params)


def _fold_transposed_dots(jaxpr: core.Jaxpr) -> core.Jaxpr:
    """`jaxpr` with each transposed `dot_general` computed in its final layout.

    Each `transpose` of a `dot_general` result that `_swapping_permutation` describes
    becomes the swapped `dot_general`; the original product is dropped when nothing else
    reads it. The jaxprs inside higher-order equations (`jit`, `scan`, `while`, `cond`,
    `remat`, ...) are rewritten the same way. Returns `jaxpr` itself when nothing changes.
    """
    dots = {
        var: eqn for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general" for var in eqn.outvars
    }
    readers = collections.Counter(
        var for eqn in jaxpr.eqns for var in eqn.invars if isinstance(var, core.Var)
    )
    readers.update(var for var in jaxpr.outvars if isinstance(var, core.Var))
    folded = {}
    for i, eqn in enumerate(jaxpr.eqns):
        dot = _transposed_dot(eqn, dots)
        if dot is not None:
            folded[i] = dot
    folded_reads = collections.Counter(dot.outvars[0] for dot in folded.values())
    unread = {var for var, count in folded_reads.items() if count == readers[var]}
    eqns, changed = [], bool(folded)
    for i, eqn in enumerate(jaxpr.eqns):
        if i in folded:
            eqns.append(_swapped(folded[i], eqn.outvars))
            continue
        if eqn.primitive.name == "dot_general" and eqn.outvars[0] in unread:
            continue
        params = {name: _fold_nested(value) for name, value in eqn.params.items()}
        if any(params[name] is not value for name, value in eqn.params.items()):
            eqn, changed = eqn.replace(params=params), True
        eqns.append(eqn)
    return jaxpr.replace(eqns=eqns) if changed else jaxpr


def _fold_nested(value: Any) -> Any:
    """A parameter of an equation with the jaxprs in it folded; `value` itself if none change."""
    if isinstance(value, core.ClosedJaxpr):
        inner = _fold_transposed_dots(value.jaxpr)
        return value if inner is value.jaxpr else value.replace(jaxpr=inner)
    if isinstance(value, core.Jaxpr):
        return _fold_transposed_dots(value)
    if isinstance(value, tuple) and any(isinstance(v, _JAXPRS) for v in value):
        items = tuple(_fold_nested(v) for v in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
