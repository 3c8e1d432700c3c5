"""conv_transpose, conv padding modes, ceil-mode and adaptive pooling against PyTorch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.nn.conv import (
    adaptive_avg_pool,
    adaptive_max_pool,
    avg_pool,
    conv,
    conv_transpose,
    max_pool,
)
from tests.helpers import check_jit_vmap_grad

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _to_torch(a):
    """Channels last to torch's channels first."""
    return torch.tensor(np.asarray(a)).movedim(-1, 1)


def _from_torch(t):
    return t.detach().movedim(1, -1).numpy()


def _check_against_torch(layer, params, x, torch_fn, torch_params=(), to_ours=()):
    """Output, input gradient and param gradients (mapped by `to_ours`) of `layer` and of
    `torch_fn`, under a random cotangent; also checks init's output shape."""
    out_shape, _, _ = layer.init(_key(), x.shape)
    xt = _to_torch(x).requires_grad_()
    yt = torch_fn(xt)
    cotangent = _normal(*_from_torch(yt).shape, seed=2)
    (yt * _to_torch(cotangent)).sum().backward()

    @jax.jit
    def forward_and_grads(params, x):
        y, pullback = jax.vjp(lambda p, x: layer.apply(p, {}, x)[0], params, x)
        return y, *pullback(cotangent)

    y, grads, gx = forward_and_grads(params, x)
    assert y.shape == out_shape
    np.testing.assert_allclose(y, _from_torch(yt), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gx, _from_torch(xt.grad), rtol=1e-4, atol=1e-5)
    for name, tp, convert in zip(params, torch_params, to_ours, strict=True):
        np.testing.assert_allclose(grads[name], convert(tp.grad), rtol=1e-4, atol=1e-4)


# --- conv_transpose ---------------------------------------------------------------------------

CONV_T_CASES = {
    # name: (in_shape, features, kernel, strides, padding, output_padding, dilation, groups)
    "1d": ((2, 5, 3), 4, 3, 2, 1, 1, 1, 1),
    "2d-groups-dilation": ((2, 4, 5, 4), 6, (3, 2), (2, 3), (1, 0), (1, 2), (1, 2), 2),
    "3d": ((1, 3, 2, 3, 2), 2, 2, 2, 0, 0, 1, 1),
    "1d-padding-past-kernel": ((2, 5, 2), 3, 3, 1, 3, 0, 1, 1),
    "1d-output-padding-under-dilation": ((2, 5, 2), 3, 3, 1, 1, 1, 2, 1),
}


@pytest.mark.parametrize("case", CONV_T_CASES.values(), ids=CONV_T_CASES.keys())
def test_conv_transpose_matches_torch_with_copied_weights(case):
    in_shape, features, kernel, strides, padding, output_padding, dilation, groups = case
    layer = conv_transpose(
        features,
        kernel,
        strides=strides,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
        b_init=nn.initializers.normal(0.5),
    )
    _, params, _ = layer.init(_key(), in_shape)
    ndim = len(in_shape) - 2
    window = (kernel,) * ndim if isinstance(kernel, int) else kernel
    assert params["w"].shape == (*window, in_shape[-1], features // groups)

    module = getattr(torch.nn, f"ConvTranspose{ndim}d")(
        in_shape[-1],
        features,
        kernel,
        stride=strides,
        padding=padding,
        output_padding=output_padding,
        dilation=dilation,
        groups=groups,
    )
    # torch's weight (in, out / groups, *kernel) is w with its kernel axes moved to the end.
    to_torch, to_ours = (ndim, ndim + 1, *range(ndim)), (*range(2, ndim + 2), 0, 1)
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.asarray(params["w"])).permute(*to_torch))
        module.bias.copy_(torch.tensor(np.asarray(params["b"])))
    _check_against_torch(
        layer,
        params,
        _normal(*in_shape),
        module,
        (module.weight, module.bias),
        (lambda g: g.permute(*to_ours).numpy(), lambda g: g.numpy()),
    )


