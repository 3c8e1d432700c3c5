"""Normalisation layers: batch, layer, RMS, group and instance norm, and weight normalisation.

The feature (channel) axis is the last one. Batch, layer, group and instance norm compute
``x̂ = (x − μ) / √(σ² + ε)`` over some axes; RMS norm skips the mean, ``x̂ = x / √(mean(x²) +
ε)``. Each returns ``y = scale · x̂ + bias`` with params ``scale`` (ones) and ``bias`` (zeros) of
shape ``(channels,)``, or for layer and RMS norm over several axes the shape of those axes;
`use_scale` and `use_bias` leave either out. They differ in the axes of the statistics:

    batch_norm     every axis but the channels (batch and spatial), one statistic per channel
    layer_norm     `axes` (the last by default), one statistic per position
    rms_norm       `axes` (the last by default), one statistic per position, no mean subtracted
    group_norm     spatial axes and the channels of one group, per example and group
    instance_norm  spatial axes, per example and channel

``σ²`` is the biased (population) variance in all of them. Half-precision inputs (float16,
bfloat16) are normalised in float32 and ``x̂`` is rounded back to the input's dtype, as
PyTorch's norms do: their statistics in half precision lose most of their digits.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from funcnet._checks import check_flag, check_float_dtype, check_int, check_positive, is_real
from funcnet.nn import initializers
from funcnet.nn.core import (
    Layer,
    LayerError,
    as_layer,
    check_floating,
    check_params,
    check_shape,
    input_shape,
)

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "rms_norm", "weight_norm"]

Array = jax.Array


def _affine_inits(
    kind: str, scale_init, bias_init, dtype, eps, use_scale=True, use_bias=True
) -> tuple:
    """The scale and bias initializers (by name or as given), once `dtype`, `eps` and the
    flags are checked for the layer `kind`."""
    check_float_dtype(kind, dtype)
    check_positive(kind, "eps", eps, allow_zero=True)
    check_flag(kind, "use_scale", use_scale)
    check_flag(kind, "use_bias", use_bias)
    return initializers.named(kind, scale_init=scale_init, bias_init=bias_init)


def _affine_params(key, shape, scale_init, bias_init, dtype, use_scale=True, use_bias=True):
    """``scale`` (when `use_scale`) and ``bias`` (when `use_bias`) of `shape`."""
    scale_key, bias_key = jax.random.split(key)
    params = {}
    if use_scale:
        params["scale"] = scale_init(scale_key, shape, dtype)
    if use_bias:
        params["bias"] = bias_init(bias_key, shape, dtype)
    return params


def _scale_shift(x_hat: Array, params, shape=None) -> Array:
    """``scale · x̂ + bias`` with whichever of the two `params` holds, reshaped to `shape`."""
    if "scale" in params:
        x_hat = x_hat * params["scale"].reshape(shape or params["scale"].shape)
    if "bias" in params:
        x_hat = x_hat + params["bias"].reshape(shape or params["bias"].shape)
    return x_hat


def _widened(x: Array) -> Array:
    """`x` in float32 if it is in a narrower float; the norms compute ``x̂`` in this dtype."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _sizes(
    kind: str, params, *states, use_scale: bool = True, use_bias: bool = True
) -> tuple[int, ...] | None:
    """The one shape of ``scale`` and ``bias`` in the params and ``mean`` and ``var`` in the
    states, once the params are a dict holding ``scale`` (with `use_scale`) and ``bias``
    (with `use_bias`) and the states are dicts; None if none holds any."""
    check_params(kind, params, *("scale",) * use_scale, *("bias",) * use_bias)
    for state in states:
        check_params(kind, state, what="state")
    trees = [("params", params), *(("state", state) for state in states)]
    shapes = {
        f"{what}[{name!r}]": tuple(jnp.shape(tree[name]))
        for what, tree in trees
        for name in ("scale", "bias", "mean", "var")
        if name in tree
    }
    if not shapes:
        return None
    (first, sizes), *others = shapes.items()
    for where, shape in others:
        if shape != sizes:
            raise LayerError(
                kind,
                f"{where} has shape {shape}, expected {sizes} as {first}; were they made by "
                "another model's init?",
            )
    return sizes


