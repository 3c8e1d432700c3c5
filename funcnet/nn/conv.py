"""Convolution, pooling and flattening on channels-last arrays (``NWC``, ``NHWC``, ``NDHWC``).

A spatial input has shape ``(batch, *spatial, channels)``: ``(batch, width, channels)`` for 1-D,
``(batch, height, width, channels)`` for 2-D. Window sizes, strides and dilations are an int
(the same on every spatial axis of the input) or a tuple with one entry per spatial axis, whose
length fixes the layer to 1-D, 2-D or 3-D.

Output length along a spatial axis of length ``n``, for window ``k``, stride ``s``, dilation
``d`` and effective window ``k' = d·(k − 1) + 1``::

    "VALID":          ⌈(n − k' + 1) / s⌉
    "SAME":           ⌈n / s⌉           (zero padding split as evenly as possible, extra at the end)
    explicit (lo, hi): ⌊(n + lo + hi − k') / s⌋ + 1
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet.nn import initializers
from funcnet.nn.core import Layer, LayerError, check_floating, check_shape

__all__ = ["avg_pool", "conv", "flatten", "global_avg_pool", "global_max_pool", "max_pool"]

Array = jax.Array
Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}


def _per_axis(kind: str, what: str, value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """`value` as one positive int per spatial axis."""
    values = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(values) != ndim or not all(isinstance(v, int) and v >= 1 for v in values):
        raise LayerError(
            kind, f"{what} must be a positive int or {ndim} positive ints, got {value!r}"
        )
    return values


def _fixed_ndim(kind: str, *settings: Padding | None) -> int | None:
    """The spatial rank fixed by the sequences among `settings`, or None if there are none."""
    lengths = {len(tuple(s)) for s in settings if s is not None and not isinstance(s, (int, str))}
    if len(lengths) > 1:
        raise ValueError(f"{kind}: window, strides, dilation and padding disagree on the rank")
    ndim = lengths.pop() if lengths else None
    if ndim is not None and not 1 <= ndim <= 3:
        raise ValueError(f"{kind}: settings must have 1 to 3 entries (one per axis), got {ndim}")
    return ndim


def _pads(kind: str, padding: Padding, ndim: int) -> str | tuple[tuple[int, int], ...]:
    """Normalises `padding` to "SAME", "VALID" or one ``(low, high)`` pair per spatial axis."""
    if isinstance(padding, str):
        if padding.upper() not in ("SAME", "VALID"):
            raise LayerError(kind, f"padding must be 'SAME', 'VALID' or ints, got {padding!r}")
        return padding.upper()
    if isinstance(padding, int):
        pairs = ((padding, padding),) * ndim
    else:
        entries = tuple(padding)
        if all(isinstance(p, int) for p in entries):
            pairs = tuple((p, p) for p in entries)
        else:
            pairs = tuple(tuple(p) for p in entries)
    if len(pairs) != ndim or not all(
        len(p) == 2 and all(isinstance(v, int) and v >= 0 for v in p) for p in pairs
    ):
        raise LayerError(
            kind,
            f"explicit padding must be an int, {ndim} ints or {ndim} (low, high) pairs of "
            f"non-negative ints, got {padding!r}",
        )
    return pairs


def _out_length(n: int, k: int, s: int, d: int, pad: str | tuple[int, int]) -> int:
    span = d * (k - 1) + 1
    if pad == "SAME":
        return -(-n // s)
    if pad == "VALID":
        return max(0, -(-(n - span + 1) // s))
    return max(0, (n + pad[0] + pad[1] - span) // s + 1)


def _spatial_out(in_spatial, window, strides, dilation, pads) -> tuple[int, ...]:
    per_axis_pads = (pads,) * len(in_spatial) if isinstance(pads, str) else pads
    return tuple(
        _out_length(n, k, s, d, p)
        for n, k, s, d, p in zip(in_spatial, window, strides, dilation, per_axis_pads, strict=True)
    )


def _check_spatial(kind: str, shape: tuple[int, ...], ndim: int | None) -> int:
    """Checks ``(batch, *spatial, channels)`` and returns the number of spatial axes."""
    if ndim is None:
        expected = "a channels-last input (batch, *spatial, channels) with 1 to 3 spatial axes"
        return len(check_shape(kind, shape, expected, min_rank=3, max_rank=5)) - 2
    layout = "N" + _SPATIAL.get(ndim, "?" * ndim) + "C"
    expected = f"a {ndim}-D input of rank {ndim + 2} ({layout}, channels last)"
    check_shape(kind, shape, expected, min_rank=ndim + 2, max_rank=ndim + 2)
    return ndim


def conv(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "lecun_normal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Channels-last convolution (cross-correlation, as in every deep-learning library).

    For a 2-D input ``x`` and kernel ``w``, with groups of ``C_in / groups`` input channels::

        y[n, i, j, o] = b[o] + Σ_{p, q, c} x[n, s·i + d·p − pad, s·j + d·q − pad, g(o)·C_g + c]
                                          · w[p, q, c, o]

    where ``g(o)`` is the group of output channel ``o`` (each group maps ``C_in / groups``
    inputs to ``features / groups`` outputs). 1-D and 3-D read the same with one and three
    window axes.

    Input: a float array ``(batch, *spatial, in_channels)``; output
    ``(batch, *out_spatial, features)`` with ``out_spatial`` as in the module docstring.
    Params: ``w`` of shape ``(*kernel_size, in_channels // groups, features)`` and ``b`` of
    shape ``(features,)`` (absent with ``use_bias=False``).

    `padding` is ``"SAME"``, ``"VALID"``, an int (zeros on both sides of every axis), one int
    per axis, or one ``(low, high)`` pair per axis. `dilation` spaces the kernel taps
    (atrous convolution). `groups` must divide both channel counts; ``groups = in_channels``
    is a depthwise convolution.
    """
    if features < 1:
        raise ValueError(f"conv: features must be positive, got {features}")
    if groups < 1 or features % groups:
        raise ValueError(f"conv: groups={groups} must be positive and divide features={features}")
    fixed = _fixed_ndim("conv", kernel_size, strides, dilation, padding)
    w_init, b_init = initializers.get(w_init), initializers.get(b_init)

    def settings(ndim):
        window = _per_axis("conv", "kernel_size", kernel_size, ndim)
        stride = _per_axis("conv", "strides", strides, ndim)
        dil = _per_axis("conv", "dilation", dilation, ndim)
        return window, stride, dil, _pads("conv", padding, ndim)

    settings(fixed or 1)  # refuses bad settings when the layer is built

    def init(key, in_shape):
        in_shape = tuple(in_shape)
        ndim = _check_spatial("conv", in_shape, fixed)
        in_channels = in_shape[-1]
        if in_channels % groups:
            raise LayerError(
                "conv", f"groups={groups} does not divide the {in_channels} input channels"
            )
        window, stride, dil, pads = settings(ndim)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*window, in_channels // groups, features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        out_spatial = _spatial_out(in_shape[1:-1], window, stride, dil, pads)
        return (in_shape[0], *out_spatial, features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        w = params["w"]
        ndim = w.ndim - 2
        _check_spatial("conv", tuple(x.shape), ndim)
        check_floating("conv", x)
        window, stride, dil, pads = settings(ndim)
        bias_shape = tuple(params["b"].shape) if "b" in params else (features,)
        if (
            tuple(w.shape[:-2]) != tuple(window)
            or w.shape[-1] != features
            or bias_shape != (features,)
        ):
            shapes = {k: tuple(v.shape) for k, v in params.items()}
            raise LayerError(
                "conv",
                f"params of shapes {shapes} do not belong to a conv layer of {features} features "
                f"and kernel {tuple(window)}; were they made by another model's init?",
            )
        check_shape(
            "conv",
            x.shape,
            f"{w.shape[-2] * groups} input channels on the last axis (kernel w has shape "
            f"{tuple(w.shape)}, groups={groups})",
            last=w.shape[-2] * groups,
        )
        layout = "N" + _SPATIAL[ndim] + "C"
        dtype = jnp.result_type(x, w)
        y = lax.conv_general_dilated(
            x.astype(dtype),
            w.astype(dtype),
            window_strides=stride,
            padding=pads,
            rhs_dilation=dil,
            dimension_numbers=(layout, _SPATIAL[ndim] + "IO", layout),
            feature_group_count=groups,
        )
        if "b" in params:
            y = y + params["b"]
        return y, state

    return Layer(init, apply, kind="conv")


def _pool(
    kind: str,
    window: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: Padding,
) -> Layer:
    fixed = _fixed_ndim(kind, window, strides, padding)

    def settings(ndim):
        win = _per_axis(kind, "window", window, ndim)
        stride = win if strides is None else _per_axis(kind, "strides", strides, ndim)
        return win, stride, _pads(kind, padding, ndim)

    settings(fixed or 1)

    def init(key, in_shape):
        del key
        in_shape = tuple(in_shape)
        ndim = _check_spatial(kind, in_shape, fixed)
        win, stride, pads = settings(ndim)
        out_spatial = _spatial_out(in_shape[1:-1], win, stride, (1,) * ndim, pads)
        return (in_shape[0], *out_spatial, in_shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        ndim = _check_spatial(kind, tuple(x.shape), fixed)
        win, stride, pads = settings(ndim)
        dims, steps = (1, *win, 1), (1, *stride, 1)
        if not isinstance(pads, str):
            pads = ((0, 0), *pads, (0, 0))
        # numpy scalars as init values, so that lax picks its differentiable max/sum windows
        if kind == "max_pool":
            floating = jnp.issubdtype(x.dtype, jnp.floating)
            if not floating and not jnp.issubdtype(x.dtype, jnp.integer):
                raise LayerError(kind, f"expected a float or integer input, got dtype {x.dtype}")
            lowest = np.array(-np.inf if floating else np.iinfo(x.dtype).min, x.dtype)
            y = lax.reduce_window(x, lowest, lax.max, dims, steps, pads)
        else:
            check_floating(kind, x)
            zero = np.array(0, x.dtype)
            total = lax.reduce_window(x, zero, lax.add, dims, steps, pads)
            ones = jnp.ones((1, *x.shape[1:-1], 1), x.dtype)
            y = total / lax.reduce_window(ones, zero, lax.add, dims, steps, pads)
        return y, state

    return Layer(init, apply, kind=kind)


def max_pool(
    window: int | Sequence[int],
    *,
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> Layer:
    """Max pooling: ``y[n, i, j, c] = max_{p, q} x[n, s·i + p, s·j + q, c]`` over each window.

    Input ``(batch, *spatial, channels)``, output ``(batch, *out_spatial, channels)``.
    `strides` default to the window (non-overlapping windows). Padded cells never win the max.
    No params.
    """
    return _pool("max_pool", window, strides, padding)


def avg_pool(
    window: int | Sequence[int],
    *,
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
) -> Layer:
    """Average pooling: the mean of ``x`` over each window, per channel.

    Input ``(batch, *spatial, channels)``, output ``(batch, *out_spatial, channels)``.
    `strides` default to the window. With padding, each output is the mean of the input cells
    its window covers; padded cells are not counted (TensorFlow's "SAME" convention). No params.
    """
    return _pool("avg_pool", window, strides, padding)


def _global_pool(kind: str, reduce) -> Layer:
    def init(key, in_shape):
        del key
        in_shape = tuple(in_shape)
        _check_spatial(kind, in_shape, None)
        return (in_shape[0], in_shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        _check_spatial(kind, tuple(x.shape), None)
        return reduce(x, axis=tuple(range(1, x.ndim - 1))), state

    return Layer(init, apply, kind=kind)


def global_avg_pool() -> Layer:
    """The mean over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global_pool("global_avg_pool", jnp.mean)


def global_max_pool() -> Layer:
    """The max over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global_pool("global_max_pool", jnp.max)


def flatten() -> Layer:
    """Flattens all but the batch axis: ``(batch, d_1, ..., d_k) -> (batch, d_1·...·d_k)``."""

    def init(key, in_shape):
        del key
        in_shape = check_shape("flatten", in_shape, "an input with a batch axis", min_rank=1)
        return (in_shape[0], math.prod(in_shape[1:])), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check_shape("flatten", x.shape, "an input with a batch axis", min_rank=1)
        return x.reshape(x.shape[0], -1), state

    return Layer(init, apply, kind="flatten")
