"""numerical_grad, complex_step_grad and check_grads against closed-form gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.diff as fd
from funcnet import nn


def squire_trapp(x):
    """f(x) = eˣ / √(sin³x + cos³x), the classic complex-step test function."""
    return jnp.exp(x) / jnp.sqrt(jnp.sin(x) ** 3 + jnp.cos(x) ** 3)


def squire_trapp_grad(x):
    """f'(x) = f(x)·(1 − 3 sin x cos x (sin x − cos x) / (2 (sin³x + cos³x)))."""
    s, c = np.sin(x), np.cos(x)
    return np.exp(x) / np.sqrt(s**3 + c**3) * (1 - 3 * s * c * (s - c) / (2 * (s**3 + c**3)))


def tree_function(p):
    """f(a, b) = Σ eᵃ · sin b₀ / (1 + bᵀb), analytic in every leaf."""
    return jnp.sum(jnp.exp(p["a"])) * jnp.sin(p["b"][0]) / (1 + p["b"] @ p["b"])


def tree_function_grad(p):
    a, b = np.asarray(p["a"]), np.asarray(p["b"])
    q = 1 + b @ b
    grad_b = -np.exp(a).sum() * np.sin(b[0]) * 2 * b / q**2
    grad_b[0] += np.exp(a).sum() * np.cos(b[0]) / q
    return {"a": np.exp(a) * np.sin(b[0]) / q, "b": grad_b}


def tree_point():
    return {"a": jnp.linspace(-1.0, 1.0, 5).reshape(5, 1), "b": jnp.array([0.3, 2.0, -1.5])}


def max_rel_error(actual, expected):
    errors = jax.tree.map(
        lambda a, e: np.max(np.abs(np.asarray(a) - e)) / np.max(np.abs(e)), actual, expected
    )
    return max(jax.tree.leaves(errors))


@pytest.mark.parametrize(("method", "bound"), [("forward", 1e-6), ("central", 1e-9)])
def test_finite_differences_on_a_pytree(x64, method, bound):
    p = tree_point()
    approx = jax.jit(lambda p: fd.numerical_grad(tree_function, p, method=method))(p)
    assert jax.tree.structure(approx) == jax.tree.structure(p)
    assert max_rel_error(approx, tree_function_grad(p)) < bound


@pytest.mark.parametrize("direction", [False, True], ids=["gradient", "directional"])
def test_complex_step_is_exact_to_round_off(x64, direction):
    p = tree_point()
    expected = tree_function_grad(p)
    if direction:
        d = jax.tree.map(lambda a: jnp.cos(jnp.arange(a.size).reshape(a.shape)), p)
        pairs = zip(jax.tree.leaves(d), jax.tree.leaves(expected), strict=True)
        expected = sum(np.sum(np.asarray(dl) * e) for dl, e in pairs)
        actual = fd.complex_step_grad(tree_function, p, direction=d)
        np.testing.assert_allclose(actual, expected, rtol=1e-13)
    else:
        actual = jax.jit(lambda p: fd.complex_step_grad(tree_function, p))(p)
        assert max_rel_error(actual, expected) < 1e-13


@pytest.mark.parametrize("x", [0.5, 1.0, 1.5])
def test_complex_step_beats_finite_differences(x64, x):
    x = jnp.asarray(x)
    exact = squire_trapp_grad(float(x))
    rel = lambda g: abs(float(g) - exact) / abs(exact)
    forward = rel(fd.numerical_grad(squire_trapp, x, method="forward"))
    central = rel(fd.numerical_grad(squire_trapp, x, method="central"))
    complex_step = rel(fd.complex_step_grad(squire_trapp, x))
    assert complex_step < 1e-12
    assert 1e-11 < forward < 1e-6  # near √ε, not better
    assert central < 1e-8
    assert complex_step < central < forward
    np.testing.assert_allclose(jax.grad(squire_trapp)(x), exact, rtol=1e-13)


def test_default_forward_step_is_near_the_best_step(x64):
    # The forward-difference error is U-shaped in h, smallest near √ε ≈ 1.5e-8.
    x = jnp.asarray(1.5)
    exact = squire_trapp_grad(1.5)
    steps = 10.0 ** jnp.arange(-14.0, -1.0)
    errors = jax.vmap(
        lambda h: fd.numerical_grad(squire_trapp, x, method="forward", step=h) - exact
    )(steps)
    errors = np.abs(np.asarray(errors))
    default = abs(float(fd.numerical_grad(squire_trapp, x, method="forward")) - exact)
    assert default < 10 * errors.min()
    assert errors[0] > 100 * default  # h = 1e-14: round-off
    assert errors[-1] > 100 * default  # h = 1e-2: truncation


