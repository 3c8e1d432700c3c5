"""relu6, hard_sigmoid, hard_swish, glu, softplus's beta and threshold, prelu and the ELU
family's negative tail, against torch.nn.functional, torch.nn.PReLU and closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.nn import activations
from funcnet.nn.activations import glu, hard_sigmoid, hard_swish, prelu, relu6, softplus

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _torch_value_and_grad(torch_fn, x):
    """``torch_fn(x)`` and the gradient of its sum, in float64."""
    t = torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True)
    y = torch_fn(t)
    (g,) = torch.autograd.grad(y.sum(), t)
    return y.detach().numpy(), g.numpy()


# Each function at its kinks, one point either side of them, and the far tails.
ELEMENTWISE = {
    "relu6": (relu6, F.relu6, [-7.0, -1e-3, 0.0, 1e-3, 2.5, 6 - 1e-3, 6.0, 6 + 1e-3, 40.0]),
    "hard_sigmoid": (
        hard_sigmoid,
        F.hardsigmoid,
        [-50.0, -3.001, -3.0, -2.999, 0.0, 1.3, 2.999, 3.0, 3.001, 50.0],
    ),
    "hard_swish": (
        hard_swish,
        F.hardswish,
        [-50.0, -3.001, -3.0, -2.999, -1.5, 0.0, 1.3, 2.999, 3.0, 3.001, 50.0],
    ),
    "softplus_beta_threshold": (
        lambda x: softplus(x, beta=2.0, threshold=6.0),
        lambda t: F.softplus(t, beta=2.0, threshold=6.0),
        [-40.0, -1.0, 0.0, 2.9, 3.0, 3.1, 30.0],  # βx = 6 exactly at x = 3: the log branch
    ),
    "softplus_torch_default": (
        lambda x: softplus(x, threshold=20.0),
        F.softplus,
        [-100.0, -5.0, 0.0, 5.0, 19.9, 20.0, 20.1, 100.0],
    ),
    "elu_alpha": (
        lambda x: activations.elu(x, alpha=2.0),
        lambda t: F.elu(t, alpha=2.0),
        [-30.0, -1.0, 0.0, 1.0],
    ),
    "celu_alpha": (
        lambda x: activations.celu(x, alpha=0.5),
        lambda t: F.celu(t, alpha=0.5),
        [-30.0, -1.0, 0.0, 1.0],
    ),
    "selu": (activations.selu, F.selu, [-30.0, -1.0, 0.0, 1.0]),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_value_and_gradient_match_torch_including_the_kinks(name, x64):
    fn, torch_fn, points = ELEMENTWISE[name]
    x = np.asarray(points)
    want, want_grad = _torch_value_and_grad(torch_fn, x)
    got = fn(jnp.asarray(x))
    got_grad = jax.vmap(jax.grad(fn))(jnp.asarray(x))
    assert got.dtype == got_grad.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-15)
    # torch's hardsigmoid backward multiplies by 1/6 rounded to float32, even in float64.
    rtol = 1e-7 if name == "hard_sigmoid" else 1e-14
    np.testing.assert_allclose(got_grad, want_grad, rtol=rtol, atol=1e-15)


def test_kink_subgradients_are_torchs():
    # relu6: 0 at both kinks; hard_sigmoid: 0 at ±3; hard_swish: the outer slopes 0 and 1.
    grad = lambda f, x: float(jax.grad(f)(x))
    assert (grad(relu6, 0.0), grad(relu6, 6.0)) == (0.0, 0.0)
    assert (grad(hard_sigmoid, -3.0), grad(hard_sigmoid, 3.0)) == (0.0, 0.0)
    assert (grad(hard_swish, -3.0), grad(hard_swish, 3.0)) == (0.0, 1.0)


def test_float32_matches_torch_on_a_grid():
    x = np.linspace(-8, 8, 161, dtype=np.float32)
    for name, (fn, torch_fn, _) in ELEMENTWISE.items():
        t = torch.tensor(x, requires_grad=True)
        (g,) = torch.autograd.grad(torch_fn(t).sum(), t)
        got, got_grad = fn(jnp.asarray(x)), jax.vmap(jax.grad(fn))(jnp.asarray(x))
        assert got.dtype == jnp.float32, name
        np.testing.assert_allclose(got, torch_fn(t).detach(), rtol=2e-6, atol=2e-7, err_msg=name)
        np.testing.assert_allclose(got_grad, g, rtol=2e-6, atol=2e-7, err_msg=name)


def test_softplus_default_is_unchanged_and_beta_is_checked():
    x = jnp.asarray([-1e4, -30.0, -1.0, 0.0, 0.5, 25.0, 1e4], jnp.float32)
    np.testing.assert_array_equal(softplus(x), jnp.logaddexp(x, 0.0))
    old_grad = jax.vmap(jax.grad(lambda t: jnp.logaddexp(t, 0.0)))(x)
    np.testing.assert_array_equal(jax.vmap(jax.grad(softplus))(x), old_grad)
    big = softplus(x, beta=50.0)
    assert np.all(np.isfinite(big)) and np.all(np.isfinite(jax.vmap(jax.grad(softplus))(x)))
    with pytest.raises(ValueError, match="beta must be positive, got 0"):
        softplus(x, beta=0)
    half = softplus(x.astype(jnp.float16), beta=50.0, threshold=20.0)
    assert half.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(half, np.float32)))


@pytest.mark.parametrize(
    "name, fn, alpha_e, curvature",
    [
        ("elu", activations.elu, lambda x: np.exp(x), 1.0),
        ("celu", lambda x: activations.celu(x, alpha=2.0), lambda x: np.exp(x / 2.0), 0.5),
        ("selu", activations.selu, lambda x: nn.SELU_SCALE * nn.SELU_ALPHA * np.exp(x), 1.0),
    ],
)
def test_elu_family_gradient_in_the_far_negative_tail(name, fn, alpha_e, curvature):
    x = np.array([-20.0, -50.0, -80.0, -86.0], np.float32)
    want = alpha_e(x.astype(np.float64))
    got = jax.vmap(jax.grad(fn))(jnp.asarray(x))
    assert got.dtype == jnp.float32
    assert np.all(np.asarray(got) > 0), got  # expm1(x) + 1 rounds these to 0
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # The second derivative (α·e^x; e^{x/α}/α for celu) is right in the tail too.
    second = jax.grad(jax.grad(fn))(jnp.float32(-50.0))
    np.testing.assert_allclose(second, curvature * want[1], rtol=1e-5)
    assert np.all(np.isfinite(jax.vmap(jax.grad(fn))(jnp.asarray([-1e30, -1e4], jnp.float32))))


@pytest.mark.parametrize("axis", [-1, 1])
def test_glu_matches_torch(axis, x64):
    x = np.random.default_rng(0).normal(size=(2, 4, 6)) * 4
    cotangent = np.random.default_rng(1).normal(size=(2, 2, 6) if axis == 1 else (2, 4, 3))
    t = torch.tensor(x, requires_grad=True)
    want = F.glu(t, dim=axis)
    (want_grad,) = torch.autograd.grad(want, t, torch.tensor(cotangent))
    got, vjp = jax.vjp(lambda v: glu(v, axis=axis), jnp.asarray(x))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want.detach(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(vjp(jnp.asarray(cotangent))[0], want_grad, rtol=1e-13, atol=1e-15)


def test_glu_shapes_dtypes_transforms_and_errors():
    x = jax.random.normal(_key(), (3, 8), jnp.float32) * 1e4
    assert jax.jit(glu)(x).shape == jax.vmap(glu)(x).shape == (3, 4)
    assert np.all(np.isfinite(jax.grad(lambda v: jnp.sum(glu(v)))(x)))
    half = glu(x.astype(jnp.bfloat16))
    assert half.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(half, np.float32)))
    out_shape, _, _ = nn.serial(glu).init(_key(), (5, 6))
    assert out_shape == (5, 3)
    with pytest.raises(ValueError, match=r"glu: expected an even size along axis -1, got shape"):
        glu(jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="even size"):
        glu(jnp.float32(1.0))


@pytest.mark.parametrize("per_channel", [False, True])
def test_prelu_matches_torch_prelu(per_channel, x64):
    channels = 3
    layer = prelu(per_channel=per_channel)
    x = np.random.default_rng(2).normal(size=(2, 4, channels))
    x[0, 0] = 0.0  # the kink: torch takes the negative piece's slopes there
    out_shape, params, state = layer.init(_key(), x.shape)
    assert out_shape == x.shape and state == {}
    assert params["slope"].shape == ((channels,) if per_channel else ())
    np.testing.assert_array_equal(params["slope"], 0.25)
    slope = np.array([0.25, -0.5, 1.5]) if per_channel else np.array(0.1)
    params = {"slope": jnp.asarray(slope)}
    cotangent = np.random.default_rng(3).normal(size=x.shape)

    ref = torch.nn.PReLU(num_parameters=channels if per_channel else 1).double()
    with torch.no_grad():
        ref.weight.copy_(torch.tensor(slope).reshape(-1))
    t = torch.tensor(x, requires_grad=True)
    want = ref(t.movedim(-1, 1)).movedim(1, -1)  # torch's channel axis is 1
    want_dx, want_da = torch.autograd.grad(want, (t, ref.weight), torch.tensor(cotangent))

    def run(p, v):
        return layer.apply(p, {}, v)[0]

    got, vjp = jax.vjp(jax.jit(run), params, jnp.asarray(x))
    got_da, got_dx = vjp(jnp.asarray(cotangent))
    np.testing.assert_allclose(got, want.detach(), rtol=1e-14)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-14)
    np.testing.assert_allclose(got_da["slope"].reshape(-1), want_da, rtol=1e-12)
    mapped = jax.vmap(run, in_axes=(None, 0))(params, jnp.asarray(x))
    np.testing.assert_allclose(mapped, got, rtol=1e-14)


def test_prelu_settings_serial_names_and_errors():
    model = nn.serial(nn.dense(4), prelu(per_channel=True, slope_init="zeros"))
    out_shape, params, _ = model.init(_key(), (2, 3))
    assert out_shape == (2, 4) and params["prelu_1"]["slope"].shape == (4,)
    np.testing.assert_array_equal(params["prelu_1"]["slope"], 0.0)
    _, p16, _ = prelu(slope_init=0.1, dtype=jnp.bfloat16).init(_key(), (2,))
    y, _ = prelu().apply(p16, {}, -jnp.ones(2, jnp.bfloat16))
    assert y.dtype == jnp.bfloat16

    layer = prelu(per_channel=True)
    _, params, state = layer.init(_key(), (2, 3))
    with pytest.raises(
        nn.LayerError, match=r"prelu: expected an input with 3 channels .* \(2, 5\)"
    ):
        layer.apply(params, state, jnp.zeros((2, 5)))
    with pytest.raises(nn.LayerError, match="prelu: expected a floating-point input"):
        layer.apply(params, state, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(nn.LayerError, match=r"prelu: expected an input \(..., channels\)"):
        layer.init(_key(), ())
    with pytest.raises(nn.LayerError, match=r"slope of shape \(2, 3\) is neither"):
        layer.apply({"slope": jnp.zeros((2, 3))}, state, jnp.zeros((2, 3)))
