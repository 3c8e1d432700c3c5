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

Pooling with ``ceil_mode=True`` rounds the last quotient up instead (see `max_pool`), and
`conv_transpose` maps lengths the other way (see its docstring).
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from funcnet._checks import check_flag, check_float_dtype, check_int
from funcnet.nn import initializers
from funcnet.nn.core import (
    Layer,
    LayerError,
    check_floating,
    check_params,
    check_shape,
    input_shape,
)

__all__ = [
    "adaptive_avg_pool",
    "adaptive_max_pool",
    "avg_pool",
    "conv",
    "conv_transpose",
    "flatten",
    "global_avg_pool",
    "global_max_pool",
    "max_pool",
]

Array = jax.Array
Padding = str | int | Sequence[int] | Sequence[tuple[int, int]]

_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}

# padding_mode -> jnp.pad mode; "zeros" pads inside the convolution itself.
_PADDING_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}


def _is_int(value: object) -> bool:
    """Whether `value` is a Python or NumPy integer (not a bool)."""
    try:
        operator.index(value)
    except TypeError:
        return False
    return not isinstance(value, bool)


def _is_sequence(value: object) -> bool:
    """Whether a setting is one entry per axis (a tuple or list), rather than one value."""
    return not isinstance(value, str) and hasattr(value, "__len__") and hasattr(value, "__iter__")


def _per_axis(
    kind: str, what: str, value: int | Sequence[int], ndim: int, minimum: int = 1
) -> tuple[int, ...]:
    """`value` as one int ``>= minimum`` (positive by default) per spatial axis."""
    values = tuple(value) if _is_sequence(value) else (value,) * ndim
    if len(values) != ndim or not all(_is_int(v) and v >= minimum for v in values):
        sort = "positive" if minimum == 1 else "non-negative"
        raise LayerError(kind, f"{what} must be a {sort} int or {ndim} {sort} ints, got {value!r}")
    return tuple(int(v) for v in values)


def _fixed_ndim(kind: str, *settings: Padding | None) -> int | None:
    """The spatial rank fixed by the sequences among `settings`, or None if there are none."""
    lengths = {len(tuple(s)) for s in settings if _is_sequence(s)}
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
        try:
            entries = tuple(padding)
        except TypeError:
            raise LayerError(
                kind, f"padding must be 'SAME', 'VALID' or ints, got {padding!r:.40}"
            ) from None
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


