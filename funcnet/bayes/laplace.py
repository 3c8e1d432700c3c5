"""Laplace approximations of a trained network's posterior over its weights.

Around the trained weights θ̂ (the MAP of a Gaussian prior N(0, δ⁻¹I)), the posterior over the
weights θ of a chosen subset is approximated by the Gaussian

    p(θ | D) ≈ N(θ̂, P⁻¹),    P = H / (σ² T) + diag(δ),    H = Σ_n Jₙᵀ Λₙ Jₙ  (or Σ_n gₙ gₙᵀ)

with Jₙ = ∂f(xₙ)/∂θ the model's output Jacobian, Λₙ the Hessian of the example's negative
log-likelihood in the outputs (the generalised Gauss-Newton matrix, "ggn") or gₙ = Jₙᵀ∂ℓₙ/∂f
its gradient (the empirical Fisher, "ef"), σ the regression noise scale, T a temperature.
H is kept whole ("full"), as its diagonal ("diag"), or as one Kronecker product per layer
("kron", K-FAC's factors from `funcnet.diff.kronecker_factors`).

The conventions are laplace-torch's (Daxberger et al., 2021; version 0.3), so that the same
network gives the same numbers in both:

- Losses are sums over the data: ℓ = Σ_n CE(f(xₙ), yₙ) for "classification" (softmax
  likelihood) and ℓ = ½ Σ_n ‖yₙ − f(xₙ)‖² for "regression" (Gaussian likelihood in units of
  σ = 1), so Λₙ = diag(p) − ppᵀ or I. The log-likelihood is −ℓ/(σ² T), minus
  N·K·log(σ√(2π)) for regression.
- The log marginal likelihood is log p(D | θ̂) − ½ (log det P − log det P₀ + θ̂ᵀP₀θ̂), P₀ =
  diag(δ).
- "kron" keeps, for each dense or conv kernel of shape ``(in…, out)``, the block
  N·(A ⊗ G) with `A` the layer's input second moment and `G` the mean outer product of the
  back-propagated output gradients, and for its bias the separate block N·G, as laplace-torch
  does (the kernel-bias cross terms are dropped); the prior is added in the factors'
  eigenbasis, exactly.

The one difference is the regression empirical Fisher: here gₙ is the gradient of
½‖yₙ − f‖², which makes Σ gₙgₙᵀ the empirical Fisher of the σ = 1 Gaussian; laplace-torch
takes gradients of the squared error ‖yₙ − f‖² and halves their outer product, which is
twice that.

The weights under the posterior are a flat vector: the subset's leaves in the params'
flattening order (`jax.tree.leaves`, dict keys sorted), each flattened row-major.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet._checks import check_float_tree, check_int, check_positive
from funcnet._keys import typed_key
from funcnet._trees import path_name
from funcnet.diff.modes import jacobian
from funcnet.nn.core import Layer
from funcnet.optim import adam, apply_updates

PyTree = Any
Array = jax.Array
OutputsFn = Callable[[PyTree, Array], Array]
Subset = str | Sequence[str] | Callable[[str], bool]
_LIKELIHOODS = ("classification", "regression")
_STRUCTURES = ("full", "diag", "kron")
_CURVATURES = ("ggn", "ef")

__all__ = [
    "KronBlock",
    "LaplacePosterior",
    "RegressionPredictive",
    "functional_moments",
    "laplace",
    "log_marginal_likelihood",
    "optimize_prior_precision",
    "posterior_precision",
    "predictive",
    "sample",
]


class KronBlock(NamedTuple):
    """One leaf's block `a ⊗ g` of the curvature sum H, with both factors' eigendecompositions
    (`a = a_vectors diag(a_values) a_vectorsᵀ`, the same for `g`).

    For a kernel, `a` is ``(d_in, d_in)`` (`d_in` the product of all its axes but the last),
    `g` is ``(d_out, d_out)``, and the block acts on the kernel flattened row-major; for a
    bias, `a` is ``(1, 1)``.
    """

    a_values: Array
    a_vectors: Array
    g_values: Array
    g_vectors: Array


class LaplacePosterior(NamedTuple):
    """A fitted Laplace approximation (what `laplace` returns).

    Attributes:
      mean: the params pytree at which it was fitted (θ̂ for the subset; the other leaves
        stay fixed).
      curvature: the curvature sum H of the subset (σ = 1, T = 1 units): an ``(n, n)`` matrix
        ("full"), its diagonal ``(n,)`` ("diag"), or a tuple of `KronBlock`, one per subset
        leaf ("kron").
      loss: ℓ at the mean, the negative log-likelihood summed over the data (σ = 1 units).
      prior_precision: δ, shape ``()`` or one per subset leaf ``(len(subset),)``.
      sigma_noise: σ, shape ``()`` (1 for classification).
      temperature: T.
      n_data: N, the number of examples fitted.
      n_outputs: K, the model's outputs per example.
      subset: the '/'-joined paths of the leaves under the posterior, in flattening order.
      likelihood: "classification" or "regression".
      structure: "full", "diag" or "kron".
      outputs_fn: the model, ``outputs_fn(params, x) -> (B, K)``.
    """

    mean: PyTree
    curvature: Array | tuple[KronBlock, ...]
    loss: Array
    prior_precision: Array
    sigma_noise: Array
    temperature: float
    n_data: int
    n_outputs: int
    subset: tuple[str, ...]
    likelihood: str
    structure: str
    outputs_fn: OutputsFn


class RegressionPredictive(NamedTuple):
    """A regression predictive: `mean` and `variance` of y, both ``(B, K)``; the variance
    includes the noise σ²."""

    mean: Array
    variance: Array


# ---------------------------------------------------------------------------------------------
# The subset: which leaves, and the flat vector θ over them.


def _leaf_paths(params: PyTree) -> list[str]:
    return [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _last_layer(outputs_fn: OutputsFn, params: PyTree, x: Array) -> list[str]:
    """The kernel (and bias) of the dense or conv layer used last in the model's jaxpr."""
    from funcnet.diff.kronecker import kronecker_layers

    def outputs_of(p):
        return outputs_fn(p, x)

    layers = kronecker_layers(outputs_of, params)
    if not layers:
        raise ValueError(
            "laplace: subset='last_layer' found no dense or conv layer in the model; "
            "name the leaves instead (subset=[...])"
        )
    jaxpr = jax.make_jaxpr(outputs_of)(params).jaxpr
    position = {v: i for i, v in enumerate(jaxpr.invars)}
    names = _leaf_paths(params)
    first_use: dict[str, int] = {}
    for step, eqn in enumerate(jaxpr.eqns):
        for v in eqn.invars:
            if not isinstance(v, jax.extend.core.Literal) and v in position:
                first_use.setdefault(names[position[v]], step)
    kernel = max(layers, key=lambda name: first_use.get(name, -1))
    bias = layers[kernel].bias
    return [kernel] if bias is None else [kernel, bias]