def _check_input(
    kind: str, x: Array, sizes: tuple[int, ...] | None, axes=(-1,), min_rank: int = 1
) -> None:
    """Checks that `x` is floating point, of rank >= `min_rank`, with `sizes` on `axes`, and
    holds at least one example.

    `sizes` are those of the params (or running statistics); None when the layer has neither,
    and then any sizes are accepted.
    """
    min_rank = max(min_rank, -axes[0])
    if sizes is None:
        expected = f"an input of rank >= {min_rank}"
    elif axes == (-1,):
        expected = f"an input of rank >= {min_rank} with {sizes[0]} channels on the last axis"
    else:
        expected = f"an input of rank >= {min_rank} with sizes {sizes} on axes {axes}"
    shape = check_shape(kind, input_shape(kind, x), expected, min_rank=min_rank)
    if sizes is not None and tuple(shape[a] for a in axes) != sizes:
        raise LayerError(kind, f"expected {expected}, got shape {shape}")
    check_floating(kind, x)


def _norm_axes(kind: str, axes: int | Sequence[int]) -> tuple[int, ...]:
    """`axes` as a sorted tuple of distinct negative ints, or a ValueError naming `kind`."""
    try:
        given = tuple(axes) if isinstance(axes, Sequence) else (operator.index(axes),)
        resolved = tuple(operator.index(a) for a in given)
    except TypeError:
        resolved = ()
    if not resolved or any(a >= 0 for a in resolved) or len(set(resolved)) != len(resolved):
        raise ValueError(
            f"{kind}: axes must be one or more distinct negative axes, counted from the last "
            f"(-1, or (-2, -1) for the last two), so the layer works at any batch rank; got {axes}"
        )
    return tuple(sorted(resolved))


def _broadcast_shape(shape, axes: tuple[int, ...]) -> tuple[int, ...]:
    """The shape that lines params of shape ``shape[axes]`` up with the trailing axes of `x`."""
    return tuple(shape[a] if a in axes else 1 for a in range(axes[0], 0))


def _init_over_axes(kind: str, axes, scale_init, bias_init, dtype, eps, use_scale, use_bias):
    """The init of a per-position norm over `axes`: params of the input's shape on `axes`,
    once the settings are checked (`_affine_inits`)."""
    scale_init, bias_init = _affine_inits(
        kind, scale_init, bias_init, dtype, eps, use_scale, use_bias
    )

    def init(key, in_shape):
        if axes == (-1,):
            expected = "an input (..., features)"
        else:
            expected = f"an input of rank >= {-axes[0]} normalised over axes {axes}"
        in_shape = check_shape(kind, in_shape, expected, min_rank=-axes[0])
        shape = tuple(in_shape[a] for a in axes)
        params = _affine_params(key, shape, scale_init, bias_init, dtype, use_scale, use_bias)
        return in_shape, params, {}

    return init


