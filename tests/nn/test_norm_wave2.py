"""RMS norm, layer norm over several axes, and batch norm without affine params or running
statistics, against PyTorch's RMSNorm, LayerNorm and BatchNorm1d/2d (outputs and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.nn.norm import batch_norm, layer_norm, rms_norm

torch = pytest.importorskip("torch")


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _np(shape, seed, dtype=np.float32, scale=1.0, loc=0.0):
    return (loc + scale * np.random.default_rng(seed).normal(size=shape)).astype(dtype)


def _perturbed(params, seed):
    """The params moved away from ones and zeros, so that gradients through them are tested."""
    rng = np.random.default_rng(seed)
    return {
        name: jnp.asarray(np.asarray(p) + rng.uniform(-0.5, 0.5, p.shape).astype(p.dtype))
        for name, p in params.items()
    }


def _jax_value_and_grads(layer, params, state, x, weights, train=False):
    """y, the new state and the gradients of ``Σ weights·y`` for params and x, under jit."""

    def loss(params, x):
        y, new_state = layer.apply(params, state, x, train=train)
        return jnp.sum(weights * y), (y, new_state)

    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    (_, (y, new_state)), (d_params, d_x) = step(params, jnp.asarray(x))
    return y, new_state, d_params, d_x


def _torch_value_and_grads(module, x, weights, to_torch=lambda a: a):
    """y, and the gradients of ``Σ weights·y`` for x and each of the module's params."""
    xt = torch.tensor(to_torch(x), requires_grad=True)
    module.zero_grad()
    y = module(xt)
    (y * torch.tensor(to_torch(weights))).sum().backward()
    grads = {name: p.grad.detach().numpy() for name, p in module.named_parameters()}
    return y.detach().numpy(), xt.grad.numpy(), grads


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# --- rms norm and layer norm against torch ---------------------------------------------------

TORCH_NAMES = {"scale": "weight", "bias": "bias"}

# id: (layer, in_shape, torch module, x scale): the x scale of 1e-3 makes mean(x²) ≈ 1e-6, so
# the default ε (finfo(float32).eps ≈ 1.2e-7) changes y by several percent and must match.
TRAILING_CASES = {
    "rms-last-default-eps": (rms_norm(), (3, 4, 6), lambda: torch.nn.RMSNorm(6), 1e-3),
    "rms-two-axes": (
        rms_norm(axes=(-2, -1), eps=1e-6),
        (2, 3, 4, 5),
        lambda: torch.nn.RMSNorm((4, 5), eps=1e-6),
        1.0,
    ),
    "rms-no-scale": (
        rms_norm(axes=(-1, -2), use_scale=False),
        (3, 4, 5),
        lambda: torch.nn.RMSNorm((4, 5), elementwise_affine=False),
        1e-3,
    ),
    "layer-last": (layer_norm(), (3, 4, 6), lambda: torch.nn.LayerNorm(6), 2.0),
    "layer-two-axes": (
        layer_norm(axes=(-2, -1)),
        (2, 3, 4, 5),
        lambda: torch.nn.LayerNorm((4, 5)),
        2.0,
    ),
    "layer-three-axes-no-bias": (
        layer_norm(axes=(-3, -2, -1), use_bias=False, eps=1e-3),
        (2, 3, 4, 5),
        lambda: torch.nn.LayerNorm((3, 4, 5), eps=1e-3, bias=False),
        0.1,
    ),
    "layer-two-axes-no-affine": (
        layer_norm(axes=(-2, -1), use_scale=False, use_bias=False),
        (2, 3, 4, 5),
        lambda: torch.nn.LayerNorm((4, 5), elementwise_affine=False),
        2.0,
    ),
}


