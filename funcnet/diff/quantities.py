"""Per-example gradients and diagonal curvature of a batch loss, in one pass over the batch.

For a model f(θ, x) with outputs F_n = f(θ, x_n) of shape (C,) and a batch loss
L(θ) = Σ_n l_n(F_n), a mean (l_n = ℓ_n / B) or any other sum of one term per example,
`batch_quantities` computes, from one forward pass and one vectorised backward pass of a
set of output vectors per example:

- ``"batch_grad"``: g_n = ∇_θ l_n, the gradient of each example's share of the loss. For a
  mean this is (1/B)∇ℓ_n, and Σ_n g_n is the gradient of L (BackPACK's `BatchGrad`).
- ``"batch_l2"``: ‖g_n‖², the squared norm of each g_n over each leaf (`BatchL2Grad`).
- ``"sum_grad_squared"``: Σ_n g_n², elementwise (`SumGradSquared`).
- ``"variance"``: (1/B) Σ_n g_n² − ((1/B) Σ_n g_n)², elementwise (`Variance`).
- ``"diag_ggn"``: the diagonal of the generalised Gauss-Newton matrix G = Σ_n J_nᵀ H_n J_n,
  J_n = ∂F_n/∂θ, H_n = ∂²L/∂F_n², as Σ_n Σ_c λ_{n,c} (J_nᵀ q_{n,c})² from the eigenpairs of
  H_n (`DiagGGNExact`; for a convex loss, the columns √λ q are a square root S_n of H_n).
- ``"diag_ggn_mc"``: its Monte-Carlo estimate, Σ_n (s/M) Σ_m (J_nᵀ ĝ_{n,m})², with
  ĝ_{n,m} = ∇_F (−log p(ŷ | F_n)) at M targets ŷ drawn from the model's likelihood
  (`DiagGGNMC`): ``"categorical"``, p = softmax(F_n), ĝ = softmax(F_n) − onehot(ŷ);
  ``"gaussian"``, ŷ = F_n + σε, ĝ ∝ ε. The loss must be s times the likelihood's negative
  log-likelihood summed over the batch, s the same for every example (1/B for
  `softmax_cross_entropy` and "categorical"; 2/(B·C) for `mse`, which is PyTorch's, and
  "gaussian" with σ² = ½); s is read off the loss as Σ_n tr H_n / Σ_n tr F_n, F_n the
  likelihood's Fisher matrix, so that E[estimate] = diag G.
- ``"diag_hessian"``: the diagonal of the Hessian ∇²L = G + Σ_n Σ_c (∂L/∂F_{n,c}) ∇²F_{n,c}
  (`DiagHessian`). When the model is piecewise linear in each param leaf (dense and conv
  layers, ReLU, max pooling: read off its jaxpr) the second term's diagonal is zero and the
  result is the GGN's. Otherwise its diagonal is added exactly by Hessian-vector products of
  Σ_c (∂L/∂F_{n,c}) F_{n,c} (below).

How each leaf is computed:

- A kernel used once, as an operand of one matrix product y = x W with x's free axes of size
  one per example (a dense layer): its per-example gradient for an output vector u is the
  outer product x_n ⊗ δ_n of the layer's input and δ_n = J_{y,n}ᵀ u, the vector
  back-propagated to y, read by adding a zero to y and differentiating by it. Then
  ‖g_n‖² = ‖x_n‖²‖δ_n‖², and a sum of squares Σ_n Σ_k w_{nk} (x_n ⊗ δ_{nk})² is the product
  (x²)ᵀ (Σ_k w δ_k²) over the batch: no per-example kernel gradient is formed except for
  `batch_grad` itself. For a kernel shared over A positions (a dense layer on a sequence)
  g_n = Σ_a x_{n,a} ⊗ δ_{n,a}, whose square is not the sum of the squares: it is formed per
  example and per output vector before squaring.
- Every other leaf (biases, conv kernels, norms' scales, leaves used twice): per-example
  vector-Jacobian products under `vmap`, one per example and output vector, each the size
  of the leaf, squared and summed. On the CPU a conv kernel's product is computed as in
  `per_example_grads`: a strided slice of the input and a batched matrix product per tap.

The output vectors per example are: ∂L/∂F_n (first-order quantities), the C eigenvectors of
H_n (``"diag_ggn"``, from C Hessian-vector products of the loss over the outputs), the M
sampled gradients (``"diag_ggn_mc"``). The backward pass costs about as much as 1 + C + M
gradients (the first-order quantities alone: one); the residual of ``"diag_hessian"`` for a
model that is not piecewise linear costs D Hessian-vector products per example, D the
number of dense-layer outputs plus the size of every other leaf.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core
from jax.flatten_util import ravel_pytree

from funcnet._checks import check_function, check_int
from funcnet._keys import typed_key
from funcnet.diff._output_hessian import eigen_factors, output_hessian_blocks
from funcnet.diff._taps import CALLS, eval_tapped, find_eqn, find_uses, is_plain_dot
from funcnet.diff.per_example import with_convs_by_slices

PyTree = Any
Quantity = Literal[
    "batch_grad",
    "batch_l2",
    "sum_grad_squared",
    "variance",
    "diag_ggn",
    "diag_ggn_mc",
    "diag_hessian",
]
Likelihood = Literal["categorical", "gaussian"]
QUANTITIES: tuple[str, ...] = typing.get_args(Quantity)
_LIKELIHOODS = ("categorical", "gaussian")
_OWNER = "batch_quantities"

__all__ = ["QUANTITIES", "BatchQuantities", "batch_quantities"]


class BatchQuantities(NamedTuple):
    """What `batch_quantities` returns; a quantity not asked for is None.

    `loss` is L, a scalar; `grad` is ∇L = Σ_n g_n, shaped like the params. `batch_grad`,
    `batch_l2` have a leading axis of size B on every leaf (`batch_l2` is (B,) per leaf);
    the others are shaped like the params.
    """

    loss: jax.Array
    grad: PyTree
    batch_grad: PyTree | None = None
    batch_l2: PyTree | None = None
    sum_grad_squared: PyTree | None = None
    variance: PyTree | None = None
    diag_ggn: PyTree | None = None
    diag_ggn_mc: PyTree | None = None
    diag_hessian: PyTree | None = None


def batch_quantities(
    f: Callable[[PyTree, PyTree], jax.Array],
    params: PyTree,
    inputs: PyTree,
    *,
    loss_of_outputs: Callable[[jax.Array], jax.Array],
    quantities: str | Sequence[str],
    likelihood: Likelihood = "categorical",
    key: jax.Array | None = None,
    mc_samples: int = 1,
) -> BatchQuantities:
    """Per-example gradients, their norms and moments, and diagonal curvature, in one pass.

    The quantities and their conventions are those of the module docstring, which are
    BackPACK's for a loss with ``reduction="mean"``: each per-example gradient carries the
    loss's 1/B, so Σ_n g_n is the batch gradient, and the curvature diagonals are those of
    the batch loss L itself.

    Args:
      f: `f(params, inputs) -> outputs` of shape (B, C), row n depending on example n alone
        (no batch statistics, no dropout).
      params: pytree of float arrays.
      inputs: the batch, an array or pytree of arrays sharing a leading axis of size B.
      loss_of_outputs: `outputs -> L`, the batch loss of outputs of shape (B, C) (close over
        the targets), one term per example: `softmax_cross_entropy(outputs, labels)`,
        `mse(outputs, targets)`.
      quantities: a name or names from `QUANTITIES`.
      likelihood: ``"categorical"`` or ``"gaussian"``, the distribution whose targets
        ``"diag_ggn_mc"`` samples (module docstring).
      key: a random key, needed by ``"diag_ggn_mc"`` only.
      mc_samples: M, the number of sampled targets per example for ``"diag_ggn_mc"``.

    Returns:
      A `BatchQuantities`: `loss`, `grad` and the quantities asked for.
    """
    check_function("batch_quantities", "f", f)
    check_function("batch_quantities", "loss_of_outputs", loss_of_outputs)
    wanted = _check_quantities(quantities)
    if likelihood not in _LIKELIHOODS:
        raise ValueError(
            f"{_OWNER}: likelihood must be 'categorical' or 'gaussian', got {likelihood!r:.80}"
        )
    mc_samples = check_int(_OWNER, "mc_samples", mc_samples)
    draws = None
    if "diag_ggn_mc" in wanted:
        if key is None:
            raise ValueError(f"{_OWNER}: 'diag_ggn_mc' samples targets and needs key")
        draws = _draw(typed_key(key, caller=_OWNER), f, params, inputs, likelihood, mc_samples)
    return _quantities(f, params, inputs, loss_of_outputs, wanted, likelihood, draws)


def _check_quantities(quantities: str | Sequence[str]) -> frozenset[str]:
    if not isinstance(quantities, str | tuple | list):
        raise TypeError(
            f"{_OWNER}: quantities must be a name or a sequence of names from "
            f"{', '.join(QUANTITIES)}, got {type(quantities).__name__} {quantities!r:.40}"
        )
    names = (quantities,) if isinstance(quantities, str) else tuple(quantities)
    for name in names:
        if name not in QUANTITIES:
            allowed = ", ".join(QUANTITIES)
            raise ValueError(f"{_OWNER}: unknown quantity {name!r:.80}; choose from {allowed}")
    if not names:
        raise ValueError(f"{_OWNER}: quantities is empty; choose from {', '.join(QUANTITIES)}")
    return frozenset(names)


def _batch_size(inputs: PyTree) -> int:
    leaves = jax.tree.leaves(inputs)
    sizes = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else 0 for leaf in leaves}
    if len(sizes) != 1 or 0 in sizes:
        shapes = [tuple(jnp.shape(leaf)) for leaf in leaves]
        raise ValueError(f"{_OWNER}: inputs must share a nonzero leading axis, got {shapes}")
    return sizes.pop()


def _draw(
    key: jax.Array, f: Callable, params: PyTree, inputs: PyTree, likelihood: str, m: int
) -> jax.Array:
    """The standardised draws: classes (M, B) for "categorical", ε ~ N(0, I) of shape
    (M, B, C) for "gaussian"."""
    out = jax.eval_shape(f, params, inputs)
    b, c = out.shape[0], out.shape[-1]
    if likelihood == "gaussian":
        return jax.random.normal(key, (m, b, c), out.dtype)
    logits = jax.lax.stop_gradient(f(params, inputs))
    return jax.random.categorical(key, logits, shape=(m, b))


def _sampled_columns(
    outputs: jax.Array, blocks: jax.Array, likelihood: str, draws: jax.Array
) -> jax.Array:
    """(B, M, C): √(s/M) ĝ_{n,m}, the sampled gradients of the negative log-likelihood
    scaled so that their outer products average to H_n (module docstring)."""
    m = draws.shape[0]
    trace_h = jnp.sum(jnp.trace(blocks, axis1=1, axis2=2))
    if likelihood == "gaussian":
        grads = draws.astype(outputs.dtype)  # ∝ ε; its Fisher is I
        trace_f = jnp.asarray(outputs.size, outputs.dtype)
    else:
        p = jax.nn.softmax(jax.lax.stop_gradient(outputs))
        grads = p[None] - jax.nn.one_hot(draws, outputs.shape[-1], dtype=outputs.dtype)
        trace_f = jnp.sum(1 - jnp.sum(p * p, axis=-1))
    scale = jnp.where(trace_f > 0, trace_h / jnp.where(trace_f > 0, trace_f, 1), 0)
    return jnp.swapaxes(grads, 0, 1) * jnp.sqrt(scale / m)


class _Kernel(NamedTuple):
    """A param leaf used once, as an operand of one matrix product y = dot(x, W)."""

    leaf: int
    position: int  # W's operand index
    x_free: tuple[int, ...]
    x_contract: tuple[int, ...]
    y_perm: tuple[int, ...]  # (column, x's free axes of y, W's free axes of y)
    positions: int  # A, the size of x's free axes (1 for a dense layer on one example)
    w_order: tuple[int, ...]  # W's axes as (contracted with x, free)
    w_shape: tuple[int, ...]  # W as the product reads it: the leaf, or a reshape of it

    @classmethod
    def of(cls, eqn: core.JaxprEqn, position: int, leaf: int) -> _Kernel:
        contract, _ = eqn.params["dimension_numbers"]
        x_var, w_var = eqn.invars[1 - position], eqn.invars[position]
        x_contract = tuple(contract[1 - position])
        x_free = tuple(a for a in range(x_var.aval.ndim) if a not in x_contract)
        w_free = tuple(a for a in range(w_var.aval.ndim) if a not in contract[position])
        # dot_general's output axes are (lhs free, rhs free).
        n_y = len(x_free) + len(w_free)
        x_axes = list(range(len(x_free))) if position == 1 else list(range(len(w_free), n_y))
        w_axes = [a for a in range(n_y) if a not in x_axes]
        y_perm = (0, *(1 + a for a in x_axes), *(1 + a for a in w_axes))
        positions = math.prod(x_var.aval.shape[a] for a in x_free)
        return cls(leaf, position, x_free, x_contract, y_perm, positions,
                   (*contract[position], *w_free), tuple(w_var.aval.shape))  # fmt: skip

    def rows(self, x: jax.Array, delta: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x as (A, in), δ of shape (K, *y.shape) as (K, A, out)."""
        x = jnp.transpose(x, self.x_free + self.x_contract).reshape(self.positions, -1)
        return x, self.out_rows(delta)

    def out_rows(self, delta: jax.Array) -> jax.Array:
        """An array of shape (K, *y.shape) as (K, A, out)."""
        delta = jnp.transpose(delta, self.y_perm)
        return delta.reshape(delta.shape[0], self.positions, -1)

    def to_leaf(self, matrix: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        """A (..., in, out) array in the leaf's layout (..., *shape): W's axes put back, then
        reshaped to the leaf's shape where the product reads a reshape of it."""
        lead = matrix.shape[:-2]
        matrix = matrix.reshape(*lead, *(self.w_shape[a] for a in self.w_order))
        inverse = np.argsort(self.w_order)
        matrix = jnp.transpose(matrix, (*range(len(lead)), *(len(lead) + i for i in inverse)))
        return matrix.reshape(*lead, *shape)


class _Plan:
    """The jaxpr of one example's outputs, its structured kernels and the other leaves."""

    def __init__(self, f: Callable, params: PyTree, inputs: PyTree):
        self.g = lambda p, xi: f(p, jax.tree.map(lambda a: a[None], xi))[0]
        abstract = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)
        x0 = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), inputs)
        self.closed = jax.make_jaxpr(self.g)(abstract(params), x0)
        jaxpr = self.closed.jaxpr
        self.n_params = len(jax.tree.leaves(params))
        uses: dict[int, list] = {i: [] for i in range(self.n_params)}
        alias = {v: i for i, v in enumerate(jaxpr.invars[: self.n_params])}
        find_uses(jaxpr, alias, (), uses, through_reshapes=True)
        self.kernels: dict[tuple, _Kernel] = {}
        for leaf, found in uses.items():
            if len(found) == 1 and found[0] is not None and is_plain_dot(found[0][1]):
                path, eqn, position = found[0]
                if path not in self.kernels:
                    self.kernels[path] = _Kernel.of(eqn, position, leaf)
        kernel_leaves = {k.leaf for k in self.kernels.values()}
        self.rest = [i for i in range(self.n_params) if i not in kernel_leaves]
        self.y_avals = {path: find_eqn(jaxpr, path).outvars[0].aval for path in self.kernels}

    def run(self, leaves: list, xi: PyTree, sub: dict, eps: dict) -> tuple[jax.Array, dict]:
        """One example's outputs with the leaves `sub` (index -> value) replaced and `eps`
        added to the products' outputs; and the products' operands."""
        full = [sub.get(i, leaf) for i, leaf in enumerate(leaves)]
        taps: dict = {}
        args = [*full, *jax.tree.leaves(xi)]
        (out,) = eval_tapped(self.closed.jaxpr, self.closed.consts, args, (), eps, taps)
        return out, taps

    def backward(self, leaves: list, xi: PyTree, vectors: jax.Array) -> tuple[list, list]:
        """For one example and K output vectors u_k (K, C): the other leaves' J_nᵀ u_k,
        each (K, *leaf.shape), and for each kernel (x (A, in), δ (K, A, out))."""
        eps0 = {p: jnp.zeros(a.shape, a.dtype) for p, a in self.y_avals.items()}
        rest0 = [leaves[i] for i in self.rest]

        def out(rest: list, eps: dict) -> tuple[jax.Array, dict]:
            return self.run(leaves, xi, dict(zip(self.rest, rest, strict=True)), eps)

        _, pullback, taps = jax.vjp(out, rest0, eps0, has_aux=True)
        rest_vjps, deltas = jax.vmap(pullback)(vectors)
        pairs = [
            kernel.rows(taps[path][1 - kernel.position], deltas[path])
            for path, kernel in self.kernels.items()
        ]
        return rest_vjps, pairs

    def residual(self, leaves: list, xi: PyTree, u: jax.Array) -> tuple[list, list]:
        """For one example, the diagonal of ∇²(uᵀ F_n) (u held fixed): over each other leaf
        (and each kernel shared over positions), and over each dense kernel's output y.

        D forward-over-reverse Hessian-vector products, D the number of entries of the
        variables, each a one-hot direction whose own entry is kept.
        """
        dense = [p for p, k in self.kernels.items() if k.positions == 1]
        shared = [k.leaf for k in self.kernels.values() if k.positions != 1]
        names = self.rest + shared
        variables = (
            [leaves[i] for i in names],
            {p: jnp.zeros(self.y_avals[p].shape, self.y_avals[p].dtype) for p in dense},
        )
        flat, unravel = ravel_pytree(variables)

        def phi(z: jax.Array) -> jax.Array:
            values, eps = unravel(z)
            out, _ = self.run(leaves, xi, dict(zip(names, values, strict=True)), eps)
            return jnp.vdot(u, out)

        grad = jax.grad(phi)
        eye = jnp.eye(flat.size, dtype=flat.dtype)
        diag = jax.vmap(lambda e: jnp.vdot(e, jax.jvp(grad, (flat,), (e,))[1]))(eye)
        values, eps = unravel(diag)
        by_leaf = dict(zip(names, values, strict=True))
        y_diag = [
            self.kernels[p].out_rows(eps[p][None])[0, 0] if p in eps else None for p in self.kernels
        ]
        return [by_leaf.get(i) for i in range(self.n_params)], y_diag