def _select(subset: Subset, outputs_fn: OutputsFn, params: PyTree, x: Array) -> tuple[str, ...]:
    names = _leaf_paths(params)
    if isinstance(subset, str) and subset == "all":
        chosen = set(names)
    elif isinstance(subset, str) and subset == "last_layer":
        chosen = set(_last_layer(outputs_fn, params, x))
    elif callable(subset):
        chosen = {name for name in names if subset(name)}
    elif isinstance(subset, Sequence) and not isinstance(subset, str):
        wanted = [str(s).strip("/") for s in subset]
        chosen = {n for n in names for w in wanted if n == w or n.startswith(w + "/")}
    else:
        raise ValueError(
            "laplace: subset must be 'all', 'last_layer', a list of param paths or a "
            f"predicate path -> bool, got {subset!r:.80}"
        )
    if not chosen:
        raise ValueError(
            f"laplace: subset {subset!r:.80} names no parameter; the params are "
            f"{', '.join(names)[:200]}"
        )
    return tuple(name for name in names if name in chosen)


def _splitter(params: PyTree, subset: tuple[str, ...]) -> tuple[Array, Callable[[Array], PyTree]]:
    """θ̂, the subset's leaves as one flat vector, and the map θ -> the whole params."""
    pairs, treedef = jax.tree_util.tree_flatten_with_path(params)
    leaves = [jnp.asarray(leaf) for _, leaf in pairs]
    names = [path_name(path) for path, _ in pairs]
    index = [names.index(name) for name in subset]
    sizes = [leaves[i].size for i in index]
    splits = np.cumsum(sizes)[:-1].tolist()
    theta = jnp.concatenate([leaves[i].reshape(-1) for i in index])

    def full(t: Array) -> PyTree:
        new = list(leaves)
        for i, piece in zip(index, jnp.split(t, splits), strict=True):
            new[i] = piece.reshape(leaves[i].shape).astype(t.dtype)
        return treedef.unflatten(new)

    return theta, full


def _subset_sizes(post: LaplacePosterior) -> list[int]:
    leaves = dict(zip(_leaf_paths(post.mean), jax.tree.leaves(post.mean), strict=True))
    return [int(np.size(leaves[name])) for name in post.subset]