def _pairs(
    in_spatial: Sequence[int],
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    pads: str | tuple[tuple[int, int], ...],
) -> tuple[tuple[int, int], ...]:
    """`pads` as one ``(low, high)`` pair per axis, with "SAME" and "VALID" resolved for
    `in_spatial` as `lax.conv_general_dilated` resolves them."""
    if pads == "VALID":
        return ((0, 0),) * len(in_spatial)
    if pads != "SAME":
        return pads
    pairs = []
    for n, k, s, d in zip(in_spatial, window, strides, dilation, strict=True):
        total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pairs.append((total // 2, total - total // 2))
    return tuple(pairs)


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


def _check_mode_pads(mode: str, shape: tuple[int, ...], pairs: tuple[tuple[int, int], ...]):
    """Refuses reflect padding of ``length`` or more cells, circular padding of more than
    ``length`` cells, and any padding of an empty axis, as PyTorch does."""
    for axis, (n, pair) in enumerate(zip(shape[1:-1], pairs, strict=True)):
        limit = {"reflect": n - 1, "circular": n}.get(mode, None if n else 0)
        if limit is not None and max(pair) > limit:
            rule = {
                "reflect": "reflect padding must be shorter than the axis",
                "circular": "circular padding may wrap around the axis at most once",
            }.get(mode, "an empty axis cannot be padded")
            raise LayerError(
                "conv",
                f"padding_mode={mode!r} cannot pad {pair} (low, high) cells on spatial axis "
                f"{axis} of length {n} (input shape {shape}): {rule}, so at most {limit} cells "
                "a side",
            )


def _channels_last_conv(
    x: Array,
    kernel: Array,
    bias: Array | None,
    *,
    strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    dilation: Sequence[int],
    groups: int,
    input_dilation: Sequence[int] | None = None,
) -> Array:
    """`lax.conv_general_dilated` of `x` ``(batch, *spatial, in)`` with `kernel` ``(*window,
    in / groups, out)``, both in their common dtype, plus `bias` ``(out,)`` unless None."""
    ndim = kernel.ndim - 2
    layout = "N" + _SPATIAL[ndim] + "C"
    dtype = jnp.result_type(x, kernel)
    y = lax.conv_general_dilated(
        x.astype(dtype),
        kernel.astype(dtype),
        window_strides=strides,
        padding=padding,
        lhs_dilation=input_dilation,
        rhs_dilation=dilation,
        dimension_numbers=(layout, _SPATIAL[ndim] + "IO", layout),
        feature_group_count=groups,
    )
    return y if bias is None else y + bias


def conv(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
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
    per axis, or one ``(low, high)`` pair per axis. `padding_mode` says what the padded cells
    hold, as PyTorch's ``padding_mode``: ``"zeros"``; ``"reflect"``, the input mirrored about
    its edge cell (``x[1], x[0] | x[0], x[1], …``; at most ``length − 1`` cells a side);
    ``"replicate"``, the edge cell repeated; ``"circular"``, the input wrapped around (at most
    ``length`` cells a side). The output shape does not depend on it. `dilation` spaces the
    kernel taps (atrous convolution). `groups` must divide both channel counts;
    ``groups = in_channels`` is a depthwise convolution.
    """
    features = check_int("conv", "features", features)
    groups = check_int("conv", "groups", groups)
    if features % groups:
        raise ValueError(f"conv: groups={groups} must be positive and divide features={features}")
    if padding_mode not in _PADDING_MODES:
        raise LayerError(
            "conv",
            f"padding_mode must be one of {', '.join(map(repr, _PADDING_MODES))}, "
            f"got {padding_mode!r}",
        )
    fixed = _fixed_ndim("conv", kernel_size, strides, dilation, padding)
    w_init, b_init = initializers.named("conv", w_init=w_init, b_init=b_init)
    check_float_dtype("conv", dtype)
    check_flag("conv", "use_bias", use_bias)

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
        if padding_mode != "zeros":
            _check_mode_pads(
                padding_mode, in_shape, _pairs(in_shape[1:-1], window, stride, dil, pads)
            )
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*window, in_channels // groups, features), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        out_spatial = _spatial_out(in_shape[1:-1], window, stride, dil, pads)
        return (in_shape[0], *out_spatial, features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_params("conv", params, "w", *("b",) * use_bias)
        w = params["w"]
        ndim = w.ndim - 2
        _check_spatial("conv", input_shape("conv", x), ndim)
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
        if padding_mode != "zeros":
            pairs = _pairs(x.shape[1:-1], window, stride, dil, pads)
            _check_mode_pads(padding_mode, tuple(x.shape), pairs)
            x = jnp.pad(x, ((0, 0), *pairs, (0, 0)), mode=_PADDING_MODES[padding_mode])
            pads = "VALID"
        y = _channels_last_conv(
            x, w, params.get("b"), strides=stride, padding=pads, dilation=dil, groups=groups
        )
        return y, state

    return Layer(init, apply, kind="conv")


def conv_transpose(
    features: int,
    kernel_size: int | Sequence[int],
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    use_bias: bool = True,
    w_init: str | initializers.Initializer = "lecun_normal",
    b_init: str | initializers.Initializer = "zeros",
    dtype=None,
) -> Layer:
    """Channels-last transposed convolution: the gradient of `conv` with respect to its input.

    Each input cell spreads its channels over a kernel-sized patch of the output, the patches
    of neighbouring cells `strides` apart. In 1-D, with ``C_g = in_channels / groups`` input
    and ``F_g = features / groups`` output channels per group, and ``lo`` cells cropped from
    the start::

        y[n, s·i + d·p − lo, g·F_g + f] += x[n, i, g·C_g + c] · w[p, g·C_g + c, f]

    summed over every input cell ``i``, kernel tap ``p``, group ``g`` and channel ``c``, plus
    ``b``. 2-D and 3-D read the same with one index per axis. It is the transpose (adjoint) of
    the `conv` from `features` channels to `in_channels` with the same kernel size, strides,
    dilation, padding and groups and the kernel ``swapaxes(w, -1, -2)``, and equals PyTorch's
    ``ConvTranspose1d/2d/3d``.

    Input: a float array ``(batch, *spatial, in_channels)``; output
    ``(batch, *out_spatial, features)``. Params: ``w`` of shape
    ``(*kernel_size, in_channels, features // groups)`` and ``b`` of shape ``(features,)``
    (absent with ``use_bias=False``). PyTorch's weight of shape
    ``(in_channels, features // groups, *kernel_size)`` is ``w`` with its kernel axes moved to
    the front: ``w = weight.permute(2, 3, 0, 1)`` in 2-D.

    Output length along an axis of length ``n``, with effective window
    ``k' = d·(k − 1) + 1``::

        "SAME":            n·s   (the input length of a "SAME" conv with stride s that gives n)
        "VALID":           (n − 1)·s + k' + output_padding
        explicit (lo, hi): (n − 1)·s + k' − lo − hi + output_padding

    An explicit int ``p`` crops ``p`` cells from both ends, PyTorch's ``padding=p`` (PyTorch's
    default ``padding=0`` is ``"VALID"``). `output_padding` adds cells at the end of an axis,
    choosing among the ``s`` input lengths that a strided conv maps to the same length; as in
    PyTorch it must be less than the stride or the dilation, and is not taken with ``"SAME"``.
    """
    kind = "conv_transpose"
    features = check_int(kind, "features", features)
    groups = check_int(kind, "groups", groups)
    if features % groups:
        raise LayerError(kind, f"groups={groups} must be positive and divide features={features}")
    fixed = _fixed_ndim(kind, kernel_size, strides, dilation, padding, output_padding)
    w_init, b_init = initializers.named(kind, w_init=w_init, b_init=b_init)
    check_float_dtype(kind, dtype)
    check_flag(kind, "use_bias", use_bias)

    def settings(ndim):
        window = _per_axis(kind, "kernel_size", kernel_size, ndim)
        stride = _per_axis(kind, "strides", strides, ndim)
        dil = _per_axis(kind, "dilation", dilation, ndim)
        extra = _per_axis(kind, "output_padding", output_padding, ndim, minimum=0)
        pads = _pads(kind, padding, ndim)
        if pads == "SAME" and any(extra):
            raise LayerError(
                kind,
                f"output_padding={output_padding!r} is not taken with 'SAME' padding, "
                "whose output length is the input length times the stride",
            )
        for axis, (e, s, d) in enumerate(zip(extra, stride, dil, strict=True)):
            if e >= max(s, d):
                raise LayerError(
                    kind,
                    f"output_padding {e} on spatial axis {axis} must be less than the stride "
                    f"{s} or the dilation {d}",
                )
        return window, stride, dil, pads, extra

    settings(fixed or 1)  # refuses bad settings when the layer is built

    def crops(in_shape, window, stride, dil, pads, extra):
        """Per axis: cells cropped from the full output's (start, end), the output length."""
        pairs, out = [], []
        per_axis = (pads,) * len(window) if isinstance(pads, str) else pads
        for axis, (n, k, s, d, pad, e) in enumerate(
            zip(in_shape[1:-1], window, stride, dil, per_axis, extra, strict=True)
        ):
            span = d * (k - 1) + 1
            if pad == "SAME":
                lo = max(span - s, 0) // 2
                pad = (lo, span - s - lo)  # a negative end crop pads zeros
            elif pad == "VALID":
                pad = (0, 0)
            length = (n - 1) * s + span - pad[0] - pad[1] + e
            if length < 1:
                raise LayerError(
                    kind,
                    f"padding {pad} crops the whole output of spatial axis {axis} (input shape "
                    f"{in_shape}, kernel {k}, stride {s}, dilation {d}): output length {length}",
                )
            pairs.append(pad)
            out.append(length)
        return tuple(pairs), tuple(out)

    def init(key, in_shape):
        in_shape = tuple(in_shape)
        ndim = _check_spatial(kind, in_shape, fixed)
        in_channels = in_shape[-1]
        if in_channels % groups:
            raise LayerError(
                kind, f"groups={groups} does not divide the {in_channels} input channels"
            )
        window, stride, dil, pads, extra = settings(ndim)
        _, out_spatial = crops(in_shape, window, stride, dil, pads, extra)
        w_key, b_key = jax.random.split(key)
        params = {"w": w_init(w_key, (*window, in_channels, features // groups), dtype)}
        if use_bias:
            params["b"] = b_init(b_key, (features,), dtype)
        return (in_shape[0], *out_spatial, features), params, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        check_params(kind, params, "w", *("b",) * use_bias)
        w = params["w"]
        ndim = w.ndim - 2
        _check_spatial(kind, input_shape(kind, x), ndim)
        check_floating(kind, x)
        window, stride, dil, pads, extra = settings(ndim)
        bias_shape = tuple(params["b"].shape) if "b" in params else (features,)
        if (
            tuple(w.shape[:-2]) != tuple(window)
            or w.shape[-1] * groups != features
            or bias_shape != (features,)
        ):
            shapes = {k: tuple(v.shape) for k, v in params.items()}
            raise LayerError(
                kind,
                f"params of shapes {shapes} do not belong to a conv_transpose layer of "
                f"{features} features, {groups} groups and kernel {tuple(window)}; were they "
                "made by another model's init?",
            )
        in_channels = w.shape[-2]
        check_shape(
            kind,
            x.shape,
            f"{in_channels} input channels on the last axis (kernel w has shape {tuple(w.shape)})",
            last=in_channels,
        )
        pairs, _ = crops(tuple(x.shape), window, stride, dil, pads, extra)
        # The gradient of a conv is a conv of the stride-dilated input with the flipped kernel,
        # regrouped from (*k, C, F/G) to the conv layout (*k, C/G, F).
        c_g, f_g = in_channels // groups, w.shape[-1]
        kernel = w.reshape(*window, groups, c_g, f_g)
        kernel = jnp.swapaxes(kernel, ndim, ndim + 1).reshape(*window, c_g, features)
        kernel = jnp.flip(kernel, axis=tuple(range(ndim)))
        conv_pads = [
            (d * (k - 1) - lo, d * (k - 1) - hi + e)
            for k, d, (lo, hi), e in zip(window, dil, pairs, extra, strict=True)
        ]
        y = _channels_last_conv(
            x,
            kernel,
            params.get("b"),
            strides=(1,) * ndim,
            padding=conv_pads,
            dilation=dil,
            groups=groups,
            input_dilation=stride,
        )
        return y, state

    return Layer(init, apply, kind=kind)


def _pool_axis(
    kind: str, n: int, k: int, s: int, pad: tuple[int, int], ceil_mode: bool, axis: int
) -> tuple[int, int]:
    """Output length of a pooled axis, and the padding its last window reaches past the input.

    With `ceil_mode` the length rounds up, as PyTorch's: ``⌈(n + lo + hi − k) / s⌉ + 1``, less
    one when the last window would start past the input and its low padding."""
    lo, hi = pad
    if ceil_mode:
        out = -(-(n + lo + hi - k) // s) + 1
        if (out - 1) * s >= n + lo:
            out -= 1
    else:
        out = (n + lo + hi - k) // s + 1
    out = max(out, 0)
    if out and (lo >= k or (out - 1) * s - lo >= n):
        raise LayerError(
            kind,
            f"with padding {pad} on spatial axis {axis} of length {n}, a window of {k} cells "
            f"(stride {s}) covers padding only; each window needs at least one input cell",
        )
    return out, max((out - 1) * s + k - n - lo, hi) if out else hi


def _pool(
    kind: str,
    window: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: Padding,
    ceil_mode: bool = False,
    count_include_pad: bool = False,
) -> Layer:
    fixed = _fixed_ndim(kind, window, strides, padding)

    def settings(ndim):
        win = _per_axis(kind, "window", window, ndim)
        stride = win if strides is None else _per_axis(kind, "strides", strides, ndim)
        return win, stride, _pads(kind, padding, ndim)

    settings(fixed or 1)

    def geometry(shape):
        """The output spatial shape, window, strides, (low, high) padding of each spatial axis,
        and that padding with its high side widened to where the last window reaches."""
        ndim = _check_spatial(kind, shape, fixed)
        win, stride, pads = settings(ndim)
        pairs = _pairs(shape[1:-1], win, stride, (1,) * ndim, pads)
        out, reach = [], []
        for axis, (n, k, s, pad) in enumerate(zip(shape[1:-1], win, stride, pairs, strict=True)):
            length, high = _pool_axis(kind, n, k, s, pad, ceil_mode, axis)
            out.append(length)
            reach.append((pad[0], high))
        return tuple(out), win, stride, pairs, tuple(reach)

    def init(key, in_shape):
        del key
        in_shape = tuple(in_shape)
        out_spatial = geometry(in_shape)[0]
        return (in_shape[0], *out_spatial, in_shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        out, win, stride, pairs, reach = geometry(input_shape(kind, x))
        dims, steps, pads = (1, *win, 1), (1, *stride, 1), ((0, 0), *reach, (0, 0))
        # numpy scalars as init values, so that lax picks its differentiable max/sum windows
        if kind == "max_pool":
            floating = jnp.issubdtype(x.dtype, jnp.floating)
            if not floating and not jnp.issubdtype(x.dtype, jnp.integer):
                raise LayerError(kind, f"expected a float or integer input, got dtype {x.dtype}")
            lowest = np.array(-np.inf if floating else np.iinfo(x.dtype).min, x.dtype)
            y = lax.reduce_window(x, lowest, lax.max, dims, steps, pads)
        else:
            check_floating(kind, x)
            total = lax.reduce_window(x, np.array(0, x.dtype), lax.add, dims, steps, pads)
            # The cells each window averages, per axis: input cells only, or also the padding
            # (not the cells that ceil_mode's last window reaches past it).
            counts = []
            for n, o, k, s, (lo, hi) in zip(x.shape[1:-1], out, win, stride, pairs, strict=True):
                start = np.arange(o) * s - lo
                low, high = (-lo, n + hi) if count_include_pad else (0, n)
                counts.append(np.minimum(start + k, high) - np.maximum(start, low))
            divisor = functools.reduce(np.multiply.outer, counts)
            y = total / divisor[None, ..., None].astype(x.dtype)
        return y, state

    return Layer(init, apply, kind=kind)


def max_pool(
    window: int | Sequence[int],
    *,
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    ceil_mode: bool = False,
) -> Layer:
    """Max pooling: ``y[n, i, j, c] = max_{p, q} x[n, s·i + p, s·j + q, c]`` over each window.

    Input ``(batch, *spatial, channels)``, output ``(batch, *out_spatial, channels)``.
    `strides` default to the window (non-overlapping windows). Padded cells never win the max.
    No params.

    With ``ceil_mode=True`` the output length along an axis of length ``n`` with padding
    ``(lo, hi)`` rounds up, as PyTorch's ``ceil_mode``: ``⌈(n + lo + hi − k) / s⌉ + 1``, less
    one if that last window would start past the input and its low padding
    (``(out − 1)·s ≥ n + lo``). The last window may then reach past the input; it pools the
    cells it covers. Every window must cover at least one input cell.
    """
    return _pool("max_pool", window, strides, padding, ceil_mode)


def avg_pool(
    window: int | Sequence[int],
    *,
    strides: int | Sequence[int] | None = None,
    padding: Padding = "VALID",
    ceil_mode: bool = False,
    count_include_pad: bool = False,
) -> Layer:
    """Average pooling: the mean of ``x`` over each window, per channel.

    Input ``(batch, *spatial, channels)``, output ``(batch, *out_spatial, channels)``.
    `strides` default to the window. With padding, each output is the mean of the input cells
    its window covers; padded cells are not counted (TensorFlow's "SAME" convention). With
    ``count_include_pad=True`` the padding cells a window covers count as zeros (PyTorch's
    default); the cells that a ``ceil_mode`` window reaches past the padding never count.
    `ceil_mode` rounds the output length up as in `max_pool`. No params.
    """
    return _pool("avg_pool", window, strides, padding, ceil_mode, count_include_pad)


def _adaptive_windows(n: int, out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window ``i`` of ``out`` over ``n`` cells is ``[⌊i·n/out⌋, ⌈(i + 1)·n/out⌉)``. Returns the
    cells of each window as an ``(out, widest)`` index array padded by repeating its last cell,
    the mask of the true cells, and each window's size."""
    i = np.arange(out)
    start, end = i * n // out, -(-(i + 1) * n // out)
    cells = start[:, None] + np.arange(np.max(end - start))
    return np.minimum(cells, end[:, None] - 1), cells < end[:, None], end - start


def _adaptive_pool(kind: str, output_size: int | Sequence[int | None]) -> Layer:
    if not _is_sequence(output_size):
        sizes = None
    else:
        sizes = tuple(output_size)
        if not 1 <= len(sizes) <= 3:
            raise LayerError(kind, f"output_size must have 1 to 3 entries, got {output_size!r}")
    entries = (output_size,) if sizes is None else sizes
    if not all((s is None and sizes) or (_is_int(s) and s >= 1) for s in entries):
        raise LayerError(
            kind,
            f"output_size must be a positive int or 1 to 3 positive ints (None keeps an axis), "
            f"got {output_size!r}",
        )
    if sizes is None:
        output_size = int(output_size)
    else:
        sizes = tuple(None if s is None else int(s) for s in sizes)

    def out_spatial(shape):
        ndim = _check_spatial(kind, shape, None if sizes is None else len(sizes))
        if 0 in shape[1:-1]:
            raise LayerError(kind, f"expected non-empty spatial axes, got shape {shape}")
        wanted = (output_size,) * ndim if sizes is None else sizes
        return tuple(n if o is None else o for n, o in zip(shape[1:-1], wanted, strict=True))

    def init(key, in_shape):
        del key
        in_shape = tuple(in_shape)
        return (in_shape[0], *out_spatial(in_shape), in_shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        out = out_spatial(input_shape(kind, x))
        if kind == "adaptive_max_pool":
            if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
                raise LayerError(kind, f"expected a float or integer input, got dtype {x.dtype}")
        else:
            check_floating(kind, x)
        # A box's max (mean) is the max (mean) along one axis after another, the last first:
        # a tie's gradient then goes to its first cell in row-major order, as in PyTorch.
        for axis, o in reversed(list(enumerate(out, start=1))):
            n = x.shape[axis]
            if o == n:
                continue
            cells, inside, size = _adaptive_windows(n, o)
            windows = jnp.take(x, cells, axis=axis)  # the axis becomes (out, widest)
            if kind == "adaptive_max_pool":
                x = _max_along(windows, axis + 1)  # repeated cells leave the max as it is
            else:
                trailing = (None,) * (x.ndim - axis - 1)  # the axes after the pooled one
                total = jnp.sum(jnp.where(inside[(..., *trailing)], windows, 0), axis=axis + 1)
                x = total / size[(..., *trailing)].astype(x.dtype)
        return x, state

    return Layer(init, apply, kind=kind)


def adaptive_avg_pool(output_size: int | Sequence[int | None]) -> Layer:
    """Average pooling to a fixed output size, whatever the input size (PyTorch's
    ``AdaptiveAvgPool1d/2d/3d``).

    Along an axis of length ``n`` pooled to ``out`` cells, output cell ``i`` averages the input
    cells ``⌊i·n/out⌋ ≤ t < ⌈(i + 1)·n/out⌉``; windows of neighbouring cells may overlap by one
    when ``out`` does not divide ``n``, and repeat cells when ``out > n``. Over several axes the
    window is the product of the per-axis ranges.

    Input ``(batch, *spatial, channels)``, output ``(batch, *output_size, channels)``.
    `output_size` is an int (every spatial axis) or one entry per spatial axis, which fixes the
    layer to 1-D, 2-D or 3-D; an entry ``None`` keeps that axis's length. No params.
    """
    return _adaptive_pool("adaptive_avg_pool", output_size)


def adaptive_max_pool(output_size: int | Sequence[int | None]) -> Layer:
    """Max pooling to a fixed output size, with the windows of `adaptive_avg_pool` (PyTorch's
    ``AdaptiveMaxPool1d/2d/3d``).

    Input ``(batch, *spatial, channels)``, output ``(batch, *output_size, channels)``; float or
    integer inputs. No params.
    """
    return _adaptive_pool("adaptive_max_pool", output_size)


def _max_along(x: Array, axis: int) -> Array:
    """The max of `x` along `axis`, read at its argmax: the gradient goes to the first maximal
    entry alone, as in PyTorch's max pooling. (``jnp.max``'s gradient finds the maximal entries
    by comparing them with the output; where XLA recomputes `x` in another fusion, rounded
    differently, it finds none and gives 0/0.)"""
    index = jnp.argmax(x, axis=axis, keepdims=True)
    return jnp.squeeze(jnp.take_along_axis(x, index, axis=axis), axis)


def _global_max(x: Array, axis: tuple[int, ...]) -> Array:
    """The max over the spatial `axis` of ``(batch, *spatial, channels)``."""
    return _max_along(x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1]), 1)


def _global_pool(kind: str, reduce) -> Layer:
    def check(shape):
        _check_spatial(kind, shape, None)
        if 0 in shape[1:-1]:
            raise LayerError(kind, f"expected non-empty spatial axes, got shape {shape}")

    def init(key, in_shape):
        del key
        in_shape = tuple(in_shape)
        check(in_shape)
        return (in_shape[0], in_shape[-1]), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check(input_shape(kind, x))
        return reduce(x, axis=tuple(range(1, x.ndim - 1))), state

    return Layer(init, apply, kind=kind)


def global_avg_pool() -> Layer:
    """The mean over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global_pool("global_avg_pool", jnp.mean)


def global_max_pool() -> Layer:
    """The max over all spatial axes: ``(batch, *spatial, channels) -> (batch, channels)``."""
    return _global_pool("global_max_pool", _global_max)


def flatten() -> Layer:
    """Flattens all but the batch axis: ``(batch, d_1, ..., d_k) -> (batch, d_1·...·d_k)``."""

    def init(key, in_shape):
        del key
        in_shape = check_shape("flatten", in_shape, "an input with a batch axis", min_rank=1)
        return (in_shape[0], math.prod(in_shape[1:])), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        check_shape("flatten", input_shape("flatten", x), "an input with a batch axis", min_rank=1)
        return x.reshape(x.shape[0], -1), state

    return Layer(init, apply, kind="flatten")