def _quantities(
    f: Callable,
    params: PyTree,
    inputs: PyTree,
    loss_of_outputs: Callable,
    wanted: frozenset[str],
    likelihood: str,
    draws: jax.Array | None,
) -> BatchQuantities:
    """`batch_quantities` after its checks, with the MC draws given (None without MC)."""
    b = _batch_size(inputs)
    outputs = f(params, inputs)
    if jnp.ndim(outputs) != 2 or outputs.shape[0] != b:
        raise ValueError(
            f"{_OWNER}: f(params, inputs) must return one array of shape (batch={b}, C), "
            f"got {jnp.shape(outputs)}"
        )
    loss, u = jax.value_and_grad(loss_of_outputs)(outputs)
    plan = _Plan(f, params, inputs)
    linear = _piecewise_linear(plan.closed.jaxpr, plan.n_params)
    need_ggn = "diag_ggn" in wanted or "diag_hessian" in wanted
    need_residual = "diag_hessian" in wanted and not linear

    # Output vectors per example and their weights: ∂L/∂F_n; H_n's eigenvectors; samples.
    groups: dict[str, tuple[slice, jax.Array]] = {"grad": (slice(0, 1), jnp.ones((b, 1)))}
    vectors = [u[:, None, :]]
    blocks = None
    if need_ggn or draws is not None:
        blocks = output_hessian_blocks(loss_of_outputs, outputs)
    if need_ggn:
        lam, q = eigen_factors(blocks)
        start = sum(v.shape[1] for v in vectors)
        groups["ggn"] = (slice(start, start + lam.shape[1]), lam)
        vectors.append(jnp.swapaxes(q, 1, 2))
    if draws is not None:
        columns = _sampled_columns(outputs, blocks, likelihood, draws)
        start = sum(v.shape[1] for v in vectors)
        groups["mc"] = (slice(start, start + columns.shape[1]), jnp.ones(columns.shape[:2]))
        vectors.append(columns)
    vectors = jnp.concatenate(vectors, axis=1).astype(outputs.dtype)

    leaves, treedef = jax.tree.flatten(params)
    backward = with_convs_by_slices(lambda xi, v: plan.backward(leaves, xi, v))
    rest_vjps, pairs = jax.vmap(backward)(inputs, vectors)
    rest_of = dict(zip(plan.rest, rest_vjps, strict=True))
    kernels = list(plan.kernels.values())

    def per_leaf(rest_fn: Callable, kernel_fn: Callable) -> list:
        out = [None] * plan.n_params
        for i, value in rest_of.items():
            out[i] = rest_fn(value)
        for kernel, (x, d) in zip(kernels, pairs, strict=True):
            out[kernel.leaf] = kernel_fn(kernel, x, d)
        return out

    def shaped(kernel: _Kernel, matrix: jax.Array) -> jax.Array:
        return kernel.to_leaf(matrix, leaves[kernel.leaf].shape)

    def square_sum(group: str) -> list:
        """Σ_n Σ_k w_{nk} (J_nᵀ u_{nk})² per leaf, for the vectors of `group`."""
        cols, w = groups[group]
        w = w.astype(outputs.dtype)

        def kernel_fn(kernel: _Kernel, x: jax.Array, d: jax.Array) -> jax.Array:
            d = d[:, cols]
            if kernel.positions == 1:
                matrix = jnp.einsum("ni,nk,nko->io", x[:, 0] ** 2, w, d[:, :, 0] ** 2)
            else:
                g = jnp.einsum("nai,nkao->nkio", x, d)
                matrix = jnp.einsum("nk,nkio->io", w, g * g)
            return shaped(kernel, matrix)

        return per_leaf(lambda g: jnp.einsum("nk,nk...->...", w, g[:, cols] ** 2), kernel_fn)

    unflatten = lambda values: jax.tree.unflatten(treedef, values)
    grad = per_leaf(
        lambda g: jnp.sum(g[:, 0], axis=0),
        lambda k, x, d: shaped(k, jnp.einsum("nai,nao->io", x, d[:, 0])),
    )
    results: dict[str, Any] = {}
    if "batch_grad" in wanted:
        results["batch_grad"] = unflatten(
            per_leaf(
                lambda g: g[:, 0], lambda k, x, d: shaped(k, jnp.einsum("nai,nao->nio", x, d[:, 0]))
            )
        )
    if "batch_l2" in wanted:
        results["batch_l2"] = unflatten(
            per_leaf(
                lambda g: jnp.sum(g[:, 0].reshape(b, -1) ** 2, axis=1),
                lambda k, x, d: jnp.einsum("nai,nbi,nao,nbo->n", x, x, d[:, 0], d[:, 0]),
            )
        )
    if "sum_grad_squared" in wanted or "variance" in wanted:
        sgs = square_sum("grad")
        if "sum_grad_squared" in wanted:
            results["sum_grad_squared"] = unflatten(sgs)
        if "variance" in wanted:
            results["variance"] = unflatten(
                [s / b - (g / b) ** 2 for s, g in zip(sgs, grad, strict=True)]
            )
    if need_ggn:
        ggn = square_sum("ggn")
        if "diag_ggn" in wanted:
            results["diag_ggn"] = unflatten(ggn)
        if "diag_hessian" in wanted:
            if need_residual:
                ggn = _add_residual(plan, leaves, inputs, u, pairs, ggn)
            results["diag_hessian"] = unflatten(ggn)
    if draws is not None:
        results["diag_ggn_mc"] = unflatten(square_sum("mc"))
    return BatchQuantities(loss=loss, grad=unflatten(grad), **results)


