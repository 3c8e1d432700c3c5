"""Preconditioned optimizers: Shampoo and SOAP, second moments kept as one matrix per axis.

A param of axes `1…k` (a gradient `G`) keeps, for each axis `i` it preconditions, the
statistics `L_i`: the moving average of `G_(i)·G_(i)ᵀ`, where `G_(i)` is `G` unfolded with
axis `i` as its rows and every other axis along the columns (for a matrix `G` of shape
`(m, n)`: `L = G·Gᵀ`, `(m, m)`, and `R = Gᵀ·G`, `(n, n)`). `X ×_i P` below is the matrix `P`
applied along axis `i` of `X` (for a matrix, `P·X` for `i = 1`, `X·Pᵀ` for `i = 2`).

- `shampoo` (Gupta, Koren & Singer, 2018) steps along `G ×₁ L₁^(−1/2k) ⋯ ×_k L_k^(−1/2k)`,
  cut into blocks and grafted onto a simpler rule's step sizes, as in the practical form of
  Anil et al. (2020).
- `soap` (Vyas et al., 2024) runs Adam in the eigenbasis of the same statistics, refreshed
  every few steps by one step of power iteration.

The statistics, their eigendecompositions and the rest of the state are kept in float32, or
float64 for float64 params. The costly part, an eigendecomposition (or a QR factorisation)
per statistics matrix, runs inside `lax.cond` (`lax.switch`) on the step count, so a jitted
step pays it only at the steps it is due, and one factorisation at a time (`_after` says
why); everything is jit-, vmap- and scan-friendly, with state shapes fixed from `init`.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from funcnet._checks import check_decay, check_int, check_positive, check_rate
from funcnet.optim.alias import _decoupled_decay
from funcnet.optim.base import (
    GradientTransformation,
    Params,
    PyTree,
    ScalarOrSchedule,
    Updates,
    chain,
    check_fits,
    identity,
    increment,
    is_zero,
    one_minus_power,
)
from funcnet.optim.transforms import (
    _cast_like,
    _check_betas,
    _zero_count,
    add_decayed_weights,
    scale_by_learning_rate,
    trace,
)

__all__ = [
    "ScaleByShampooState",
    "ScaleBySoapState",
    "scale_by_shampoo",
    "scale_by_soap",
    "shampoo",
    "soap",
]

Graft = Literal["adagrad", "rmsprop", "adam", "sgd"] | None
_GRAFTS = ("adagrad", "rmsprop", "adam", "sgd", None)

# Statistics and rotations are sums of many products: on accelerators whose default float32
# matmul rounds its inputs (TF32), that error would land in the eigenvectors.
_HIGHEST = lax.Precision.HIGHEST


# Shared by both rules.


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    """The dtype of a param's statistics and their eigendecompositions: float32, or float64
    for float64 params (half precision is too coarse for an eigendecomposition)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _gram(x: jax.Array, axis: int, batch_dims: int = 0) -> jax.Array:
    """`X_(i)·X_(i)ᵀ`: the Gram matrix of `x` along `axis`, every other axis but the leading
    `batch_dims` summed out. Returns `(*batch, d, d)`, `d = x.shape[axis]`."""
    y = jnp.moveaxis(x, axis, batch_dims)
    y = y.reshape((*y.shape[: batch_dims + 1], -1))
    return jnp.einsum("...ij,...kj->...ik", y, y, precision=_HIGHEST)


def _along(x: jax.Array, matrix: jax.Array, axis: int, batch_dims: int = 0) -> jax.Array:
    """`x ×_axis matrix`: `y[…, a, …] = Σ_j matrix[a, j]·x[…, j, …]`, with `matrix` of shape
    `(*batch, d, d)` matching the leading `batch_dims` axes of `x`."""
    y = jnp.moveaxis(x, axis, -1)
    shape = y.shape
    y = y.reshape((*shape[:batch_dims], -1, shape[-1]))
    y = jnp.matmul(y, jnp.swapaxes(matrix, -1, -2), precision=_HIGHEST)
    return jnp.moveaxis(y.reshape(shape), -1, axis)


def _ema_weights(decay: float | jax.Array) -> tuple[float | jax.Array, float | jax.Array]:
    """The weights `(w_old, w_new)` of a statistics update `S ← w_old·S + w_new·G·Gᵀ`:
    `(β, 1 − β)`, or `(1, 1)` for `β = 1`, the plain sum of Shampoo's paper."""
    return decay, jnp.where(decay == 1, 1.0, 1 - decay)


