"""Kronecker-factored curvature blocks of dense and conv layers (K-FAC, KFC, KFLR).

For a layer whose pre-activation output is `s = W̄ᵀ ā` at each of `T` positions (one for a
plain dense layer, the sequence positions of a dense layer applied to ``(B, S, in)``, the
output pixels of a conv layer), the curvature block of its weights `W̄` is approximated by a
Kronecker product (Martens & Grosse, 2015; Grosse & Martens, 2016, for conv)::

    F̂ = A ⊗ G,   A = (1/B) Σ_n Σ_t ā_{n,t} ā_{n,t}ᵀ,   G = (1/B) Σ_n (1/T) Σ_t δ_{n,t} δ_{n,t}ᵀ

with `B` the batch, `ā` the layer's input (a conv layer's input patch) with a trailing 1 when
a bias is folded in, and `δ = ∂ℓ_n/∂s` back-propagated vectors whose kind is the curvature:
the exact Gauss-Newton matrix's (KFLR, Botev et al., 2017), one sample of the model's
predictive distribution (the Fisher, KFAC-MC), or the true labels' (the empirical Fisher).
The layers are found in the jaxpr of the model's outputs, as the NTK's structured rule
finds its dense kernels (`_taps.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core

from funcnet._checks import check_function
from funcnet._keys import typed_key
from funcnet._trees import entry_name
from funcnet.diff._output_hessian import eigen_factors, output_hessian_blocks
from funcnet.diff._taps import eval_tapped, find_jaxpr, find_uses, is_plain_dot

PyTree = Any
Curvature = Literal["ggn", "fisher", "empirical"]
Likelihood = Literal["categorical", "gaussian"]
_CURVATURES = ("ggn", "fisher", "empirical")
_LIKELIHOODS = ("categorical", "gaussian")
_TAPPED = ("dot_general", "conv_general_dilated")
_BIAS_PATH = ("broadcast_in_dim", "reshape", "convert_element_type")
_HIGHEST = lax.Precision.HIGHEST

__all__ = [
    "KroneckerFactors",
    "KroneckerLayer",
    "kronecker_factors",
    "kronecker_layers",
    "kronecker_unmatched",
]


class KroneckerFactors(NamedTuple):
    """The two factors of a layer's block `F̂ = A ⊗ G`: `a` of shape ``(d_in + 1, d_in + 1)``
    (``(d_in, d_in)`` without a bias) and `g` of shape ``(d_out, d_out)``."""

    a: jax.Array
    g: jax.Array


class KroneckerLayer(NamedTuple):
    """The static structure of one matched layer.

    `kind` is ``"dense"`` or ``"conv"``; `kernel` and `bias` are the '/'-joined paths of its
    kernel and of the bias folded into it (None without one); the kernel's matrix is
    ``w.transpose(kernel_axes).reshape(in_dim, out_dim)`` (its input axes, then its output
    axes: a plain reshape for funcnet's ``(in, out)`` and HWIO kernels), and the bias is
    ``b.reshape(out_dim)``.
    """

    kind: str
    kernel: str
    bias: str | None
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[int, ...]
    in_dim: int
    out_dim: int


def leaf_name(path: tuple) -> str:
    """A param's path as '/'-joined keys (``"dense_3/w"``): dict keys, sequence indices and
    attribute names as they are."""
    return "/".join(entry_name(entry) for entry in path)


class _Tap(NamedTuple):
    """Where a matched layer sits in the jaxpr and how its operands map to `ā` and `δ`."""

    path: tuple
    position: int
    eqn: Any


def _conv_ok(eqn: core.JaxprEqn, position: int) -> bool:
    p = eqn.params
    return (
        position == 1
        and eqn.invars[1].aval.ndim == 4
        and p["feature_group_count"] == 1
        and p["batch_group_count"] == 1
    )


def _dense_axes(eqn: core.JaxprEqn, position: int) -> tuple[tuple, tuple, tuple, tuple]:
    """For `dot_general` with the kernel at `position`: the kernel's contracted and free axes,
    the input's free and contracted axes (contracted ones paired in the same order)."""
    contract, _ = eqn.params["dimension_numbers"]
    w_contract, x_contract = tuple(contract[position]), tuple(contract[1 - position])
    w_free = tuple(a for a in range(eqn.invars[position].aval.ndim) if a not in w_contract)
    x_free = tuple(a for a in range(eqn.invars[1 - position].aval.ndim) if a not in x_contract)
    return w_contract, w_free, x_free, x_contract


def _layer_of(name: str, tap: _Tap, bias: str | None, leaf_shape: tuple) -> KroneckerLayer | None:
    """The layer of the kernel leaf of shape `leaf_shape` that `tap`'s product reads; None when
    the product reads a reshape of it that no transposition of the leaf's axes describes."""
    shape = tuple(tap.eqn.invars[tap.position].aval.shape)
    if tap.eqn.primitive.name == "dot_general":
        w_contract, w_free, _, _ = _dense_axes(tap.eqn, tap.position)
        axes, kind = (*w_contract, *w_free), "dense"
        out_dim = math.prod(shape[a] for a in w_free)
    else:
        o = tap.eqn.params["dimension_numbers"].rhs_spec[0]
        axes, kind, out_dim = (*(a for a in range(4) if a != o), o), "conv", shape[o]
    in_dim = math.prod(shape) // out_dim
    if shape != leaf_shape:
        # Read through a reshape: the leaf's matrix is its row-major (in_dim, out_dim) split
        # when the product contracts the reshaped kernel's leading axes, in order.
        splits = {math.prod(leaf_shape[:m]) for m in range(len(leaf_shape) + 1)}
        if kind != "dense" or axes != tuple(range(len(shape))) or in_dim not in splits:
            return None
        shape, axes = leaf_shape, tuple(range(len(leaf_shape)))
    return KroneckerLayer(kind, name, bias, shape, axes, in_dim, out_dim)


def _out_axes(tap: _Tap) -> tuple[int, ...]:
    """The axes of the product's output that carry the kernel's outputs (its columns)."""
    if tap.eqn.primitive.name == "conv_general_dilated":
        return (tap.eqn.params["dimension_numbers"].out_spec[1],)
    _, w_free, x_free, _ = _dense_axes(tap.eqn, tap.position)
    start = len(x_free) if tap.position == 1 else 0
    return tuple(range(start, start + len(w_free)))


def _consumers(jaxpr: core.Jaxpr) -> dict:
    """Each variable of `jaxpr` -> the (index, eqn, position) of its readers; None for an
    output of the jaxpr."""
    found: dict = {}
    for k, eqn in enumerate(jaxpr.eqns):
        for position, v in enumerate(eqn.invars):
            if isinstance(v, core.Var):
                found.setdefault(v, []).append((k, eqn, position))
    for v in jaxpr.outvars:
        if isinstance(v, core.Var):
            found.setdefault(v, []).append(None)
    return found


def _bias_of(use: tuple, root: core.Jaxpr, producers: dict, cache: dict) -> tuple | None:
    """The product path a bias leaf with the single `use` is added to, through broadcasts and
    reshapes of the bias only, with the product's output read by that `add` alone; else None."""
    path, eqn, position = use
    jaxpr = find_jaxpr(root, path)
    consumers = cache.setdefault(id(jaxpr), _consumers(jaxpr))
    chain = []
    while eqn.primitive.name in _BIAS_PATH:
        chain.append(eqn)
        readers = consumers.get(eqn.outvars[0], [])
        if len(readers) != 1 or readers[0] is None:
            return None
        _, eqn, position = readers[0]
    if eqn.primitive.name != "add":
        return None
    other = eqn.invars[1 - position]
    target = producers.get((path[:-1], other))
    if target is None or len(consumers.get(other, [])) != 1:
        return None
    if tuple(eqn.outvars[0].aval.shape) != tuple(other.aval.shape):
        return None
    return target, chain


def _bias_fits(tap: _Tap, chain: list, bias_shape: tuple) -> bool:
    """Whether the bias, sent through `chain`, lands on the product's output columns in the
    order of the kernel's matrix: checked on the values 1, 2, … of a test bias."""
    y_shape = tuple(tap.eqn.outvars[0].aval.shape)
    axes = _out_axes(tap)
    cols = [y_shape[a] for a in axes]
    if math.prod(bias_shape) != math.prod(cols):
        return False
    test = np.arange(1, math.prod(bias_shape) + 1, dtype=np.float32).reshape(bias_shape)
    with jax.ensure_compile_time_eval():
        z = jnp.asarray(test)
        for eqn in chain:
            params = dict(eqn.params)
            if eqn.primitive.name == "convert_element_type":
                params["new_dtype"] = np.float32
            z = eqn.primitive.bind(z, **params)
        z = np.asarray(z)
    if z.ndim != len(y_shape):
        return False
    where = [1] * len(y_shape)
    for a, c in zip(axes, cols, strict=True):
        where[a] = c
    try:
        got = np.broadcast_to(z, y_shape)
    except ValueError:
        return False
    want = np.broadcast_to(test.reshape(cols).reshape(where), y_shape)
    return bool(np.array_equal(got, want))


class _Plan:
    """The matched layers of `outputs_fn` at params of these shapes, and how to run it with
    taps on their products."""

    def __init__(self, outputs_fn: Callable[[PyTree], jax.Array], params: PyTree):
        abstract = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params
        )
        self.closed = jax.make_jaxpr(outputs_fn)(abstract)
        flat, _ = jax.tree_util.tree_flatten_with_path(params)
        self.names = [leaf_name(path) for path, _ in flat]
        jaxpr = self.closed.jaxpr
        leaf_shapes = [tuple(jnp.shape(leaf)) for _, leaf in flat]
        # Kernels are found through reshapes (an attention kernel read per head), biases
        # without: `_bias_fits` replays the whole path from the bias leaf to the sum.
        uses: dict[int, list] = {i: [] for i in range(len(flat))}
        kernel_uses: dict[int, list] = {i: [] for i in range(len(flat))}
        alias = {v: i for i, v in enumerate(jaxpr.invars)}
        find_uses(jaxpr, alias, (), uses)
        find_uses(jaxpr, alias, (), kernel_uses, through_reshapes=True)
        single = {i: found[0] for i, found in uses.items() if len(found) == 1 and found[0]}
        taps: dict[int, _Tap] = {}
        for i, found in kernel_uses.items():
            if len(found) != 1 or found[0] is None:
                continue
            path, eqn, position = found[0]
            tap = _Tap(path, position, eqn)
            if (
                (eqn.primitive.name == "dot_general" and is_plain_dot(eqn))
                or (eqn.primitive.name == "conv_general_dilated" and _conv_ok(eqn, position))
            ) and _layer_of("", tap, None, leaf_shapes[i]) is not None:
                taps[i] = tap
        producers = {(tap.path[:-1], tap.eqn.outvars[0]): i for i, tap in taps.items()}
        biases: dict[int, int] = {}
        cache: dict = {}
        for i, use in single.items():
            if i in taps:
                continue
            found = _bias_of(use, jaxpr, producers, cache)
            if found is not None and found[0] not in biases:
                kernel, chain = found
                if _bias_fits(taps[kernel], chain, tuple(jnp.shape(flat[i][1]))):
                    biases[kernel] = i
        self.taps = {self.names[i]: tap for i, tap in taps.items()}
        self.layers = {
            self.names[i]: _layer_of(
                self.names[i], tap, self.names[biases[i]] if i in biases else None, leaf_shapes[i]
            )
            for i, tap in taps.items()
        }
        held = {i for i in taps} | set(biases.values())
        self.unmatched = tuple(self.names[i] for i in range(len(flat)) if i not in held)

    def run(self, params: PyTree, eps: dict) -> tuple[jax.Array, dict]:
        """The outputs with `eps[name]` added to each layer's product, and each layer's input."""
        taps: dict = {}
        leaves = jax.tree.leaves(params)
        by_path = {tap.path: eps[name] for name, tap in self.taps.items() if name in eps}
        (out,) = eval_tapped(
            self.closed.jaxpr, self.closed.consts, leaves, (), by_path, taps, _TAPPED
        )
        inputs = {name: taps[tap.path][1 - tap.position] for name, tap in self.taps.items()}
        return out, inputs