def _add_residual(
    plan: _Plan, leaves: list, inputs: PyTree, u: jax.Array, pairs: list, ggn: list
) -> list:
    """`ggn` plus the diagonal of Σ_n ∇²(u_nᵀ F_n), u_n = ∂L/∂F_n held fixed."""
    u = jax.lax.stop_gradient(u)
    by_leaf, y_diag = jax.vmap(lambda xi, un: plan.residual(leaves, xi, un))(inputs, u)
    out = list(ggn)
    for i, value in enumerate(by_leaf):
        if value is not None:
            out[i] = out[i] + jnp.sum(value, axis=0)
    for kernel, (x, _), r in zip(plan.kernels.values(), pairs, y_diag, strict=True):
        if r is not None:
            matrix = jnp.einsum("ni,no->io", x[:, 0] ** 2, r)
            out[kernel.leaf] = out[kernel.leaf] + kernel.to_leaf(matrix, leaves[kernel.leaf].shape)
    return out


# Primitives through which the outputs stay piecewise linear in each variable; the products
# are linear in each operand as long as no param leaf reaches both.
_PIECEWISE_LINEAR = frozenset(
    {
        "abs", "add", "add_any", "and", "argmax", "argmin", "broadcast_in_dim", "ceil",
        "clamp", "concatenate", "convert_element_type", "copy", "copy_p", "cumsum",
        "dynamic_slice", "dynamic_update_slice", "eq", "expand_dims", "floor", "gather", "ge",
        "gt", "le", "lt", "max", "min", "ne", "neg", "not", "or", "pad", "reduce_max",
        "reduce_min", "reduce_precision", "reduce_sum", "reduce_window_max",
        "reduce_window_min", "reduce_window_sum", "reshape", "rev", "round", "select_n",
        "sign", "slice", "split", "squeeze", "stop_gradient", "sub", "transpose",
    }
)  # fmt: skip
_BILINEAR = frozenset({"mul", "dot_general", "conv_general_dilated"})


