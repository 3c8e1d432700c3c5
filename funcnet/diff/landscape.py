"""Loss landscapes: the loss along a line or over a plane through parameter space.

- `linear_interpolation`: L((1 − α)θ₀ + αθ₁) on a grid of α, the path between two params
  (an initialisation and a trained solution, or two solutions) of Goodfellow, Vinyals and
  Saxe, "Qualitatively characterizing neural network optimization problems" (ICLR 2015).
- `loss_line` and `loss_surface`: L(θ + αd) and L(θ + αd₁ + βd₂) around a point θ, along
  directions d that `random_direction` draws and filter-normalises as in Li, Xu, Taylor,
  Studer and Goldstein, "Visualizing the Loss Landscape of Neural Nets" (NeurIPS 2018).

Every grid point is a linear combination Σᵢ wᵢ Tᵢ of a few params-shaped trees (θ₀ and θ₁,
or θ and the directions), so a whole grid is one compiled program: `jax.vmap` over the
points, in chunks of `chunk_size` under `lax.map` so that only that many copies of the
params and of one batch's activations are live at a time.

The loss comes as `f(params)` (closing over its data), or as `f(params, batch)` with either
`batch=` one batch or `batches=` a list of batches (any pytrees whose leaves share a leading
axis, of sizes n_b that may differ). A tuple of bare arrays, ``batches=(xs, ys)``, is refused:
it would be two batches, ``xs`` and then ``ys``, not the one batch ``(xs, ys)``. Over batches
the result is the mean weighted by batch size, Σ_b n_b f(θ, batch_b) / Σ_b n_b: for a loss
that is a mean over its batch, the mean over every example. Batches of one shape are stacked
and scanned, so a list of many equal batches and a last, smaller one compiles to two scans,
not one call per batch.

With `has_aux=True`, `f` returns `(loss, metric)`, a scalar metric such as the accuracy,
averaged over batches the same way and returned beside the losses. `chunk_size` is the
number of grid points evaluated at once under `vmap` (default 32; None evaluates all at
once).

The grid functions are compiled with `jax.jit`, keyed on the identity of `f` and on
`has_aux` and `chunk_size`: the same `f` with new params, directions, grids or batches of
the same shapes reuses the compiled code.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet._checks import check_flag, check_float_tree, check_function
from funcnet._keys import typed_key
from funcnet._trees import check_same_shapes, leading_size

PyTree = Any
ArrayLike = jax.Array | np.ndarray | Sequence[float]

__all__ = [
    "LossLine",
    "LossSurface",
    "filter_normalize",
    "linear_interpolation",
    "loss_line",
    "loss_surface",
    "random_direction",
]


class LossLine(NamedTuple):
    """The loss along a line of params.

    Attributes:
      alphas: shape `(g,)`, the grid coordinates α.
      losses: shape `(g,)`, the loss at each α.
      accuracy: shape `(g,)`, the mean of `f`'s auxiliary metric (usually the accuracy) at
        each α with `has_aux=True`; None otherwise.
    """

    alphas: jax.Array
    losses: jax.Array
    accuracy: jax.Array | None


class LossSurface(NamedTuple):
    """The loss over a plane of params, on the grid α × β.

    Attributes:
      alphas: shape `(g₁,)`, the coordinates α along the first direction.
      betas: shape `(g₂,)`, the coordinates β along the second direction.
      losses: shape `(g₁, g₂)`, ``losses[i, j]`` = L(θ + αᵢ d₁ + βⱼ d₂) ("ij" indexing;
        matplotlib's ``contour(alphas, betas, losses.T)`` draws it with α across).
      accuracy: shape `(g₁, g₂)`, the auxiliary metric with `has_aux=True`; None otherwise.
    """

    alphas: jax.Array
    betas: jax.Array
    losses: jax.Array
    accuracy: jax.Array | None


# Directions.


def filter_normalize(direction: PyTree, params: PyTree, *, ignore_biases: bool = True) -> PyTree:
    """Scales each filter of a direction to the norm of the same filter of the params.

    For every leaf with two or more axes (a dense kernel `(in, out)`, a convolution kernel
    `(*window, in, out)`), a filter is a slice along the last axis: the weights into one
    output unit or channel. Each becomes

        d_f ← d_f / ‖d_f‖ · ‖θ_f‖

    (Li et al. 2018, §4), so that a step α along d moves every filter by the same fraction
    of its own size. The plot then does not depend on each filter's scale, which is arbitrary
    where a filter feeds a normalisation layer or a ReLU (positively homogeneous): a
    rescaled filter gives a rescaled direction. A filter with ‖d_f‖ = 0 stays 0.

    Leaves with at most one axis (biases, the scale and offset of normalisation layers) are
    set to 0 with `ignore_biases=True`, the paper's default ("ignore biases and BN"): the
    plot then moves only the kernels. With `ignore_biases=False` they are set to θ's own
    values, as the paper's reference code does for them.

    Args:
      direction: a params-shaped pytree d.
      params: the pytree θ of float arrays whose filter norms d takes.
      ignore_biases: zero (True) or copy θ into (False) the leaves of at most one axis.

    Returns:
      The normalised direction, shaped like `params`.
    """
    check_same_shapes(
        params,
        direction,
        what="filter_normalize: the direction must have the params' structure and shapes",
        source="the direction",
    )
    check_float_tree("filter_normalize", "params", params)
    return _filter_normalize(direction, params, ignore_biases=ignore_biases)


@functools.partial(jax.jit, static_argnames="ignore_biases")
def _filter_normalize(direction: PyTree, params: PyTree, *, ignore_biases: bool) -> PyTree:
    def one_leaf(d: jax.Array, theta: jax.Array) -> jax.Array:
        d = d.astype(theta.dtype)
        if theta.ndim <= 1:
            return jnp.zeros_like(theta) if ignore_biases else theta
        axes = tuple(range(theta.ndim - 1))
        d_norm = jnp.sqrt(jnp.sum(d * d, axis=axes, keepdims=True))
        theta_norm = jnp.sqrt(jnp.sum(theta * theta, axis=axes, keepdims=True))
        scale = theta_norm / jnp.maximum(d_norm, jnp.finfo(theta.dtype).tiny)
        return d * scale

    return jax.tree.map(one_leaf, direction, params)


def random_direction(
    key: jax.Array,
    params: PyTree,
    *,
    filter_normalized: bool = True,
    ignore_biases: bool = True,
) -> PyTree:
    """A random direction in params space, d ~ N(0, I), filter-normalised by default.

    Every leaf is drawn from its own key, in the leaf's dtype. With `filter_normalized` the
    draw goes through `filter_normalize` (each filter scaled to ‖θ_f‖; leaves of at most one
    axis zeroed, or copied from θ with `ignore_biases=False`). Two independent draws in n
    dimensions are nearly orthogonal (their cosine is of order 1/√n), so two keys give the
    two axes of a `loss_surface`.

    Args:
      key: a `jax.random.key` (a legacy uint32 key is accepted).
      params: the pytree θ of float arrays.
      filter_normalized: whether to filter-normalise the Gaussian draw.
      ignore_biases: passed to `filter_normalize`.

    Returns:
      The direction, shaped like `params`.
    """
    key = typed_key(key, caller="random_direction")
    check_float_tree("random_direction", "params", params)
    return _random_direction(
        key, params, filter_normalized=filter_normalized, ignore_biases=ignore_biases
    )


@functools.partial(jax.jit, static_argnames=("filter_normalized", "ignore_biases"))
def _random_direction(
    key: jax.Array, params: PyTree, *, filter_normalized: bool, ignore_biases: bool
) -> PyTree:
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    drawn = [
        jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves, strict=True)
    ]
    direction = jax.tree.unflatten(treedef, drawn)
    if filter_normalized:
        return _filter_normalize(direction, params, ignore_biases=ignore_biases)
    return direction


# Grids.


def linear_interpolation(
    f: Callable[..., Any],
    params0: PyTree,
    params1: PyTree,
    *,
    alphas: ArrayLike,
    batch: PyTree = None,
    batches: Sequence[PyTree] | None = None,
    has_aux: bool = False,
    chunk_size: int | None = 32,
) -> LossLine:
    """The loss on the straight line between two params: L((1 − α)θ₀ + αθ₁) for each α.

    α = 0 gives θ₀ and α = 1 gives θ₁, exactly; α outside [0, 1] extrapolates past them
    (Goodfellow et al. 2015 plot α ∈ [−0.5, 1.5] from an initialisation to a solution).

    Args:
      f: the loss (module doc).
      params0: the pytree θ₀ of float arrays.
      params1: the pytree θ₁, with θ₀'s structure and shapes.
      alphas: the grid, shape `(g,)`.
      batch, batches, has_aux, chunk_size: as in the module doc.

    Returns:
      `LossLine(alphas, losses, accuracy)`, each of shape `(g,)` (accuracy None without
      `has_aux`).
    """
    check_function("linear_interpolation", "f", f)
    check_same_shapes(
        params0,
        params1,
        what="linear_interpolation: params1 must have params0's structure and shapes",
        source="params1",
    )
    check_float_tree("linear_interpolation", "params0", params0)
    alphas = _grid(alphas, _float_dtype(params0), name="alphas", caller="linear_interpolation")
    weights = jnp.stack([1 - alphas, alphas], axis=1)
    losses, metric = _on_grid(
        "linear_interpolation", f, (params0, params1), weights, batch, batches, has_aux, chunk_size
    )
    return LossLine(alphas, losses, metric)


def loss_line(
    f: Callable[..., Any],
    params: PyTree,
    direction: PyTree,
    *,
    alphas: ArrayLike,
    batch: PyTree = None,
    batches: Sequence[PyTree] | None = None,
    has_aux: bool = False,
    chunk_size: int | None = 32,
) -> LossLine:
    """The loss along one direction through params: L(θ + αd) for each α.

    With d from `random_direction` this is the 1-D filter-normalised plot of Li et al.
    (2018); with d = θ₁ − θ₀ and params θ₀ it is `linear_interpolation` up to round-off. For
    a quadratic loss ½θᵀAθ the second difference [L(α + h) − 2L(α) + L(α − h)] / h² is
    the curvature dᵀAd along d, for every α and h.

    Args:
      f: the loss (module doc).
      params: the centre θ, a pytree of float arrays.
      direction: d, with θ's structure and shapes.
      alphas: the grid, shape `(g,)`; include 0 to have the loss at θ itself.
      batch, batches, has_aux, chunk_size: as in the module doc.

    Returns:
      `LossLine(alphas, losses, accuracy)`, each of shape `(g,)` (accuracy None without
      `has_aux`).
    """
    check_function("loss_line", "f", f)
    _check_directions(params, [direction], caller="loss_line")
    alphas = _grid(alphas, _float_dtype(params), name="alphas", caller="loss_line")
    weights = jnp.stack([jnp.ones_like(alphas), alphas], axis=1)
    losses, metric = _on_grid(
        "loss_line", f, (params, direction), weights, batch, batches, has_aux, chunk_size
    )
    return LossLine(alphas, losses, metric)


def loss_surface(
    f: Callable[..., Any],
    params: PyTree,
    directions: tuple[PyTree, PyTree],
    *,
    alphas: ArrayLike,
    betas: ArrayLike | None = None,
    batch: PyTree = None,
    batches: Sequence[PyTree] | None = None,
    has_aux: bool = False,
    chunk_size: int | None = 32,
) -> LossSurface:
    """The loss over the plane of two directions through params: L(θ + αd₁ + βd₂).

    With d₁, d₂ from `random_direction` (two keys) this is the 2-D filter-normalised contour
    plot of Li et al. (2018). All g₁·g₂ grid points run in one compiled program.

    Args:
      f: the loss (module doc).
      params: the centre θ, a pytree of float arrays.
      directions: `(d₁, d₂)`, each with θ's structure and shapes.
      alphas: the grid along d₁, shape `(g₁,)`.
      betas: the grid along d₂, shape `(g₂,)`; default `alphas`.
      batch, batches, has_aux, chunk_size: as in the module doc.

    Returns:
      `LossSurface(alphas, betas, losses, accuracy)`: losses (and accuracy, None without
      `has_aux`) of shape `(g₁, g₂)`, ``losses[i, j]`` at (αᵢ, βⱼ).
    """
    check_function("loss_surface", "f", f)
    if not isinstance(directions, (tuple, list)) or len(directions) != 2:
        raise ValueError(
            "loss_surface: directions must be a pair (d1, d2) of params-shaped trees, "
            f"got {type(directions).__name__}"
            + (f" of length {len(directions)}" if isinstance(directions, (tuple, list)) else "")
        )
    _check_directions(params, directions, caller="loss_surface")
    dtype = _float_dtype(params)
    alphas = _grid(alphas, dtype, name="alphas", caller="loss_surface")
    betas = alphas if betas is None else _grid(betas, dtype, name="betas", caller="loss_surface")
    a, b = jnp.meshgrid(alphas, betas, indexing="ij")
    weights = jnp.stack([jnp.ones(a.size, dtype), a.ravel(), b.ravel()], axis=1)
    losses, metric = _on_grid(
        "loss_surface", f, (params, *directions), weights, batch, batches, has_aux, chunk_size
    )
    shape = (alphas.size, betas.size)
    return LossSurface(
        alphas, betas, losses.reshape(shape), None if metric is None else metric.reshape(shape)
    )


# The compiled evaluation.


def _on_grid(caller, f, trees, weights, batch, batches, has_aux, chunk_size):
    """Checks the batches, `has_aux` and `chunk_size`, then evaluates `_grid_losses`."""
    has_aux = check_flag(caller, "has_aux", has_aux)
    groups = _batch_groups(batch, batches, caller=caller)
    _check_chunk_size(chunk_size, caller=caller)
    return _grid_losses(caller, f, trees, weights, groups, has_aux=has_aux, chunk_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("caller", "f", "has_aux", "chunk_size"))
def _grid_losses(caller, f, trees, weights, groups, *, has_aux, chunk_size):
    """Mean loss (and metric) at every point Σᵢ wᵢ Tᵢ, one point per row of `weights`."""
    total = None if groups is None else sum(n * count for n, count in _group_sizes(groups))

    def combine(w: jax.Array) -> PyTree:
        def leaf(*xs: jax.Array) -> jax.Array:
            out = w[0].astype(xs[0].dtype) * xs[0]
            for wi, x in zip(w[1:], xs[1:], strict=True):
                out = out + wi.astype(x.dtype) * x
            return out

        return jax.tree.map(leaf, *trees)

    def evaluate(params: PyTree, *batch: PyTree) -> tuple[jax.Array, jax.Array]:
        out = f(params, *batch)
        if has_aux and not (isinstance(out, tuple | list) and len(out) == 2):
            raise ValueError(
                f"{caller}: has_aux=True needs f to return a pair (loss, metric), got "
                f"{type(out).__name__} of shape {jnp.shape(out)}"
            )
        loss, metric = out if has_aux else (out, jnp.zeros(()))
        loss, metric = jnp.asarray(loss), jnp.asarray(metric)
        # A metric such as the mean of a bool comes in the default float; sum it in the
        # loss's precision or finer.
        metric = metric.astype(jnp.promote_types(jnp.result_type(float), loss.dtype))
        if loss.shape != () or metric.shape != ():
            got = f"{loss.shape} and {metric.shape}" if has_aux else f"{loss.shape}"
            want = "(loss, metric), both scalars" if has_aux else "a scalar loss"
            raise ValueError(f"{caller}: f must return {want}; got shapes {got}")
        return loss, metric

    def point(w: jax.Array) -> tuple[jax.Array, jax.Array]:
        params = combine(w)
        if groups is None:
            return evaluate(params)
        sums = None
        for stacked in groups:
            size = jax.tree.leaves(stacked)[0].shape[1]

            def add(carry, one_batch, params=params):
                loss, metric = evaluate(params, one_batch)
                if carry is None:
                    return loss, metric
                return carry[0] + loss, carry[1] + metric

            first = jax.tree.map(lambda a: a[0], stacked)
            init = add(None, first)
            rest = jax.tree.map(lambda a: a[1:], stacked)
            group_sum, _ = lax.scan(lambda c, b: (add(c, b), None), init, rest)
            weighted = (size * group_sum[0], size * group_sum[1])
            sums = weighted if sums is None else (sums[0] + weighted[0], sums[1] + weighted[1])
        return sums[0] / total, sums[1] / total

    if chunk_size is None or chunk_size >= weights.shape[0]:
        losses, metric = jax.vmap(point)(weights)
    else:
        losses, metric = lax.map(point, weights, batch_size=chunk_size)
    return losses, (metric if has_aux else None)


def _group_sizes(groups: tuple[PyTree, ...]) -> list[tuple[int, int]]:
    """``(batch size, number of batches)`` of each stacked group."""
    return [(jax.tree.leaves(g)[0].shape[1], jax.tree.leaves(g)[0].shape[0]) for g in groups]


# Checks of the input.


def _float_dtype(params: PyTree) -> Any:
    return jnp.result_type(*jax.tree.leaves(params))


def _check_directions(params: PyTree, directions: Sequence[PyTree], *, caller: str) -> None:
    check_float_tree(caller, "params", params)
    for i, direction in enumerate(directions):
        name = "the direction" if len(directions) == 1 else f"direction {i}"
        check_same_shapes(
            params,
            direction,
            what=f"{caller}: {name} must have the params' structure and shapes",
            source=name,
        )


def _grid(values: ArrayLike, dtype: Any, *, name: str, caller: str) -> jax.Array:
    grid = np.asarray(values)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"{caller}: {name} must be a non-empty 1-D grid, got shape {grid.shape}")
    if not np.issubdtype(grid.dtype, np.number) or not np.all(np.isfinite(grid)):
        raise ValueError(f"{caller}: {name} must be finite numbers, got {grid}")
    return jnp.asarray(grid, dtype)


def _check_chunk_size(chunk_size: int | None, *, caller: str) -> None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"{caller}: chunk_size must be a positive int or None, got {chunk_size}")


def _batch_groups(
    batch: PyTree, batches: Sequence[PyTree] | None, *, caller: str
) -> tuple[PyTree, ...] | None:
    """The batches stacked by shape: a tuple of pytrees with leaves `(count, size, ...)`."""
    if batch is not None and batches is not None:
        raise ValueError(f"{caller}: give batch or batches, not both")
    if batch is not None:
        batches = [batch]
    elif batches is None:
        return None
    elif not isinstance(batches, (list, tuple)):
        raise TypeError(
            f"{caller}: batches must be a list of batches, got {type(batches).__name__}; "
            "pass a single batch as batch="
        )
    if len(batches) == 0:
        raise ValueError(f"{caller}: batches is empty")
    if isinstance(batches, tuple) and all(hasattr(b, "shape") for b in batches):
        # (xs, ys) would read as two batches, xs and then ys: refused, not guessed.
        shapes = ", ".join(str(tuple(np.shape(b))) for b in batches)
        raise ValueError(
            f"{caller}: batches is a tuple of {len(batches)} arrays ({shapes}), which would "
            f"be {len(batches)} batches of one array each; pass one batch as batch=(x, y), or "
            "a list of batches, batches=[(x1, y1), (x2, y2), ...]"
        )
    groups: dict[Any, list[PyTree]] = {}
    for i, one in enumerate(batches):
        leading_size(one, what=f"{caller}: the leaves of batch {i}")
        leaves, treedef = jax.tree.flatten(one)
        signature = (treedef, tuple((np.shape(a), jnp.result_type(a)) for a in leaves))
        groups.setdefault(signature, []).append(one)
    return tuple(
        jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(a) for a in leaves]), *members)
        for members in groups.values()
    )