def _after(x: jax.Array, previous: jax.Array | None) -> jax.Array:
    """`x`, made to wait until `previous` is computed: `x + 0·p`, `p` a finite entry of it.

    jaxlib's CPU kernels for eigh and QR spread a batch of matrices over XLA's intra-op
    threads and hold one of those threads until the batch is done; two of them running at
    once on a two-core machine each wait for the thread the other holds, and the step never
    returns (jaxlib 0.10.2, seen as a hung step). Chained by this data dependency, the
    factorisations of one step run one at a time, under `vmap` too.
    """
    if previous is None:
        return x
    p = previous.ravel()[0]
    return x + jnp.where(jnp.isfinite(p), p, 0).astype(x.dtype) * 0


def _flat_with_paths(tree: PyTree) -> tuple[list[tuple[str, jax.Array]], jax.tree_util.PyTreeDef]:
    """The leaves of `tree` with their paths as error messages write them, and its structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves], treedef


def _parts(treedef: jax.tree_util.PyTreeDef, tree: PyTree) -> list[PyTree]:
    """The per-param entries of a state field (one subtree per leaf of `treedef`)."""
    return treedef.flatten_up_to(tree)


# Shampoo.


def _blocks_of(
    owner: str, path: str, shape: tuple[int, ...], block_size: int | None, max_precond_dim: int
) -> tuple[int, ...] | None:
    """The block shape of a param Shampoo preconditions, or None for one it leaves to the
    grafting rule: fewer than two axes, no entries, or an axis above `max_precond_dim` (which
    `block_size=None`, one whole block per param, refuses instead)."""
    if len(shape) < 2 or 0 in shape:
        return None
    largest = max(shape)
    if largest > max_precond_dim:
        if block_size is None:
            raise ValueError(
                f"{owner}: param {path} of shape {shape} has an axis of {largest} > "
                f"max_precond_dim={max_precond_dim}, too large for a {largest}×{largest} "
                "statistics matrix and its inverse root with block_size=None: set block_size "
                "(e.g. 128) to precondition it in blocks, or raise max_precond_dim"
            )
        return None
    return tuple(d if block_size is None else min(d, block_size) for d in shape)


def _block_counts(shape: tuple[int, ...], block: tuple[int, ...]) -> list[int]:
    """The number of blocks along each axis, `⌈d_i / b_i⌉`."""
    return [-(-d // b) for d, b in zip(shape, block, strict=True)]


def _to_blocks(x: jax.Array, block: tuple[int, ...]) -> jax.Array:
    """`x` cut into blocks of shape `block`, the last one along each axis zero-padded:
    `(N, *block)`, `N = Π ⌈d_i / b_i⌉`, the blocks in row-major order of their positions."""
    counts = _block_counts(x.shape, block)
    x = jnp.pad(x, [(0, n * b - d) for n, b, d in zip(counts, block, x.shape, strict=True)])
    x = x.reshape([s for pair in zip(counts, block, strict=True) for s in pair])
    k = len(block)
    x = x.transpose([*range(0, 2 * k, 2), *range(1, 2 * k, 2)])
    return x.reshape((-1, *block))


def _from_blocks(blocks: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The inverse of `_to_blocks`: the array of `shape` the blocks `(N, *block)` cut."""
    block = blocks.shape[1:]
    counts = _block_counts(shape, block)
    k = len(shape)
    x = blocks.reshape((*counts, *block)).transpose([j for i in range(k) for j in (i, k + i)])
    x = x.reshape([n * b for n, b in zip(counts, block, strict=True)])
    return x[tuple(slice(0, d) for d in shape)]


def _block_norms(blocks: jax.Array) -> jax.Array:
    """The Frobenius norm of each block of `(N, *block)`: shape `(N,)`."""
    return jnp.sqrt(jnp.sum(jnp.square(blocks), axis=tuple(range(1, blocks.ndim))))


def _inverse_root(stats: jax.Array, eps: float | jax.Array, exponent: float) -> jax.Array:
    """`(S + ε·I)^(−exponent)` of symmetric positive semi-definite matrices `S` (batched on
    the leading axes), from `S = Q·diag(λ)·Qᵀ` (eigh): `Q·diag((max(λ, 0) + ε)^(−exponent))·Qᵀ`.
    Eigenvalues rounded below 0 count as 0."""
    lam, q = jnp.linalg.eigh(stats)
    scale = (jnp.maximum(lam, 0) + eps) ** -exponent
    return jnp.matmul(q * scale[..., None, :], jnp.swapaxes(q, -1, -2), precision=_HIGHEST)