def test_float32_finite_differences():
    p = jax.tree.map(lambda a: a.astype(jnp.float32), tree_point())
    approx = fd.numerical_grad(tree_function, p)
    assert jax.tree.leaves(approx)[0].dtype == jnp.float32
    assert max_rel_error(approx, tree_function_grad(p)) < 1e-3


@pytest.mark.parametrize("method", ["central", "forward", "complex_step"])
def test_check_grads_passes_on_correct_gradients(x64, method):
    report = fd.check_grads(tree_function, tree_point(), method=method)
    assert report.rel_error < {"central": 1e-9, "forward": 1e-6, "complex_step": 1e-13}[method]
    assert max_rel_error(report.autodiff, tree_function_grad(tree_point())) < 1e-13


@jax.custom_vjp
def wrong_gradient(p):
    return tree_function(p)


def _wrong_bwd(p, g):
    grad = jax.grad(tree_function)(p)
    return ({"a": grad["a"].at[3, 0].mul(1.01), "b": grad["b"]},)


wrong_gradient.defvjp(lambda p: (tree_function(p), p), _wrong_bwd)


@pytest.mark.parametrize("method", ["central", "complex_step"])
def test_check_grads_names_the_worst_coordinate(x64, method):
    p = tree_point()
    ad = jax.grad(tree_function)(p)["a"][3, 0] * 1.01
    exact = tree_function_grad(p)["a"][3, 0]
    with pytest.raises(AssertionError) as failure:
        fd.check_grads(wrong_gradient, p, method=method)
    message = str(failure.value)
    assert "at x['a'][3, 0]:" in message
    assert f"autodiff {float(ad):.10g}," in message
    numerical = float(message.split("numerical ")[1].split(",")[0])
    np.testing.assert_allclose(numerical, exact, rtol=1e-8)
    assert "1 of 8 coordinates" in message


def test_numerical_references_reject_bad_functions(x64):
    with pytest.raises(ValueError, match="scalar"):
        fd.numerical_grad(jnp.sin, jnp.ones(3))
    with pytest.raises(ValueError, match="imaginary"):
        fd.complex_step_grad(lambda x: jnp.sum(jnp.abs(x) ** 2), jnp.ones(3))
    with pytest.raises(TypeError, match="floating"):
        fd.numerical_grad(jnp.sum, jnp.arange(3))


def test_check_grads_catches_a_layer_with_a_wrong_backward_pass():
    # The failure docs/differentiation.md prints: a float32 dense layer whose hand-written
    # backward pass scales one entry of ∇W by 1.05.
    model = nn.serial(nn.dense(3))
    x = jax.random.normal(jax.random.key(3), (5, 4))
    _, params, _ = model.init(jax.random.key(0), x.shape)

    def loss(params):
        y, _ = model.apply(params, {}, x)
        return jnp.sum(jnp.tanh(y) ** 2)

    @jax.custom_vjp
    def wrong_loss(params):
        return loss(params)

    def wrong_bwd(params, g):
        grads = jax.grad(loss)(params)
        w = grads["dense_0"]["w"].at[3, 0].mul(1.05)
        return ({"dense_0": {**grads["dense_0"], "w": g * w}},)

    wrong_loss.defvjp(lambda p: (loss(p), p), wrong_bwd)
    fd.check_grads(loss, params)  # the true gradient passes in float32
    with pytest.raises(AssertionError) as failure:
        fd.check_grads(wrong_loss, params)
    message = str(failure.value)
    assert "gradient check (central) failed at x['dense_0']['w'][3, 0]" in message
    assert "1 of 15 coordinates out of tolerance" in message


def test_check_grads_defaults_fail_a_float32_relu_net_at_its_kinks_and_pass_it_in_float64():
    """What check_grads' docstring and docs/differentiation.md say: the float32 central step
    (≈ 5e-3) straddles ReLU kinks at a few coordinates of a correct gradient; in float64 the
    step is 6e-6 and the check passes. A smooth activation passes in float32."""
    from funcnet import data, losses

    split = data.digits()
    x, y = split.x_train[:128], split.y_train[:128]

    def make_loss(activation):
        model = nn.serial(nn.dense(16), activation, nn.dense(10))
        _, params, _ = model.init(jax.random.key(0), (128, 64))
        loss = lambda p: losses.softmax_cross_entropy(model.apply(p, {}, x)[0], y)
        return loss, params

    loss, params = make_loss(nn.relu)
    assert nn.param_count(params) == 1210
    with pytest.raises(AssertionError, match=r"coordinates out of tolerance") as failure:
        fd.check_grads(loss, params)
    failed = int(str(failure.value).rsplit("; ", 1)[1].split(" of ")[0])
    assert 5 <= failed <= 40  # "a dozen or so"
    with jax.enable_x64(True):
        fd.check_grads(loss, jax.tree.map(lambda p: p.astype(jnp.float64), params))
    smooth, params = make_loss(nn.tanh)
    fd.check_grads(smooth, params)