@pytest.mark.parametrize("case", TRAILING_CASES.values(), ids=TRAILING_CASES.keys())
def test_rms_and_layer_norm_match_torch_outputs_and_gradients(case):
    layer, in_shape, make_module, x_scale = case
    out_shape, params, state = layer.init(_key(), in_shape)
    assert out_shape == in_shape and state == {}
    module = make_module()
    expected = {TORCH_NAMES[name] for name in params}
    assert expected == {name for name, _ in module.named_parameters()}
    for name, p in params.items():  # the same initial params as torch's, of the same shape
        _close(p, getattr(module, TORCH_NAMES[name]).detach().numpy(), 0)
    params = _perturbed(params, seed=2)
    with torch.no_grad():
        for name, p in params.items():
            getattr(module, TORCH_NAMES[name]).copy_(torch.tensor(np.asarray(p)))
    x, weights = _np(in_shape, 3, scale=x_scale, loc=0.5 * x_scale), _np(in_shape, 4)

    y, _, d_params, d_x = _jax_value_and_grads(layer, params, state, x, weights)
    y_t, d_x_t, d_params_t = _torch_value_and_grads(module, x, weights)
    _close(y, y_t)
    _close(d_x * x_scale, d_x_t * x_scale)  # d_x grows as 1 / x_scale
    assert set(d_params) == set(params)
    for name in params:
        _close(d_params[name], d_params_t[TORCH_NAMES[name]], 1e-4)


def test_rms_norm_default_eps_in_float64_is_float64_machine_epsilon_as_torch(x64):
    layer = rms_norm()
    _, params, state = layer.init(_key(), (4, 6))
    assert params["scale"].dtype == jnp.float64
    x = _np((4, 6), 5, np.float64, scale=1e-5)  # mean(x²) ≈ 1e-10, far below float32's ε
    y, _ = layer.apply(params, state, jnp.asarray(x))
    assert y.dtype == jnp.float64
    y_t = torch.nn.RMSNorm(6, dtype=torch.float64)(torch.tensor(x)).detach().numpy()
    np.testing.assert_allclose(y, y_t, rtol=1e-12)
    np.testing.assert_allclose(y, x / np.sqrt(np.mean(x**2, -1, keepdims=True)), rtol=1e-5)


def test_rms_norm_keeps_a_half_precision_dtype_and_takes_the_mean_square_in_float32():
    layer = rms_norm(use_scale=False)
    x = _np((2, 8), 6, scale=300.0)  # x² overflows float16 (max 65504), but not float32
    y, _ = layer.apply({}, {}, jnp.asarray(x, jnp.float16))
    assert y.dtype == jnp.float16
    y_t = torch.nn.RMSNorm(8, elementwise_affine=False)(torch.tensor(x, dtype=torch.float16))
    np.testing.assert_allclose(np.asarray(y, np.float32), y_t.float().numpy(), rtol=2e-3)