def _prior_diag(post: LaplacePosterior, prior: Array) -> Array:
    """δ expanded to one value per weight of the subset, shape ``(n,)``."""
    sizes = _subset_sizes(post)
    prior = jnp.asarray(prior)
    if prior.ndim == 0:
        return jnp.full(sum(sizes), prior)
    return jnp.repeat(prior, np.asarray(sizes), total_repeat_length=sum(sizes))


def _prior_per_leaf(post: LaplacePosterior, prior: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(prior), (len(post.subset),))


def _check_posterior(owner: str, post: Any) -> None:
    """Refuses a `post` that is not a `LaplacePosterior`, in one line naming `owner`."""
    if not isinstance(post, LaplacePosterior):
        raise TypeError(
            f"{owner}: post must be the LaplacePosterior that laplace(...) returns, got "
            f"{type(post).__name__} {post!r:.40}"
        )


def _check_inputs(owner: str, x: Any) -> None:
    """Refuses inputs `x` with a leaf that is not an array (a string, None, a number)."""
    leaves = jax.tree_util.tree_leaves_with_path(x)
    for path, leaf in leaves:
        if not isinstance(leaf, jax.Array | np.ndarray):
            where = jax.tree_util.keystr(path)
            raise TypeError(
                f"{owner}: x{where} must be an array, got {type(leaf).__name__} {leaf!r:.40}"
            )
    if not leaves:
        raise TypeError(f"{owner}: x holds no arrays, got {x!r:.40}")


def _check_prior(owner: str, prior: Any, n_leaves: int) -> Array:
    check_positive(owner, "prior_precision", prior)
    array = jnp.asarray(prior)
    if array.ndim > 1 or (array.ndim == 1 and array.shape[0] not in (1, n_leaves)):
        raise ValueError(
            f"{owner}: prior_precision must be a scalar or one value per subset leaf "
            f"({n_leaves}), got shape {array.shape}"
        )
    return array.reshape(()) if array.size == 1 else array


# ---------------------------------------------------------------------------------------------
# Curvature sums.


def _targets(likelihood: str, y: Any, f_shape: tuple[int, ...]) -> Array:
    y = jnp.asarray(y)
    if likelihood == "classification":
        if y.shape != f_shape[:1] or not jnp.issubdtype(y.dtype, jnp.integer):
            raise ValueError(
                "laplace: likelihood='classification' needs integer labels of shape "
                f"{f_shape[:1]} for outputs of shape {f_shape}, got {y.dtype} {y.shape}"
            )
        return y
    if y.shape == f_shape[:1] and len(f_shape) == 2 and f_shape[1] == 1:
        y = y[:, None]
    if y.shape != f_shape:
        raise ValueError(
            f"laplace: likelihood='regression' needs targets of the outputs' shape {f_shape}, "
            f"got {y.shape}"
        )
    return y


def _residual_and_loss(likelihood: str, f: Array, y: Array) -> tuple[Array, Array]:
    """∂ℓₙ/∂fₙ for every example, ``(B, K)``, and ℓ summed over the batch."""
    if likelihood == "classification":
        log_p = jax.nn.log_softmax(f, axis=-1)
        onehot = jax.nn.one_hot(y, f.shape[-1], dtype=f.dtype)
        return jnp.exp(log_p) - onehot, -jnp.sum(onehot * log_p)
    r = f - y
    return r, 0.5 * jnp.sum(r * r)


@functools.partial(
    jax.jit, static_argnames=("likelihood", "structure", "curvature", "outputs_fn", "subset")
)
def _curvature_sum(params, x, y, *, likelihood, structure, curvature, outputs_fn, subset):
    """H and ℓ of one batch, one compiled program."""
    theta, full = _splitter(params, subset)

    def outputs_of(t):
        return outputs_fn(full(t), x)

    f = outputs_of(theta)
    if f.ndim != 2:
        raise ValueError(f"laplace: outputs_fn must return (batch, outputs), got shape {f.shape}")
    y = _targets(likelihood, y, f.shape)
    j = jacobian(outputs_of, theta)  # (B, K, n)
    r, loss = _residual_and_loss(likelihood, f, y)
    if curvature == "ef":
        g = jnp.einsum("bkp,bk->bp", j, r)
        h = g.T @ g if structure == "full" else jnp.sum(g * g, axis=0)
        return h, loss
    if likelihood == "classification":
        p = jax.nn.softmax(f, axis=-1)
        lam = jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]
        lj = jnp.einsum("bkl,blp->bkp", lam, j)
    else:
        lj = j
    if structure == "full":
        return jnp.einsum("bkp,bkq->pq", j, lj), loss
    return jnp.einsum("bkp,bkp->p", j, lj), loss