def _input_rows(tap: _Tap, layer: KroneckerLayer, x: jax.Array) -> jax.Array:
    """The rows `a` of a layer's input, ``(B·T, in_dim)``, in the order of the kernel matrix."""
    if layer.kind == "dense":
        _, _, x_free, x_contract = _dense_axes(tap.eqn, tap.position)
        return jnp.transpose(x, x_free + x_contract).reshape(-1, layer.in_dim)
    p = tap.eqn.params
    lhs_spec, rhs_spec, _ = p["dimension_numbers"]
    x = jnp.transpose(x, lhs_spec)  # (N, C, *spatial), spatial axes in the kernel's order
    window = tuple(layer.kernel_shape[a] for a in rhs_spec[2:])
    patches = lax.conv_general_dilated_patches(
        x,
        window,
        p["window_strides"],
        p["padding"],
        lhs_dilation=p["lhs_dilation"],
        rhs_dilation=p["rhs_dilation"],
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        precision=_HIGHEST,
    )
    n, _, h, w = patches.shape
    # Patch features come channel-major, (c, k₀, k₁); reorder them as the kernel's own axes.
    patches = patches.reshape(n, x.shape[1], *window, h, w)
    patch_axis = {rhs_spec[1]: 1, rhs_spec[2]: 2, rhs_spec[3]: 3}
    order = [patch_axis[a] for a in layer.kernel_axes[:-1]]
    patches = jnp.transpose(patches, (0, 4, 5, *order))
    return patches.reshape(-1, layer.in_dim)


