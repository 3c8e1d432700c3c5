"""Matrix-free Hessian spectra: top eigenpairs, trace and spectral density.

Everything here touches the Hessian only through Hessian-vector products
(forward-over-reverse), so the cost is a small multiple of a gradient per product and the
memory is a few copies of the parameters, never n².

The loss comes in one of two forms:

- `f(params) -> scalar`, with `batches=None`: the Hessian of `f`. Close over a mini-batch,
  or over the whole data set when it fits in one pass.
- `f(params, batch) -> scalar`, with `batches` a pytree whose leaves carry a leading axis
  over B batches: the Hessian of the mean (1/B) Σ_b f(params, batch_b). The products are
  accumulated batch by batch inside a `lax.scan`, so only one batch is live at a time.
  Stack a list of batches with `jax.tree.map(lambda *b: jnp.stack(b), *batch_list)`.

The public functions are compiled with `jax.jit`, keyed on the identity of `f` and on the
integer settings; params, batches and key are traced. Passing the same `f` with new
`batches` reuses the compiled code, while a fresh closure per call compiles anew.
"""

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

from funcnet._checks import check_float_tree, check_function, check_int, check_positive
from funcnet._keys import typed_key
from funcnet._trees import leading_size

PyTree = Any
EigsMethod = Literal["lanczos", "power"]

__all__ = [
    "HessianDensity",
    "HessianEigs",
    "HessianTrace",
    "density_on_grid",
    "hessian_density",
    "hessian_eigs",
    "hessian_trace",
]


class HessianEigs(NamedTuple):
    """Eigenpairs of the Hessian.

    Attributes:
      eigenvalues: shape `(k,)`.
      eigenvectors: a params-shaped pytree whose leaves have a leading axis of size `k`;
        slice `i` along it is the unit-norm eigenvector (over all leaves together) of
        `eigenvalues[i]`.
    """

    eigenvalues: jax.Array
    eigenvectors: PyTree


class HessianTrace(NamedTuple):
    """Hutchinson estimate of tr(H).

    Attributes:
      estimate: shape `()`, the mean of the probe samples zᵀHz.
      stderr: shape `()`, the standard error of that mean, s/√N.
    """

    estimate: jax.Array
    stderr: jax.Array


class HessianDensity(NamedTuple):
    """Gauss quadrature rules of stochastic Lanczos quadrature, one per probe.

    Attributes:
      nodes: shape `(num_probes, num_iters)`, the Ritz values θ of each probe's Lanczos run.
      weights: shape `(num_probes, num_iters)`, the squared first components τ² of the Ritz
        vectors; each row sums to 1.
    """

    nodes: jax.Array
    weights: jax.Array


def _hvp_operator(
    f: Callable[..., jax.Array], flat: jax.Array, unravel: Callable, batches: PyTree
) -> Callable[[jax.Array], jax.Array]:
    """The map v ↦ H·v on flat vectors, by forward-over-reverse."""

    def flat_grad(theta: jax.Array, *batch: PyTree) -> jax.Array:
        return ravel_pytree(jax.grad(f)(unravel(theta), *batch))[0]

    if batches is None:
        # Linearise once: every product then reuses the stored forward and backward pass.
        _, matvec = jax.linearize(flat_grad, flat)
        return matvec

    num_batches = jax.tree.leaves(batches)[0].shape[0]

    def matvec(v: jax.Array) -> jax.Array:
        def add_batch(total: jax.Array, batch: PyTree) -> tuple[jax.Array, None]:
            hv = jax.jvp(lambda theta: flat_grad(theta, batch), (flat,), (v,))[1]
            return total + hv, None

        total, _ = lax.scan(add_batch, jnp.zeros_like(flat), batches)
        return total / num_batches

    return matvec


def _check_batches(batches: PyTree) -> None:
    if batches is not None:
        leading_size(batches, what="the leaves of batches")


def _orthogonalise(w: jax.Array, basis: jax.Array) -> jax.Array:
    """Remove from w its components along the rows of basis (orthonormal or zero rows).

    Two passes of classical Gram-Schmidt: the second restores the orthogonality to working
    precision that the first loses to cancellation.
    """
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return w


def _unit(w: jax.Array) -> jax.Array:
    return w / jnp.maximum(jnp.linalg.norm(w), jnp.finfo(w.dtype).tiny)