HALF_NORMS = {
    # name: (layer, axes of its statistics on (4, 6, 8), train, torch's module or None)
    "layer_norm": (layer_norm(), (2,), False, lambda dt: torch.nn.LayerNorm(8, dtype=dt)),
    "layer_norm_2_axes": (
        layer_norm(axes=(-2, -1)),
        (1, 2),
        False,
        lambda dt: torch.nn.LayerNorm((6, 8), dtype=dt),
    ),
    "group_norm": (nn.group_norm(1), (1, 2), False, None),
    "batch_norm_train": (batch_norm(), (0, 1), True, None),
    "instance_norm": (nn.instance_norm(), (1,), False, None),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("case", HALF_NORMS.values(), ids=HALF_NORMS.keys())
def test_norms_of_half_precision_inputs_normalise_in_float32(case, dtype):
    layer, axes, train, torch_module = case
    # A mean far from zero next to a small spread: statistics taken in half precision lose the
    # spread in the rounding of the mean (float16 steps by 0.25 at 300, bfloat16 by 2).
    x = jnp.asarray(_np((4, 6, 8), 7, loc=300.0, scale=4.0), dtype)
    _, params, state = layer.init(_key(), x.shape)
    params, state = jax.tree.map(lambda a: a.astype(dtype), (params, state))
    y, _ = jax.jit(lambda p, s, x: layer.apply(p, s, x, train=train))(params, state, x)
    assert y.dtype == x.dtype
    # The reference: the exact z-score of the (rounded) input, which y may miss by one rounding.
    exact = np.asarray(x, np.float64)
    mean, var = exact.mean(axes, keepdims=True), exact.var(axes, keepdims=True)
    z = (exact - mean) / np.sqrt(var + 1e-5)
    step = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(np.asarray(y, np.float64), z, rtol=step, atol=2 * step)
    if torch_module is not None:  # torch's layer norm also takes its statistics in float32
        module = torch_module(getattr(torch, dtype))
        y_t = module(torch.tensor(np.asarray(x, np.float32), dtype=getattr(torch, dtype)))
        np.testing.assert_allclose(
            np.asarray(y, np.float32), y_t.detach().float().numpy(), rtol=step, atol=2 * step
        )


# --- non-trailing axes, jit, vmap -------------------------------------------------------------


def _np_rms(x, axes, eps):
    return x / np.sqrt(np.mean(x**2, axes, keepdims=True) + eps)


def _np_layer(x, axes, eps):
    mean = x.mean(axes, keepdims=True)
    return (x - mean) / np.sqrt(x.var(axes, keepdims=True) + eps)


@pytest.mark.parametrize(
    ("layer", "reference"),
    [
        (rms_norm(axes=(-3, -1), eps=1e-5, use_bias=True), _np_rms),
        (layer_norm(axes=(-1, -3)), _np_layer),
    ],
    ids=["rms", "layer"],
)
def test_norms_over_axes_that_skip_one_match_numpy_under_jit_and_vmap(layer, reference):
    in_shape = (2, 3, 4, 5)
    out_shape, params, state = layer.init(_key(), in_shape)
    assert out_shape == in_shape
    assert {name: p.shape for name, p in params.items()} == {"scale": (3, 5), "bias": (3, 5)}
    params = _perturbed(params, seed=7)
    x = _np(in_shape, 8, np.float64, loc=1.0)
    y, _ = jax.jit(layer.apply)(params, state, jnp.asarray(x, jnp.float32))
    scale, bias = (np.asarray(params[n], np.float64)[:, None, :] for n in ("scale", "bias"))
    _close(y, reference(x, (-3, -1), 1e-5) * scale + bias, 1e-4)
    per_example = jax.vmap(lambda xi: layer.apply(params, state, xi)[0])(jnp.asarray(x))
    _close(per_example, y)


# --- batch norm without affine params or running statistics -----------------------------------

# id: (our settings, torch settings)
BATCH_NORM_OPTIONS = {
    "default": ({}, {}),
    "no-affine": ({"use_scale": False, "use_bias": False}, {"affine": False}),
    "no-bias": ({"use_bias": False}, {"bias": False}),
    "no-running-stats": ({"track_running_stats": False}, {"track_running_stats": False}),
    "neither": (
        {"use_scale": False, "use_bias": False, "track_running_stats": False},
        {"affine": False, "track_running_stats": False},
    ),
}
# id: (in_shape channels-last, torch class, channels-last -> torch layout)
BATCH_NORM_LAYOUTS = {
    "1d": ((6, 3), torch.nn.BatchNorm1d, lambda a: a),
    "1d-seq": ((4, 5, 3), torch.nn.BatchNorm1d, lambda a: np.moveaxis(a, -1, 1)),
    "2d": ((3, 4, 2, 3), torch.nn.BatchNorm2d, lambda a: np.moveaxis(a, -1, 1)),
}


@pytest.mark.parametrize(
    ("options", "layout"),
    [
        ("default", "2d"),
        ("no-affine", "1d"),
        ("no-bias", "1d-seq"),
        ("no-running-stats", "2d"),
        ("no-running-stats", "1d"),
        ("neither", "1d-seq"),
    ],
)
def test_batch_norm_options_match_torch_over_training_steps_and_in_evaluation(options, layout):
    ours, theirs = BATCH_NORM_OPTIONS[options]
    in_shape, torch_class, to_torch = BATCH_NORM_LAYOUTS[layout]
    layer = batch_norm(momentum=0.2, **ours)
    module = torch_class(3, momentum=0.2, **theirs)
    out_shape, params, state = layer.init(_key(), in_shape)
    assert out_shape == in_shape
    assert {TORCH_NAMES[n] for n in params} == {n for n, _ in module.named_parameters()}
    tracked = ours.get("track_running_stats", True)
    assert set(state) == ({"mean", "var"} if tracked else set())
    params = _perturbed(params, seed=9)
    with torch.no_grad():
        for name, p in params.items():
            getattr(module, TORCH_NAMES[name]).copy_(torch.tensor(np.asarray(p)))
    weights = _np(in_shape, 10)

    def to_ours(a):  # torch's NC... layout back to channels-last
        return a if layout == "1d" else np.moveaxis(a, 1, -1)

    for step, train in enumerate([True, True, True, False]):
        module.train(train)
        x = _np(in_shape, 11 + step, scale=2.0, loc=step - 1.0)
        y, state, d_params, d_x = _jax_value_and_grads(layer, params, state, x, weights, train)
        y_t, d_x_t, d_params_t = _torch_value_and_grads(module, x, weights, to_torch)
        _close(y, to_ours(y_t), 1e-4)
        _close(d_x, to_ours(d_x_t), 1e-4)
        for name in params:
            _close(d_params[name], d_params_t[TORCH_NAMES[name]], 1e-4)
        if tracked:
            _close(state["mean"], module.running_mean.numpy())
            _close(state["var"], module.running_var.numpy())
        else:
            assert state == {} and module.running_mean is None


def test_batch_norm_options_leave_the_defaults_and_combine_with_axis_name():
    _, params, state = batch_norm().init(_key(), (4, 3))
    assert {n: p.shape for n, p in params.items()} == {"scale": (3,), "bias": (3,)}
    assert {n: s.shape for n, s in state.items()} == {"mean": (3,), "var": (3,)}
    _, params, state = batch_norm(use_scale=False).init(_key(), (4, 3))
    assert set(params) == {"bias"} and set(state) == {"mean", "var"}

    # Batch statistics pooled over a vmapped axis, with nothing to carry between steps.
    layer = batch_norm(
        axis_name="batch", use_scale=False, use_bias=False, track_running_stats=False
    )
    x = jnp.asarray(_np((6, 2, 3), 12))
    y, _ = batch_norm(use_scale=False, use_bias=False, track_running_stats=False).apply({}, {}, x)
    y_mapped, states = jax.vmap(lambda xi: layer.apply({}, {}, xi[None]), axis_name="batch")(x)
    _close(y_mapped[:, 0], y)
    assert states == {}


# --- one value per channel ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("in_shape", "options", "train"),
    [
        ((1, 4), {}, True),
        ((1, 4), {"use_scale": False, "use_bias": False}, True),
        ((1, 4), {"track_running_stats": False}, False),  # batch statistics in eval too
        ((1, 1, 4), {"track_running_stats": False}, True),
    ],
    ids=["train", "train-no-affine", "eval-no-running-stats", "one-position"],
)
def test_batch_norm_refuses_one_value_per_channel_where_torch_does(in_shape, options, train):
    torch_options = {"track_running_stats": options.get("track_running_stats", True)}
    module = torch.nn.BatchNorm1d(4, **torch_options).train(train)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        module(torch.zeros(in_shape[0], 4, *in_shape[1:-1]))

    model = nn.serial(nn.dense(4), batch_norm(**options))
    _, params, state = model.init(_key(), (*in_shape[:-1], 3))
    x = jnp.ones((*in_shape[:-1], 3))
    apply = jax.jit(model.apply, static_argnames="train")
    pattern = rf"^batch_norm_1: .*more than one value per channel.*{(*in_shape[:-1], 4)}"
    with pytest.raises(nn.LayerError, match=pattern.replace("(", r"\(").replace(")", r"\)")):
        apply(params, state, x, train=train)


