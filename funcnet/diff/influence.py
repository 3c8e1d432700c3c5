"""Influence functions: how the fitted params, and a loss, move when a training example goes.

With the training loss R(θ) = (1/n) Σᵢ ℓ(zᵢ, θ) at its minimiser θ̂ and the damped curvature
H = ∇²R(θ̂) + λI (λ = `damping`, e.g. the L2 coefficient the model was trained with), the
first-order effect of removing the training example zⱼ (Koh & Liang 2017, eq. 2 with the
weight ε = −1/n) is::

    θ̂₋ⱼ − θ̂ ≈ (1/n) H⁻¹ ∇ℓ(zⱼ, θ̂)
    ℓ(z, θ̂₋ⱼ) − ℓ(z, θ̂) ≈ (1/n) ∇ℓ(z, θ̂)ᵀ H⁻¹ ∇ℓ(zⱼ, θ̂)

`influence` gives the second line for every pair of a test and a training example, and
`self_influence` gives sⱼ = ∇ℓ(zⱼ)ᵀ H⁻¹ ∇ℓ(zⱼ), which is large for examples the rest of the
data does not explain: mislabelled ones rank high (Koh & Liang, §5.4).

The curvature is the Hessian (`curvature="hessian"`, exact for the convex models the formula
is derived for) or the Gauss-Newton matrix G = Jᵀ ∇²ℓ J (`"ggn"`, positive semi-definite, the
usual choice for networks whose minimiser is only approximate; Bae et al. 2022). H⁻¹v comes
from one of:

- `"exact"`: the dense matrix, formed column by column and solved (params ≤ `max_params`);
- `"cg"`: conjugate gradients on matrix-free products, `cg_iters` at most per vector;
- `"lissa"`: the stochastic series of Agarwal et al. (2017) as Koh & Liang use it,
  xₖ = xₖ₋₁ + (v − (H_Bₖ + λI) xₖ₋₁) / s over `lissa_depth` minibatches Bₖ, averaged over
  `lissa_repeats` runs; s must exceed H + λI's largest eigenvalue (`lissa_scale`, estimated
  by power iteration when None);
- `"ekfac"`: the eigenvalue-corrected K-FAC of George et al. (2018), as Grosse et al. (2023)
  use it for influence: each dense or conv layer's Gauss-Newton block is taken in the
  eigenbasis Q_A ⊗ Q_G of its Kronecker factors (`funcnet.diff.kronecker_factors`, exact
  GGN), with the exact diagonal of the block in that basis as its eigenvalues,
  Λ = (1/n) Σᵢ Σ_c (Q_Aᵀ Γᵢ,c Q_G)² (Γᵢ,c the layer's kernel-matrix gradient of
  ⟨uᵢ,c, f(xᵢ)⟩, uᵢ,c the columns of a square root of ∇²ℓ(f(xᵢ))); every other leaf keeps
  the exact diagonal of G. Block-diagonal over layers, so only `curvature="ggn"`; cheap to
  invert for any number of vectors once Λ is formed.

The model and loss come as `model(params, x) -> outputs` and `loss(outputs, y) -> scalar`,
the mean over the batch (funcnet's losses, e.g. `funcnet.losses.softmax_cross_entropy`); the
data as ``(x, y)`` with a leading example axis. Each function checks its arguments on the host,
then runs as one program compiled with `jax.jit`, keyed on the identity of `model` and `loss`
and on the settings: the same model and loss with new params or data reuse the compiled
code, while a fresh closure per call compiles anew.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from jax import lax
from jax.flatten_util import ravel_pytree

from funcnet._checks import check_float_tree, check_function, check_int, check_positive
from funcnet._trees import leading_size
from funcnet.diff._linear_solve import conjugate_gradient
from funcnet.diff._output_hessian import eigen_factors, output_hessian_blocks
from funcnet.diff.kronecker import (
    kernel_matrix,
    kronecker_factors,
    kronecker_layers,
    leaf_name,
    split_kernel_matrix,
)
from funcnet.diff.modes import gnvp, hvp
from funcnet.diff.per_example import per_example_grads

PyTree = Any
Data = tuple[Any, Any]
Model = Callable[[PyTree, Any], jax.Array]
Loss = Callable[[jax.Array, Any], jax.Array]
Method = Literal["exact", "cg", "lissa", "ekfac"]
Curvature = Literal["hessian", "ggn"]

__all__ = ["influence", "inverse_hvp", "self_influence"]

_METHODS = ("exact", "cg", "lissa", "ekfac")
_DEFAULTS = {
    "cg_iters": 100,
    "cg_tol": 1e-10,
    "lissa_depth": 1000,
    "lissa_repeats": 1,
    "lissa_scale": None,
    "batch_size": None,
    "key": None,
    "max_params": 10_000,
}
_SETTINGS = frozenset(_DEFAULTS)
_CURVATURES = ("hessian", "ggn")


def _check(
    owner: str, method: str, curvature: str, damping: float, train: Data, n_params: int, limit: int
) -> None:
    if method not in _METHODS:
        raise ValueError(f"{owner}: method must be one of {_METHODS}, got {method!r}")
    if curvature not in _CURVATURES:
        raise ValueError(f"{owner}: curvature must be one of {_CURVATURES}, got {curvature!r}")
    check_positive(owner, "damping", damping, allow_zero=True)
    if method == "ekfac" and curvature != "ggn":
        raise ValueError(
            f"{owner}: method='ekfac' approximates the Gauss-Newton matrix; use curvature='ggn'"
        )
    _check_pair(owner, train)
    if method == "exact" and n_params > limit:
        raise ValueError(
            f"{owner}: method='exact' forms the {n_params}×{n_params} curvature matrix, above "
            f"max_params={limit}; use method='cg' or 'lissa', or raise max_params"
        )


def _check_pair(owner: str, data: Any) -> None:
    if not (isinstance(data, tuple | list) and len(data) == 2):
        raise TypeError(f"{owner}: data must be a pair (x, y), got {type(data).__name__}")
    leading_size(tuple(data), what=f"{owner}: x and y")


def _curvature_product(
    model: Model, loss: Loss, params: PyTree, data: Data, curvature: str, damping: float
) -> Callable[[jax.Array], jax.Array]:
    """v ↦ (C + λI) v on flat vectors, C the Hessian or Gauss-Newton matrix of the mean loss
    on `data`."""
    x, y = data
    flat, unravel = ravel_pytree(params)

    def product(v: jax.Array) -> jax.Array:
        if curvature == "ggn":
            cv = gnvp(lambda p: model(p, x), lambda out: loss(out, y), params, unravel(v))
        else:
            cv = hvp(lambda p: loss(model(p, x), y), params, unravel(v))
        return ravel_pytree(cv)[0].astype(flat.dtype) + damping * v

    return product


def _top_eigenvalue(product: Callable, size: int, dtype, key: jax.Array, iters: int = 30):
    """The largest |eigenvalue| of a symmetric operator by power iteration."""
    v = jax.random.normal(key, (size,), dtype)

    def step(v, _):
        w = product(v / jnp.linalg.norm(v))
        return w, None

    w, _ = lax.scan(step, v, None, length=iters)
    u = w / jnp.linalg.norm(w)
    return jnp.abs(jnp.vdot(u, product(u)))


def _checked(
    owner: str, params: PyTree, train: Data, choice: tuple[str, str, float], solver: dict[str, Any]
) -> tuple[tuple[str, str], tuple[tuple[str, Any], ...]]:
    """Every setting checked for `owner` before any work: `choice` ``(method, curvature, λ)``
    and the `solver` settings. Returns the hashable keys of the compiled program: the
    method and curvature, and the settings (their defaults filled in, `key` apart) as sorted
    ``(name, value)`` pairs; λ and the key are traced."""
    method, curvature, damping = choice
    unknown = sorted(set(solver) - _SETTINGS)
    if unknown:
        raise TypeError(f"{owner}: unknown solver settings {unknown}; known: {sorted(_SETTINGS)}")
    settings = {**_DEFAULTS, **solver}
    check_float_tree(owner, "params", params)
    n_params = sum(int(jnp.size(leaf)) for leaf in jax.tree.leaves(params))
    _check(owner, method, curvature, damping, train, n_params, settings["max_params"])
    if method == "lissa":
        if settings["key"] is None:
            raise ValueError(f"{owner}: method='lissa' draws minibatches and needs a key")
        check_int(owner, "lissa_depth", settings["lissa_depth"])
        check_int(owner, "lissa_repeats", settings["lissa_repeats"])
        if settings["lissa_scale"] is not None:
            check_positive(owner, "lissa_scale", settings["lissa_scale"])
    if method in ("lissa", "ekfac") and settings["batch_size"] is not None:
        check_int(owner, "batch_size", settings["batch_size"])
    plain = lambda v: v.item() if hasattr(v, "item") else v  # NumPy and JAX scalars
    static = tuple(sorted((k, plain(v)) for k, v in settings.items() if k != "key"))
    return (method, curvature), static


def _solve(
    problem: tuple[Model, Loss, PyTree, Data],
    rhs: jax.Array,
    choice: tuple[str, str, float],
    static: tuple[tuple[str, Any], ...],
    key: jax.Array | None,
) -> jax.Array:
    """(C + λI)⁻¹ applied to each row of `rhs` ``(k, P)`` for the training loss of
    `problem` ``(model, loss, params, train)``, with `choice` ``(method, curvature, λ)``, the
    settings `_checked` returned and LiSSA's `key`."""
    model, loss, params, train = problem
    method, curvature, damping = choice
    settings = dict(static)
    product = _curvature_product(model, loss, params, train, curvature, damping)
    size = rhs.shape[1]
    if method == "exact":
        matrix = lax.map(product, jnp.eye(size, dtype=rhs.dtype), batch_size=min(size, 64))
        return jnp.linalg.solve((matrix + matrix.T) / 2, rhs.T).T
    if method == "ekfac":
        return _ekfac_inverse(model, loss, params, train, damping, settings["batch_size"])(rhs)
    if method == "cg":
        zero = jnp.zeros(size, rhs.dtype)
        cg_iters, cg_tol = settings["cg_iters"], settings["cg_tol"]
        solve_one = lambda v: conjugate_gradient(product, -v, zero, max_iters=cg_iters, tol=cg_tol)
        return jax.vmap(lambda v: solve_one(v)[0])(rhs)
    lissa = tuple(
        settings[k] for k in ("lissa_depth", "lissa_repeats", "lissa_scale", "batch_size")
    )
    return _lissa(problem, rhs, (curvature, damping), lissa, key)