@functools.partial(jax.jit, static_argnames=("likelihood", "curvature", "outputs_fn"))
def _kron_chunk(params, x, y, *, likelihood, curvature, outputs_fn):
    """Each layer's factors `A`, `G` and ℓ of one batch, one compiled program."""
    from funcnet.diff.kronecker import kronecker_factors

    def outputs_of(p):
        return outputs_fn(p, x)

    f = outputs_of(params)
    y = _targets(likelihood, y, f.shape)

    def mean_loss(out):
        return _residual_and_loss(likelihood, out, y)[1] / out.shape[0]

    factors = kronecker_factors(
        outputs_of,
        params,
        loss_of_outputs=mean_loss,
        curvature="ggn" if curvature == "ggn" else "empirical",
        likelihood="categorical" if likelihood == "classification" else "gaussian",
    )
    return factors, _residual_and_loss(likelihood, f, y)[1]


_eigh = jax.jit(jnp.linalg.eigh)


def _kron_blocks(likelihood, curvature, outputs_fn, params, subset, chunks, n_data):
    from funcnet.diff.kronecker import kronecker_layers

    x0 = chunks[0][0]
    layers = kronecker_layers(lambda p: outputs_fn(p, x0), params)
    owner = {}
    for kernel, layer in layers.items():
        if tuple(layer.kernel_axes) != tuple(range(len(layer.kernel_shape))):
            continue
        owner[kernel] = (kernel, "kernel")
        if layer.bias is not None:
            owner[layer.bias] = (kernel, "bias")
    missing = [name for name in subset if name not in owner]
    if missing:
        raise ValueError(
            "laplace: structure='kron' covers dense and conv kernels and their biases; "
            f"{', '.join(missing)[:200]} is not one (use structure='full' or 'diag')"
        )
    sums: dict[str, list] = {}
    loss = 0.0
    for x, y in chunks:
        factors, loss_c = _kron_chunk(
            params, x, y, likelihood=likelihood, curvature=curvature, outputs_fn=outputs_fn
        )
        loss = loss + loss_c
        weight = x.shape[0] / n_data
        for kernel, fac in factors.items():
            a, g = sums.get(kernel, (0.0, 0.0))
            sums[kernel] = [a + weight * fac.a, g + weight * fac.g]
    blocks = []
    for name in subset:
        kernel, role = owner[name]
        a, g = sums[kernel]
        if layers[kernel].bias is not None:
            a = a[:-1, :-1] if role == "kernel" else a[-1:, -1:]
        a_values, a_vectors = _eigh(n_data * a)
        g_values, g_vectors = _eigh(g)
        blocks.append(KronBlock(a_values, a_vectors, g_values, g_vectors))
    return tuple(blocks), loss


