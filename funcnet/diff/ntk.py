"""The empirical neural tangent kernel Θ(x₁, x₂) = J(x₁) J(x₂)ᵀ, by three methods.

For a model f(θ, x) with outputs in ℝᴼ, J(x) = ∂f(θ, x)/∂θ is the O × P Jacobian over the P
parameters, and the empirical NTK is the O × O matrix Θ(x₁, x₂) = J(x₁) J(x₂)ᵀ
= Σ_leaves J_leaf(x₁) J_leaf(x₂)ᵀ. Under gradient flow on a loss L, the outputs move as
df(x)/dt = −Σ_x' Θ(x, x') ∂L/∂f(x'), and as the width grows Θ tends to a fixed kernel
(Jacot et al., 2018). The three methods give the same numbers at different costs
(Novak et al., 2022, "Fast Finite Width Neural Tangent Kernel"):

- `"jacobian"`: per-example Jacobians from reverse (or forward) mode, contracted leaf by leaf,
  Θ[i, j] = Σ_leaves J_leaf(xᵢ) J_leaf(xⱼ)ᵀ. Memory n · O · P for the Jacobians.
- `"ntvp"`: NTK-vector products Θ(X₁, X₂) v = J₁ (J₂ᵀ v), a `vjp` of f over the batch X₂
  followed by a `jvp` of f over X₁, never forming J; the kernel is assembled column by
  column from the n₂ · O one-hot vectors v.
- `"structured"`: for every parameter used once, as an operand of one matrix product
  y = x W (a dense kernel), its block is J_W(x₁) J_W(x₂)ᵀ = (x₁ · x₂) (δ₁ δ₂ᵀ), with
  x the product's other operand and δ = ∂f/∂y the signal back-propagated to its output, so
  no per-example weight Jacobian is formed. For a product over A positions (x of shape
  (A, K)) the block is Σ_{a,b} (x₁[a] · x₂[b]) (δ₁[:, a] δ₂[:, b]ᵀ), and the contraction
  order (form J_W = Σ_a δ[:, a] ⊗ x[a] first, or the Gram matrices first) is the cheaper of
  the two. Every other parameter (biases, convolution kernels, parameters used twice or
  inside `lax.scan`) falls back to the Jacobian method.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax.extend import core

from funcnet._checks import check_float_tree, check_function
from funcnet.diff._taps import eval_tapped, find_eqn, find_uses, is_plain_dot
from funcnet.diff.modes import jacobian
from funcnet.nn.core import as_layer

PyTree = Any
NtkMethod = Literal["jacobian", "ntvp", "structured"]
_METHODS = ("jacobian", "ntvp", "structured")

__all__ = ["empirical_ntk", "layer_ntk"]


def empirical_ntk(
    f: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    x1: PyTree,
    x2: PyTree | None = None,
    *,
    method: NtkMethod = "jacobian",
    trace: bool = False,
    diagonal: bool = False,
    batch_size: int | None = None,
) -> jax.Array:
    """Empirical neural tangent kernel Θ(x₁, x₂) = J(x₁) J(x₂)ᵀ of a model over its params.

    With J(x) = ∂f(θ, x)/∂θ of shape (out, P) for one example,
    Θ[i, j, c, d] = Σ_p ∂f_c(θ, x₁ᵢ)/∂θ_p · ∂f_d(θ, x₂ⱼ)/∂θ_p. The methods (module
    docstring) agree to round-off; they differ in time and memory.

    Args:
      f: `f(params, x) -> outputs` of shape (batch, out), each row depending on its own
        example only (no batch statistics).
      params: pytree of float arrays, the point θ.
      x1: a batch of n₁ inputs: an array, or a pytree of arrays sharing the leading axis.
      x2: a batch of n₂ inputs of the same kind, or None for x1 itself.
      method: `"jacobian"`, `"ntvp"` or `"structured"` (module docstring).
      trace: return tr Θ(x₁ᵢ, x₂ⱼ) = Σ_c Θ[i, j, c, c] instead of the out × out blocks.
      diagonal: return only Θ(x₁ᵢ, x₁ᵢ), i = 1..n₁ (x2 must be None).
      batch_size: compute the kernel in blocks of at most this many examples of x1 and of
        x2 (under `lax.map`), so that memory depends on the block size, not on n₁ and n₂.

    Returns:
      Shape (n₁, n₂, out, out); (n₁, n₂) with `trace`; (n₁, out, out) with `diagonal`; (n₁,)
      with both.
    """
    check_function("empirical_ntk", "f", f)
    check_float_tree("empirical_ntk", "params", params)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive int or None, got {batch_size!r}")
    if diagonal and x2 is not None:
        raise ValueError("diagonal=True computes Θ(x, x) for the examples of x1; pass no x2")
    n1 = _batch_len(x1, "x1")
    n2 = n1 if x2 is None else _batch_len(x2, "x2")
    out_dim = _check_outputs(f, params, x1)
    kind = ("diag" if diagonal else "full") + ("_trace" if trace else "")
    rules = _Rules(method, f, params, jax.tree.map(lambda leaf: leaf[0], x1), out_dim)

    if diagonal:
        return _map_chunks(lambda xa: rules.diag(xa, kind), x1, n1, batch_size)
    if batch_size is None:
        if x2 is None:
            fa = rules.prepare(x1)
            return rules.pair(fa, fa, kind)
        return rules.pair(rules.prepare(x1), rules.prepare(x2), kind)

    x2 = x1 if x2 is None else x2

    def rows(xa: PyTree) -> jax.Array:
        fa = rules.prepare(xa)
        block = _map_chunks(
            lambda xb: rules.pair(fa, rules.prepare(xb), kind), x2, n2, batch_size, axis=1
        )
        return block

    return _map_chunks(rows, x1, n1, batch_size)


def layer_ntk(
    layer: Any,
    params: PyTree,
    state: PyTree,
    x1: PyTree,
    x2: PyTree | None = None,
    **kwargs: Any,
) -> jax.Array:
    """Empirical NTK of a funcnet `Layer` in evaluation mode (`train=False`).

    Θ(x₁, x₂) = J(x₁) J(x₂)ᵀ for f(θ, x) = `layer.apply(θ, state, x)[0]`, whose output must
    have shape (batch, out); `state` is held fixed. The keyword arguments (`method`, `trace`,
    `diagonal`, `batch_size`) and the shapes are those of `empirical_ntk`.
    """
    layer = as_layer(layer, owner="layer_ntk")
    return empirical_ntk(lambda p, x: layer.apply(p, state, x)[0], params, x1, x2, **kwargs)


def _batch_len(x: PyTree, name: str) -> int:
    leaves = jax.tree.leaves(x)
    if not leaves or any(jnp.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError(f"{name} must be an array or pytree of arrays with a batch axis")
    sizes = {jnp.shape(leaf)[0] for leaf in leaves}
    if len(sizes) != 1 or 0 in sizes:
        shapes = [tuple(jnp.shape(leaf)) for leaf in leaves]
        raise ValueError(f"{name}'s leaves must share a nonzero leading axis, got {shapes}")
    return sizes.pop()


def _check_outputs(f: Callable, params: PyTree, x: PyTree) -> int:
    n = _batch_len(x, "x1")
    out = jax.eval_shape(f, params, x)
    shape = getattr(out, "shape", None)
    if shape is None or len(shape) != 2 or shape[0] != n:
        got = jax.tree.map(lambda s: tuple(s.shape), out)
        raise ValueError(f"f(params, x) must return one array of shape (batch={n}, out); got {got}")
    return shape[1]


def _map_chunks(
    fn: Callable[[PyTree], jax.Array], x: PyTree, n: int, size: int | None, axis: int = 0
) -> jax.Array:
    """`fn` over blocks of at most `size` examples of `x`, results joined along `axis`.

    The last block is padded by repeating the last example; the padding is cut off after.
    """
    if size is None or size >= n:
        return fn(x)
    chunks = -(-n // size)
    pad = chunks * size - n

    def blocks(leaf: jax.Array) -> jax.Array:
        leaf = jnp.concatenate([leaf, jnp.repeat(leaf[-1:], pad, axis=0)])
        return leaf.reshape(chunks, size, *leaf.shape[1:])

    out = jax.lax.map(fn, jax.tree.map(blocks, x))  # (chunks, ..., size at axis, ...)
    out = jnp.moveaxis(out, 0, axis)
    shape = (*out.shape[:axis], chunks * size, *out.shape[axis + 2 :])
    return jax.lax.slice_in_dim(out.reshape(shape), 0, n, axis=axis)


def _spec(kind: str, left: str, right: str) -> str:
    """Einsum output and right-operand letters for the kind of kernel.

    Left operands index examples by `i` and outputs by `c`, right ones by `j` and `d`;
    the trace sets d = c, the diagonal j = i.
    """
    out = "ijcd"
    if kind.startswith("diag"):
        right, out = right.replace("j", "i"), out.replace("j", "")
    if kind.endswith("trace"):
        right, out = right.replace("d", "c"), out.replace("c", "").replace("d", "")
    return f"{left},{right}->{out}"


def _contract(kind: str, jac_a: list[jax.Array], jac_b: list[jax.Array]) -> jax.Array:
    """Σ over leaves of J_a J_bᵀ, each leaf's Jacobian of shape (n, out, size)."""
    spec = _spec(kind, "icp", "jdp")
    blocks = [jnp.einsum(spec, a, b) for a, b in zip(jac_a, jac_b, strict=True)]
    return sum(blocks[1:], blocks[0])