def _graft(
    graft: Graft,
    g: jax.Array,
    nu: jax.Array | None,
    count: jax.Array,
    b2: float | jax.Array,
    graft_eps: float | jax.Array,
) -> tuple[jax.Array, jax.Array | None]:
    """The grafting rule's direction for the gradient `g` (step `count + 1`), and its new
    sum or average of squares `nu` (None for 'sgd' and None)."""
    if graft in ("sgd", None):
        return g, nu
    if graft == "adagrad":
        nu = nu + jnp.square(g)
    else:
        w_old, w_new = _ema_weights(b2)
        nu = w_old * nu + w_new * jnp.square(g)
    v = nu / one_minus_power(b2, count + 1).astype(nu.dtype) if graft == "adam" else nu
    return g / (jnp.sqrt(v) + graft_eps), nu


class ScaleByShampooState(NamedTuple):
    """`count`: int32 scalar, the steps taken; `graft_nu`: per param, the grafting rule's
    sum (or average) of squared gradients, param-shaped, or None for `graft='sgd'` and None;
    `stats`: per param, a tuple with one array `(N, b_i, b_i)` per axis, the statistics of
    each of its `N` blocks (an empty tuple for a param Shampoo leaves to the grafting rule);
    `roots`: the same shapes, the inverse roots in use (the identity before the first).

    A block at a far edge, smaller than `b_i`, is stored zero-padded to `b_i`: its padded
    rows and columns of `L_i` are zero, so `(L_i + εI)^(−1/2k)` is block-diagonal and equal,
    on the block's own entries, to the root of its unpadded statistics."""

    count: jax.Array
    graft_nu: Updates | None
    stats: PyTree
    roots: PyTree


def _check_shampoo(
    owner: str,
    block_size: int | None,
    b2: float,
    eps: float,
    precondition_frequency: int,
    start_preconditioning_step: int,
    max_precond_dim: int,
    graft: Graft,
    graft_eps: float,
) -> None:
    """The checks `scale_by_shampoo` and `shampoo` make, each a one-line ValueError."""
    if block_size is not None:
        check_int(owner, "block_size", block_size)
    check_decay(owner, "b2", b2, allow_one=True)
    check_positive(owner, "eps", eps)
    check_int(owner, "precondition_frequency", precondition_frequency)
    check_int(owner, "start_preconditioning_step", start_preconditioning_step, minimum=0)
    check_int(owner, "max_precond_dim", max_precond_dim)
    if graft not in _GRAFTS:
        raise ValueError(
            f"{owner}: graft must be one of 'adagrad', 'rmsprop', 'adam', 'sgd' or None, "
            f"got {graft!r:.80}"
        )
    if graft == "adam" and isinstance(b2, int | float) and b2 == 1:
        raise ValueError(
            f"{owner}: graft='adam' debiases an average and needs b2 < 1, got b2=1 (the "
            "plain sum): set graft='adagrad' or b2 below 1"
        )
    check_positive(owner, "graft_eps", graft_eps)


