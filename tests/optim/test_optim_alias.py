"""Named optimizers against outside references.

Three references, each independent of funcnet:
- optax, configured to the same rule, over 120 steps of random gradients on a nested tree;
- NumPy loops written here from the `torch.optim` documentation, over the same sequences, in
  float64 (where they agree with funcnet to 1e-10) and float32;
- two steps derived by hand for each rule.
"""

import math

import jax
import numpy as np
import optax
import pytest
from optim_helpers import flat, random_tree, trajectory

import funcnet.optim as fo

STEPS = 120


def _inputs(dtype=np.float32):
    params = random_tree(0, dtype=dtype)
    grads = random_tree(1, lead=(STEPS,), dtype=dtype)
    return params, grads


# optax, configured to the same rule. Where optax's defaults differ from torch's, the optax
# configuration below is set to torch's rule and the comment says how.
OPTAX_CASES = {
    "sgd": (fo.sgd(0.05), optax.sgd(0.05)),
    "sgd_momentum": (fo.sgd(0.05, momentum=0.9), optax.sgd(0.05, momentum=0.9)),
    "sgd_nesterov": (
        fo.sgd(0.05, momentum=0.9, nesterov=True),
        optax.sgd(0.05, momentum=0.9, nesterov=True),
    ),
    # torch's coupled weight decay is optax's add_decayed_weights ahead of the optimizer.
    "sgd_weight_decay": (
        fo.sgd(0.05, momentum=0.9, weight_decay=1e-2),
        optax.chain(optax.add_decayed_weights(1e-2), optax.sgd(0.05, momentum=0.9)),
    ),
    "momentum": (fo.momentum(0.05, beta=0.9), optax.sgd(0.05, momentum=0.9)),
    "nesterov": (fo.nesterov(0.05, beta=0.9), optax.sgd(0.05, momentum=0.9, nesterov=True)),
    # optax's Adagrad starts G at 0.1 and divides by √(G + ε), torch's by √G + ε. With ε = 0
    # on both sides and G starting at torch's 0 the two rules are the same.
    "adagrad": (
        fo.adagrad(0.1, eps=0.0),
        optax.adagrad(0.1, initial_accumulator_value=0.0, eps=0.0),
    ),
    "adagrad_initial_accumulator": (
        fo.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
        optax.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0),
    ),
    # optax's RMSprop defaults to decay 0.9 and ε inside the root; torch's is 0.99, outside.
    "rmsprop": (fo.rmsprop(0.01), optax.rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False)),
    "rmsprop_centered": (
        fo.rmsprop(0.01, centered=True),
        optax.rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False, centered=True),
    ),
    # optax applies the rate before the momentum buffer, torch after: the same for a constant rate.
    "rmsprop_momentum": (
        fo.rmsprop(0.01, momentum=0.9),
        optax.rmsprop(0.01, decay=0.99, eps=1e-8, eps_in_sqrt=False, momentum=0.9),
    ),
    "adadelta": (fo.adadelta(1.0), optax.adadelta(1.0, rho=0.9, eps=1e-6)),
    "adam": (fo.adam(0.01), optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-8)),
    "adam_weight_decay": (
        fo.adam(0.01, weight_decay=1e-2),
        optax.chain(optax.add_decayed_weights(1e-2), optax.adam(0.01)),
    ),
    "adamw": (fo.adamw(0.01), optax.adamw(0.01, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2)),
    "adamw_masked": (
        fo.adamw(0.01, mask={"dense": {"w": True, "b": False}, "blocks": [False]}),
        optax.adamw(
            0.01, weight_decay=1e-2, mask={"dense": {"w": True, "b": False}, "blocks": [False]}
        ),
    ),
    # optax's NAdam has no momentum schedule: μ_t = β₁ throughout, which is torch's rule as
    # ψ → ∞ (0.96^(tψ) underflows to 0). The default ψ is checked against NumPy below.
    "nadam_no_mu_schedule": (
        fo.nadam(0.01, momentum_decay=1e9),
        optax.nadam(0.01, b1=0.9, b2=0.999, eps=1e-8),
    ),
    "adamax": (fo.adamax(0.02), optax.adamax(0.02, b1=0.9, b2=0.999, eps=1e-8)),
    # optax's Lion decays weights by 1e-3 by default; torch-style here means 0.
    "lion": (fo.lion(1e-3), optax.lion(1e-3, b1=0.9, b2=0.99, weight_decay=0.0)),
    "lion_weight_decay": (
        fo.lion(1e-3, weight_decay=0.1),
        optax.lion(1e-3, b1=0.9, b2=0.99, weight_decay=0.1),
    ),
}