class _Rules:
    """The two steps of a method: per-batch features, and the kernel of two feature sets."""

    def __init__(self, method: str, f: Callable, params: PyTree, x0: PyTree, out_dim: int):
        self.method, self.f, self.params, self.out_dim = method, f, params, out_dim
        self.g = lambda p, xi: f(p, jax.tree.map(lambda leaf: leaf[None], xi))[0]
        if method == "structured":
            self.plan = _StructuredPlan(self.g, params, x0)

    def prepare(self, x: PyTree) -> Any:
        if self.method == "jacobian":
            jac = jax.vmap(lambda xi: jacobian(lambda p: self.g(p, xi), self.params))(x)
            return [leaf.reshape(*leaf.shape[:2], -1) for leaf in jax.tree.leaves(jac)]
        if self.method == "structured":
            return jax.vmap(self.plan.features)(x)
        return x

    def pair(self, fa: Any, fb: Any, kind: str) -> jax.Array:
        if self.method == "jacobian":
            return _contract(kind, fa, fb)
        if self.method == "structured":
            return self.plan.kernel(fa, fb, kind)
        return self._ntvp(fa, fb, kind)

    def diag(self, x: PyTree, kind: str) -> jax.Array:
        if self.method == "ntvp":
            one = lambda xi: self._ntvp(*[jax.tree.map(lambda leaf: leaf[None], xi)] * 2, "full")
            blocks = jax.vmap(one)(x)[:, 0, 0]
            return jnp.trace(blocks, axis1=-2, axis2=-1) if kind.endswith("trace") else blocks
        fx = self.prepare(x)
        return self.pair(fx, fx, kind)

    def _ntvp(self, xa: PyTree, xb: PyTree, kind: str) -> jax.Array:
        """Θ(X_a, X_b) v = J_a (J_bᵀ v) for the n_b · out one-hot vectors v."""
        _, vjp_b = jax.vjp(lambda p: self.f(p, xb), self.params)
        _, jvp_a = jax.linearize(lambda p: self.f(p, xa), self.params)
        nb = _batch_len(xb, "x2")
        dtype = jax.tree.leaves(self.params)[0].dtype
        basis = jnp.eye(nb * self.out_dim, dtype=dtype).reshape(-1, nb, self.out_dim)
        columns = jax.vmap(lambda v: jvp_a(vjp_b(v)[0]))(basis)  # (nb · d, na, c)
        columns = columns.reshape(nb, self.out_dim, *columns.shape[1:])
        theta = jnp.transpose(columns, (2, 0, 3, 1))  # (na, nb, c, d)
        return jnp.trace(theta, axis1=2, axis2=3) if kind.endswith("trace") else theta