def scale_by_shampoo(
    *,
    block_size: int | None = 128,
    b2: float = 0.999,
    eps: float = 1e-6,
    precondition_frequency: int = 10,
    start_preconditioning_step: int = 10,
    max_precond_dim: int = 4096,
    graft: Graft = "adam",
    graft_eps: float = 1e-8,
) -> GradientTransformation:
    """Shampoo's direction (Gupta, Koren & Singer, 2018, "Shampoo: Preconditioned Stochastic
    Tensor Optimization"), blocked and grafted as in Anil et al. (2020, "Scalable Second Order
    Optimization for Deep Learning").

    A param of `k ≥ 2` axes is cut into blocks of at most `block_size` entries along each axis
    (a matrix `(m, n)` into `⌈m/b⌉ × ⌈n/b⌉` blocks, those at the far edges smaller). For each
    block, with `G` its gradient, `G_(i)` its unfolding along axis `i` and `t` the step::

        L_i ← β₂·L_i + (1 − β₂)·G_(i)·G_(i)ᵀ         (β₂ = 1: L_i ← L_i + G_(i)·G_(i)ᵀ)
        P_i ← (L_i + ε·I)^(−1/(2k))                  (eigh; recomputed every f-th step)
        D ← G ×₁ P₁ ⋯ ×_k P_k                        (a matrix: L^(−1/4)·G·R^(−1/4))
        A ← graft(G)
        u ← (‖A‖ / ‖D‖)·D                            (per block; u ← D for graft=None)

    and `u ← A` for the first `start_preconditioning_step` steps. The inverse roots are
    recomputed at step `s + 1` and every `f = precondition_frequency` steps after it
    (`s = start_preconditioning_step`), from the statistics of that step, and held fixed in
    the state between; the eigendecomposition runs under `lax.cond`, at those steps only.
    `ε` is added to the statistics as `ε·I` (Gupta et al.'s `L₀ = ε·I`); eigenvalues rounded
    below 0 count as 0. The grafting rule, applied to the whole param:

    - `'adagrad'`: `ν ← ν + g²`, `A = g/(√ν + ε_g)`;
    - `'rmsprop'`: `ν ← β₂·ν + (1 − β₂)·g²` (the sum for β₂ = 1), `A = g/(√ν + ε_g)`;
    - `'adam'`: the same `ν`, debiased, `A = g/(√(ν/(1 − β₂ᵗ)) + ε_g)` (needs `β₂ < 1`);
    - `'sgd'`: `A = g`;
    - `None`: no grafting, `u = D` (and `u = g` before the start).

    Grafting is per block: each block of the step takes the Shampoo direction and the norm of
    the grafting rule's step on that block, as Shi et al.'s Distributed Shampoo (2023) does
    (optax's `distributed_shampoo` grafts per layer). The blocks are preconditioned apart,
    so their Shampoo scales are unrelated; per-block norms keep them those of the grafting
    rule. A param with fewer than two axes (biases, scales, scalars), or with an axis longer
    than `max_precond_dim` (an embedding table), takes the grafting rule's step `A` alone, as
    distributed Shampoo's `skip_preconditioning_dim_size_gt` does; with `block_size=None`
    (one block per param, Shampoo as first published) such a param is refused instead, in one
    line naming its path and shape.

    Args:
      block_size: `b`, the largest block along any axis; None for one block per param.
      b2: `β₂` in [0, 1], the decay of the statistics (and of the 'rmsprop', 'adam' grafts).
      eps: `ε > 0`, added to every statistics matrix as `ε·I`.
      precondition_frequency: `f ≥ 1`, the steps between recomputations of the roots.
      start_preconditioning_step: the number of first steps that take the grafting rule's
        step alone (the statistics are gathered from the first step on).
      max_precond_dim: the longest axis a preconditioned param may have.
      graft: the grafting rule: 'adagrad', 'rmsprop', 'adam', 'sgd' or None.
      graft_eps: `ε_g > 0`, the grafting rule's epsilon.
    """
    owner = "scale_by_shampoo"
    _check_shampoo(
        owner,
        block_size,
        b2,
        eps,
        precondition_frequency,
        start_preconditioning_step,
        max_precond_dim,
        graft,
        graft_eps,
    )
    start, every = start_preconditioning_step, precondition_frequency

    def layout(path: str, x: jax.Array) -> tuple[int, ...] | None:
        return _blocks_of(owner, path, jnp.shape(x), block_size, max_precond_dim)

    def init_fn(params: Params) -> ScaleByShampooState:
        leaves, treedef = _flat_with_paths(params)
        stats, roots = [], []
        for path, x in leaves:
            dtype, block = _compute_dtype(x), layout(path, x)
            if block is None:
                stats.append(())
                roots.append(())
                continue
            n = math.prod(_block_counts(jnp.shape(x), block))
            stats.append(tuple(jnp.zeros((n, b, b), dtype) for b in block))
            roots.append(tuple(jnp.tile(jnp.eye(b, dtype=dtype), (n, 1, 1)) for b in block))
        nus = None
        if graft not in ("sgd", None):
            nus = jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), _compute_dtype(x)), params)
        return ScaleByShampooState(
            count=_zero_count(),
            graft_nu=nus,
            stats=treedef.unflatten(stats),
            roots=treedef.unflatten(roots),
        )

    def update_fn(
        updates: Updates, state: ScaleByShampooState, params: Params | None = None
    ) -> tuple[Updates, ScaleByShampooState]:
        del params
        if state.graft_nu is not None:
            check_fits(updates, state.graft_nu)  # refuses a state built for another tree
        count = state.count
        leaves, treedef = _flat_with_paths(updates)
        blocks = [layout(path, g) for path, g in leaves]
        grads = [g.astype(_compute_dtype(g)) for _, g in leaves]
        w_old, w_new = _ema_weights(b2)

        cuts = [None if b is None else _to_blocks(g, b) for g, b in zip(grads, blocks, strict=True)]
        stats = []
        for cut, old in zip(cuts, _parts(treedef, state.stats), strict=True):
            if cut is not None:
                old = tuple(w_old * s + w_new * _gram(cut, i + 1, 1) for i, s in enumerate(old))
            stats.append(old)

        def recompute(stats: list) -> list:
            roots, previous = [], None
            for st in stats:
                mine = []
                for s in st:
                    previous = _inverse_root(_after(s, previous), eps, 1 / (2 * len(st)))
                    mine.append(previous)
                roots.append(tuple(mine))
            return roots

        due = (count >= start) & ((count - start) % every == 0)
        roots = lax.cond(due, recompute, lambda _: _parts(treedef, state.roots), stats)

        nus = [None] * len(grads) if state.graft_nu is None else _parts(treedef, state.graft_nu)
        out, new_nus = [], []
        for g, block, cut, root, nu in zip(grads, blocks, cuts, roots, nus, strict=True):
            step, nu = _graft(graft, g, nu, count, b2, graft_eps)
            new_nus.append(nu)
            if block is None:
                out.append(step)
                continue
            direction = cut
            for i, p in enumerate(root):
                direction = _along(direction, p, i + 1, 1)
            if graft is not None:
                target = _block_norms(_to_blocks(step, block))
                norm = _block_norms(direction)
                ratio = jnp.where(norm > 0, target / jnp.where(norm > 0, norm, 1), 0)
                direction = direction * ratio.reshape((-1,) + (1,) * len(block))
            direction = _from_blocks(direction, g.shape)
            out.append(direction if start == 0 else jnp.where(count >= start, direction, step))

        new_state = ScaleByShampooState(
            count=increment(count),
            graft_nu=None if state.graft_nu is None else treedef.unflatten(new_nus),
            stats=treedef.unflatten(stats),
            roots=treedef.unflatten(roots),
        )
        return _cast_like(treedef.unflatten(out), updates), new_state

    return GradientTransformation(init_fn, update_fn)