def _lanczos(
    matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    """Lanczos tridiagonalisation with full reorthogonalisation.

    Builds an orthonormal basis V = [v₀ … v_{m-1}] of the Krylov space of H and v₀ with
    H V = V T + β_{m-1} v_m e_{m-1}ᵀ, T tridiagonal with diagonal α and off-diagonal β.
    Each new vector is orthogonalised against every earlier one, so Ritz values do not
    repeat as ghost copies. When the Krylov space closes (β ≈ 0, an invariant subspace) the
    recurrence restarts from the coordinate vector eᵢ least covered by the basis (smallest
    ‖Vᵀeᵢ‖, below 1 while the basis spans less than ℝⁿ), orthogonalised against it, and
    the coupling β is set to 0: T stays exact, and further eigenvalues, repeated ones
    included, are found.

    Args:
      matvec: v ↦ H·v on vectors of shape `(n,)`, H symmetric.
      v0: starting vector of shape `(n,)`, normalised here.
      num_iters: m ≤ n, the number of Lanczos vectors.

    Returns:
      `(tridiagonal, basis)` of shapes `(m, m)` and `(m, n)`.
    """
    n = v0.shape[0]
    dtype = v0.dtype
    # Below this, w is round-off left after orthogonalisation, not a new direction.
    floor = jnp.sqrt(jnp.asarray(n, dtype)) * jnp.finfo(dtype).eps

    def restart(basis: jax.Array) -> jax.Array:
        least_covered = jnp.argmin(jnp.sum(basis**2, axis=0))
        return _orthogonalise(jnp.zeros(n, dtype).at[least_covered].set(1), basis)

    def step(j, carry):
        basis, alphas, betas, v, scale = carry
        basis = basis.at[j].set(v)
        w = matvec(v)
        alpha = jnp.dot(v, w)
        beta_prev = jnp.where(j > 0, betas[j - 1], 0)
        w = w - alpha * v - beta_prev * basis[j - 1]
        w = _orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta + beta_prev)
        closed = beta <= floor * scale
        w = lax.cond(closed, restart, lambda _: w, basis)
        betas = betas.at[j].set(jnp.where(closed, 0, beta))
        return basis, alphas.at[j].set(alpha), betas, _unit(w), scale

    init = (
        jnp.zeros((num_iters, n), dtype),
        jnp.zeros(num_iters, dtype),
        jnp.zeros(num_iters, dtype),
        _unit(v0),
        jnp.zeros((), dtype),
    )
    basis, alphas, betas, _, _ = lax.fori_loop(0, num_iters, step, init)
    off = betas[:-1]
    tridiagonal = jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    return tridiagonal, basis


def _lanczos_eigs(
    matvec: Callable, n: int, dtype: Any, key: jax.Array, k: int, num_iters: int
) -> tuple[jax.Array, jax.Array]:
    v0 = jax.random.normal(key, (n,), dtype)
    tridiagonal, basis = _lanczos(matvec, v0, num_iters)
    ritz_values, ritz_coords = jnp.linalg.eigh(tridiagonal)
    top = jnp.arange(num_iters - 1, num_iters - 1 - k, -1)
    return ritz_values[top], (basis.T @ ritz_coords[:, top]).T


def _power_eigs(
    matvec: Callable, n: int, dtype: Any, key: jax.Array, k: int, num_iters: int, tol: float
) -> tuple[jax.Array, jax.Array]:
    """Power iteration with deflation: each pair is sought orthogonal to those found."""

    def one_pair(i, found):
        values, vectors = found
        v = _unit(
            _orthogonalise(jax.random.normal(jax.random.fold_in(key, i), (n,), dtype), vectors)
        )

        def not_done(state):
            it, _, value, previous = state
            moving = jnp.abs(value - previous) > tol * jnp.abs(value)
            return (it < num_iters) & ((it < 2) | moving)

        def iterate(state):
            it, v, value, _ = state
            w = _orthogonalise(matvec(v), vectors)
            return it + 1, _unit(w), jnp.dot(v, w), value

        zero = jnp.zeros((), dtype)
        _, v, value, _ = lax.while_loop(not_done, iterate, (0, v, zero, zero))
        return values.at[i].set(value), vectors.at[i].set(v)

    init = (jnp.zeros(k, dtype), jnp.zeros((k, n), dtype))
    return lax.fori_loop(0, k, one_pair, init)


@functools.partial(jax.jit, static_argnames=("f", "k", "method", "num_iters"))
def _hessian_eigs(f, params, batches, key, tol, *, k, method, num_iters):
    flat, unravel = ravel_pytree(params)
    matvec = _hvp_operator(f, flat, unravel, batches)
    if method == "lanczos":
        values, vectors = _lanczos_eigs(matvec, flat.size, flat.dtype, key, k, num_iters)
    else:
        values, vectors = _power_eigs(matvec, flat.size, flat.dtype, key, k, num_iters, tol)
    return HessianEigs(values, jax.vmap(unravel)(vectors))