def laplace(
    outputs_fn: OutputsFn,
    params: PyTree,
    data: tuple[Any, Any],
    *,
    likelihood: Literal["classification", "regression"] = "classification",
    subset: Subset = "all",
    structure: Literal["full", "diag", "kron"] = "full",
    curvature: Literal["ggn", "ef"] = "ggn",
    prior_precision: float | Array = 1.0,
    sigma_noise: float = 1.0,
    temperature: float = 1.0,
    batch_size: int | None = None,
) -> LaplacePosterior:
    """Fits a Laplace approximation at `params` (module docstring: the conventions).

    Args:
      outputs_fn: the model, ``outputs_fn(params, x) -> f`` of shape ``(B, K)``: logits for
        classification, the regression mean otherwise; for a funcnet layer,
        ``lambda p, x: model.apply(p, state, x)[0]``.
      params: the trained weights, a pytree of float arrays.
      data: ``(inputs, targets)``, inputs of shape ``(N, …)``, targets integer labels
        ``(N,)`` (classification) or ``(N, K)`` (regression; ``(N,)`` when K = 1).
      likelihood: "classification" (softmax, categorical) or "regression" (Gaussian).
      subset: the weights under the posterior: "all", "last_layer" (the kernel and bias of
        the dense or conv layer the model uses last), a list of '/'-joined paths (a path
        also selects the leaves under it: ``["dense_2"]``), or a predicate ``path -> bool``.
      structure: H as a "full" matrix, its "diag"onal, or "kron" (one Kronecker block per
        dense or conv kernel, one for its bias).
      curvature: "ggn" (generalised Gauss-Newton, the Fisher for these likelihoods) or "ef"
        (empirical Fisher).
      prior_precision: δ > 0, a scalar or one per subset leaf.
      sigma_noise: σ > 0, the regression noise scale (1 for classification).
      temperature: T > 0, which divides the log-likelihood.
      batch_size: examples per curvature pass (None: all at once). With "kron", the factors
        of the passes are averaged (as K-FAC's running averages), so the result then
        differs from one pass.

    Returns:
      A `LaplacePosterior`.
    """
    owner = "laplace"
    if not callable(outputs_fn):
        hint = (
            "; for a funcnet layer pass lambda p, x: model.apply(p, state, x)[0]"
            if isinstance(outputs_fn, Layer)
            else ""
        )
        raise TypeError(
            f"laplace: outputs_fn must be a function outputs_fn(params, x), got "
            f"{type(outputs_fn).__name__}{hint}"
        )
    check_float_tree(owner, "params", params)
    if likelihood not in _LIKELIHOODS:
        raise ValueError(
            f"laplace: likelihood must be 'classification' or 'regression', got {likelihood!r:.80}"
        )
    if structure not in _STRUCTURES:
        raise ValueError(
            f"laplace: structure must be 'full', 'diag' or 'kron', got {structure!r:.80}"
        )
    if curvature not in _CURVATURES:
        raise ValueError(f"laplace: curvature must be 'ggn' or 'ef', got {curvature!r:.80}")
    check_positive(owner, "sigma_noise", sigma_noise)
    check_positive(owner, "temperature", temperature)
    if likelihood == "classification" and float(sigma_noise) != 1.0:
        raise ValueError(
            f"laplace: sigma_noise is for regression; classification needs 1, got {sigma_noise!r}"
        )
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise ValueError("laplace: data must be a pair (inputs, targets)")
    x_all, y_all = jnp.asarray(data[0]), np.asarray(data[1])
    n_data = int(x_all.shape[0]) if x_all.ndim else 0
    if n_data == 0 or y_all.shape[:1] != (n_data,):
        raise ValueError(
            f"laplace: inputs and targets must share a leading axis of at least one example, "
            f"got shapes {x_all.shape} and {y_all.shape}"
        )
    step = n_data if batch_size is None else check_int(owner, "batch_size", batch_size)
    chunks = [(x_all[i : i + step], y_all[i : i + step]) for i in range(0, n_data, step)]
    params = jax.tree.map(jnp.asarray, params)
    names = _select(subset, outputs_fn, params, chunks[0][0])
    prior = _check_prior(owner, prior_precision, len(names))
    theta, _ = _splitter(params, names)
    if structure == "kron":
        h, loss = _kron_blocks(likelihood, curvature, outputs_fn, params, names, chunks, n_data)
    else:
        h, loss = 0.0, 0.0
        for x, y in chunks:
            h_c, loss_c = _curvature_sum(
                params,
                x,
                jnp.asarray(y),
                likelihood=likelihood,
                structure=structure,
                curvature=curvature,
                outputs_fn=outputs_fn,
                subset=names,
            )
            h, loss = h + h_c, loss + loss_c
    n_outputs = int(jax.eval_shape(lambda: outputs_fn(params, chunks[0][0][:1])).shape[-1])
    dtype = theta.dtype
    return LaplacePosterior(
        mean=params,
        curvature=h,
        loss=jnp.asarray(loss, dtype),
        prior_precision=prior.astype(dtype),
        sigma_noise=jnp.asarray(sigma_noise, dtype),
        temperature=float(temperature),
        n_data=n_data,
        n_outputs=n_outputs,
        subset=names,
        likelihood=likelihood,
        structure=structure,
        outputs_fn=outputs_fn,
    )


# ---------------------------------------------------------------------------------------------
# The posterior: precision, evidence, prior tuning. Each public function runs as one compiled
# program: the posterior's arrays are traced, its other fields (the model, the subset, the
# choices) are static.

_ARRAYS = ("mean", "curvature", "loss", "prior_precision", "sigma_noise")
_STATIC = ("temperature", "n_data", "n_outputs", "subset", "likelihood", "structure", "outputs_fn")


def _compiled(*static_names: str) -> Callable:
    """`fn(post, *args, **kwargs)` compiled once per posterior layout and static keywords."""

    def wrap(fn: Callable) -> Callable:
        @functools.partial(jax.jit, static_argnums=0, static_argnames=static_names)
        def run(static, arrays, *args, **kwargs):
            fields = dict(zip(_ARRAYS, arrays, strict=True)) | dict(
                zip(_STATIC, static, strict=True)
            )
            return fn(LaplacePosterior(**fields), *args, **kwargs)

        @functools.wraps(fn)
        def call(post: LaplacePosterior, *args, **kwargs):
            _check_posterior(fn.__name__, post)
            static = tuple(getattr(post, name) for name in _STATIC)
            arrays = tuple(getattr(post, name) for name in _ARRAYS)
            return run(static, arrays, *args, **kwargs)

        return call

    return wrap


