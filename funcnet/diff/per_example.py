"""Per-example gradients: `vmap(grad)` with the per-example kernel gradients rewritten into
the forms XLA runs fastest.

Two kernels' per-example gradients are slow as JAX's batching rules write them:

- **Dense.** For y = x W + b inside a one-example loss, reverse mode computes the kernel's
  gradient as ∂L/∂W = x ⊗ δ = xᵀ δ, with δ = ∂L/∂y. JAX's transpose rule of `dot_general`
  forms that product with the cotangent first, δᵀ x of shape (out, in), and then
  `transpose`s it to W's (in, out) layout. Under `vmap` over B examples XLA:CPU writes the
  B matrices as (B, out, in) and then copies them to (B, in, out): every per-example
  gradient is written, read back and written again.
- **Convolution.** A conv kernel's gradient is itself a convolution, of the layer's input x
  by the signal δ, whose window is the output's spatial size and whose output is the
  kernel's: ∂L/∂w[k, c, o] = Σₛ x[s·stride + k·dilation, c] δ[s, o]. Under `vmap` both of
  its operands carry the batch axis, and JAX's batching rule turns it into one grouped
  convolution with a group per example, for which XLA:CPU has only its slow generic loop.

On the CPU, `per_example_grads` traces `grad(loss)` for one example and, where a
convolution's two operands both depend on the example and its output is no larger than its
window (a kernel's gradient), computes that convolution tap by tap: for each kernel tap k,
one strided slice of x and one `dot_general` with δ over the positions and input channels,
which under `vmap` is a batched matrix product. (GPUs have grouped convolutions of their
own, so elsewhere the batching rule's program is kept.)

It then traces `vmap` of the result and replaces each `transpose` that swaps the two
operands' free dimensions of a `dot_general` result by one `dot_general` of the swapped
operands, which yields the (B, in, out) layout directly; the first product is dropped when
nothing else reads it. Every sum is the same sum, in another order; every
other equation is left as `vmap(grad)` wrote it.
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import numpy as np
from jax import lax
from jax.extend import core

from funcnet._checks import check_float_tree, check_function
from funcnet.diff._taps import CALLS

PyTree = Any
PerExampleMethod = Literal["auto", "vmap"]
_JAXPRS = (core.ClosedJaxpr, core.Jaxpr)
# A convolution is computed by slices only up to this many output positions (taps).
MAX_SLICES = 512

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
        writes it. `"auto"` (the default) computes the same sums with two rewrites: each
        convolution kernel's gradient (a convolution of two per-example operands) becomes
        one strided slice of the input and one matrix product per kernel tap, batched
        under `vmap` (on the CPU; module docstring); and
        each kernel gradient that JAX forms transposed (a `dot_general` followed by a
        `transpose` of its result) becomes one `dot_general` that writes it in its final
        layout, xᵢ ⊗ δᵢ of shape (B, in, out) for a dense kernel. Where the program holds
        neither, `"auto"` is `"vmap"`.

    Returns:
      A params-shaped pytree whose leaves have an extra leading axis of size B: a kernel
      of shape (in, out) gives per-example gradients of shape (B, in, out).
    """
    check_function("per_example_grads", "loss", loss)
    check_float_tree("per_example_grads", "params", params)
    if method == "vmap":
        return jax.vmap(jax.grad(loss), in_axes=(None, 0))(params, batch)
    if method != "auto":
        raise ValueError(f"method must be 'auto' or 'vmap', got {method!r}")
    grads = jax.vmap(with_convs_by_slices(jax.grad(loss), shared=1), in_axes=(None, 0))
    closed, out_shape = jax.make_jaxpr(grads, return_shape=True)(params, batch)
    jaxpr = _fold_transposed_dots(closed.jaxpr)
    if jaxpr is closed.jaxpr:
        return grads(params, batch)
    flat = core.jaxpr_as_fun(closed.replace(jaxpr=jaxpr))(*jax.tree.leaves((params, batch)))
    return jax.tree.unflatten(jax.tree.structure(out_shape), flat)