def batch_norm(
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis_name: str | None = None,
    use_scale: bool = True,
    use_bias: bool = True,
    track_running_stats: bool = True,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Batch normalisation (Ioffe & Szegedy, 2015) with running statistics in `state`.

    ``train=True``: normalise with the batch's statistics over every axis but the last
    (``x̄`` and the biased variance ``s²``), and update the running statistics by PyTorch's
    rule, with momentum ``m`` the weight of the new batch::

        μ ← (1 − m)·μ + m·x̄,    σ² ← (1 − m)·σ² + m·s²·n/(n − 1)

    The running variance takes the unbiased batch variance (``n`` values per channel), as
    PyTorch's ``BatchNorm`` does. ``train=False``: normalise with the running ``μ`` and ``σ²``
    and return `state` unchanged. Either way ``y = scale·(x − mean)/√(var + ε) + bias``.

    Input ``(batch, ..., channels)`` (``(batch, channels)`` or ``(batch, H, W, channels)``);
    output the same shape. Params ``scale``, ``bias`` and state ``mean`` (zeros), ``var``
    (ones), all of shape ``(channels,)``. With `axis_name`, the batch statistics are averaged
    over that mapped axis too (under ``vmap(..., axis_name=...)`` or ``shard_map``), so a batch
    split across examples or devices is normalised as one; the layer must then run inside
    that mapping.

    `use_scale=False` drops ``scale`` (``y = x̂ + bias``), `use_bias=False` drops ``bias``
    (``y = scale·x̂``); with both False the params are ``{}`` and ``y = x̂``, as PyTorch's
    ``affine=False``. `track_running_stats=False` keeps no running statistics, as PyTorch's
    option of that name: the state is ``{}``, `momentum` is unused, and the layer normalises
    with the batch's ``x̄`` and ``s²`` in training and in evaluation alike.

    Batch statistics need ``n ≥ 2`` values per channel (batch times spatial positions, times
    the size of the `axis_name` axis): a static input with fewer raises a `LayerError`, as
    PyTorch refuses a batch of one ``(1, channels)`` in training.
    """
    if not is_real(momentum) or not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must lie in [0, 1], got {momentum!r:.40}")
    if axis_name is not None and not isinstance(axis_name, str):
        raise TypeError(
            "batch_norm: axis_name must be the name of a mapped axis or None, got "
            f"{axis_name!r:.40}"
        )
    scale_init, bias_init = _affine_inits(
        "batch_norm", scale_init, bias_init, dtype, eps, use_scale, use_bias
    )

    def init(key, in_shape):
        in_shape = check_shape(
            "batch_norm", in_shape, "an input (batch, ..., channels)", min_rank=2
        )
        channels = in_shape[-1]
        params = _affine_params(key, (channels,), scale_init, bias_init, dtype, use_scale, use_bias)
        state = {}
        if track_running_stats:
            state["mean"] = initializers.zeros(None, (channels,), dtype)
            state["var"] = initializers.ones(None, (channels,), dtype)
        return in_shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        del key
        sizes = _sizes("batch_norm", params, state, use_scale=use_scale, use_bias=use_bias)
        _check_input("batch_norm", x, sizes, min_rank=2 - bool(axis_name))
        if track_running_stats and not {"mean", "var"} <= set(state):
            raise LayerError(
                "batch_norm",
                f"state must hold the running mean and var, got keys {sorted(state)}; was it "
                "made by the init of a batch_norm with track_running_stats=False?",
            )
        wide = _widened(x)
        if track_running_stats and not train:
            x_hat = (wide - state["mean"]) * lax.rsqrt(state["var"] + eps)
            return _scale_shift(x_hat.astype(x.dtype), params), state
        axes = tuple(range(x.ndim - 1))
        count = x.size // x.shape[-1]
        mean = jnp.mean(wide, axes)
        if axis_name is not None:
            try:
                mean = lax.pmean(mean, axis_name)
            except NameError:
                raise LayerError(
                    "batch_norm",
                    f"axis_name {axis_name!r} is bound by no enclosing vmap, pmap or shard_map: "
                    "apply the layer under one that names this axis, or build it with "
                    "axis_name=None",
                ) from None
            count = count * lax.psum(1, axis_name)
        if isinstance(count, int) and count < 2:
            what = "training" if train else "normalising with batch statistics"
            raise LayerError(
                "batch_norm",
                f"{what} needs more than one value per channel, got input shape "
                f"{tuple(x.shape)}: {count} value(s) per channel over the batch and spatial axes"
                f"{' and ' + repr(axis_name) if axis_name else ''}; use a batch of 2 or more",
            )
        var = jnp.mean(jnp.square(wide - mean), axes)
        if axis_name is not None:
            var = lax.pmean(var, axis_name)
        y = _scale_shift(((wide - mean) * lax.rsqrt(var + eps)).astype(x.dtype), params)
        if not track_running_stats:
            return y, state
        batch_mean, unbiased = lax.stop_gradient((mean, var * count / (count - 1)))
        new_state = {
            "mean": (1 - momentum) * state["mean"] + momentum * batch_mean,
            "var": (1 - momentum) * state["var"] + momentum * unbiased,
        }
        return y, jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)

    return Layer(init, apply, kind="batch_norm")


def layer_norm(
    *,
    axes: int | Sequence[int] = -1,
    eps: float = 1e-5,
    use_scale: bool = True,
    use_bias: bool = True,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Layer normalisation (Ba et al., 2016) over `axes`, the same in train and eval.

    ``y = scale·(x − μ)/√(σ² + ε) + bias`` with ``μ``, ``σ²`` the mean and biased variance of
    `x` over `axes` (by default the last axis, ``x[..., :]``), one pair per position of the
    other axes. Input ``(..., features)``, output the same shape. Params ``scale`` and ``bias``
    of shape ``(features,)``.

    `axes` are negative (counted from the last), e.g. ``(-2, -1)``; the params then have the
    shape of the input on those axes, ``(d₋₂, d₋₁)``, one value per normalised element.
    ``layer_norm(axes=(-2, -1))`` on ``(N, T, D)`` is PyTorch's ``LayerNorm((T, D))``.
    `use_bias=False` drops ``bias`` (PyTorch's ``bias=False``); with `use_scale=False` too the
    params are ``{}`` and ``y = (x − μ)/√(σ² + ε)`` (PyTorch's ``elementwise_affine=False``).
    """
    axes = _norm_axes("layer_norm", axes)
    init = _init_over_axes(
        "layer_norm", axes, scale_init, bias_init, dtype, eps, use_scale, use_bias
    )

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        sizes = _sizes("layer_norm", params, use_scale=use_scale, use_bias=use_bias)
        _check_input("layer_norm", x, sizes, axes)
        wide = _widened(x)
        mean = jnp.mean(wide, axes, keepdims=True)
        var = jnp.mean(jnp.square(wide - mean), axes, keepdims=True)
        x_hat = ((wide - mean) * lax.rsqrt(var + eps)).astype(x.dtype)
        return _scale_shift(x_hat, params, _broadcast_shape(x.shape, axes)), state

    return Layer(init, apply, kind="layer_norm")


def rms_norm(
    *,
    axes: int | Sequence[int] = -1,
    eps: float | None = None,
    use_scale: bool = True,
    use_bias: bool = False,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """RMS normalisation (Zhang & Sennrich, 2019) over `axes`, the same in train and eval.

    No mean is subtracted and, by default, no offset added::

        y = scale · x / √(mean(x², axes) + ε)        (+ bias with use_bias=True)

    the mean taken over `axes` (by default the last axis) at each position of the other axes.
    `eps=None` takes the machine epsilon of the computation dtype, as PyTorch's ``RMSNorm``
    does: ``finfo(float32).eps ≈ 1.19e-7`` for float32 (and for float16 and bfloat16 inputs,
    whose mean square is computed in float32), ``finfo(float64).eps ≈ 2.2e-16`` for float64.
    Many models set it instead (1e-6 or 1e-5).

    Input ``(..., features)``, output the same shape, in the dtype of ``x̂ · scale`` (a
    bfloat16 input with float32 params gives float32; build with ``dtype=jnp.bfloat16`` to
    keep bfloat16). Params ``scale`` (ones) of
    shape ``(features,)``, and ``bias`` (zeros) with `use_bias`; `use_scale=False` drops
    ``scale``. `axes` are negative (counted from the last), e.g. ``(-2, -1)``, and the params
    then have the shape of the input on those axes. ``rms_norm(axes=(-2, -1))`` on
    ``(N, T, D)`` is PyTorch's ``RMSNorm((T, D))``; `use_scale=False` its
    ``elementwise_affine=False``.
    """
    axes = _norm_axes("rms_norm", axes)
    checked_eps = 0.0 if eps is None else eps  # None: the dtype's machine epsilon, at apply
    init = _init_over_axes(
        "rms_norm", axes, scale_init, bias_init, dtype, checked_eps, use_scale, use_bias
    )

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        sizes = _sizes("rms_norm", params, use_scale=use_scale, use_bias=use_bias)
        _check_input("rms_norm", x, sizes, axes)
        wide = _widened(x)
        epsilon = jnp.finfo(wide.dtype).eps if eps is None else eps
        mean_square = jnp.mean(jnp.square(wide), axes, keepdims=True)
        x_hat = (wide * lax.rsqrt(mean_square + epsilon)).astype(x.dtype)
        return _scale_shift(x_hat, params, _broadcast_shape(x.shape, axes)), state

    return Layer(init, apply, kind="rms_norm")


def _group_norm(kind: str, num_groups: int | None, eps, scale_init, bias_init, dtype) -> Layer:
    """Group norm with `num_groups` groups, or one group per channel when None."""
    scale_init, bias_init = _affine_inits(kind, scale_init, bias_init, dtype, eps)

    def check(shape):
        check_shape(
            kind, shape, "an input (batch, *spatial, channels) with a spatial axis", min_rank=3
        )
        groups = shape[-1] if num_groups is None else num_groups
        if shape[-1] % groups:
            raise LayerError(
                kind, f"num_groups={groups} does not divide the {shape[-1]} channels of {shape}"
            )
        return groups

    def init(key, in_shape):
        in_shape = tuple(in_shape)
        check(in_shape)
        return in_shape, _affine_params(key, in_shape[-1:], scale_init, bias_init, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        _check_input(kind, x, _sizes(kind, params))
        groups = check(tuple(x.shape))
        grouped = _widened(x).reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
        axes = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and channels within a group
        mean = jnp.mean(grouped, axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
        x_hat = ((grouped - mean) * lax.rsqrt(var + eps)).reshape(x.shape).astype(x.dtype)
        return _scale_shift(x_hat, params), state

    return Layer(init, apply, kind=kind)


def group_norm(
    num_groups: int,
    *,
    eps: float = 1e-5,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Group normalisation (Wu & He, 2018), the same in train and eval.

    The channels are split into `num_groups` consecutive groups of ``C/G``; each example and
    group is normalised by the mean and biased variance over its spatial positions and the
    group's channels, then ``y = scale·x̂ + bias`` per channel. Input
    ``(batch, *spatial, channels)`` with `num_groups` dividing the channels; output the same
    shape. Params ``scale`` and ``bias`` of shape ``(channels,)``.
    """
    num_groups = check_int("group_norm", "num_groups", num_groups)
    return _group_norm("group_norm", num_groups, eps, scale_init, bias_init, dtype)


def instance_norm(
    *,
    eps: float = 1e-5,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Instance normalisation (Ulyanov et al., 2016): group norm with one channel per group.

    Each example and channel is normalised by the mean and biased variance over its spatial
    positions, then ``y = scale·x̂ + bias``. Input ``(batch, *spatial, channels)``; output the
    same shape. Params ``scale`` and ``bias`` of shape ``(channels,)``.
    """
    return _group_norm("instance_norm", None, eps, scale_init, bias_init, dtype)


def _norm_but_last(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))))


def weight_norm(layer: Layer) -> Layer:
    """Weight normalisation (Salimans & Kingma, 2016) of a dense or conv layer's kernel.

    The kernel is re-parametrised as ``w = g · v / ‖v‖``, the norm taken over all axes but the
    last (output) one, so ``g`` is the norm of each output unit's weights and ``v`` only sets
    their direction. Params: ``v`` of the kernel's shape, ``g`` of shape ``(out,)`` and the
    wrapped layer's other params (``b``) as they are. At init ``v`` is the wrapped layer's
    kernel and ``g = ‖v‖``, so the initial ``w`` is the wrapped layer's initial ``w``. Shapes
    in and out are those of the wrapped layer.
    """
    layer = as_layer(layer, owner="weight_norm")

    def init(key, in_shape):
        out_shape, params, state = layer.init(key, in_shape)
        if "w" not in params:
            raise LayerError("weight_norm", f"wraps a layer with a kernel w, got {sorted(params)}")
        params = dict(params)
        v = params.pop("w")
        return out_shape, {"v": v, "g": _norm_but_last(v), **params}, state

    def apply(params, state, x, *, key=None, train=False):
        check_params("weight_norm", params, "v", "g")
        params = dict(params)
        v, g = params.pop("v"), params.pop("g")
        if g.shape != v.shape[-1:]:
            raise LayerError(
                "weight_norm", f"g of shape {g.shape} does not match v of shape {v.shape}"
            )
        params["w"] = g * v / _norm_but_last(v)
        return layer.apply(params, state, x, key=key, train=train)

    return Layer(init, apply, kind="weight_norm")