class _Dot:
    """A matrix product y = dot(x, W) of the model that holds a structured parameter W."""

    def __init__(self, eqn: core.JaxprEqn, position: int, leaf: int):
        self.leaf, self.position = leaf, position
        contract, _ = eqn.params["dimension_numbers"]
        lhs, rhs = eqn.invars
        ndims = (lhs.aval.ndim, rhs.aval.ndim)
        other = 1 - position
        # y's axes are (lhs free, rhs free); x's free axes come first when x is the lhs.
        self.x_contract = tuple(contract[other])
        self.x_free = tuple(a for a in range(ndims[other]) if a not in self.x_contract)
        n_free = [ndims[k] - len(contract[k]) for k in (0, 1)]
        x_axes = list(range(n_free[0])) if other == 0 else list(range(n_free[0], sum(n_free)))
        w_axes = [a for a in range(sum(n_free)) if a not in x_axes]
        self.y_perm = (0, *(1 + a for a in x_axes), *(1 + a for a in w_axes))

    def features(self, x: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x as (A, K) and δ = ∂f/∂y as (out, A, O), A the positions the product shares W over."""
        x = jnp.transpose(x, self.x_free + self.x_contract)
        positions = math.prod(x.shape[: len(self.x_free)])
        x = x.reshape(positions, -1)
        delta = jnp.transpose(delta, self.y_perm)
        return x, delta.reshape(delta.shape[0], positions, -1)


class _StructuredPlan:
    """The model's jaxpr, which params enter one matrix product each, and how to evaluate it
    with a perturbation added to those products' outputs."""

    def __init__(self, g: Callable, params: PyTree, x0: PyTree):
        abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
        self.closed = jax.make_jaxpr(g)(abstract(params), abstract(x0))
        self.params = params
        leaves = jax.tree.leaves(params)
        self.n_params = len(leaves)
        uses: dict[int, list] = {i: [] for i in range(self.n_params)}
        jaxpr = self.closed.jaxpr
        alias = {v: i for i, v in enumerate(jaxpr.invars[: self.n_params])}
        find_uses(jaxpr, alias, (), uses, through_reshapes=True)
        self.dots: dict[tuple, _Dot] = {}
        for leaf, found in uses.items():
            if len(found) == 1 and found[0] is not None and is_plain_dot(found[0][1]):
                path, eqn, position = found[0]
                if path not in self.dots:
                    self.dots[path] = _Dot(eqn, position, leaf)
        structured = {dot.leaf for dot in self.dots.values()}
        self.rest = [i for i in range(self.n_params) if i not in structured]
        self.out_shapes = {path: find_eqn(jaxpr, path).outvars[0].aval for path in self.dots}

    def _run(self, leaves: list, xi: PyTree, eps: dict) -> tuple[jax.Array, dict]:
        taps: dict = {}
        args = [*leaves, *jax.tree.leaves(xi)]
        (out,) = eval_tapped(self.closed.jaxpr, self.closed.consts, args, (), eps, taps)
        return out, taps

    def features(self, xi: PyTree) -> tuple[list, list]:
        """For one example: the fallback leaves' Jacobians (out, size), and for every
        structured product its (x, δ) of `_Dot.features`."""
        leaves = jax.tree.leaves(self.params)
        eps0 = {p: jnp.zeros(a.shape, a.dtype) for p, a in self.out_shapes.items()}

        def out(rest: list, eps: dict) -> jax.Array:
            full = list(leaves)
            for i, value in zip(self.rest, rest, strict=True):
                full[i] = value
            return self._run(full, xi, eps)[0]

        jac_rest, deltas = jacobian(lambda a: out(*a), ([leaves[i] for i in self.rest], eps0))
        _, taps = self._run(leaves, xi, {})
        rest = [j.reshape(j.shape[0], -1) for j in jac_rest]
        pairs = [
            dot.features(taps[path][1 - dot.position], deltas[path])
            for path, dot in self.dots.items()
        ]
        return rest, pairs

    def kernel(self, fa: tuple, fb: tuple, kind: str) -> jax.Array:
        (rest_a, pairs_a), (rest_b, pairs_b) = fa, fb
        blocks = [_contract(kind, rest_a, rest_b)] if self.rest else []
        spec = _spec(kind, "iak,icao", "jbk,jdbo")
        for (xa, da), (xb, db) in zip(pairs_a, pairs_b, strict=True):
            # The optimal order is either (x₁·x₂)(δ₁δ₂ᵀ), or J_W = δ ⊗ x formed on each side.
            blocks.append(jnp.einsum(spec, xa, da, xb, db, optimize="optimal"))
        return sum(blocks[1:], blocks[0])