@pytest.mark.parametrize(
    ("in_shape", "kernel", "strides", "dilation", "groups", "padding"),
    [
        ((2, 6, 7, 4), 3, 2, 1, 2, "SAME"),
        ((2, 5, 4), 2, 3, 1, 1, "SAME"),  # kernel shorter than the stride
        ((1, 4, 4, 2), 3, 2, 2, 1, [(2, 1), (0, 3)]),  # uneven crops
    ],
)
def test_conv_transpose_is_the_adjoint_of_conv(
    in_shape, kernel, strides, dilation, groups, padding
):
    """⟨conv_transpose(x), z⟩ = ⟨x, conv(z)⟩ for the conv from `features` channels back to the
    input channels whose kernel is w with its last two axes swapped."""
    settings = dict(strides=strides, dilation=dilation, groups=groups, padding=padding)
    transposed = conv_transpose(6, kernel, use_bias=False, **settings)
    out_shape, params, _ = transposed.init(_key(), in_shape)
    forward = conv(in_shape[-1], kernel, use_bias=False, **settings)
    assert forward.init(_key(), out_shape)[0] == in_shape
    if padding == "SAME":
        assert out_shape[1:-1] == tuple(n * strides for n in in_shape[1:-1])
    x, z = _normal(*in_shape, seed=3), _normal(*out_shape, seed=4)

    @jax.jit
    def both_sides(w, x, z):
        lhs = jnp.vdot(transposed.apply({"w": w}, {}, x)[0], z)
        return lhs, jnp.vdot(x, forward.apply({"w": jnp.swapaxes(w, -1, -2)}, {}, z)[0])

    np.testing.assert_allclose(*both_sides(params["w"], x, z), rtol=1e-4)


# --- conv padding modes -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize(
    ("in_shape", "kernel", "strides", "padding", "dilation", "groups"),
    [
        ((2, 5, 6, 3), 3, 2, (2, 1), 1, 1),
        # SAME pads (1, 1) and (3, 3): reflect's most on an axis of length 4
        ((1, 3, 4, 2), (3, 4), 1, "SAME", (1, 2), 2),
    ],
    ids=["strided", "same-dilated-groups"],
)
def test_conv_padding_modes_match_torch(mode, in_shape, kernel, strides, padding, dilation, groups):
    layer = conv(
        4,
        kernel,
        strides=strides,
        padding=padding,
        padding_mode=mode,
        dilation=dilation,
        groups=groups,
        b_init=nn.initializers.normal(0.5),
    )
    _, params, _ = layer.init(_key(), in_shape)
    module = torch.nn.Conv2d(
        in_shape[-1],
        4,
        kernel,
        stride=strides,
        padding=padding.lower() if isinstance(padding, str) else padding,
        padding_mode=mode,
        dilation=dilation,
        groups=groups,
    )
    with torch.no_grad():
        module.weight.copy_(torch.tensor(np.asarray(params["w"])).permute(3, 2, 0, 1))
        module.bias.copy_(torch.tensor(np.asarray(params["b"])))
    _check_against_torch(
        layer,
        params,
        _normal(*in_shape),
        module,
        (module.weight, module.bias),
        (lambda g: g.permute(2, 3, 1, 0).numpy(), lambda g: g.numpy()),
    )


# --- ceil mode and adaptive pooling -----------------------------------------------------------

POOL_CASES = {
    # name: (in_shape, window, strides, padding)
    "1d": ((2, 7, 3), 2, 2, 0),
    "2d-padded": ((2, 7, 8, 3), 3, 2, 1),
    "2d-last-window-dropped": ((2, 5, 6, 2), 2, 2, 1),  # (out − 1)·s ≥ n + pad drops a window
    "2d-uneven": ((2, 6, 8, 3), (3, 2), (2, 3), (1, 1)),
    "3d": ((1, 5, 5, 4, 2), 2, 2, 1),
}