def _piecewise_linear(jaxpr: core.Jaxpr, n_params: int) -> bool:
    """Whether the outputs are piecewise linear in each param leaf on its own, so that the
    Hessian's diagonal block of every leaf has no term from the model's curvature."""
    deps = [frozenset({i}) for i in range(n_params)]
    deps += [frozenset()] * (len(jaxpr.invars) - n_params)
    return _walk(jaxpr, deps) is not None


def _walk(jaxpr: core.Jaxpr, in_deps: list) -> list | None:
    """The param leaves each output depends on, or None where a step is not piecewise linear."""
    env: dict = dict(zip(jaxpr.invars, in_deps, strict=True))
    dep = lambda v: env.get(v, frozenset()) if isinstance(v, core.Var) else frozenset()
    for eqn in jaxpr.eqns:
        ins = [dep(v) for v in eqn.invars]
        union = frozenset().union(*ins)
        name = eqn.primitive.name
        if union and name in CALLS:
            inner = next(
                (p for p in eqn.params.values() if isinstance(p, core.ClosedJaxpr | core.Jaxpr)),
                None,
            )
            inner = getattr(inner, "jaxpr", inner)
            if inner is None or len(inner.invars) != len(ins):
                return None
            outs = _walk(inner, ins)
            if outs is None:
                return None
            env.update(zip(eqn.outvars, outs, strict=True))
            continue
        if union:
            if name in _BILINEAR:
                if ins[0] & ins[1]:
                    return None
            elif name == "div":
                if ins[1]:
                    return None
            elif name not in _PIECEWISE_LINEAR:
                return None
        env.update((v, union) for v in eqn.outvars)
    return [dep(v) for v in jaxpr.outvars]