def test_batch_norm_accepts_one_example_with_spatial_positions_and_running_stats_in_eval():
    layer = batch_norm()
    _, params, state = layer.init(_key(), (1, 5, 2))
    x = _np((1, 5, 2), 13)
    y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    module = torch.nn.BatchNorm1d(2).train()
    y_t = module(torch.tensor(np.moveaxis(x, -1, 1))).detach().numpy()
    _close(y, np.moveaxis(y_t, 1, -1), 1e-4)
    _close(new_state["var"], module.running_var.numpy())
    y, same = layer.apply(params, state, jnp.asarray(x[:, 0]))  # eval: one value is fine
    assert same is state
    _close(y, x[:, 0] / np.sqrt(1 + 1e-5))


def test_batch_norm_refuses_one_value_per_channel_over_a_mapped_axis_of_one():
    layer = batch_norm(axis_name="batch")
    _, params, state = layer.init(_key(), (1, 3))
    with pytest.raises(nn.LayerError, match=r"batch_norm: training needs .* \(1, 3\).*'batch'"):
        jax.vmap(lambda xi: layer.apply(params, state, xi, train=True), axis_name="batch")(
            jnp.ones((1, 1, 3))
        )


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [rms_norm, layer_norm], ids=["rms_norm", "layer_norm"])
@pytest.mark.parametrize("axes", [0, (1, -1), (-1, -1), (), 2.0])
def test_bad_axes_are_refused_by_name(make, axes):
    with pytest.raises(ValueError, match=rf"^{make.__name__}: axes must be .* negative"):
        make(axes=axes)