def _delta_rows(tap: _Tap, layer: KroneckerLayer, delta: jax.Array) -> jax.Array:
    """`δ` of shape ``(K, *y)`` as rows ``(K, B·T, out_dim)``."""
    cols = _out_axes(tap)
    rest = tuple(a for a in range(delta.ndim - 1) if a not in cols)
    delta = jnp.transpose(delta, (0, *(1 + a for a in rest), *(1 + a for a in cols)))
    return delta.reshape(delta.shape[0], -1, layer.out_dim)


def check_choice(owner: str, name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Refuses a `value` of `name` not among `allowed`, in one line."""
    if value not in allowed:
        listed = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{owner}: {name} must be one of {listed}, got {value!r:.80}")


def _check_curvature_args(
    curvature: str, likelihood: str, loss_of_outputs: Callable | None, key: jax.Array | None
) -> None:
    """The one-line refusals of `kronecker_factors`."""
    check_choice("kronecker_factors", "curvature", curvature, _CURVATURES)
    check_choice("kronecker_factors", "likelihood", likelihood, _LIKELIHOODS)
    if curvature in ("ggn", "empirical") and loss_of_outputs is None:
        raise TypeError(
            f"kronecker_factors: curvature={curvature!r} needs loss_of_outputs (outputs -> the "
            "batch loss, a mean over examples); curvature='fisher' samples instead"
        )
    if curvature == "fisher" and key is None:
        raise TypeError(
            "kronecker_factors: curvature='fisher' samples one target per example and needs "
            "key (a jax.random.key)"
        )


def _cotangents(
    f: jax.Array,
    curvature: str,
    likelihood: str,
    loss_of_outputs: Callable | None,
    key: jax.Array | None,
) -> jax.Array:
    """The vectors ``(K, *f.shape)`` back-propagated for `δ`: row `n` of vector `k` is, for
    "ggn", column `k` of a square root of `H_n = B·∂²L/∂f_n²`; for "empirical", `B·∂L/∂f_n`;
    for "fisher", `∂ℓ/∂f_n` at a sampled target."""
    b, shape = f.shape[0], f.shape
    if curvature == "empirical":
        return (b * jax.grad(loss_of_outputs)(f))[None]
    if curvature == "fisher":
        key = typed_key(key, caller="kronecker_factors")
        if likelihood == "gaussian":
            return -jax.random.normal(key, shape, f.dtype)[None]
        if f.ndim < 2:
            raise ValueError(
                "kronecker_factors: curvature='fisher' with likelihood='categorical' needs "
                f"logits of shape (batch, ..., classes), got outputs of shape {shape}"
            )
        f = lax.stop_gradient(f)
        labels = jax.random.categorical(key, f)  # one class per position
        u = jax.nn.softmax(f) - jax.nn.one_hot(labels, shape[-1], dtype=f.dtype)
        # ℓ_n averages its P positions, so ∇²ℓ_n = (1/P)·blockdiag(diag p − p pᵀ) = E[u uᵀ]/P.
        return (u / math.sqrt(math.prod(shape[1:-1])))[None]
    lam, q = eigen_factors(b * output_hessian_blocks(loss_of_outputs, f))  # of H_n
    root = q * jnp.sqrt(jnp.maximum(lam, 0))[:, None, :]  # H_n = root[n] root[n]ᵀ
    return jnp.transpose(root, (2, 0, 1)).reshape(-1, *shape)


def _factors(
    plan: _Plan,
    params: PyTree,
    names: tuple[str, ...],
    curvature: str,
    likelihood: str,
    loss_of_outputs: Callable | None,
    key: jax.Array | None,
) -> dict[str, KroneckerFactors]:
    """The factors of the layers `names` of `plan`, at `params`."""
    eps = {}
    for name in names:
        aval = plan.taps[name].eqn.outvars[0].aval
        eps[name] = jnp.zeros(aval.shape, aval.dtype)
    f, pullback, inputs = jax.vjp(lambda e: plan.run(params, e), eps, has_aux=True)
    if jnp.ndim(f) < 1 or not jnp.issubdtype(f.dtype, jnp.floating):
        raise ValueError(
            "kronecker_factors: outputs_fn must return one float array of shape (batch, ...), "
            f"got shape {jnp.shape(f)} and dtype {f.dtype}"
        )
    batch = f.shape[0]
    u = _cotangents(f, curvature, likelihood, loss_of_outputs, key)
    (deltas,) = jax.vmap(pullback)(u)
    out = {}
    for name in names:
        tap, layer = plan.taps[name], plan.layers[name]
        dtype = jnp.promote_types(eps[name].dtype, jnp.float32)
        a = _input_rows(tap, layer, inputs[name]).astype(dtype)
        if layer.bias is not None:
            a = jnp.concatenate([a, jnp.ones((a.shape[0], 1), dtype)], axis=1)
        d = _delta_rows(tap, layer, deltas[name]).astype(dtype)
        rows = d.shape[1]
        big_a = jnp.matmul(a.T, a, precision=_HIGHEST) / batch
        big_g = jnp.einsum("kri,krj->ij", d, d, precision=_HIGHEST) / rows
        out[name] = KroneckerFactors(big_a, big_g)
    return out


def kronecker_layers(
    outputs_fn: Callable[[PyTree], jax.Array], params: PyTree
) -> dict[str, KroneckerLayer]:
    """The dense and conv layers of a model that `kronecker_factors` finds, keyed by kernel path.

    The jaxpr of `outputs_fn(params)` is read (through nested `jit`s). A *dense* layer is a
    param leaf used exactly once, as either operand of a `dot_general` without batch axes
    (any number of leading axes on its input: a sequence ``(B, S, in)`` too); a *conv*
    layer is a leaf used exactly once as the kernel of a 2-D `conv_general_dilated` with one
    feature and batch group (any strides, padding, dilations and dimension numbers). A *bias*
    is a leaf used exactly once, added (after `broadcast_in_dim`s and `reshape`s of its own)
    to a matched product's output, one entry per kernel output column, that output being read
    by that `add` alone: what `nn.dense` and `nn.conv` lower to. A leaf used twice (shared
    weights, `lax.scan` bodies such as `nn.repeat` or recurrent layers), a norm's scale, an
    embedding table matches nothing: see `kronecker_unmatched`.

    Args:
      outputs_fn: `params -> outputs` of the model on a batch (close over the inputs).
      params: the params pytree (only shapes and dtypes are read).

    Returns:
      ``{kernel path: KroneckerLayer}``, paths '/'-joined (``"dense_3/w"``).
    """
    check_function("kronecker_layers", "outputs_fn", outputs_fn)
    return _Plan(outputs_fn, params).layers


def kronecker_unmatched(
    outputs_fn: Callable[[PyTree], jax.Array], params: PyTree
) -> tuple[str, ...]:
    """The '/'-joined paths of the param leaves that are neither the kernel nor the bias of a
    layer `kronecker_layers` finds, in the params' flattening order."""
    check_function("kronecker_unmatched", "outputs_fn", outputs_fn)
    return _Plan(outputs_fn, params).unmatched


def kronecker_factors(
    outputs_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    *,
    loss_of_outputs: Callable[[jax.Array], jax.Array] | None = None,
    curvature: Curvature = "ggn",
    likelihood: Likelihood = "categorical",
    key: jax.Array | None = None,
) -> dict[str, KroneckerFactors]:
    """Kronecker factors `A`, `G` of the curvature block of each dense and conv layer.

    For a layer `s = W̄ᵀ ā` (layers: `kronecker_layers`) with kernel matrix `W` of shape
    ``(d_in, d_out)`` (`KroneckerLayer.kernel_axes`) and bias `b`, let
    ``W̄ = [W; bᵀ]`` of shape ``(d_in + 1, d_out)`` (`W̄ = W` without a bias) and `ā` the
    input row with a trailing 1 (the bias's homogeneous coordinate, last). For a conv layer
    `ā` is the input patch of each output pixel, its features in the order of the rows of
    `W` (HWIO kernels: ``(kh, kw, in)`` row-major). The block of the layer is approximated by
    ``F̂ = A ⊗ G``, which acts on `W̄` as ``F̂ vec(W̄) = vec(A W̄ G)``, `vec` row-major
    (``W̄.reshape(-1)``; `numpy.kron(A, G)` is `F̂` in that order), with::

        A = (1/B) Σ_n Σ_t ā_{n,t} ā_{n,t}ᵀ
        G = (1/B) Σ_n Σ_k (1/T) Σ_t δ_{n,t,k} δ_{n,t,k}ᵀ

    over the `B` examples `n` (the leading axis of the outputs), the `T` positions `t` the
    kernel is shared over (1 for a plain dense layer, the sequence for ``(B, S, in)``, the
    output pixels of a conv layer; KFC, Grosse & Martens, 2016) and back-propagated vectors
    `δ_{n,t,k} = J_{n,t}ᵀ u_{n,k}`, with `J_{n,t} = ∂f_n/∂s_{n,t}` and `ℓ_n` the loss of
    example `n`, `L = (1/B) Σ_n ℓ_n`:

    - ``"ggn"`` (exact, KFLR of Botev et al., 2017): `u_{n,k}` the columns of a square root
      of `H_n = ∂²ℓ_n/∂f_n² = B·∂²L/∂f_n²`, taken from `loss_of_outputs` by `M` Hessian-vector
      products (`M` the size of one example's outputs) and `eigh` (negative eigenvalues as 0),
      so that `Σ_k δ δᵀ = J_{n,t}ᵀ H_n J_{n,t}`. With `B = T = 1`, `A ⊗ G` is the layer's
      block of the Gauss-Newton matrix `Jᵀ H J`.
    - ``"fisher"`` (KFAC-MC): one `u_n = ∂ℓ_n/∂f_n` at a target drawn from the model:
      ``"categorical"`` ``softmax(f_n) − onehot(y)``, `y ~ softmax(f_n)`; for logits
      ``(B, …, C)`` one class per position, the vector divided by √P for the `P` positions
      of an example, as `ℓ_n` averages them (`softmax_cross_entropy` does); ``"gaussian"``
      ``f_n − y = −ε``, `y = f_n + ε`, `ε ~ N(0, I)` (any shape ``(B, …)``, all outputs of
      an example in `ℓ_n = ½‖f_n − y_n‖²`). Its mean over
      draws is `"ggn"`'s `G` for those likelihoods.
    - ``"empirical"``: `u_n = ∂ℓ_n/∂f_n = B·∂L/∂f_n` at the true targets.

    For "ggn" and "empirical", outputs of any shape ``(B, …)`` are allowed: the loss must be
    a mean over the leading axis (each example's outputs are one vector of size `M`; a loss
    averaging over `B·S` tokens of ``(B, S, C)`` logits gives `H_n` its own `1/S`).

    Args:
      outputs_fn: `params -> outputs` of shape ``(B, …)`` on a batch, each example's outputs
        depending on its own inputs only (no batch statistics).
      params: the point, a params pytree.
      loss_of_outputs: `outputs -> L`, the batch loss, a mean over examples (for "ggn" and
        "empirical").
      curvature: ``"ggn"``, ``"fisher"`` or ``"empirical"`` (above).
      likelihood: ``"categorical"`` or ``"gaussian"``, the model's predictive for "fisher".
      key: a random key, for "fisher".

    Returns:
      ``{kernel path: KroneckerFactors(a, g)}`` for every layer of `kronecker_layers`, in
      float32 (float64 for float64 params).
    """
    check_function("kronecker_factors", "outputs_fn", outputs_fn)
    check_function("kronecker_factors", "loss_of_outputs", loss_of_outputs, optional=True)
    _check_curvature_args(curvature, likelihood, loss_of_outputs, key)
    plan = _Plan(outputs_fn, params)
    return _factors(plan, params, tuple(plan.layers), curvature, likelihood, loss_of_outputs, key)


def kernel_matrix(layer: KroneckerLayer, w: jax.Array, b: jax.Array | None) -> jax.Array:
    """`W̄ = [W; bᵀ]` of shape ``(in_dim + 1, out_dim)`` (`W` alone without a bias)."""
    mat = jnp.transpose(w, layer.kernel_axes).reshape(layer.in_dim, layer.out_dim)
    if b is None:
        return mat
    return jnp.concatenate([mat, b.reshape(1, layer.out_dim).astype(mat.dtype)], axis=0)


def split_kernel_matrix(
    layer: KroneckerLayer, mat: jax.Array, bias_shape: tuple[int, ...] | None
) -> tuple[jax.Array, jax.Array | None]:
    """The inverse of `kernel_matrix`: the kernel in its own layout, and the bias."""
    shape = layer.kernel_shape
    w = mat[: layer.in_dim].reshape([shape[a] for a in layer.kernel_axes])
    w = jnp.transpose(w, np.argsort(layer.kernel_axes))
    b = None if bias_shape is None else mat[layer.in_dim].reshape(bias_shape)
    return w, b
