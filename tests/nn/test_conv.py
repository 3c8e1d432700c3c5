"""conv, pooling, global pooling and flatten against scipy.signal and numpy loops."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import signal

import funcnet as fn
from funcnet import nn
from tests.helpers import check_jit_vmap_grad


def _key(seed=0):
    # The layers take any typed key; "rbg" keys compile much faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, dtype=np.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _same_pads(n, k, s, d):
    """TensorFlow's "SAME" padding: the output has ⌈n/s⌉ cells, extra padding at the end."""
    span = d * (k - 1) + 1
    total = max((math.ceil(n / s) - 1) * s + span - n, 0)
    return total // 2, total - total // 2


def _np_conv(x, w, b, strides, padding, dilation, groups):
    """Channels-last grouped, strided, dilated convolution with scipy.signal.correlate."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    ndim = w.ndim - 2
    if padding == "SAME":
        pads = [
            _same_pads(n, k, s, d)
            for n, k, s, d in zip(x.shape[1:-1], w.shape[:ndim], strides, dilation, strict=True)
        ]
    elif padding == "VALID":
        pads = [(0, 0)] * ndim
    else:
        pads = padding
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    dilated = np.zeros(
        (*(d * (k - 1) + 1 for k, d in zip(w.shape[:ndim], dilation, strict=True)), *w.shape[-2:])
    )
    dilated[tuple(slice(None, None, d) for d in dilation)] = w
    c_in, c_out = w.shape[-2], w.shape[-1]
    out = []
    for n in range(x.shape[0]):
        channels = []
        for o in range(c_out):
            g = o // (c_out // groups)
            y = sum(
                signal.correlate(x[n, ..., g * c_in + c], dilated[..., c, o], mode="valid")
                for c in range(c_in)
            )
            channels.append(y[tuple(slice(None, None, s) for s in strides)] + b[o])
        out.append(np.stack(channels, axis=-1))
    return np.stack(out)


CONV_CASES = {
    # name: (in_shape, features, kernel_size, strides, padding, dilation, groups)
    "1d-same": ((2, 9, 3), 4, 3, 1, "SAME", 1, 1),
    "1d-valid-stride": ((2, 10, 2), 3, (4,), 2, "VALID", 1, 1),
    "1d-dilated-explicit": ((1, 11, 2), 2, 3, 1, [(2, 1)], 2, 1),
    "2d-same": ((2, 6, 7, 3), 5, 3, 1, "SAME", 1, 1),
    "2d-same-stride": ((2, 7, 7, 2), 4, (3, 2), (2, 3), "SAME", 1, 1),
    "2d-valid-dilated": ((1, 9, 8, 2), 3, 3, 1, "VALID", (2, 1), 1),
    "2d-explicit-int": ((2, 5, 5, 3), 2, (2, 3), 1, 1, 1, 1),
    "2d-groups": ((2, 6, 6, 4), 6, 3, 1, "SAME", 1, 2),
    "2d-depthwise": ((1, 5, 6, 3), 3, 3, 2, "VALID", 1, 3),
}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_matches_scipy_correlate_and_init_shape(case):
    in_shape, features, kernel, strides, padding, dilation, groups = case
    layer = nn.conv(
        features,
        kernel,
        strides=strides,
        padding=padding,
        dilation=dilation,
        groups=groups,
        b_init=nn.initializers.normal(0.5),
    )
    out_shape, params, state = layer.init(_key(0), in_shape)
    ndim = len(in_shape) - 2
    window = (kernel,) * ndim if isinstance(kernel, int) else kernel
    assert params["w"].shape == (*window, in_shape[-1] // groups, features)
    assert params["b"].shape == (features,) and state == {}
    x = _normal(*in_shape)
    y, _ = layer.apply(params, state, x)
    assert y.shape == out_shape

    as_tuple = lambda v: (v,) * ndim if isinstance(v, int) else tuple(v)
    pad = padding
    if isinstance(padding, int):
        pad = [(padding, padding)] * ndim
    expected = _np_conv(
        x, params["w"], params["b"], as_tuple(strides), pad, as_tuple(dilation), groups
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def _np_pool(x, window, strides, pads, reduce):
    """Pooling by looping over output cells; padding cells are excluded from the window."""
    x = np.asarray(x, np.float64)
    spatial = x.shape[1:-1]
    out_shape = [
        (n + lo + hi - k) // s + 1
        for n, k, s, (lo, hi) in zip(spatial, window, strides, pads, strict=True)
    ]
    y = np.empty((x.shape[0], *out_shape, x.shape[-1]))
    for idx in itertools.product(*map(range, out_shape)):
        cells = tuple(
            slice(max(i * s - lo, 0), min(i * s - lo + k, n))
            for i, s, (lo, _), k, n in zip(idx, strides, pads, window, spatial, strict=True)
        )
        y[(slice(None), *idx)] = reduce(
            x[(slice(None), *cells)], axis=tuple(range(1, 1 + len(idx)))
        )
    return y


POOL_CASES = {
    # name: (in_shape, window, strides, padding)
    "1d": ((2, 9, 3), 2, None, "VALID"),
    "1d-same-overlap": ((2, 9, 2), 3, 2, "SAME"),
    "2d": ((2, 6, 6, 3), (2, 2), None, "VALID"),
    "2d-same": ((1, 7, 5, 2), 3, 2, "SAME"),
    "2d-explicit": ((2, 5, 6, 2), (2, 3), 1, [(1, 0), (1, 1)]),
}


@pytest.mark.parametrize("kind", ["max_pool", "avg_pool"])
@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_pooling_matches_a_numpy_loop(kind, case):
    in_shape, window, strides, padding = case
    layer = getattr(nn, kind)(window, strides=strides, padding=padding)
    out_shape, params, state = layer.init(_key(0), in_shape)
    assert params == {} and state == {}
    x = _normal(*in_shape)
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.shape == out_shape

    ndim = len(in_shape) - 2
    win = (window,) * ndim if isinstance(window, int) else window
    step = win if strides is None else (strides,) * ndim if isinstance(strides, int) else strides
    if padding == "SAME":
        pads = [_same_pads(n, k, s, 1) for n, k, s in zip(in_shape[1:-1], win, step, strict=True)]
    elif padding == "VALID":
        pads = [(0, 0)] * ndim
    else:
        pads = padding
    expected = _np_pool(x, win, step, pads, np.max if kind == "max_pool" else np.mean)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_max_pool_keeps_integer_dtypes():
    x = jnp.arange(16, dtype=jnp.int32).reshape(1, 4, 4, 1)
    y, _ = nn.max_pool(2).apply({}, {}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y[0, :, :, 0], [[5, 7], [13, 15]])


def test_global_pools_and_flatten():
    x = _normal(2, 3, 4, 5)
    for layer, expected in [
        (nn.global_avg_pool(), np.mean(x, axis=(1, 2))),
        (nn.global_max_pool(), np.max(x, axis=(1, 2))),
        (nn.flatten(), np.reshape(x, (2, 60))),
    ]:
        out_shape, params, _ = layer.init(_key(0), x.shape)
        y, _ = layer.apply(params, {}, x)
        assert y.shape == out_shape
        np.testing.assert_allclose(y, expected, rtol=1e-6)
    y, _ = nn.global_avg_pool().apply({}, {}, x[:, 0])  # 1-D
    np.testing.assert_allclose(y, np.mean(x[:, 0], axis=1), rtol=1e-6)


def test_int_kernel_size_follows_the_input_rank():
    layer = nn.conv(4, 3)
    _, p1, _ = layer.init(_key(0), (2, 10, 3))
    _, p2, _ = layer.init(_key(0), (2, 10, 10, 3))
    assert p1["w"].shape == (3, 3, 4) and p2["w"].shape == (3, 3, 3, 4)


def _cnn():
    return nn.serial(
        nn.conv(3, 3, padding="SAME"),
        nn.tanh,
        nn.avg_pool(2),
        nn.conv(4, (2, 2), strides=1, dilation=(1, 2), groups=1, padding="VALID"),
        nn.max_pool(2, strides=1),
        nn.flatten(),
        nn.dense(2),
    )


def test_cnn_under_jit_vmap_and_grad():
    model = _cnn()
    out_shape, params, state = model.init(_key(0), (3, 8, 8, 2))
    y = check_jit_vmap_grad(model, params, state, _normal(3, 8, 8, 2))
    assert y.shape == out_shape == (3, 2)


@pytest.mark.parametrize(
    ("layer", "in_shape"),
    [
        (nn.conv(2, 3, strides=2, padding="SAME", groups=2), (2, 5, 4, 2)),
        (nn.conv(2, (2,), dilation=2, padding=[(1, 2)]), (2, 6, 2)),
        (nn.max_pool(2, strides=1, padding="SAME"), (2, 5, 4, 2)),
        (nn.avg_pool(3, strides=2, padding="SAME"), (2, 5, 4, 2)),
        (nn.global_max_pool(), (2, 5, 4, 2)),
        (nn.global_avg_pool(), (2, 5, 3)),
        (nn.flatten(), (2, 3, 2)),
    ],
    ids=["conv-2d", "conv-1d", "max_pool", "avg_pool", "global_max", "global_avg", "flatten"],
)
def test_gradients_match_finite_differences_in_float64(x64, layer, in_shape):
    _, params, state = layer.init(_key(0), in_shape)
    x = _normal(*in_shape, dtype=np.float64)
    if params:
        assert params["w"].dtype == jnp.float64

    def loss(args):
        p, x = args
        return jnp.sum(jnp.sin(layer.apply(p, state, x)[0]))

    fn.diff.check_grads(jax.jit(loss), (params, x))
    # float32 inputs to float64 params compute in float64.
    y, _ = layer.apply(params, state, x.astype(jnp.float32))
    assert y.dtype == (jnp.float64 if params else jnp.float32)


# --- errors -----------------------------------------------------------------------------------


def test_integer_images_are_refused_naming_the_dtype():
    model = nn.serial(nn.conv(4, 3), nn.flatten())
    _, params, state = model.init(_key(0), (1, 8, 8, 1))
    with pytest.raises(nn.LayerError, match=r"^conv_0: .*floating-point.*float32.*got dtype uint8"):
        model.apply(params, state, jnp.zeros((1, 8, 8, 1), jnp.uint8))


def test_wrong_rank_and_channels_are_refused():
    layer = nn.conv(4, (3, 3))
    with pytest.raises(nn.LayerError, match=r"2-D input of rank 4 \(NHWC.*\(8, 8, 1\)"):
        layer.init(_key(0), (8, 8, 1))
    _, params, state = layer.init(_key(0), (1, 8, 8, 3))
    with pytest.raises(nn.LayerError, match=r"expected 3 input channels.*\(1, 8, 8, 2\)"):
        layer.apply(params, state, jnp.zeros((1, 8, 8, 2)))
    with pytest.raises(nn.LayerError, match=r"rank 4"):
        layer.apply(params, state, jnp.zeros((8, 8, 3)))
    with pytest.raises(nn.LayerError, match=r"max_pool: expected a float or integer input"):
        nn.max_pool(2).apply({}, {}, jnp.zeros((1, 4, 4, 1), bool))
    with pytest.raises(nn.LayerError, match=r"groups=2 does not divide the 3 input channels"):
        nn.conv(4, 3, groups=2).init(_key(0), (1, 8, 8, 3))


def test_bad_settings_are_refused_when_built():
    with pytest.raises(ValueError, match="groups=3"):
        nn.conv(4, 3, groups=3)
    with pytest.raises(ValueError, match="kernel_size must be a positive int"):
        nn.conv(4, 0)
    with pytest.raises(ValueError, match="disagree on the rank"):
        nn.conv(4, (3, 3), strides=(1, 1, 1))
    with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID'"):
        nn.max_pool(2, padding="FULL")
    with pytest.raises(ValueError, match="1 to 3 entries"):
        nn.max_pool((2, 2, 2, 2))