def test_norm_shape_and_setting_errors_name_the_layer_and_the_shapes():
    with pytest.raises(ValueError, match=r"rms_norm: eps must be a finite number >= 0"):
        rms_norm(eps=-1e-6)
    with pytest.raises(nn.LayerError, match=r"^rms_norm: expected .*axes \(-3, -1\).*\(4, 5\)"):
        rms_norm(axes=(-3, -1)).init(_key(), (4, 5))
    _, params, state = layer_norm(axes=(-2, -1)).init(_key(), (2, 3, 4))
    with pytest.raises(
        nn.LayerError,
        match=r"^layer_norm: expected .* sizes \(3, 4\) on axes \(-2, -1\), got shape \(2, 4, 3\)",
    ):
        layer_norm(axes=(-2, -1)).apply(params, state, jnp.ones((2, 4, 3)))
    _, params, state = rms_norm().init(_key(), (2, 3))
    with pytest.raises(nn.LayerError, match=r"^rms_norm: expected .*3 channels.*\(2, 5\)"):
        rms_norm().apply(params, state, jnp.ones((2, 5)))
    with pytest.raises(nn.LayerError, match=r"^rms_norm: .*floating-point.*int32"):
        rms_norm().apply(params, state, jnp.ones((2, 3), jnp.int32))
    # Without params the running statistics fix the channels.
    layer = batch_norm(use_scale=False, use_bias=False)
    _, params, state = layer.init(_key(), (2, 3))
    with pytest.raises(nn.LayerError, match=r"^batch_norm: expected .*3 channels.*\(2, 4\)"):
        layer.apply(params, state, jnp.ones((2, 4)))
    with pytest.raises(nn.LayerError, match=r"^batch_norm: state must hold the running mean"):
        layer.apply(params, {}, jnp.ones((2, 3)))
