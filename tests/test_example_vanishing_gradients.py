"""The vanishing-gradients example: its per-layer norms follow the theory of its docstring and
agree with computations that do not use `jax.grad`."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet
from tests.figure_checks import checked_figures
from tests.helpers import load_module

vg = load_module("examples/vanishing_gradients.py")

DEEP, WIDTH = 20, 32
SMALL, LARGE = "N(0, 0.01²)", "N(0, 1)"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("vanishing_gradients")
    argv = ["--out", str(out), "--depths", "2", str(DEEP), "--width", str(WIDTH), "--batch", "64"]
    with checked_figures() as saved:
        results = vg.main(argv)
    assert [path.name for path in saved] == ["vanishing_gradients.png"]
    return results


def ratio(results, activation, init, batch_norm, depth=DEEP):
    return results["ratio"][activation, init, batch_norm][depth]


def first(results, activation, init, batch_norm, depth=DEEP):
    return results["first"][activation, init, batch_norm][depth]


def test_every_norm_is_finite_and_positive_and_the_figure_is_written(results):
    assert len(results["norms"]) == len(vg.ACTIVATIONS) * len(vg.INITS) * 2
    for by_depth in results["norms"].values():
        for depth, norms in by_depth.items():
            assert norms.shape == (depth,)
            assert np.all(np.isfinite(norms)) and np.all(norms > 0)
    assert results["figure"].name == "vanishing_gradients.png"
    assert results["figure"].stat().st_size > 10_000


def test_sigmoid_gradients_vanish_towards_the_input(results):
    # Each layer multiplies δ by about σ′ · √(fan_out · Var w) ≤ ¼ · 0.01 · √32 ≈ 0.014.
    assert ratio(results, "sigmoid", SMALL, False) < 1e-20
    assert ratio(results, "sigmoid", SMALL, False) < 1e-15 * ratio(
        results, "sigmoid", SMALL, False, 2
    )
    # σ′ ≤ ¼ still loses about a factor 4 a layer at the Xavier and He scales.
    assert ratio(results, "sigmoid", "Xavier", False) < 1e-5
    assert ratio(results, "sigmoid", "He", False) < 1e-3


def test_relu_with_he_init_keeps_a_flat_profile_at_unit_level(results):
    assert 0.1 < ratio(results, "relu", "He", False) < 10
    assert 0.1 < first(results, "relu", "He", False) < 10


def test_relu_at_a_fixed_scale_vanishes_or_explodes_in_every_layer_together(results):
    # Weights c times the He scale put c^(L−1) on every layer's gradient: c = 4 for N(0, 1)
    # and 0.04 for N(0, 0.01²) at fan-in 32, while the first/last ratio stays near 1.
    he = first(results, "relu", "He", False)
    for init, c in ((LARGE, 4.0), (SMALL, 0.04)):
        assert 0.1 < ratio(results, "relu", init, False) < 10
        predicted = (DEEP - 1) * np.log10(c)
        assert abs(np.log10(first(results, "relu", init, False) / he) - predicted) < 2
    assert first(results, "relu", LARGE, False) > 1e8
    assert first(results, "relu", SMALL, False) < 1e-20


def test_tanh_at_unit_variance_explodes_towards_the_input(results):
    assert ratio(results, "tanh", LARGE, False) > 1e2


def test_batch_norm_brings_sigmoid_and_tanh_ratios_near_one(results):
    bad = [("sigmoid", init) for init in vg.INITS] + [("tanh", LARGE)]
    for activation, init in bad:
        without = abs(np.log10(ratio(results, activation, init, False)))
        with_bn = abs(np.log10(ratio(results, activation, init, True)))
        assert with_bn < 1, (activation, init)
        assert with_bn < without - 1, (activation, init)
    # tanh near 0 is linear, so N(0, 0.01²) shrinks every layer alike; batch norm undoes it.
    assert first(results, "tanh", SMALL, False) < 1e-15
    assert first(results, "tanh", SMALL, True) > 1e-2


def _digits(n):
    data = funcnet.data.digits()
    (x,) = funcnet.data.standardize(data.x_train)
    return np.asarray(x[:n], np.float64), np.asarray(data.y_train[:n])


def _dense_names(params):
    """The dense layers' names in `params`, input side first ("dense_0", "dense_2", ...)."""
    return sorted((k for k in params if k.startswith("dense_")), key=lambda k: int(k[6:]))


def test_norms_match_a_numpy_backward_pass_of_a_sigmoid_net():
    x, y = _digits(48)
    with jax.enable_x64(True):
        model = vg.build(3, 16, "sigmoid", "Xavier", batch_norm=False)
        _, params, state = model.init(jax.random.key(1), x.shape)
        # Nonzero biases, so that the reference has to add them in the right place.
        params = {k: {**v, "b": v["b"] + 0.1} if "b" in v else v for k, v in params.items()}
        grad_norms = jax.jit(partial(vg.layer_gradient_norms, model))
        norms = np.asarray(grad_norms(params, state, jnp.asarray(x), y))
    ws = [np.asarray(params[k]["w"]) for k in _dense_names(params)]
    bs = [np.asarray(params[k]["b"]) for k in _dense_names(params)]
    hs, zs = [x], []
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        zs.append(hs[-1] @ w + b)
        if i < len(ws) - 1:
            hs.append(1 / (1 + np.exp(-zs[-1])))
    logits = zs[-1]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    delta = (p - np.eye(10)[y]) / len(x)  # ∂L/∂z_L of the mean cross-entropy
    expected = [0.0] * len(ws)
    for layer in reversed(range(len(ws))):
        expected[layer] = np.linalg.norm(hs[layer].T @ delta)
        if layer:
            delta = (delta @ ws[layer].T) * hs[layer] * (1 - hs[layer])
    np.testing.assert_allclose(norms, expected, rtol=1e-10)


def test_batch_norm_norms_match_a_central_difference():
    # Along u = g/‖g‖ the directional derivative ⟨∇L, u⟩ is ‖g‖ exactly when g is ∇L.
    x, y = _digits(32)
    with jax.enable_x64(True):
        model = vg.build(4, 16, "tanh", "He", batch_norm=True)
        _, params, state = model.init(jax.random.key(2), x.shape)
        x = jnp.asarray(x)
        norms = jax.jit(partial(vg.layer_gradient_norms, model))(params, state, x, y)

        @jax.jit
        def loss(p):
            logits, _ = model.apply(p, state, x, train=True)
            return funcnet.losses.softmax_cross_entropy(logits, y)

        grads = jax.grad(loss)(params)
        for layer, name in enumerate(_dense_names(params)):
            u = grads[name]["w"] / jnp.linalg.norm(grads[name]["w"])

            def along(t, name=name, u=u):
                w = params[name]["w"] + t * u
                return float(loss({**params, name: {**params[name], "w": w}}))

            h = 1e-5
            slope = (along(h) - along(-h)) / (2 * h)
            np.testing.assert_allclose(float(norms[layer]), slope, rtol=1e-6, err_msg=name)