def with_convs_by_slices(fn: Callable, shared: int = 0) -> Callable:
    """`fn` with each convolution of two per-example operands computed by `_conv_by_slices`,
    for calling under `vmap` over the examples.

    `fn(*args)` is traced at the shapes it is called with (one example's, under `vmap`); the
    leaves of ``args[:shared]`` and the values `fn` closes over are the same for every
    example, the rest depend on it. Where the trace holds no such convolution, or JAX's
    default backend is not the CPU, `fn` itself runs.
    """

    def rewritten(*args: PyTree) -> PyTree:
        if jax.default_backend() != "cpu":
            return fn(*args)
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        n_shared = len(jax.tree.leaves(args[:shared]))
        per_example = [i >= n_shared for i in range(len(closed.jaxpr.invars))]
        jaxpr = _convs_by_slices(closed.jaxpr, per_example)
        if jaxpr is closed.jaxpr:
            return fn(*args)
        flat = core.jaxpr_as_fun(closed.replace(jaxpr=jaxpr))(*jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(out_shape), flat)

    return rewritten


def _convs_by_slices(jaxpr: core.Jaxpr, per_example: Sequence[bool]) -> core.Jaxpr:
    """`jaxpr` with each convolution of two per-example operands replaced by the equations
    of `_conv_by_slices`, where `_by_slices` allows it.

    `per_example[i]` says whether input i depends on the example; an equation's outputs do
    when any of its inputs does. The jaxprs of calls (`jit`, `checkpoint`, custom rules)
    take their equation's flags one to one; every other inner jaxpr (`scan`, `while`,
    `cond`) has each input flagged when any of the equation's is. Returns `jaxpr` itself
    when nothing changes.
    """
    flagged = {var for var, flag in zip(jaxpr.invars, per_example, strict=True) if flag}
    eqns, changed = [], False
    for eqn in jaxpr.eqns:
        flags = [isinstance(var, core.Var) and var in flagged for var in eqn.invars]
        if any(flags):
            flagged.update(eqn.outvars)
        if eqn.primitive.name == "conv_general_dilated" and all(flags) and _by_slices(eqn):
            eqns += _inlined(_conv_by_slices, eqn)
            changed = True
            continue

        def rewrite(inner: core.Jaxpr, eqn=eqn, flags=flags) -> core.Jaxpr:
            one_to_one = eqn.primitive.name in CALLS and len(inner.invars) == len(flags)
            return _convs_by_slices(
                inner, flags if one_to_one else [any(flags)] * len(inner.invars)
            )

        params = {name: _rewrite_nested(value, rewrite) for name, value in eqn.params.items()}
        if any(params[name] is not value for name, value in eqn.params.items()):
            eqn, changed = eqn.replace(params=params), True
        eqns.append(eqn)
    return jaxpr.replace(eqns=eqns) if changed else jaxpr


def _by_slices(conv: core.JaxprEqn) -> bool:
    """Whether `_conv_by_slices` computes `conv`: with no more output positions than window
    taps (a kernel's gradient; the forward convolution is the other way round), and at most
    `MAX_SLICES` of them."""
    _, rhs_spec, out_spec = conv.params["dimension_numbers"]
    window = math.prod(conv.invars[1].aval.shape[axis] for axis in rhs_spec[2:])
    positions = math.prod(conv.outvars[0].aval.shape[axis] for axis in out_spec[2:])
    return positions <= min(window, MAX_SLICES)