def _h_factor(post: LaplacePosterior, sigma: Array) -> Array:
    return 1.0 / (sigma**2 * post.temperature)


def _kron_eigenvalues(post: LaplacePosterior, factor: Array, prior: Array) -> list[Array]:
    """The posterior precision's eigenvalues of each Kronecker block, ``(d_in, d_out)``."""
    deltas = _prior_per_leaf(post, prior)
    return [
        factor * jnp.outer(block.a_values, block.g_values) + delta
        for block, delta in zip(post.curvature, deltas, strict=True)
    ]


@_compiled()
def posterior_precision(post: LaplacePosterior) -> Array:
    """P = H/(σ²T) + diag(δ): ``(n, n)`` for "full" and "kron" (the blocks assembled densely,
    for checks on small models), ``(n,)`` for "diag"."""
    factor = _h_factor(post, post.sigma_noise)
    prior = _prior_diag(post, post.prior_precision)
    if post.structure == "full":
        return factor * post.curvature + jnp.diag(prior)
    if post.structure == "diag":
        return factor * post.curvature + prior
    blocks = []
    for block in post.curvature:
        a = (block.a_vectors * block.a_values) @ block.a_vectors.T
        g = (block.g_vectors * block.g_values) @ block.g_vectors.T
        blocks.append(jnp.kron(a, g))
    return factor * jax.scipy.linalg.block_diag(*blocks) + jnp.diag(prior)


def _log_det_precision(
    post: LaplacePosterior, factor: Array, prior: Array, h_values: Array | None = None
) -> Array:
    if h_values is not None:  # "full" with one δ: log det(factor·H + δI) = Σ log(factor·λ + δ)
        return jnp.sum(jnp.log(factor * h_values + prior))
    if post.structure == "full":
        p = factor * post.curvature + jnp.diag(_prior_diag(post, prior))
        chol = jnp.linalg.cholesky(p)
        return 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
    if post.structure == "diag":
        return jnp.sum(jnp.log(factor * post.curvature + _prior_diag(post, prior)))
    return sum(jnp.sum(jnp.log(ev)) for ev in _kron_eigenvalues(post, factor, prior))


def _evidence(
    post: LaplacePosterior, prior: Array, sigma: Array, h_values: Array | None = None
) -> Array:
    factor = _h_factor(post, sigma)
    log_lik = -factor * post.loss
    if post.likelihood == "regression":
        log_lik = log_lik - post.n_data * post.n_outputs * jnp.log(sigma * math.sqrt(2 * math.pi))
    theta, _ = _splitter(post.mean, post.subset)
    prior_diag = _prior_diag(post, prior)
    log_det_prior = jnp.sum(jnp.log(prior_diag))
    scatter = jnp.sum(prior_diag * theta * theta)
    log_det_ratio = _log_det_precision(post, factor, prior, h_values) - log_det_prior
    return log_lik - 0.5 * (log_det_ratio + scatter)


_evidence_compiled = _compiled()(_evidence)


def log_marginal_likelihood(
    post: LaplacePosterior,
    prior_precision: float | Array | None = None,
    sigma_noise: float | Array | None = None,
) -> Array:
    """The Laplace evidence log p(D) ≈ log p(D | θ̂) − ½ (log det P − log det P₀ + θ̂ᵀP₀θ̂).

    log p(D | θ̂) = −ℓ/(σ²T) for classification, −ℓ/(σ²T) − N·K·log(σ√(2π)) for regression.
    Differentiable in `prior_precision` (δ, default the posterior's) and `sigma_noise`
    (σ, default the posterior's; regression only). Returns a scalar.
    """
    owner = "log_marginal_likelihood"
    _check_posterior(owner, post)
    if sigma_noise is not None and post.likelihood != "regression":
        raise ValueError(f"{owner}: sigma_noise is for regression only")
    if prior_precision is None:
        prior = post.prior_precision
    else:
        prior = _check_prior(owner, prior_precision, len(post.subset))
    if sigma_noise is not None:
        check_positive(owner, "sigma_noise", sigma_noise)
    sigma = post.sigma_noise if sigma_noise is None else jnp.asarray(sigma_noise)
    return _evidence_compiled(post, prior, sigma)