def _lissa(
    problem: tuple[Model, Loss, PyTree, Data],
    rhs: jax.Array,
    curvature_damping: tuple[str, float],
    settings: tuple[int, int, float | None, int | None],
    key: jax.Array,
) -> jax.Array:
    """Agarwal et al.'s series for (C + λI)⁻¹ v: xₖ = xₖ₋₁ + (v − (C_Bₖ + λI) xₖ₋₁)/s."""
    model, loss, params, train = problem
    curvature, damping = curvature_damping
    depth, repeats, scale, batch_size = settings
    x_all, y_all = train
    n = jax.tree.leaves(x_all)[0].shape[0]
    batch_size = n if batch_size is None else batch_size
    key, scale_key = jax.random.split(key)
    if scale is None:
        full = _curvature_product(model, loss, params, train, curvature, damping)
        scale = 1.1 * _top_eigenvalue(full, rhs.shape[1], rhs.dtype, scale_key)

    def one_run(run_key: jax.Array) -> jax.Array:
        def step(x, step_key):
            rows = jax.random.choice(step_key, n, (batch_size,), replace=False)
            batch = jax.tree.map(lambda a: a[rows], (x_all, y_all))
            product = _curvature_product(model, loss, params, batch, curvature, damping)
            return x + (rhs - jax.vmap(product)(x)) / scale, None

        x, _ = lax.scan(step, jnp.zeros_like(rhs), jax.random.split(run_key, depth))
        return x

    return jnp.mean(jax.vmap(one_run)(jax.random.split(key, repeats)), axis=0)