@pytest.mark.parametrize("case", list(OPTAX_CASES))
def test_matches_optax_over_random_gradients(case):
    ours, theirs = OPTAX_CASES[case]
    params, grads = _inputs()
    got = trajectory(ours, params, grads)
    want = trajectory(theirs, params, grads, apply_updates=optax.apply_updates)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    np.testing.assert_allclose(flat(got, 1), flat(want, 1), rtol=2e-5, atol=2e-6)


# NumPy re-implementations of the `torch.optim` algorithms, written from their documented
# pseudo-code. Each maps a start x (n,) and gradients (T, n) to the iterates (T, n).


def torch_sgd(x, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    path, buf = [], None
    for g in grads:
        g = g + weight_decay * x
        if momentum != 0:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        x = x - lr * g
        path.append(x)
    return np.stack(path)


def torch_adagrad(
    x, grads, lr, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10
):
    path, state_sum = [], np.full_like(x, initial_accumulator_value)
    for step, g in enumerate(grads, start=1):
        g = g + weight_decay * x
        clr = lr / (1 + (step - 1) * lr_decay)
        state_sum = state_sum + g * g
        x = x - clr * g / (np.sqrt(state_sum) + eps)
        path.append(x)
    return np.stack(path)


def torch_rmsprop(
    x, grads, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False
):
    path = []
    square_avg, grad_avg, buf = np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for g in grads:
        g = g + weight_decay * x
        square_avg = alpha * square_avg + (1 - alpha) * g * g
        if centered:
            grad_avg = alpha * grad_avg + (1 - alpha) * g
            avg = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            avg = np.sqrt(square_avg) + eps
        if momentum > 0:
            buf = momentum * buf + g / avg
            x = x - lr * buf
        else:
            x = x - lr * g / avg
        path.append(x)
    return np.stack(path)


def torch_adadelta(x, grads, lr, rho=0.9, eps=1e-6, weight_decay=0.0):
    path, square_avg, acc_delta = [], np.zeros_like(x), np.zeros_like(x)
    for g in grads:
        g = g + weight_decay * x
        square_avg = rho * square_avg + (1 - rho) * g * g
        delta = np.sqrt(acc_delta + eps) / np.sqrt(square_avg + eps) * g
        acc_delta = rho * acc_delta + (1 - rho) * delta * delta
        x = x - lr * delta
        path.append(x)
    return np.stack(path)


def torch_adam(
    x, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, decoupled=False
):
    """torch's Adam, and with `decoupled=True` torch's AdamW."""
    b1, b2 = betas
    path, m, v, v_max = [], np.zeros_like(x), np.zeros_like(x), np.zeros_like(x)
    for step, g in enumerate(grads, start=1):
        if decoupled:
            x = x * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * x
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        if amsgrad:
            v_max = np.maximum(v_max, v)
            denom = np.sqrt(v_max) / math.sqrt(bc2) + eps
        else:
            denom = np.sqrt(v) / math.sqrt(bc2) + eps
        x = x - lr / bc1 * m / denom
        path.append(x)
    return np.stack(path)


def torch_nadam(x, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
    b1, b2 = betas
    path, m, v, mu_product = [], np.zeros_like(x), np.zeros_like(x), 1.0
    for step, g in enumerate(grads, start=1):
        g = g + weight_decay * x
        mu = b1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
        mu_product *= mu
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v / (1 - b2**step)) + eps
        x = x - lr * (1 - mu) / (1 - mu_product) * g / denom
        x = x - lr * mu_next / (1 - mu_product * mu_next) * m / denom
        path.append(x)
    return np.stack(path)


def torch_adamax(x, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    path, m, u = [], np.zeros_like(x), np.zeros_like(x)
    for step, g in enumerate(grads, start=1):
        g = g + weight_decay * x
        m = b1 * m + (1 - b1) * g
        u = np.maximum(b2 * u, np.abs(g) + eps)
        x = x - lr / (1 - b1**step) * m / u
        path.append(x)
    return np.stack(path)


def paper_lion(x, grads, lr, betas=(0.9, 0.99), weight_decay=0.0):
    """Algorithm 2 of Chen et al. (2023)."""
    b1, b2 = betas
    path, m = [], np.zeros_like(x)
    for g in grads:
        c = b1 * m + (1 - b1) * g
        x = x - lr * (np.sign(c) + weight_decay * x)
        m = b2 * m + (1 - b2) * g
        path.append(x)
    return np.stack(path)


# Every named optimizer at least once, with the options optax has no configuration for.
NUMPY_CASES = {
    "sgd_momentum_dampening_decay": (
        fo.sgd(0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
        lambda x, g: torch_sgd(x, g, 0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2),
    ),
    "sgd_nesterov_decay": (
        fo.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda x, g: torch_sgd(x, g, 0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    ),
    "momentum": (fo.momentum(0.05, beta=0.8), lambda x, g: torch_sgd(x, g, 0.05, momentum=0.8)),
    "nesterov": (
        fo.nesterov(0.05, beta=0.8),
        lambda x, g: torch_sgd(x, g, 0.05, momentum=0.8, nesterov=True),
    ),
    "adagrad_all_options": (
        fo.adagrad(0.1, lr_decay=0.01, weight_decay=1e-2, initial_accumulator_value=0.1),
        lambda x, g: torch_adagrad(
            x, g, 0.1, lr_decay=0.01, weight_decay=1e-2, initial_accumulator_value=0.1
        ),
    ),
    "rmsprop": (fo.rmsprop(0.01), lambda x, g: torch_rmsprop(x, g, 0.01)),
    "rmsprop_centered_momentum_decay": (
        fo.rmsprop(0.01, decay=0.9, weight_decay=1e-2, momentum=0.5, centered=True),
        lambda x, g: torch_rmsprop(
            x, g, 0.01, alpha=0.9, weight_decay=1e-2, momentum=0.5, centered=True
        ),
    ),
    "adadelta_decay": (
        fo.adadelta(0.5, rho=0.8, weight_decay=1e-2),
        lambda x, g: torch_adadelta(x, g, 0.5, rho=0.8, weight_decay=1e-2),
    ),
    "adam_amsgrad_decay": (
        fo.adam(0.01, b2=0.99, weight_decay=1e-2, amsgrad=True),
        lambda x, g: torch_adam(x, g, 0.01, betas=(0.9, 0.99), weight_decay=1e-2, amsgrad=True),
    ),
    "adamw": (
        fo.adamw(0.01),
        lambda x, g: torch_adam(x, g, 0.01, weight_decay=1e-2, decoupled=True),
    ),
    "adamw_amsgrad": (
        fo.adamw(0.01, weight_decay=0.1, amsgrad=True),
        lambda x, g: torch_adam(x, g, 0.01, weight_decay=0.1, amsgrad=True, decoupled=True),
    ),
    "nadam": (fo.nadam(), lambda x, g: torch_nadam(x, g, 2e-3)),
    "nadam_decay": (
        fo.nadam(0.01, weight_decay=1e-2, momentum_decay=1e-2),
        lambda x, g: torch_nadam(x, g, 0.01, weight_decay=1e-2, momentum_decay=1e-2),
    ),
    "adamax_decay": (
        fo.adamax(0.02, b2=0.99, weight_decay=1e-2),
        lambda x, g: torch_adamax(x, g, 0.02, betas=(0.9, 0.99), weight_decay=1e-2),
    ),
    "lion_decay": (
        fo.lion(1e-3, b1=0.95, b2=0.98, weight_decay=0.5),
        lambda x, g: paper_lion(x, g, 1e-3, betas=(0.95, 0.98), weight_decay=0.5),
    ),
}


@pytest.mark.parametrize("case", list(NUMPY_CASES))
def test_matches_torch_formulas_in_float64(case, x64):
    ours, reference = NUMPY_CASES[case]
    params, grads = _inputs(np.float64)
    got = flat(trajectory(ours, params, grads), 1)
    assert got.dtype == np.float64
    want = reference(flat(params), flat(grads, 1))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


# Rules optax has no configuration for; the others are checked in float32 against optax above.
FLOAT32_ONLY_NUMPY = [
    "sgd_momentum_dampening_decay",
    "adagrad_all_options",
    "adam_amsgrad_decay",
    "adamw_amsgrad",
    "nadam",
    "nadam_decay",
]


@pytest.mark.parametrize("case", FLOAT32_ONLY_NUMPY)
def test_matches_torch_formulas_in_float32(case):
    ours, reference = NUMPY_CASES[case]
    params, grads = _inputs(np.float32)
    got = flat(trajectory(ours, params, grads), 1)
    want = reference(flat(params), flat(grads, 1))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


# Two steps by hand on one coordinate: x₀ = 1, gradients g₁ then g₂ (not depending on x).
# Each expected value is written out from the update rule; ε terms are kept where they are
# not negligible in float32 and dropped (commented) where they are.

G1, G2 = 0.5, -0.25


def _nadam_two_steps(lr=0.1, b1=0.9, b2=0.999, psi=4e-3):
    mu = [b1 * (1 - 0.5 * 0.96 ** (t * psi)) for t in (1, 2, 3)]
    # Step 1: m = 0.05, v̂ = g₁² so √v̂ = 0.5.
    x1 = 1 - lr * ((1 - mu[0]) / (1 - mu[0]) * G1 + mu[1] / (1 - mu[0] * mu[1]) * 0.05) / 0.5
    # Step 2: m = 0.9·0.05 − 0.1·0.25 = 0.02, v = 0.999·0.00025 + 0.001·0.0625 = 0.00031225.
    denom = math.sqrt(0.00031225 / (1 - b2**2))
    p2, p3 = mu[0] * mu[1], mu[0] * mu[1] * mu[2]
    x2 = x1 - lr * ((1 - mu[1]) / (1 - p2) * G2 + mu[2] / (1 - p3) * 0.02) / denom
    return x1, x2


HAND_CASES = {
    # x ← x − 0.1·g.
    "sgd": (fo.sgd(0.1), (G1, G2), (0.95, 0.975)),
    # b₁ = g₁ = 0.5 (no dampening on step one); b₂ = 0.9·0.5 + 0.5·(−0.25) = 0.325.
    "sgd_dampening": (fo.sgd(0.1, momentum=0.9, dampening=0.5), (G1, G2), (0.95, 0.9175)),
    # b₁ = 0.5, d₁ = 0.5 + 0.45 = 0.95; b₂ = 0.45 − 0.25 = 0.2, d₂ = −0.25 + 0.18 = −0.07.
    "sgd_nesterov": (fo.sgd(0.1, momentum=0.9, nesterov=True), (G1, G2), (0.905, 0.912)),
    # g₁ = 0.5 + 0.1·1 = 0.6 → 0.94; g₂ = −0.25 + 0.1·0.94 = −0.156 → 0.9556.
    "sgd_weight_decay": (fo.sgd(0.1, weight_decay=0.1), (G1, G2), (0.94, 0.9556)),
    # v₁ = 0.5; v₂ = 0.9·0.5 − 0.25 = 0.2.
    "momentum": (fo.momentum(0.1, beta=0.9), (G1, G2), (0.95, 0.93)),
    "nesterov": (fo.nesterov(0.1, beta=0.9), (G1, G2), (0.905, 0.912)),
    # G₁ = 0.25 → d₁ = 0.5/0.5 = 1; G₂ = 0.3125 → d₂ = −0.25/√0.3125 (ε = 1e-10 dropped).
    "adagrad": (fo.adagrad(0.1), (G1, G2), (0.9, 0.9 + 0.1 * 0.25 / math.sqrt(0.3125))),
    # G₀ = 0.1, rate 0.1/(1 + (t − 1)·0.5).
    "adagrad_lr_decay": (
        fo.adagrad(0.1, lr_decay=0.5, initial_accumulator_value=0.1),
        (G1, G2),
        (
            1 - 0.1 * 0.5 / math.sqrt(0.35),
            1 - 0.1 * 0.5 / math.sqrt(0.35) + 0.1 / 1.5 * 0.25 / math.sqrt(0.4125),
        ),
    ),
    # v₁ = 0.01·0.25 = 0.0025, d₁ = 0.5/0.05 = 10; v₂ = 0.99·0.0025 + 0.01·0.0625 = 0.0031.
    "rmsprop": (fo.rmsprop(0.01), (G1, G2), (0.9, 0.9 + 0.01 * 0.25 / math.sqrt(0.0031))),
    # ḡ₁ = 0.005, v₁ − ḡ₁² = 0.002475; ḡ₂ = 0.00495 − 0.0025 = 0.00245; b₂ = 0.5·b₁ + d₂.
    "rmsprop_centered_momentum": (
        fo.rmsprop(0.01, momentum=0.5, centered=True),
        (G1, G2),
        (
            1 - 0.01 * 0.5 / math.sqrt(0.002475),
            1
            - 0.01 * 0.5 / math.sqrt(0.002475)
            - 0.01 * (0.5 * 0.5 / math.sqrt(0.002475) - 0.25 / math.sqrt(0.0031 - 0.00245**2)),
        ),
    ),
    # v₁ = 0.025, δ₁ = √1e-6/√(0.025 + 1e-6)·0.5, w₁ = 0.1·δ₁²; v₂ = 0.0225 + 0.00625.
    "adadelta": (
        fo.adadelta(),
        (G1, G2),
        (
            1 - 1e-3 / math.sqrt(0.025001) * 0.5,
            1
            - 1e-3 / math.sqrt(0.025001) * 0.5
            + math.sqrt(0.1 * (1e-3 / math.sqrt(0.025001) * 0.5) ** 2 + 1e-6)
            / math.sqrt(0.02875 + 1e-6)
            * 0.25,
        ),
    ),
    # m̂₁ = g₁, v̂₁ = g₁² → d₁ = 1 (ε dropped); m₂ = 0.02, v₂ = 0.00031225.
    "adam": (
        fo.adam(0.1),
        (G1, G2),
        (0.9, 0.9 - 0.1 * (0.02 / 0.19) / math.sqrt(0.00031225 / (1 - 0.999**2))),
    ),
    # g₂ = 0.01: v₂ = 0.999·0.00025 + 0.001·0.0001 = 0.00024985 < v₁, so v_max = v₁ = 0.00025
    # and torch divides by √(0.00025/(1 − 0.999²)); m₂ = 0.045 + 0.001 = 0.046.
    "adam_amsgrad": (
        fo.adam(0.1, amsgrad=True),
        (G1, 0.01),
        (0.9, 0.9 - 0.1 * (0.046 / 0.19) / math.sqrt(0.00025 / (1 - 0.999**2))),
    ),
    # x₁ = 1 − 0.1·(1 + 0.1·1) = 0.89; x₂ = x₁ − 0.1·(d₂ + 0.1·x₁), d₂ as Adam's.
    "adamw": (
        fo.adamw(0.1, weight_decay=0.1),
        (G1, G2),
        (0.89, 0.89 - 0.1 * ((0.02 / 0.19) / math.sqrt(0.00031225 / (1 - 0.999**2)) + 0.089)),
    ),
    "nadam": (fo.nadam(0.1), (G1, G2), _nadam_two_steps()),
    # m₁ = 0.05, n₁ = 0.5 (ε dropped) → d₁ = 0.05/(0.1·0.5) = 1; m₂ = 0.02, n₂ = 0.4995.
    "adamax": (fo.adamax(0.1), (G1, G2), (0.9, 0.9 - 0.1 * 0.02 / (0.19 * 0.4995))),
    # sign(0.1·0.5) = 1; m₁ = 0.005; sign(0.9·0.005 − 0.1·0.25) = −1; with λ = 0.5:
    # x₁ = 1 − 0.1·(1 + 0.5) = 0.85, x₂ = 0.85 − 0.1·(−1 + 0.425) = 0.9075.
    "lion": (fo.lion(0.1), (G1, G2), (0.9, 1.0)),
    "lion_weight_decay": (fo.lion(0.1, weight_decay=0.5), (G1, G2), (0.85, 0.9075)),
}


@pytest.mark.parametrize("case", list(HAND_CASES))
def test_two_steps_by_hand(case):
    opt, grads, expected = HAND_CASES[case]
    params = {"x": np.array([1.0], np.float32)}
    state = opt.init(params)
    for g, want in zip(grads, expected, strict=True):
        updates, state = opt.update({"x": np.array([g], np.float32)}, state, params)
        params = fo.apply_updates(params, updates)
        np.testing.assert_allclose(params["x"], [want], rtol=2e-6, atol=1e-7)