@_compiled("n_steps", "learning_rate")
def _tune_prior(post: LaplacePosterior, log_prior: Array, *, n_steps: int, learning_rate: float):
    opt = adam(learning_rate)
    # With one δ, H's eigenvalues (found once) give every step's log det in O(n), instead of
    # a Cholesky factorisation per step.
    scalar = post.structure == "full" and log_prior.ndim == 0
    h_values = jnp.linalg.eigvalsh(post.curvature) if scalar else None

    def neg(log_delta):
        return -_evidence(post, jnp.exp(log_delta), post.sigma_noise, h_values)

    def step(carry, _):
        log_delta, state = carry
        updates, state = opt.update(jax.grad(neg)(log_delta), state, log_delta)
        return (apply_updates(log_delta, updates), state), None

    (log_prior, _), _ = lax.scan(step, (log_prior, opt.init(log_prior)), length=n_steps)
    return jnp.exp(log_prior)


def optimize_prior_precision(
    post: LaplacePosterior,
    *,
    n_steps: int = 100,
    learning_rate: float = 0.1,
    init: float | Array = 1.0,
    layerwise: bool = False,
) -> LaplacePosterior:
    """The posterior with δ tuned to maximise the log marginal likelihood.

    laplace-torch's ``optimize_prior_precision(method="marglik")``: `n_steps` steps of Adam
    (torch's rule and defaults) at `learning_rate` on log δ, from δ = `init`, descending
    −`log_marginal_likelihood`; one δ for all the subset (`layerwise=False`) or one per subset
    leaf. The evidence of "full", "diag" and "kron" is a closed form in δ, so every step is
    exact; all steps run in one compiled `lax.scan`.
    """
    owner = "optimize_prior_precision"
    _check_posterior(owner, post)
    n_steps = check_int(owner, "n_steps", n_steps, minimum=0)
    check_positive(owner, "learning_rate", learning_rate)
    init = _check_prior(owner, init, len(post.subset))
    shape = (len(post.subset),) if layerwise else ()
    log_prior = jnp.broadcast_to(jnp.log(jnp.asarray(init, post.loss.dtype)), shape)
    tuned = _tune_prior(post, log_prior, n_steps=n_steps, learning_rate=float(learning_rate))
    return post._replace(prior_precision=tuned)


# ---------------------------------------------------------------------------------------------
# Predictives.


def _covariance_times(post: LaplacePosterior, w: Array, power: float) -> Array:
    """P^power applied to the rows of `w` ``(M, n)`` (power −1 or −½), ``(M, n)``."""
    factor = _h_factor(post, post.sigma_noise)
    prior = _prior_diag(post, post.prior_precision)
    if post.structure == "diag":
        return w * (factor * post.curvature + prior) ** power
    if post.structure == "full":
        chol = jnp.linalg.cholesky(factor * post.curvature + jnp.diag(prior))
        if power == -1:
            return jax.scipy.linalg.cho_solve((chol, True), w.T).T
        # P = L Lᵀ: L⁻ᵀ ε has covariance P⁻¹.
        return jax.scipy.linalg.solve_triangular(chol.T, w.T, lower=False).T
    out, start = [], 0
    values = _kron_eigenvalues(post, factor, post.prior_precision)
    for block, ev in zip(post.curvature, values, strict=True):
        d_in, d_out = ev.shape
        piece = w[:, start : start + d_in * d_out].reshape(-1, d_in, d_out)
        rotated = block.a_vectors.T @ piece @ block.g_vectors
        piece = block.a_vectors @ (rotated * ev**power) @ block.g_vectors.T
        out.append(piece.reshape(-1, d_in * d_out))
        start += d_in * d_out
    return jnp.concatenate(out, axis=1)


def _moments(post: LaplacePosterior, x: Array) -> tuple[Array, Array]:
    theta, full = _splitter(post.mean, post.subset)

    def outputs_of(t):
        return post.outputs_fn(full(t), x)

    f = outputs_of(theta)
    j = jacobian(outputs_of, theta)  # (B, K, n)
    b, k, n = j.shape
    sj = _covariance_times(post, j.reshape(b * k, n), -1).reshape(b, k, n)
    return f, jnp.einsum("bkp,blp->bkl", j, sj)


_moments_compiled = _compiled()(_moments)


def functional_moments(post: LaplacePosterior, x: Array) -> tuple[Array, Array]:
    """The linearised model's (GLM's) output distribution at inputs `x` ``(B, …)``:
    f ~ N(f(x; θ̂), J P⁻¹ Jᵀ). Returns the mean ``(B, K)`` and covariance ``(B, K, K)``.
    """
    _check_posterior("functional_moments", post)
    _check_inputs("functional_moments", x)
    return _moments_compiled(post, x)


