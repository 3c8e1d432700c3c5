"""Normalisation layers: batch, layer, group and instance norm, and weight normalisation.

The feature (channel) axis is the last one. Each of the first four computes ``x̂ = (x − μ) /
√(σ² + ε)`` over some axes and returns ``y = scale · x̂ + bias`` with params ``scale`` (ones)
and ``bias`` (zeros) of shape ``(channels,)``; they differ in the axes of ``μ`` and ``σ²``:

    batch_norm     every axis but the channels (batch and spatial), one statistic per channel
    layer_norm     the last axis, one statistic per position
    group_norm     spatial axes and the channels of one group, per example and group
    instance_norm  spatial axes, per example and channel

``σ²`` is the biased (population) variance in all of them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from funcnet.nn import initializers
from funcnet.nn.core import Layer, LayerError, check_floating, check_shape

__all__ = ["batch_norm", "group_norm", "instance_norm", "layer_norm", "weight_norm"]

Array = jax.Array


def _affine_params(key, channels, scale_init, bias_init, dtype):
    scale_key, bias_key = jax.random.split(key)
    return {
        "scale": scale_init(scale_key, (channels,), dtype),
        "bias": bias_init(bias_key, (channels,), dtype),
    }


def _check_input(kind: str, x: Array, params, min_rank: int = 1) -> None:
    """Checks `x` against the norm's params: floating point, ``(..., channels)``."""
    channels = params["scale"].shape[0]
    check_shape(
        kind,
        x.shape,
        f"an input of rank >= {min_rank} with {channels} channels on the last axis",
        min_rank=min_rank,
        last=channels,
    )
    check_floating(kind, x)


def _normalize(x: Array, mean: Array, var: Array, eps: float, params) -> Array:
    return (x - mean) * lax.rsqrt(var + eps) * params["scale"] + params["bias"]


def batch_norm(
    *,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis_name: str | None = None,
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
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must lie in [0, 1], got {momentum}")
    scale_init, bias_init = initializers.get(scale_init), initializers.get(bias_init)

    def init(key, in_shape):
        in_shape = check_shape(
            "batch_norm", in_shape, "an input (batch, ..., channels)", min_rank=2
        )
        channels = in_shape[-1]
        params = _affine_params(key, channels, scale_init, bias_init, dtype)
        state = {"mean": initializers.zeros(None, (channels,), dtype)}
        state["var"] = initializers.ones(None, (channels,), dtype)
        return in_shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        del key
        _check_input("batch_norm", x, params, min_rank=2 - bool(axis_name))
        if not train:
            return _normalize(x, state["mean"], state["var"], eps, params), state
        axes = tuple(range(x.ndim - 1))
        count = x.size // x.shape[-1]
        mean = jnp.mean(x, axes)
        if axis_name is not None:
            mean = lax.pmean(mean, axis_name)
            count = count * lax.psum(1, axis_name)
        if isinstance(count, int) and count < 2:
            raise LayerError(
                "batch_norm",
                f"training needs more than one value per channel, got input shape {tuple(x.shape)}",
            )
        var = jnp.mean(jnp.square(x - mean), axes)
        if axis_name is not None:
            var = lax.pmean(var, axis_name)
        y = _normalize(x, mean, var, eps, params)
        batch_mean, unbiased = lax.stop_gradient((mean, var * count / (count - 1)))
        new_state = {
            "mean": (1 - momentum) * state["mean"] + momentum * batch_mean,
            "var": (1 - momentum) * state["var"] + momentum * unbiased,
        }
        return y, jax.tree.map(lambda new, old: new.astype(old.dtype), new_state, state)

    return Layer(init, apply, kind="batch_norm")


def layer_norm(
    *,
    eps: float = 1e-5,
    scale_init: str | initializers.Initializer = "ones",
    bias_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Layer normalisation (Ba et al., 2016) over the last axis, the same in train and eval.

    ``y = scale·(x − μ)/√(σ² + ε) + bias`` with ``μ``, ``σ²`` the mean and biased variance of
    ``x[..., :]`` at each position. Input ``(..., features)``, output the same shape. Params
    ``scale`` and ``bias`` of shape ``(features,)``.
    """
    scale_init, bias_init = initializers.get(scale_init), initializers.get(bias_init)

    def init(key, in_shape):
        in_shape = check_shape("layer_norm", in_shape, "an input (..., features)", min_rank=1)
        return in_shape, _affine_params(key, in_shape[-1], scale_init, bias_init, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        _check_input("layer_norm", x, params)
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return _normalize(x, mean, var, eps, params), state

    return Layer(init, apply, kind="layer_norm")


def _group_norm(kind: str, num_groups: int | None, eps, scale_init, bias_init, dtype) -> Layer:
    """Group norm with `num_groups` groups, or one group per channel when None."""
    scale_init, bias_init = initializers.get(scale_init), initializers.get(bias_init)

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
        return in_shape, _affine_params(key, in_shape[-1], scale_init, bias_init, dtype), {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        _check_input(kind, x, params)
        groups = check(tuple(x.shape))
        grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
        axes = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and channels within a group
        mean = jnp.mean(grouped, axes, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axes, keepdims=True)
        x_hat = ((grouped - mean) * lax.rsqrt(var + eps)).reshape(x.shape)
        return x_hat * params["scale"] + params["bias"], state

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
    if num_groups < 1:
        raise ValueError(f"group_norm: num_groups must be positive, got {num_groups}")
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

    def init(key, in_shape):
        out_shape, params, state = layer.init(key, in_shape)
        if "w" not in params:
            raise LayerError("weight_norm", f"wraps a layer with a kernel w, got {sorted(params)}")
        params = dict(params)
        v = params.pop("w")
        return out_shape, {"v": v, "g": _norm_but_last(v), **params}, state

    def apply(params, state, x, *, key=None, train=False):
        params = dict(params)
        v, g = params.pop("v"), params.pop("g")
        if g.shape != v.shape[-1:]:
            raise LayerError(
                "weight_norm", f"g of shape {g.shape} does not match v of shape {v.shape}"
            )
        params["w"] = g * v / _norm_but_last(v)
        return layer.apply(params, state, x, key=key, train=train)

    return Layer(init, apply, kind="weight_norm")