def hessian_eigs(
    f: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array,
    k: int = 5,
    batches: PyTree = None,
    method: EigsMethod = "lanczos",
    num_iters: int = 100,
    tol: float = 1e-6,
) -> HessianEigs:
    """Top-k eigenvalues and eigenvectors of the Hessian of a loss over a params pytree.

    - `method="lanczos"`: m = min(num_iters, n) Lanczos steps with full reorthogonalisation
      give H ≈ V T Vᵀ on the Krylov space; the eigenpairs (θ, s) of the m×m tridiagonal T
      give Ritz pairs (θ, V s). The top Ritz values converge to the largest algebraic
      eigenvalues, typically within a few tens of products; with m = n they are exact.
      Cost: m Hessian-vector products and an (m, n) basis in memory.
    - `method="power"`: power iteration v ← Hv/‖Hv‖ with Rayleigh quotient λ = vᵀHv, one
      pair at a time, each kept orthogonal to the pairs already found; stops when λ changes
      by less than `tol`·|λ| or after `num_iters` products. It converges to the eigenvalues
      of largest magnitude, in decreasing magnitude, at the rate |λ_{i+1}/λ_i| per step.
      The same as the top algebraic ones when no negative eigenvalue is larger in
      magnitude, as near a minimum.

    Args:
      f: the loss, `f(params)`, or `f(params, batch)` together with `batches` (module doc).
      params: pytree of float arrays, n scalars in total.
      key: a `jax.random.key` (a legacy uint32 key is accepted), for the start vectors.
      k: how many eigenpairs, 1 ≤ k ≤ n.
      batches: None, or batches stacked along a leading axis; the Hessian is then the mean
        over them.
      method: `"lanczos"` or `"power"`.
      num_iters: Lanczos steps (clipped to n, at least k), or power iterations per pair.
      tol: relative convergence tolerance of power iteration; unused by Lanczos.

    Returns:
      `HessianEigs(eigenvalues, eigenvectors)`: eigenvalues of shape `(k,)`, in descending
      order for Lanczos and in the order found for power iteration; eigenvectors a
      params-shaped pytree with a leading axis of size k.
    """
    check_function("hessian_eigs", "f", f)
    check_float_tree("hessian_eigs", "params", params)
    n = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    k = check_int("hessian_eigs", "k", k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of parameters {n}, got {k}")
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    num_iters = check_int("hessian_eigs", "num_iters", num_iters)
    check_positive("hessian_eigs", "tol", tol, allow_zero=True)
    _check_batches(batches)
    if method == "lanczos":
        num_iters = min(max(num_iters, k), n)
    key = typed_key(key, caller="hessian_eigs")
    return _hessian_eigs(f, params, batches, key, tol, k=k, method=method, num_iters=num_iters)


@functools.partial(jax.jit, static_argnames=("f", "num_samples"))
def _hessian_trace(f, params, batches, key, *, num_samples):
    flat, unravel = ravel_pytree(params)
    matvec = _hvp_operator(f, flat, unravel, batches)

    def sample(probe_key: jax.Array) -> jax.Array:
        z = jax.random.rademacher(probe_key, flat.shape, flat.dtype)
        return jnp.dot(z, matvec(z))

    samples = lax.map(sample, jax.random.split(key, num_samples))
    stderr = jnp.std(samples, ddof=1) / jnp.sqrt(num_samples)
    return HessianTrace(jnp.mean(samples), stderr)


def hessian_trace(
    f: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array,
    num_samples: int = 100,
    batches: PyTree = None,
) -> HessianTrace:
    """Hutchinson's estimate of the Hessian trace from Rademacher probes.

    tr(H) = E[zᵀHz] for z with independent ±1 entries, so tr(H) ≈ (1/N) Σᵢ zᵢᵀHzᵢ. The
    variance of one sample is 2 Σ_{i≠j} H_ij² (the diagonal contributes none), so the
    estimate is exact for a diagonal H and the reported standard error is s/√N, s the sample
    standard deviation. Cost: N Hessian-vector products.

    Args:
      f: the loss, `f(params)`, or `f(params, batch)` together with `batches` (module doc).
      params: pytree of float arrays.
      key: a `jax.random.key` (a legacy uint32 key is accepted), for the probes.
      num_samples: the number N ≥ 2 of probes.
      batches: None, or batches stacked along a leading axis; the Hessian is then the mean
        over them.

    Returns:
      `HessianTrace(estimate, stderr)`, two scalars.
    """
    check_function("hessian_trace", "f", f)
    check_float_tree("hessian_trace", "params", params)
    num_samples = check_int("hessian_trace", "num_samples", num_samples, minimum=2)
    _check_batches(batches)
    key = typed_key(key, caller="hessian_trace")
    return _hessian_trace(f, params, batches, key, num_samples=num_samples)


@functools.partial(jax.jit, static_argnames=("f", "num_iters", "num_probes"))
def _hessian_density(f, params, batches, key, *, num_iters, num_probes):
    flat, unravel = ravel_pytree(params)
    matvec = _hvp_operator(f, flat, unravel, batches)

    def probe(probe_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        v0 = jax.random.rademacher(probe_key, flat.shape, flat.dtype)
        tridiagonal, _ = _lanczos(matvec, v0, num_iters)
        nodes, coords = jnp.linalg.eigh(tridiagonal)
        return nodes, coords[0] ** 2

    nodes, weights = lax.map(probe, jax.random.split(key, num_probes))
    return HessianDensity(nodes, weights)


def hessian_density(
    f: Callable[..., jax.Array],
    params: PyTree,
    *,
    key: jax.Array,
    num_iters: int = 100,
    num_probes: int = 1,
    batches: PyTree = None,
) -> HessianDensity:
    """Eigenvalue density of the Hessian by stochastic Lanczos quadrature (SLQ).

    The spectral density φ(t) = (1/n) Σᵢ δ(t − λᵢ) satisfies, for a unit probe v with
    E[vvᵀ] = I/n, E[vᵀ g(H) v] = (1/n) Σᵢ g(λᵢ) = ∫ g φ. For each probe, m Lanczos steps
    from v give T = S diag(θ) Sᵀ, and vᵀ g(H) v ≈ Σⱼ τⱼ² g(θⱼ) with τⱼ = S[0, j]: the
    m-point Gauss quadrature rule of the measure Σᵢ (qᵢᵀv)² δ(t − λᵢ), exact for
    polynomials g of degree < 2m. Averaging the rules over probes estimates φ; smooth it
    with `density_on_grid`. Probes are Rademacher vectors scaled to unit norm.

    Cost: num_probes × m Hessian-vector products; memory an (m, n) basis.

    Args:
      f: the loss, `f(params)`, or `f(params, batch)` together with `batches` (module doc).
      params: pytree of float arrays, n scalars in total.
      key: a `jax.random.key` (a legacy uint32 key is accepted), for the probes.
      num_iters: Lanczos steps per probe, clipped to n.
      num_probes: number of probe vectors.
      batches: None, or batches stacked along a leading axis; the Hessian is then the mean
        over them.

    Returns:
      `HessianDensity(nodes, weights)`, each of shape `(num_probes, m)`.
    """
    check_function("hessian_density", "f", f)
    check_float_tree("hessian_density", "params", params)
    n = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    num_iters = check_int("hessian_density", "num_iters", num_iters)
    num_probes = check_int("hessian_density", "num_probes", num_probes)
    _check_batches(batches)
    key = typed_key(key, caller="hessian_density")
    return _hessian_density(
        f, params, batches, key, num_iters=min(num_iters, n), num_probes=num_probes
    )


def density_on_grid(
    density: HessianDensity, grid: jax.Array, *, sigma: float | jax.Array | None = None
) -> jax.Array:
    """Gaussian-broadened spectral density from SLQ quadrature rules, on a grid.

    φ_σ(t) = (1/P) Σ_p Σⱼ τ_pj² N(t; θ_pj, σ²), the average over P probes of each rule's
    nodes θ and weights τ² smoothed by a Gaussian of width σ. It integrates to 1 over ℝ.

    Args:
      density: the result of `hessian_density`.
      grid: points t, shape `(g,)`.
      sigma: the Gaussian width; default 1% of the larger of the nodes' spread
        max θ − min θ and their largest magnitude max |θ|.

    Returns:
      φ_σ on the grid, shape `(g,)`.
    """
    owner = "density_on_grid"
    if not isinstance(density, HessianDensity):
        raise TypeError(
            f"{owner}: density must be the HessianDensity that hessian_density returns, got "
            f"{type(density).__name__} {density!r:.40}"
        )
    if sigma is not None:
        check_positive(owner, "sigma", sigma)
    nodes, weights = density.nodes, density.weights
    try:
        grid = jnp.asarray(grid, nodes.dtype)
    except (TypeError, ValueError):
        grid = None
    if grid is None or grid.ndim != 1:
        shown = "no numbers" if grid is None else f"shape {grid.shape}"
        raise ValueError(f"{owner}: grid must be a 1-D array of points, got {shown}")
    if sigma is None:
        spread = jnp.maximum(jnp.max(nodes) - jnp.min(nodes), jnp.max(jnp.abs(nodes)))
        sigma = 0.01 * spread
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = jnp.exp(-0.5 * z**2) / (sigma * jnp.sqrt(2 * jnp.pi))
    return jnp.sum(weights[None] * kernel, axis=(1, 2)) / nodes.shape[0]