def shampoo(
    learning_rate: ScalarOrSchedule,
    *,
    block_size: int | None = 128,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    precondition_frequency: int = 10,
    start_preconditioning_step: int = 10,
    max_precond_dim: int = 4096,
    graft: Graft = "adam",
    graft_eps: float = 1e-8,
    nesterov: bool = False,
    weight_decay: ScalarOrSchedule = 0.0,
) -> GradientTransformation:
    """Shampoo (Gupta, Koren & Singer, 2018, "Shampoo: Preconditioned Stochastic Tensor
    Optimization"), in the blocked, grafted form of Anil et al. (2020, "Scalable Second Order
    Optimization for Deep Learning"), with momentum and decoupled weight decay.

    With `d` the grafted Shampoo direction of `scale_by_shampoo` (per block of at most
    `block_size` along each axis: `L ← β₂·L + (1 − β₂)·G·Gᵀ`, `R` likewise,
    `D = (L + εI)^(−1/4)·G·(R + εI)^(−1/4)` for a matrix, given the norm of the grafting
    rule's step) and `λ_t = weight_decay`::

        b ← β₁·b + d                    (b = d at the first step)
        x ← x − α_t·(b + λ_t·x)         (Nesterov: b replaced by d + β₁·b)

    The momentum is applied to the final, grafted step, and the weight decay is decoupled
    (added after the momentum, scaled by the rate only), so `graft='adam'` with `β₁ = 0.9`
    is AdamW's step shape with Shampoo's direction. Params of fewer than two axes, and those
    with an axis longer than `max_precond_dim`, take the grafting rule's step instead of
    Shampoo's (see `scale_by_shampoo`, which also says when the roots are recomputed).

    Args:
      learning_rate: `α_t`, a number or a schedule.
      block_size: the largest block along any axis; None for one block per param (its
        statistics then as large as its axes).
      b1: `β₁` in [0, 1), the momentum of the final step (0: none).
      b2: `β₂` in [0, 1], the decay of the statistics; 1 sums them (Shampoo's paper).
      eps: `ε > 0`, added to each statistics matrix as `ε·I` before its inverse root.
      precondition_frequency: the steps between recomputations of the inverse roots.
      start_preconditioning_step: the number of first steps that take the grafting rule's
        step alone.
      max_precond_dim: the longest axis a preconditioned param may have.
      graft: 'adagrad', 'rmsprop', 'adam', 'sgd' or None; see `scale_by_shampoo`.
      graft_eps: the grafting rule's epsilon.
      nesterov: use Nesterov's look-ahead momentum.
      weight_decay: `λ_t ≥ 0`, a number or a schedule.
    """
    owner = "shampoo"
    check_rate(owner, learning_rate)
    check_decay(owner, "b1", b1)
    _check_shampoo(
        owner,
        block_size,
        b2,
        eps,
        precondition_frequency,
        start_preconditioning_step,
        max_precond_dim,
        graft,
        graft_eps,
    )
    if not callable(weight_decay):
        check_positive(owner, "weight_decay", weight_decay, allow_zero=True)
    direction = chain(
        scale_by_shampoo(
            block_size=block_size,
            b2=b2,
            eps=eps,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step,
            max_precond_dim=max_precond_dim,
            graft=graft,
            graft_eps=graft_eps,
        ),
        identity() if is_zero(b1) else trace(b1, nesterov=nesterov),
    )
    return _decoupled_decay(direction, learning_rate, weight_decay)