def _ggn_columns(model: Model, loss: Loss, params: PyTree, example: Data) -> PyTree:
    """Jᵀu_c for the columns u_c of a square root of one example's loss Hessian in its
    outputs (eigenvalues below 0 taken as 0): a params-shaped pytree with a leading axis C."""
    x, y = jax.tree.map(lambda a: a[None], example)
    out, pullback = jax.vjp(lambda p: model(p, x), params)
    values, vectors = eigen_factors(output_hessian_blocks(lambda o: loss(o, y), out))
    roots = vectors[0] * jnp.sqrt(jnp.maximum(values[0], 0.0))
    return jax.vmap(lambda u: pullback(u.reshape(out.shape))[0])(roots.T)


def _ekfac_inverse(
    model: Model, loss: Loss, params: PyTree, train: Data, damping: float, chunk: int | None
) -> Callable[[jax.Array], jax.Array]:
    """v ↦ (Ĝ + λI)⁻¹ v on flat vectors, Ĝ the EK-FAC Gauss-Newton matrix (module doc)."""
    x, y = train
    outputs_fn = lambda p: model(p, x)
    layers = kronecker_layers(outputs_fn, params)
    factors = kronecker_factors(outputs_fn, params, loss_of_outputs=lambda o: loss(o, y))
    bases = {k: (jnp.linalg.eigh(f.a)[1], jnp.linalg.eigh(f.g)[1]) for k, f in factors.items()}
    flat, unravel = ravel_pytree(params)
    named = lambda tree: {
        leaf_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }
    biases = {layer.bias for layer in layers.values()}
    rest = [k for k in named(params) if k not in layers and k not in biases]

    def rotated_squares(grads: PyTree) -> dict[str, jax.Array]:
        """The squares summed over a batch of gradients: in each layer's eigenbasis, and
        plain for the other leaves."""
        g = named(grads)
        out = {k: jnp.sum(g[k] ** 2, axis=0) for k in rest}
        for k, layer in layers.items():
            qa, qg = bases[k]
            bias = None if layer.bias is None else g[layer.bias]
            mats = jax.vmap(functools.partial(kernel_matrix, layer))(g[k], bias)
            out[k] = jnp.sum((qa.T @ mats @ qg) ** 2, axis=0)
        return out

    n = jax.tree.leaves(x)[0].shape[0]
    per_example = lambda e: rotated_squares(_ggn_columns(model, loss, params, e))
    summed = jax.tree.map(
        lambda a: jnp.sum(a, axis=0) / n,
        lax.map(per_example, (x, y), batch_size=chunk or min(n, 64)),
    )

    def inverse(rhs: jax.Array) -> jax.Array:
        def one(v: jax.Array) -> jax.Array:
            tree = unravel(v)
            parts = named(tree)
            out = {k: parts[k] / (summed[k] + damping) for k in rest}
            for k, layer in layers.items():
                qa, qg = bases[k]
                bias = None if layer.bias is None else parts[layer.bias]
                mat = qa.T @ kernel_matrix(layer, parts[k], bias) @ qg
                mat = qa @ (mat / (summed[k] + damping)) @ qg.T
                bias_shape = None if bias is None else bias.shape
                out[k], b = split_kernel_matrix(layer, mat, bias_shape)
                if bias is not None:
                    out[layer.bias] = b
            paths = [leaf_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
            leaves = [out[k].astype(flat.dtype) for k in paths]
            return ravel_pytree(jax.tree.unflatten(jax.tree.structure(tree), leaves))[0]

        return jax.vmap(one)(rhs)

    return inverse


def _flat_grads(model: Model, loss: Loss, params: PyTree, data: Data) -> jax.Array:
    """∇ℓ(zᵢ, θ) of every example, flattened: ``(n, P)``."""

    def example_loss(p: PyTree, example: Data) -> jax.Array:
        x, y = jax.tree.map(lambda a: a[None], example)
        return loss(model(p, x), y)

    return _flat(per_example_grads(example_loss, params, tuple(data)))


def _flat(tree: PyTree) -> jax.Array:
    """A batch of params-shaped pytrees as rows ``(k, P)``."""
    return jax.vmap(lambda t: ravel_pytree(t)[0])(tree)


def inverse_hvp(
    model: Model,
    loss: Loss,
    params: PyTree,
    train: Data,
    vectors: PyTree,
    *,
    method: Method = "cg",
    curvature: Curvature = "ggn",
    damping: float = 0.0,
    **solver: Any,
) -> PyTree:
    """(C + λI)⁻¹ v for each of k params-shaped vectors, C the curvature of the training loss.

    Args:
      model, loss, train: the model, the mean loss and the training data ``(x, y)`` (module
        doc); C is the Hessian or Gauss-Newton matrix of ``loss(model(θ, x), y)``.
      params: the point θ̂, a pytree of float arrays.
      vectors: a pytree shaped like `params` with a leading axis of k vectors.
      method, curvature: as in the module doc.
      damping: λ ≥ 0 added to C's diagonal.
      solver: the chosen method's settings: `cg_iters` (100) and `cg_tol` (1e-10, relative
        to ‖v‖) for CG; `lissa_depth` (1000), `lissa_repeats` (1), `lissa_scale` (None:
        1.1 × the largest eigenvalue, by power iteration), `batch_size` (None: all the data,
        which makes the series deterministic) and `key` for LiSSA; `max_params` (10,000) for
        `"exact"`.

    Returns:
      A pytree shaped like `vectors`.
    """
    check_function("inverse_hvp", "model", model)
    check_function("inverse_hvp", "loss", loss)
    choice, static = _checked("inverse_hvp", params, train, (method, curvature, damping), solver)
    _check_vectors(params, vectors)
    return _inverse_hvp(
        model, loss, choice, static, damping, params, tuple(train), vectors, solver.get("key")
    )


def _check_vectors(params: PyTree, vectors: PyTree) -> None:
    """Refuses `vectors` that are not params-shaped leaves with one shared leading axis."""
    p_leaves, p_def = jax.tree.flatten(params)
    v_leaves, v_def = jax.tree.flatten(vectors)
    k = {jnp.shape(v)[0] if jnp.ndim(v) else None for v in v_leaves}
    if (
        v_def != p_def
        or len(k) != 1
        or None in k
        or any(jnp.shape(v)[1:] != jnp.shape(p) for v, p in zip(v_leaves, p_leaves, strict=True))
    ):
        shapes = jax.tree.map(jnp.shape, vectors)
        raise ValueError(
            "inverse_hvp: vectors must be shaped like params with a leading axis of k "
            f"vectors, got {shapes!s:.200}"
        )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _inverse_hvp(model, loss, choice, static, damping, params, train, vectors, key):
    flat, unravel = ravel_pytree(params)
    rhs = _flat(vectors).astype(flat.dtype)
    solved = _solve((model, loss, params, train), rhs, (*choice, damping), static, key)
    return jax.vmap(unravel)(solved)


def influence(
    model: Model,
    loss: Loss,
    params: PyTree,
    train: Data,
    test: Data,
    *,
    method: Method = "cg",
    curvature: Curvature = "ggn",
    damping: float = 0.0,
    **solver: Any,
) -> jax.Array:
    """The predicted change of each test example's loss when each training example is removed.

    I[i, j] = (1/n) ∇ℓ(z_testᵢ)ᵀ (C + λI)⁻¹ ∇ℓ(zⱼ) ≈ ℓ(z_testᵢ, θ̂₋ⱼ) − ℓ(z_testᵢ, θ̂): positive
    when removing zⱼ raises the test loss (zⱼ helped), negative when zⱼ hurt. One solve per
    test example.

    Args:
      model, loss, params, train, method, curvature, damping, solver: as in `inverse_hvp`.
      test: the examples ``(x, y)`` whose loss is followed.

    Returns:
      ``(n_test, n_train)`` array.
    """
    check_function("influence", "model", model)
    check_function("influence", "loss", loss)
    choice, static = _checked("influence", params, train, (method, curvature, damping), solver)
    _check_pair("influence", test)
    return _influence(
        model, loss, choice, static, damping, params, tuple(train), tuple(test), solver.get("key")
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _influence(model, loss, choice, static, damping, params, train, test, key):
    g_train = _flat_grads(model, loss, params, train)
    g_test = _flat_grads(model, loss, params, test)
    solved = _solve((model, loss, params, train), g_test, (*choice, damping), static, key)
    return solved @ g_train.T / g_train.shape[0]


def self_influence(
    model: Model,
    loss: Loss,
    params: PyTree,
    train: Data,
    *,
    method: Method = "exact",
    curvature: Curvature = "ggn",
    damping: float = 0.0,
    **solver: Any,
) -> jax.Array:
    """sⱼ = ∇ℓ(zⱼ)ᵀ (C + λI)⁻¹ ∇ℓ(zⱼ) for every training example: how strongly its own loss
    depends on its presence (ℓ(zⱼ, θ̂₋ⱼ) − ℓ(zⱼ, θ̂) ≈ sⱼ / n).

    Sorted in descending order it lists first the examples the rest of the data contradicts,
    such as wrong labels. One solve per training example (`"exact"` factorises once for all).

    Args:
      model, loss, params, train, method, curvature, damping, solver: as in `inverse_hvp`.

    Returns:
      ``(n_train,)`` array.
    """
    check_function("self_influence", "model", model)
    check_function("self_influence", "loss", loss)
    choice, static = _checked("self_influence", params, train, (method, curvature, damping), solver)
    return _self_influence(
        model, loss, choice, static, damping, params, tuple(train), solver.get("key")
    )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _self_influence(model, loss, choice, static, damping, params, train, key):
    g_train = _flat_grads(model, loss, params, train)
    solved = _solve((model, loss, params, train), g_train, (*choice, damping), static, key)
    return jnp.sum(solved * g_train, axis=1)