def _draws(post: LaplacePosterior, key: Array, n_samples: int) -> PyTree:
    theta, full = _splitter(post.mean, post.subset)
    eps = jax.random.normal(key, (n_samples, theta.size), theta.dtype)
    return jax.vmap(full)(theta + _covariance_times(post, eps, -0.5))


_draws_compiled = _compiled("n_samples")(_draws)


def sample(post: LaplacePosterior, key: Array, n_samples: int) -> PyTree:
    """Draws of the weights θ ~ N(θ̂, P⁻¹): the params pytree with a leading axis of
    `n_samples` on every leaf (the leaves outside the subset repeated)."""
    _check_posterior("sample", post)
    n_samples = check_int("sample", "n_samples", n_samples)
    return _draws_compiled(post, typed_key(key, caller="sample"), n_samples=n_samples)


@_compiled("pred_type", "link_approx", "n_samples")
def _predict(post, x, key, *, pred_type, link_approx, n_samples):
    classify = post.likelihood == "classification"
    noise = post.sigma_noise**2
    if pred_type == "nn":
        draws = _draws(post, key, n_samples)
        fs = lax.map(lambda p: post.outputs_fn(p, x), draws)
        if classify:
            return jnp.mean(jax.nn.softmax(fs, axis=-1), axis=0)
        return RegressionPredictive(jnp.mean(fs, axis=0), jnp.var(fs, axis=0, ddof=1) + noise)
    f_mu, f_var = _moments(post, x)
    if not classify:
        return RegressionPredictive(f_mu, jnp.diagonal(f_var, axis1=1, axis2=2) + noise)
    if link_approx == "probit":
        kappa = 1.0 / jnp.sqrt(1.0 + math.pi / 8 * jnp.diagonal(f_var, axis1=1, axis2=2))
        return jax.nn.softmax(kappa * f_mu, axis=-1)
    values, vectors = jnp.linalg.eigh(f_var)
    root = vectors * jnp.sqrt(jnp.maximum(values, 0.0))[:, None, :]
    eps = jax.random.normal(key, (n_samples, *f_mu.shape), f_mu.dtype)
    fs = f_mu + jnp.einsum("bkl,sbl->sbk", root, eps)
    return jnp.mean(jax.nn.softmax(fs, axis=-1), axis=0)


def predictive(
    post: LaplacePosterior,
    x: Array,
    *,
    pred_type: Literal["glm", "nn"] = "glm",
    link_approx: Literal["probit", "mc"] = "probit",
    n_samples: int = 100,
    key: Array | None = None,
) -> Array | RegressionPredictive:
    """The posterior predictive at inputs `x` ``(B, …)``.

    - ``pred_type="glm"``: the linearised model, f ~ N(μ, Σ) (`functional_moments`). For
      classification, class probabilities ``(B, K)``: by the probit approximation
      softmax(μ / √(1 + π/8 diag Σ)) (`link_approx="probit"`), or the mean of softmax over
      `n_samples` draws of f (`"mc"`, needs `key`). For regression, the exact
      `RegressionPredictive(μ, diag Σ + σ²)`.
    - ``pred_type="nn"``: the network at `n_samples` draws of the weights (`sample`, needs
      `key`): the mean of the softmax (classification), or the draws' mean and variance
      (divided by `n_samples − 1`, as torch's `var`) plus σ² (regression).

    laplace-torch's regression variance is the model's alone: subtract σ² to compare.
    """
    _check_posterior("predictive", post)
    _check_inputs("predictive", x)
    if pred_type not in ("glm", "nn"):
        raise ValueError(f"predictive: pred_type must be 'glm' or 'nn', got {pred_type!r:.80}")
    if link_approx not in ("probit", "mc"):
        raise ValueError(
            f"predictive: link_approx must be 'probit' or 'mc', got {link_approx!r:.80}"
        )
    classify = post.likelihood == "classification"
    sampled = pred_type == "nn" or (classify and link_approx == "mc")
    if sampled:
        n_samples = check_int("predictive", "n_samples", n_samples)
        if key is None:
            raise TypeError("predictive: sampling (pred_type='nn' or link_approx='mc') needs key")
        key = typed_key(key, caller="predictive")
    else:
        n_samples, key = 0, None
        link_approx = link_approx if classify else "probit"
    return _predict(post, x, key, pred_type=pred_type, link_approx=link_approx, n_samples=n_samples)