# SOAP.


def _soap_axes(shape: tuple[int, ...], max_precond_dim: int) -> tuple[int, ...]:
    """The axes SOAP rotates: those of at most `max_precond_dim` entries, of a param of two
    axes or more (none of a bias, a scalar or an empty param)."""
    if len(shape) < 2 or 0 in shape:
        return ()
    return tuple(i for i, d in enumerate(shape) if d <= max_precond_dim)


def _rotate(x: jax.Array, bases: tuple[jax.Array, ...], axes: tuple[int, ...]) -> jax.Array:
    """`x` in the eigenbases: `x ×_i Q_iᵀ` along each rotated axis (`Q_Lᵀ·X·Q_R`)."""
    for q, i in zip(bases, axes, strict=True):
        x = _along(x, q.T, i)
    return x


def _rotate_back(x: jax.Array, bases: tuple[jax.Array, ...], axes: tuple[int, ...]) -> jax.Array:
    """`x` back from the eigenbases: `x ×_i Q_i` along each rotated axis (`Q_L·X·Q_Rᵀ`)."""
    for q, i in zip(bases, axes, strict=True):
        x = _along(x, q, i)
    return x


def _eigenbasis(stats: jax.Array) -> jax.Array:
    """The eigenvectors of a symmetric matrix, columns by decreasing eigenvalue (eigh)."""
    return jnp.linalg.eigh(stats)[1][:, ::-1]


def _power_step(
    stats: jax.Array, basis: jax.Array, nu: jax.Array, axis: int
) -> tuple[jax.Array, jax.Array]:
    """One step of power iteration towards the eigenbasis of `stats`, SOAP's refresh: the
    columns of `basis` sorted by their Rayleigh quotients `diag(Qᵀ·L·Q)`, decreasing, `nu`'s
    entries along `axis` permuted with them, then `Q ← QR(L·Q)`."""
    quotients = jnp.einsum("ji,jk,ki->i", basis, stats, basis, precision=_HIGHEST)
    order = jnp.argsort(-quotients)
    basis, nu = basis[:, order], jnp.take(nu, order, axis=axis)
    return jnp.linalg.qr(jnp.matmul(stats, basis, precision=_HIGHEST))[0], nu


class ScaleBySoapState(NamedTuple):
    """`count`: int32 scalar, the calls made (the first builds the bases and takes no step);
    `mu`: the first moment `M`, in the params' own coordinates; `nu`: the second moment `V`,
    in the rotated ones (both param-shaped); `stats`: per param, a tuple with one `(d, d)`
    array per rotated axis (`L`, `R` of a matrix); `bases`: the same shapes, their
    eigenbases `Q_L`, `Q_R`. A param with no rotated axis has empty tuples."""

    count: jax.Array
    mu: Updates
    nu: Updates
    stats: PyTree
    bases: PyTree


def _check_soap(
    owner: str,
    b1: float,
    b2: float,
    shampoo_beta: float | None,
    eps: float,
    precondition_frequency: int,
    max_precond_dim: int,
) -> None:
    """The checks `scale_by_soap` and `soap` make, each a one-line ValueError."""
    _check_betas(owner, b1, b2, eps)
    if shampoo_beta is not None:
        check_decay(owner, "shampoo_beta", shampoo_beta)
    check_int(owner, "precondition_frequency", precondition_frequency)
    check_int(owner, "max_precond_dim", max_precond_dim)