@pytest.mark.parametrize("kind", ["max", "avg", "avg-exclude-pad"])
@pytest.mark.parametrize("case", POOL_CASES.values(), ids=POOL_CASES.keys())
def test_ceil_mode_pooling_matches_torch(kind, case):
    in_shape, window, strides, padding = case
    ndim = len(in_shape) - 2
    if kind == "max":
        layer = max_pool(window, strides=strides, padding=padding, ceil_mode=True)
        torch_pool = getattr(F, f"max_pool{ndim}d")
        settings = {}
    else:
        include = kind == "avg"
        layer = avg_pool(
            window, strides=strides, padding=padding, ceil_mode=True, count_include_pad=include
        )
        torch_pool = getattr(F, f"avg_pool{ndim}d")
        settings = {"count_include_pad": include}
    _check_against_torch(
        layer,
        {},
        _normal(*in_shape),
        lambda x: torch_pool(x, window, strides, padding, ceil_mode=True, **settings),
    )


def test_ceil_mode_changes_nothing_when_the_windows_tile_the_input():
    x = _normal(2, 8, 6, 3)
    for ceil in (False, True):
        y, _ = avg_pool(2, count_include_pad=True, ceil_mode=ceil).apply({}, {}, x)
        np.testing.assert_allclose(y, nn.avg_pool(2).apply({}, {}, x)[0], rtol=1e-6)
    y, _ = avg_pool(3, strides=2, padding=1, count_include_pad=True).apply({}, {}, x)
    expected = F.avg_pool2d(_to_torch(x), 3, 2, 1)  # torch's default counts padding
    np.testing.assert_allclose(y, _from_torch(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize(
    ("in_shape", "output_size"),
    [
        ((2, 10, 3), 4),
        ((2, 7, 5, 3), (3, 7)),  # overlapping windows, and more outputs than inputs
        ((2, 7, 5, 3), (None, 2)),
        ((1, 5, 6, 7, 2), (2, 3, 4)),
    ],
)
def test_adaptive_pooling_matches_torch(kind, in_shape, output_size):
    layer = (adaptive_avg_pool if kind == "avg" else adaptive_max_pool)(output_size)
    torch_pool = getattr(F, f"adaptive_{kind}_pool{len(in_shape) - 2}d")
    _check_against_torch(layer, {}, _normal(*in_shape), lambda x: torch_pool(x, output_size))


@pytest.mark.parametrize(
    ("layer", "output_size"),
    [(nn.global_max_pool(), 1), (adaptive_max_pool(2), 2), (adaptive_max_pool((3, 2)), (3, 2))],
)
def test_max_pooling_sends_the_gradient_of_a_tie_to_its_first_cell_as_torch(layer, output_size):
    # Values in {0, 1, 2}: every window holds ties for its max.
    x = jnp.asarray(np.random.default_rng(3).integers(0, 3, (2, 4, 5, 3)).astype(np.float32))

    def torch_fn(xt):
        y = F.adaptive_max_pool2d(xt, output_size)
        return y.flatten(1) if layer.kind == "global_max_pool" else y

    _check_against_torch(layer, {}, x, torch_fn)


def test_adaptive_max_pool_keeps_integer_dtypes_and_global_pools_agree():
    x = jnp.arange(20, dtype=jnp.int32).reshape(1, 4, 5, 1)
    y, _ = adaptive_max_pool(2).apply({}, {}, x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y[0, :, :, 0], [[7, 9], [17, 19]])
    x = _normal(2, 5, 3, 4)
    y, _ = adaptive_avg_pool(1).apply({}, {}, x)
    np.testing.assert_allclose(y[:, 0, 0], nn.global_avg_pool().apply({}, {}, x)[0], rtol=1e-6)


def test_new_layers_under_jit_vmap_and_grad():
    model = nn.serial(
        conv(3, 3, padding=1, padding_mode="reflect"),
        conv_transpose(4, 3, strides=2),
        max_pool(3, strides=2, ceil_mode=True),
        adaptive_avg_pool((3, None)),
        nn.flatten(),
    )
    out_shape, params, state = model.init(_key(), (2, 5, 4, 2))
    assert params["conv_transpose_1"]["w"].shape == (3, 3, 3, 4)
    y = check_jit_vmap_grad(model, params, state, _normal(2, 5, 4, 2))
    assert y.shape == out_shape == (2, 48)


# --- errors -----------------------------------------------------------------------------------


def test_impossible_padding_modes_are_refused():
    with pytest.raises(nn.LayerError, match=r"^conv: padding_mode must be one of 'zeros'"):
        conv(2, 3, padding_mode="symmetric")
    too_wide = [("reflect", 3, "shorter than the axis, so at most 2"), ("circular", 4, "once")]
    for mode, pad, message in too_wide:
        layer = conv(2, 3, padding=pad, padding_mode=mode)
        with pytest.raises(nn.LayerError, match=rf"{mode}.*axis 0 of length 3.*{message}"):
            layer.init(_key(), (1, 3, 8, 1))
        _, params, _ = layer.init(_key(), (1, 8, 8, 1))
        with pytest.raises(nn.LayerError, match=r"input shape \(1, 3, 8, 1\)"):
            layer.apply(params, {}, jnp.zeros((1, 3, 8, 1)))


def test_impossible_conv_transpose_settings_are_refused():
    with pytest.raises(nn.LayerError, match=r"output_padding 2 on spatial axis 0 .* stride 2"):
        conv_transpose(2, 3, strides=2, padding=1, output_padding=2)
    with pytest.raises(nn.LayerError, match=r"output_padding=1 is not taken with 'SAME'"):
        conv_transpose(2, 3, strides=2, output_padding=1)
    with pytest.raises(nn.LayerError, match="output_padding must be a non-negative int"):
        conv_transpose(2, 3, padding=0, output_padding=-1)
    with pytest.raises(nn.LayerError, match="groups=4 must be positive and divide features=6"):
        conv_transpose(6, 3, groups=4)
    with pytest.raises(nn.LayerError, match=r"crops the whole output.*output length -2"):
        conv_transpose(2, 2, padding=2).init(_key(), (1, 1, 1))
    layer = conv_transpose(4, (3, 3), groups=2)
    with pytest.raises(nn.LayerError, match="groups=2 does not divide the 3 input channels"):
        layer.init(_key(), (1, 5, 5, 3))
    _, params, _ = layer.init(_key(), (1, 5, 5, 2))
    with pytest.raises(nn.LayerError, match=r"expected 2 input channels.*\(1, 5, 5, 4\)"):
        layer.apply(params, {}, jnp.zeros((1, 5, 5, 4)))
    with pytest.raises(nn.LayerError, match=r"do not belong to a conv_transpose layer"):
        conv_transpose(8, (3, 3), groups=2).apply(params, {}, jnp.zeros((1, 5, 5, 2)))
    with pytest.raises(nn.LayerError, match="floating-point"):
        layer.apply(params, {}, jnp.zeros((1, 5, 5, 2), jnp.int32))


def test_impossible_pooling_settings_are_refused():
    with pytest.raises(
        nn.LayerError, match=r"max_pool: with padding \(2, 2\).*covers padding only"
    ):
        max_pool(2, padding=2).init(_key(), (1, 6, 1))
    with pytest.raises(nn.LayerError, match=r"avg_pool: with padding \(0, 3\)"):
        avg_pool(2, strides=1, padding=[(0, 3)]).init(_key(), (1, 6, 1))
    with pytest.raises(nn.LayerError, match="output_size must be a positive int"):
        adaptive_avg_pool((2, 0))
    with pytest.raises(nn.LayerError, match="1 to 3 entries"):
        adaptive_max_pool((1, 1, 1, 1))
    with pytest.raises(nn.LayerError, match=r"2-D input of rank 4.*\(2, 5, 3\)"):
        adaptive_max_pool((2, 2)).init(_key(), (2, 5, 3))
    with pytest.raises(nn.LayerError, match="non-empty spatial axes"):
        adaptive_avg_pool(2).init(_key(), (2, 0, 3))
    with pytest.raises(nn.LayerError, match="float or integer input"):
        adaptive_max_pool(2).apply({}, {}, jnp.zeros((1, 4, 1), bool))