def _conv_by_slices(
    lhs,
    rhs,
    *,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    batch_group_count,
    precision,
    preferred_element_type,
    **_,
):
    """`lax.conv_general_dilated` as one matrix product per output position, of a strided
    slice of the dilated, padded `lhs` with `rhs`.

    out[n, o, s] = Σ_{c, k} lhsₚ[n, c, s·stride + k·dilation] rhs[o, c, k], where lhsₚ is
    `lhs` with its spatial axes dilated and padded: the slice of position s holds
    lhsₚ[:, :, s·stride + k·dilation] for every window tap k, so the sum over (c, k) is a
    matrix product. Groups are a batch axis of the product: output channel block g reads
    input channel block g (feature groups) or input batch block g (batch groups). For a
    kernel's gradient the output positions are the kernel's taps and the window is the
    layer's output.
    """
    lhs_spec, rhs_spec, out_spec = dimension_numbers
    lhs = lax.transpose(lhs, tuple(lhs_spec))  # (n, c, *spatial)
    rhs = lax.transpose(rhs, tuple(rhs_spec))  # (o, c / feature groups, *window)
    config = [(0, 0, 0), (0, 0, 0)]
    config += [(low, high, d - 1) for (low, high), d in zip(padding, lhs_dilation, strict=True)]
    lhs = lax.pad(lhs, np.zeros((), lhs.dtype), config)
    (n, c), (o, *window) = lhs.shape[:2], (rhs.shape[0], *rhs.shape[2:])
    spans = [(k - 1) * d + 1 for k, d in zip(window, rhs_dilation, strict=True)]
    positions = [
        (size - span) // stride + 1
        for size, span, stride in zip(lhs.shape[2:], spans, window_strides, strict=True)
    ]
    f, g = feature_group_count, batch_group_count
    rhs = rhs.reshape(f * g, o // (f * g), c // f, math.prod(window))
    group_axis = 3 if f > 1 else 1
    products = []
    for position in itertools.product(*map(range, positions)):
        start = [0, 0, *(p * s for p, s in zip(position, window_strides, strict=True))]
        limit = [n, c, *(a + span for a, span in zip(start[2:], spans, strict=True))]
        taps = lax.slice(lhs, start, limit, (1, 1, *rhs_dilation))
        taps = taps.reshape(g, n // g, f, c // f, math.prod(window))
        product = lax.dot_general(
            taps,
            rhs,
            (((3, 4), (2, 3)), ((group_axis - 1,), (0,))),
            precision=precision,
            preferred_element_type=preferred_element_type,
        )  # (groups, n / g or 1, 1 or n, o / groups)
        products.append(lax.transpose(product, (1, 2, 0, 3)).reshape(1, n // g, o))
    out = lax.concatenate(products, 0).reshape(*positions, n // g, o)
    held = [*out_spec[2:], out_spec[0], out_spec[1]]  # the output axis each axis of `out` is
    return lax.transpose(out, tuple(int(i) for i in np.argsort(held)))


def _inlined(fn: Callable, eqn: core.JaxprEqn) -> list[core.JaxprEqn]:
    """The equations of `fn(*eqn's inputs, **eqn's params)`, reading `eqn`'s inputs and
    writing its output."""
    args = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in eqn.invars]
    closed = jax.make_jaxpr(lambda *a: fn(*a, **eqn.params))(*args)
    inner = closed.jaxpr
    names = dict(zip(inner.invars, eqn.invars, strict=True))
    names[inner.outvars[0]] = eqn.outvars[0]

    def rename(var):
        return names.get(var, var) if isinstance(var, core.Var) else var

    return [
        e.replace(invars=[rename(v) for v in e.invars], outvars=[rename(v) for v in e.outvars])
        for e in inner.eqns
    ]


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
        params = {
            name: _rewrite_nested(value, _fold_transposed_dots)
            for name, value in eqn.params.items()
        }
        if any(params[name] is not value for name, value in eqn.params.items()):
            eqn, changed = eqn.replace(params=params), True
        eqns.append(eqn)
    return jaxpr.replace(eqns=eqns) if changed else jaxpr


def _rewrite_nested(value: Any, rewrite: Callable[[core.Jaxpr], core.Jaxpr]) -> Any:
    """A parameter of an equation with `rewrite` applied to the jaxprs in it; `value` itself
    if none change."""
    if isinstance(value, core.ClosedJaxpr):
        inner = rewrite(value.jaxpr)
        return value if inner is value.jaxpr else value.replace(jaxpr=inner)
    if isinstance(value, core.Jaxpr):
        return rewrite(value)
    if isinstance(value, tuple) and any(isinstance(v, _JAXPRS) for v in value):
        items = tuple(_rewrite_nested(v, rewrite) for v in value)
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
