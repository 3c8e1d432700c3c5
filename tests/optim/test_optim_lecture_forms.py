"""The optimizers as lectures write them, as plain NumPy loops, beside the library calls.

funcnet's named optimizers follow `torch.optim`; some lecture slides write the same methods
in another form. Each test runs the lecture's form on the Rosenbrock function in float64 and
checks the library call that reproduces it, or shows by how much the two differ
(docs/optimizers.md, "The lecture's forms").
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.optim as fo

STEPS = 60
START = np.array([-1.2, 1.0])


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def rosenbrock_grad(x):
    """∇f by hand: (−2(1 − x₀) − 400x₀(x₁ − x₀²), 200(x₁ − x₀²))."""
    return np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])


def library_path(optimizer, steps=STEPS, scale=1.0):
    """The iterates x_1 … x_steps of `optimizer` on `scale`·f, from START, in float64."""
    x = jnp.asarray(START)
    state = optimizer.init(x)
    path = []
    for _ in range(steps):
        grads = scale * jax.grad(rosenbrock)(x)
        updates, state = optimizer.update(grads, state, x)
        x = fo.apply_updates(x, updates)
        path.append(np.asarray(x))
    return np.array(path)


def test_the_hand_written_gradient_is_the_gradient(x64):
    x = np.array([0.3, -0.7])
    np.testing.assert_allclose(rosenbrock_grad(x), jax.grad(rosenbrock)(jnp.asarray(x)))


def test_nesterov_lookahead_form_is_torch_form_at_the_lookahead_point(x64):
    # Lecture: v ← ρv − α∇f(x + ρv), x ← x + v. With x̃ = x + ρv and b = −v/α this is torch's
    # b ← ρb + ∇f(x̃), x̃ ← x̃ − α(∇f(x̃) + ρb): torch's iterates are the lecture's x + ρv.
    alpha, rho = 1e-3, 0.9
    x, v = START.copy(), np.zeros(2)
    lookahead = []
    for _ in range(STEPS):
        v = rho * v - alpha * rosenbrock_grad(x + rho * v)
        x = x + v
        lookahead.append(x + rho * v)
    torch_form = library_path(fo.nesterov(alpha, beta=rho))
    np.testing.assert_allclose(torch_form, np.array(lookahead), rtol=1e-12, atol=1e-14)
    # The two sequences are different points of one run: x itself is not torch's iterate.
    assert np.max(np.abs(torch_form[-1] - x)) > 1e-3


def _adagrad_lecture(alpha, eps, root, scale=1.0):
    x, big_g = START.copy(), np.zeros(2)
    path = []
    for _ in range(STEPS):
        g = scale * rosenbrock_grad(x)
        big_g = big_g + g * g
        x = x - alpha * g / ((np.sqrt(big_g) if root else big_g) + eps)
        path.append(x)
    return np.array(path)


def _rmsprop_lecture(alpha, decay, eps, root, scale=1.0):
    x, v = START.copy(), np.zeros(2)
    path = []
    for _ in range(STEPS):
        g = scale * rosenbrock_grad(x)
        v = decay * v + (1 - decay) * g * g
        x = x - alpha * g / ((np.sqrt(v) if root else v) + eps)
        path.append(x)
    return np.array(path)


def test_adagrad_with_the_root_is_the_library_and_without_it_another_method(x64):
    alpha, eps = 0.1, 1e-10
    with_root = _adagrad_lecture(alpha, eps, root=True)
    np.testing.assert_allclose(library_path(fo.adagrad(alpha, eps=eps)), with_root, rtol=1e-12)
    without_root = _adagrad_lecture(alpha, eps, root=False)
    assert np.max(np.abs(without_root - with_root)) > 0.1
    # With the root the step is invariant to the scale of f (g/√G has no units); without it
    # the step shrinks as 1/c when f is multiplied by c.
    np.testing.assert_allclose(
        library_path(fo.adagrad(alpha, eps=eps), scale=1e3), with_root, rtol=1e-9
    )
    first = without_root[0] - START
    first_scaled = _adagrad_lecture(alpha, eps, root=False, scale=1e3)[0] - START
    np.testing.assert_allclose(first_scaled, first / 1e3, rtol=1e-9)


def test_rmsprop_with_the_root_is_the_library_and_without_it_another_method(x64):
    alpha, decay, eps = 1e-2, 0.9, 1e-8
    with_root = _rmsprop_lecture(alpha, decay, eps, root=True)
    library = library_path(fo.rmsprop(alpha, decay=decay, eps=eps))
    np.testing.assert_allclose(library, with_root, rtol=1e-12)
    without_root = _rmsprop_lecture(alpha, decay, eps, root=False)
    assert np.max(np.abs(without_root - with_root)) > 0.1
    # The first step with the root is α·g/(√(1 − β)|g|) = α/√(1 − β) per coordinate.
    np.testing.assert_allclose(np.abs(with_root[0] - START), alpha / np.sqrt(1 - decay))


def _adam_lecture(alpha, b1, b2, eps, corrected):
    x, m, v = START.copy(), np.zeros(2), np.zeros(2)
    path = []
    for t in range(1, STEPS + 1):
        g = rosenbrock_grad(x)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = (m / (1 - b1**t), v / (1 - b2**t)) if corrected else (m, v)
        x = x - alpha * m_hat / (np.sqrt(v_hat) + eps)
        path.append(x)
    return np.array(path)


@pytest.mark.parametrize("corrected", [True, False], ids=["adam", "not-quite-adam"])
def test_adam_with_and_without_bias_correction(corrected, x64):
    alpha, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-7
    lecture = _adam_lecture(alpha, b1, b2, eps, corrected)
    library = library_path(fo.adam(alpha, b1=b1, b2=b2, eps=eps, bias_correction=corrected))
    np.testing.assert_allclose(library, lecture, rtol=1e-12)


def test_without_bias_correction_the_first_steps_are_too_long(x64):
    alpha = 1e-3
    corrected = library_path(fo.adam(alpha), steps=3)
    uncorrected = library_path(fo.adam(alpha, bias_correction=False), steps=3)
    # Step one: Adam moves α·sign(g); without correction (1 − β₁)/√(1 − β₂)·α ≈ 3.16α.
    np.testing.assert_allclose(np.abs(corrected[0] - START), alpha, rtol=1e-6)
    np.testing.assert_allclose(
        np.abs(uncorrected[0] - START), 0.1 / np.sqrt(1e-3) * alpha, rtol=1e-6
    )
    # Under a constant gradient the ratio of the steps is √(1 − β₂ᵗ)/(1 − β₁ᵗ) → 1 as t grows.
    g = jnp.ones(1)
    ratios = []
    for optimizer in (fo.adam(alpha), fo.adam(alpha, bias_correction=False)):
        state, steps = optimizer.init(g), []
        for _ in range(2000):
            updates, state = optimizer.update(g, state)
            steps.append(float(updates[0]))
        ratios.append(np.array(steps))
    t = np.array([1, 10, 100, 2000])
    expected = np.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    np.testing.assert_allclose(ratios[0][t - 1] / ratios[1][t - 1], expected, rtol=1e-5)