def scale_by_soap(
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    normalize_grads: bool = False,
    bias_correction: bool = True,
) -> GradientTransformation:
    """SOAP's direction (Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using
    Adam"): Adam run in the eigenbasis of Shampoo's statistics.

    For a param of axes `i` with gradient `G`, statistics `L_i`, bases `Q_i`, rotation
    `X' = X ×_i Q_iᵀ` (`Q_Lᵀ·X·Q_R` for a matrix), `β_s = shampoo_beta` and `s = t − 1`
    the Adam steps taken at call `t`::

        t = 1:  L_i ← (1 − β_s)·G_(i)·G_(i)ᵀ;   Q_i ← eigenvectors of L_i (eigh);   u ← 0
        t > 1:  M ← β₁·M + (1 − β₁)·G                    (kept unrotated)
                V ← β₂·V + (1 − β₂)·G'⊙G'                (kept rotated)
                N ← [M' / (√V + ε)] ×_i Q_i              (Q_L·N'·Q_Rᵀ)
                u ← √(1 − β₂ˢ)/(1 − β₁ˢ) · N
                L_i ← β_s·L_i + (1 − β_s)·G_(i)·G_(i)ᵀ
                if s % f = 0:  Q_i ← QR(L_i·Q_i)         (f = precondition_frequency)

    This is the paper's Algorithm 3 with the conventions of the authors' code
    (github.com/nikhilvyas/SOAP, `soap.py`), which it follows step for step: the first call
    only gathers `L_i` and takes their eigenbases, so that no gradient is projected on a
    basis built from itself, and its update is zero; the first moment is kept in the params'
    coordinates and rotated with the current bases at each step (equal to the code's
    rotated `exp_avg`, rotated back and forth at each refresh), the second in the rotated
    ones; `ε` is added to `√V` and the bias correction is folded into the step size; the
    refresh (Algorithm 4: one step of power iteration, then QR) first sorts the columns of
    `Q_i` by `diag(Q_iᵀ·L_i·Q_i)`, decreasing, and permutes `V` along axis `i` with them;
    `L_i`, `R_i` are updated after the step, with the gradient just used. With
    `normalize_grads`, `N` is divided by its root mean square (plus 1e-30) per param before
    the step size.

    Axes longer than `max_precond_dim` are not rotated (the identity along them), nor are
    params of fewer than two axes: Adam runs there in the params' own coordinates (the
    code's `precondition_1d=False`). The eigh and the QR run under `lax.switch` at the calls
    they are due only.

    Args:
      b1: `β₁` in [0, 1), the decay of the first moment.
      b2: `β₂` in [0, 1), the decay of the second moment.
      shampoo_beta: `β_s` in [0, 1), the decay of the statistics; None takes `β₂`.
      eps: `ε > 0`, added to `√V`.
      precondition_frequency: `f ≥ 1`, the Adam steps between refreshes of the bases.
      max_precond_dim: the longest axis that is rotated.
      normalize_grads: divide `N` by its root mean square, per param.
      bias_correction: fold `√(1 − β₂ˢ)/(1 − β₁ˢ)` into the step.
    """
    owner = "scale_by_soap"
    _check_soap(owner, b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim)
    beta_s = b2 if shampoo_beta is None else shampoo_beta
    every = precondition_frequency

    def init_fn(params: Params) -> ScaleBySoapState:
        leaves, treedef = jax.tree.flatten(params)
        mus, nus, stats, bases = [], [], [], []
        for x in leaves:
            shape, dtype = jnp.shape(x), _compute_dtype(x)
            mus.append(jnp.zeros(shape, dtype))
            nus.append(jnp.zeros(shape, dtype))
            axes = _soap_axes(shape, max_precond_dim)
            stats.append(tuple(jnp.zeros((shape[i], shape[i]), dtype) for i in axes))
            bases.append(tuple(jnp.zeros((shape[i], shape[i]), dtype) for i in axes))
        unflatten = treedef.unflatten
        return ScaleBySoapState(
            _zero_count(), unflatten(mus), unflatten(nus), unflatten(stats), unflatten(bases)
        )

    def update_fn(
        updates: Updates, state: ScaleBySoapState, params: Params | None = None
    ) -> tuple[Updates, ScaleBySoapState]:
        del params
        check_fits(updates, state.mu)  # refuses a state built for another tree
        count = state.count
        leaves, treedef = jax.tree.flatten(updates)
        axes = [_soap_axes(jnp.shape(g), max_precond_dim) for g in leaves]
        steps = jnp.maximum(count, 1)  # Adam steps taken, this one included
        size = 1.0
        if bias_correction:
            size = jnp.sqrt(one_minus_power(b2, steps)) / one_minus_power(b1, steps)
        first = count == 0

        out, mus, nus, stats = [], [], [], []
        old_bases = _parts(treedef, state.bases)
        old = [_parts(treedef, field) for field in (state.mu, state.nu, state.stats)]
        for g, ax, mu, nu, st, q in zip(leaves, axes, *old, old_bases, strict=True):
            g = g.astype(mu.dtype)
            new_mu = b1 * mu + (1 - b1) * g
            new_nu = b2 * nu + (1 - b2) * jnp.square(_rotate(g, q, ax))
            n = _rotate_back(_rotate(new_mu, q, ax) / (jnp.sqrt(new_nu) + eps), q, ax)
            if normalize_grads:
                n = n / (1e-30 + jnp.sqrt(jnp.mean(jnp.square(n))))
            out.append(jnp.where(first, 0, size * n))
            mus.append(jnp.where(first, mu, new_mu))
            nus.append(jnp.where(first, nu, new_nu))
            stats.append(
                tuple(beta_s * s + (1 - beta_s) * _gram(g, i) for s, i in zip(st, ax, strict=True))
            )

        def start(operand: tuple) -> tuple:
            stats, _, nus = operand
            bases, previous = [], None
            for st in stats:
                mine = []
                for s in st:
                    previous = _eigenbasis(_after(s, previous))
                    mine.append(previous)
                bases.append(tuple(mine))
            return bases, nus

        def refresh(operand: tuple) -> tuple:
            stats, bases, nus = operand
            new_bases, new_nus, previous = [], [], None
            for st, qs, nu, ax in zip(stats, bases, nus, axes, strict=True):
                mine = []
                for s, q, i in zip(st, qs, ax, strict=True):
                    previous, nu = _power_step(_after(s, previous), q, nu, i)
                    mine.append(previous)
                new_bases.append(tuple(mine))
                new_nus.append(nu)
            return new_bases, new_nus

        def keep(operand: tuple) -> tuple:
            _, bases, nus = operand
            return bases, nus

        branch = jnp.where(first, 0, jnp.where(count % every == 0, 1, 2))
        bases, nus = lax.switch(branch, (start, refresh, keep), (stats, old_bases, nus))
        unflatten = treedef.unflatten
        new_state = ScaleBySoapState(
            increment(count), unflatten(mus), unflatten(nus), unflatten(stats), unflatten(bases)
        )
        return _cast_like(unflatten(out), updates), new_state

    return GradientTransformation(init_fn, update_fn)


def _after_first_call(weight_decay: ScalarOrSchedule) -> ScalarOrSchedule:
    """`λ_t` as a schedule that is 0 at the first call (SOAP's first call moves nothing)."""
    rate = weight_decay if callable(weight_decay) else (lambda count: weight_decay)
    return lambda count: jnp.where(count == 0, 0.0, rate(count))


def soap(
    learning_rate: ScalarOrSchedule = 3e-3,
    *,
    b1: float = 0.95,
    b2: float = 0.95,
    shampoo_beta: float | None = None,
    eps: float = 1e-8,
    weight_decay: ScalarOrSchedule = 0.01,
    precondition_frequency: int = 10,
    max_precond_dim: int = 10000,
    normalize_grads: bool = False,
    bias_correction: bool = True,
) -> GradientTransformation:
    """SOAP (Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using Adam"), with
    the defaults of the authors' code (github.com/nikhilvyas/SOAP).

    Adam in the eigenbasis of Shampoo's statistics, refreshed every `precondition_frequency`
    steps (see `scale_by_soap`); with `N` that step and `λ_t = weight_decay`::

        x ← x − α_t·(√(1 − β₂ˢ)/(1 − β₁ˢ)·N + λ_t·x)

    The first call takes no step, weight decay included (it builds the bases). The weight
    decay is decoupled, AdamW's, applied to the params before the step; the authors' code
    decays the params after it, `x ← (x − α·c·N)·(1 − α·λ)`, which differs by `α²·λ·c·N`.

    Args:
      learning_rate: `α_t`, a number or a schedule.
      b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, normalize_grads,
        bias_correction: see `scale_by_soap`.
      weight_decay: `λ_t ≥ 0`, a number or a schedule.
    """
    owner = "soap"
    check_rate(owner, learning_rate)
    _check_soap(owner, b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim)
    if not callable(weight_decay):
        check_positive(owner, "weight_decay", weight_decay, allow_zero=True)
    decay = (
        identity()
        if is_zero(weight_decay)
        else add_decayed_weights(_after_first_call(weight_decay))
    )
    return chain(
        scale_by_soap(
            b1=b1,
            b2=b2,
            shampoo_beta=shampoo_beta,
            eps=eps,
            precondition_frequency=precondition_frequency,
            max_precond_dim=max_precond_dim,
            normalize_grads=normalize_grads,
            bias_correction=bias_correction,
        ),
        decay,
        scale_by_learning_rate(learning_rate),
    )
