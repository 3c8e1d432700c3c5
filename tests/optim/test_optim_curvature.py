"""Curvature optimizers against NumPy loops of their papers' algorithms, and the extra-args
protocol (`chain` forwarding, the training step passing them, the plain step unchanged).

Every reference below is written from the paper (Martens 2010; Liu et al. 2023, Algorithm 3;
Yao et al. 2021, Algorithm 1 and its released code), with the Hessian or Gauss-Newton matrix
formed in closed form in NumPy. The random probes and sampled labels come from the same keys,
so the two sides see the same random numbers. Each comparison is also made against a wrong
variant of the reference, which must miss by far more than the tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train
from funcnet.optim.curvature import _probe_like
from funcnet.train.step import optimizer_key

RTOL = 1e-9  # float64 agreement of the library with the NumPy loops
STEPS = 5


def tree_to_flat(tree):
    """Leaves in `jax.tree.leaves` order (dict keys sorted), flattened and concatenated."""
    return np.concatenate([np.asarray(leaf).ravel() for leaf in jax.tree.leaves(tree)])


def run_library(opt, params, steps, value_fn, *, key_base=None, **functions):
    """`steps` jitted updates of `opt` from `params`, given `value`, `value_fn`, the
    `functions` and (with `key_base`) the key ``key(key_base + t)`` at step t. Returns the
    params after each step (flat) and the states."""

    @jax.jit
    def step(params, state, key):
        value, grads = jax.value_and_grad(value_fn)(params)
        extra = dict(value=value, value_fn=value_fn, **functions)
        if key is not None:
            extra["key"] = key
        updates, state = opt.update(grads, state, params, **extra)
        return optim.apply_updates(params, updates), state

    state, path, states = opt.init(params), [], []
    for t in range(1, steps + 1):
        key = None if key_base is None else jax.random.key(key_base + t)
        params, state = step(params, state, key)
        path.append(tree_to_flat(params))
        states.append(state)
    return np.array(path), states


def relative_gap(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# Hessian-free on a tanh least-squares problem: L(θ) = ½·mean((tanh(Aθ) − y)²), A = [1, X].

N, D = 12, 3
_rng = np.random.default_rng(0)
X_REG = _rng.normal(size=(N, D))
Y_REG = np.tanh(X_REG @ np.array([1.5, -2.0, 0.7]) + 0.3) + 0.05 * _rng.normal(size=N)
A_REG = np.hstack([np.ones((N, 1)), X_REG])  # "b" comes first in leaf order


def reg_outputs(params):
    return jnp.tanh(jnp.asarray(X_REG) @ params["w"] + params["b"][0])


def reg_loss_of_outputs(z):
    return 0.5 * jnp.mean((z - jnp.asarray(Y_REG)) ** 2)


def reg_numpy(theta):
    """Loss, gradient, Gauss-Newton matrix and Hessian of the tanh regression at `theta`."""
    z = np.tanh(A_REG @ theta)
    r, dz = z - Y_REG, 1 - z**2
    loss = 0.5 * np.mean(r**2)
    grad = A_REG.T @ (r * dz) / N
    gn = (A_REG * dz[:, None] ** 2).T @ A_REG / N
    hess = gn + (A_REG * (r * -2 * z * dz)[:, None]).T @ A_REG / N
    return loss, grad, gn, hess


def hessian_free_numpy(theta, steps, *, curvature, damping, iters, tol, zeta, rate, wrong=False):
    """Martens (2010): damped CG from the decayed previous direction, Levenberg–Marquardt λ."""
    path, ratios, dampings, previous = [], [], [], np.zeros_like(theta)
    for _ in range(steps):
        loss, g, gn, hess = reg_numpy(theta)
        curv = gn if curvature == "gauss_newton" else hess
        a = curv + damping * np.eye(len(theta))
        x = (0.0 if wrong else zeta) * previous
        r = a @ x + g
        d, rr, i = -r, r @ r, 0
        while i < iters and rr > tol**2 * (g @ g):
            ad = a @ d
            if d @ ad <= 0:
                break
            alpha = rr / (d @ ad)
            x, r = x + alpha * d, r + alpha * ad
            rr, rr_old = r @ r, rr
            d = -r + rr / rr_old * d
            i += 1
        s = rate * x
        q = g @ s + 0.5 * s @ curv @ s
        change = reg_numpy(theta + s)[0] - loss
        rho = change / q if q < 0 else 0.0
        up, down = (2 / 3, 1.5) if wrong else (1.5, 2 / 3)
        damping = damping * up if rho < 0.25 else damping * down if rho > 0.75 else damping
        theta, previous = theta + s, x
        path.append(theta)
        ratios.append(rho)
        dampings.append(damping)
    return np.array(path), np.array(ratios), np.array(dampings)


@pytest.mark.parametrize("curvature", ["gauss_newton", "hessian"])
def test_hessian_free_matches_martens_loop(x64, curvature):
    settings = dict(damping=1e-3, iters=3, tol=1e-6, zeta=0.95, rate=1.0)
    params = {"b": jnp.array([-1.0]), "w": jnp.array([-1.0, 1.0, 2.0])}
    opt = optim.hessian_free(
        curvature=curvature,
        initial_damping=settings["damping"],
        cg_iters=settings["iters"],
        cg_tol=settings["tol"],
        warm_start=settings["zeta"],
    )
    path, states = run_library(
        opt,
        params,
        STEPS,
        lambda q: reg_loss_of_outputs(reg_outputs(q)),
        outputs_fn=reg_outputs,
        loss_of_outputs=reg_loss_of_outputs,
    )
    ratios = [float(state.ratio) for state in states]
    dampings = [float(state.damping) for state in states]

    start = np.array([-1.0, -1.0, 1.0, 2.0])
    ref, ref_ratios, ref_dampings = hessian_free_numpy(
        start, STEPS, curvature=curvature, **settings
    )
    assert relative_gap(path, ref) < RTOL
    np.testing.assert_allclose(ratios, ref_ratios, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dampings, ref_dampings, rtol=1e-12)
    # Both branches of the damping rule run, and the loss falls.
    moves = np.sign(np.round(np.diff(np.log([settings["damping"], *ref_dampings])), 6))
    assert {-1.0, 1.0} <= set(moves.tolist())
    assert reg_numpy(ref[-1])[0] < reg_numpy(start)[0]
    wrong, _, _ = hessian_free_numpy(start, STEPS, curvature=curvature, wrong=True, **settings)
    assert relative_gap(wrong, ref) > 1e4 * RTOL


def test_hessian_free_gauss_newton_differs_from_hessian(x64):
    """The two curvatures give different steps here (the residuals are not zero)."""
    _, _, gn, hess = reg_numpy(np.array([0.1, 0.2, -0.1, 0.3]))
    assert np.max(np.abs(gn - hess)) > 1e-2 * np.max(np.abs(gn))


# A quartic over a conv kernel and a bias: f(θ) = ½θᵀMθ + cᵀθ + ¼·κ·Σθ⁴, H = M + 3κ·diag(θ²).

KERNEL, BIAS = (2, 2, 1, 3), (3,)
SIZE = 12 + 3
_rng = np.random.default_rng(1)
_root = _rng.normal(size=(SIZE, SIZE)) / np.sqrt(SIZE)
M_Q = _root @ _root.T + 0.2 * np.eye(SIZE)
C_Q = _rng.normal(size=SIZE)
KAPPA = 0.5


def quartic(params):
    theta = jnp.concatenate([params["bias"].ravel(), params["kernel"].ravel()])
    return (
        0.5 * theta @ jnp.asarray(M_Q) @ theta
        + jnp.asarray(C_Q) @ theta
        + KAPPA / 4 * jnp.sum(theta**4)
    )


def quartic_numpy(theta):
    grad = M_Q @ theta + C_Q + KAPPA * theta**3
    hess = M_Q + 3 * KAPPA * np.diag(theta**2)
    return grad, hess


def quartic_start():
    rng = np.random.default_rng(2)
    return {
        "bias": jnp.asarray(rng.normal(size=BIAS)),
        "kernel": jnp.asarray(rng.normal(size=KERNEL)),
    }


def probe(t, params, distribution):
    return tree_to_flat(_probe_like(jax.random.key(100 + t), params, distribution))


def sophia_h_numpy(theta, params, steps, *, b1, b2, gamma, eps, k, wd, rate, distribution, wrong):
    """Liu et al. (2023), Algorithm 3 with the Hutchinson estimator."""
    m, h, path, clipped = np.zeros_like(theta), np.zeros_like(theta), [], []
    for t in range(1, steps + 1):
        g, hess = quartic_numpy(theta)
        m = b1 * m + (1 - b1) * g
        if (t % k == 1 or k == 1) if not wrong else True:
            u = probe(t, params, distribution)
            h = b2 * h + (1 - b2) * u * (hess @ u)
        theta = theta - rate * wd * theta
        ratio = m / np.maximum(gamma * h, eps)
        clipped.append(np.mean(np.abs(ratio) > 1))
        theta = theta - rate * np.clip(ratio, -1, 1)
        path.append(theta)
    return np.array(path), clipped


def test_sophia_h_matches_algorithm_3(x64, distribution="gaussian"):
    """With the paper's Gaussian probes (Rademacher probes are AdaHessian's, checked below)."""
    settings = dict(b1=0.9, b2=0.8, gamma=0.5, eps=1e-12, k=2, wd=0.1, rate=0.1)
    params = quartic_start()
    opt = optim.sophia(
        settings["rate"],
        b1=settings["b1"],
        b2=settings["b2"],
        gamma=settings["gamma"],
        eps=settings["eps"],
        weight_decay=settings["wd"],
        update_every=settings["k"],
        estimator="hutchinson",
        probe=distribution,
    )
    path, _ = run_library(opt, params, STEPS, quartic, key_base=100)
    theta = tree_to_flat(params)
    common = dict(distribution=distribution, **settings)
    ref, clipped = sophia_h_numpy(theta, params, STEPS, wrong=False, **common)
    assert relative_gap(path, ref) < RTOL
    assert 0 < np.mean(clipped) < 1  # some coordinates clipped, some not
    wrong, _ = sophia_h_numpy(theta, params, STEPS, wrong=True, **common)
    assert relative_gap(wrong, ref) > 1e4 * RTOL


# Sophia-G on softmax regression: z = X W + b, labels drawn from softmax(z).

C = 4
_rng = np.random.default_rng(3)
X_CLS = _rng.normal(size=(10, D))
Y_CLS = _rng.integers(0, C, size=10)


def cls_outputs(params):
    return jnp.asarray(X_CLS) @ params["w"] + params["b"]


def sophia_g_numpy(params, steps, *, b1, b2, gamma, eps, k, wd, rate, wrong):
    """Liu et al. (2023), Algorithm 3 with the Gauss-Newton-Bartlett estimator (Algorithm 2)."""
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    mw, mb, hw, hb = np.zeros_like(w), np.zeros_like(b), np.zeros_like(w), np.zeros_like(b)
    path, clipped = [], []
    n = len(X_CLS)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    for t in range(1, steps + 1):
        z = X_CLS @ w + b
        residual = (softmax(z) - np.eye(C)[Y_CLS]) / n
        gw, gb = X_CLS.T @ residual, residual.sum(0)
        mw, mb = b1 * mw + (1 - b1) * gw, b1 * mb + (1 - b1) * gb
        if t % k == 1 or k == 1:
            sampled = np.asarray(jax.random.categorical(jax.random.key(200 + t), jnp.asarray(z)))
            hat = (softmax(z) - np.eye(C)[sampled]) / n
            scale = 1 if wrong else n
            hw = b2 * hw + (1 - b2) * scale * (X_CLS.T @ hat) ** 2
            hb = b2 * hb + (1 - b2) * scale * hat.sum(0) ** 2
        ratio_w, ratio_b = mw / np.maximum(gamma * hw, eps), mb / np.maximum(gamma * hb, eps)
        clipped.append(np.mean(np.abs(np.concatenate([ratio_b, ratio_w.ravel()])) > 1))
        w = w - rate * wd * w - rate * np.clip(ratio_w, -1, 1)
        b = b - rate * wd * b - rate * np.clip(ratio_b, -1, 1)
        path.append(np.concatenate([b, w.ravel()]))
    return np.array(path), clipped


def test_sophia_g_matches_algorithm_3(x64):
    settings = dict(b1=0.9, b2=0.8, gamma=2.0, eps=1e-12, k=2, wd=0.1, rate=0.1)
    params = {"b": jnp.zeros(C), "w": jnp.asarray(np.random.default_rng(4).normal(size=(D, C)))}
    opt = optim.sophia(
        settings["rate"],
        b1=settings["b1"],
        b2=settings["b2"],
        gamma=settings["gamma"],
        eps=settings["eps"],
        weight_decay=settings["wd"],
        update_every=settings["k"],
        estimator="gnb",
    )

    path, _ = run_library(
        opt,
        params,
        STEPS,
        lambda q: losses.softmax_cross_entropy(cls_outputs(q), jnp.asarray(Y_CLS)),
        key_base=200,
        outputs_fn=cls_outputs,
    )
    ref, clipped = sophia_g_numpy(params, STEPS, wrong=False, **settings)
    assert relative_gap(path, ref) < RTOL
    assert 0 < np.mean(clipped) < 1, clipped
    wrong, _ = sophia_g_numpy(params, STEPS, wrong=True, **settings)
    assert relative_gap(wrong, ref) > 1e4 * RTOL


def adahessian_numpy(theta, params, steps, *, b1, b2, eps, power, wd, rate, wrong):
    """Yao et al. (2021), Algorithm 1, with the released code's |D| averaged over the window."""
    m, v, path = np.zeros_like(theta), np.zeros_like(theta), []
    for t in range(1, steps + 1):
        g, hess = quartic_numpy(theta)
        z = probe(t, params, "rademacher")
        diag = z * (hess @ z)
        if not wrong:
            kernel = np.abs(diag[3:]).reshape(KERNEL).mean(axis=(0, 1), keepdims=True)
            diag[3:] = np.broadcast_to(kernel, KERNEL).ravel()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * diag**2
        denom = (np.sqrt(v) / np.sqrt(1 - b2**t)) ** power + eps
        theta = theta - rate * (m / (1 - b1**t) / denom + wd * theta)
        path.append(theta)
    return np.array(path)


def test_adahessian_matches_algorithm_1(x64, power=0.5):
    """With a Hessian power other than 1, so that where the power acts is checked too."""
    settings = dict(b1=0.9, b2=0.99, eps=1e-4, power=power, wd=0.01, rate=0.05)
    params = quartic_start()
    opt = optim.adahessian(
        settings["rate"],
        b1=settings["b1"],
        b2=settings["b2"],
        eps=settings["eps"],
        hessian_power=power,
        weight_decay=settings["wd"],
    )
    path, _ = run_library(opt, params, STEPS, quartic, key_base=100)
    theta = tree_to_flat(params)
    ref = adahessian_numpy(theta, params, STEPS, wrong=False, **settings)
    assert relative_gap(path, ref) < RTOL
    wrong = adahessian_numpy(theta, params, STEPS, wrong=True, **settings)
    assert relative_gap(wrong, ref) > 1e4 * RTOL


@pytest.mark.parametrize(
    ("opt", "missing"),
    [
        (optim.sophia(), ["outputs_fn", "key"]),
        (optim.sophia(estimator="hutchinson"), ["value_fn", "key"]),
        (optim.adahessian(), ["value_fn", "key"]),
        (optim.hessian_free(), ["value", "value_fn", "outputs_fn", "loss_of_outputs"]),
    ],
)
def test_missing_extra_args_are_named(opt, missing):
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    with pytest.raises(TypeError) as error:
        opt.update(params, state, params)
    for name in missing:
        assert f"`{name}`" in str(error.value)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="estimator"):
        optim.sophia(estimator="fisher")
    with pytest.raises(ValueError, match="update_every"):
        optim.sophia(update_every=0)
    with pytest.raises(ValueError, match="hessian_power"):
        optim.adahessian(hessian_power=2.0)
    with pytest.raises(ValueError, match="curvature"):
        optim.hessian_free(curvature="fisher")


# The protocol.


def recorder(seen):
    """An extra-args transformation that records the names it is given and doubles `g`."""

    def update(updates, state, params=None, **extra_args):
        seen.append(sorted(extra_args))
        return jax.tree.map(lambda g: 2 * g, updates), state

    return optim.GradientTransformationExtraArgs(lambda params: optim.EmptyState(), update)


def strict_plain():
    """A plain transformation whose update takes no keywords at all (adds 1)."""

    def update(updates, state, params):
        return jax.tree.map(lambda g: g + 1, updates), state

    return optim.GradientTransformation(lambda params: optim.EmptyState(), update)


def test_chain_forwards_extra_args_only_to_those_that_take_them():
    import optax

    seen = []
    chained = optim.chain(strict_plain(), recorder(seen), optax.scale(3.0), strict_plain())
    assert optim.accepts_extra_args(chained)
    params = {"w": jnp.zeros(2)}
    updates, _ = chained.update({"w": jnp.ones(2)}, chained.init(params), params, value=1.0, key=0)
    np.testing.assert_array_equal(updates["w"], [13.0, 13.0])  # ((1 + 1)·2·3) + 1
    assert seen == [["key", "value"]]
    plain = optim.chain(strict_plain(), optax.scale(3.0))
    assert not optim.accepts_extra_args(plain)
    assert optim.accepts_extra_args(optim.with_extra_args_support(plain))


def test_masked_hessian_free_takes_the_newton_step_of_its_block(x64):
    """On L(a, b) = ½ θᵀAθ − cᵀθ with θ = (a, b), a mask over `a` gives hessian-free the
    curvature of that block with `b` held: the step on `a` is −(A_aa + λI)⁻¹ ∇_a L (CG is
    exact in 3 products on 3 unknowns; λ = the initial damping), and `b` gets its gradient."""
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 5))
    big_a, c = m @ m.T + 5 * np.eye(5), rng.normal(size=5)

    def value_fn(params):
        theta = jnp.concatenate([params["a"], params["b"]])
        return 0.5 * theta @ big_a @ theta - c @ theta

    hf = optim.hessian_free(curvature="hessian", initial_damping=0.5, cg_iters=3, cg_tol=0.0)
    opt = optim.masked(hf, {"a": True, "b": False})
    assert optim.accepts_extra_args(opt)
    params = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=2))}
    value, grads = jax.value_and_grad(value_fn)(params)
    updates, _ = opt.update(
        grads, opt.init(params), params, value=value, value_fn=value_fn, grad=grads
    )
    newton = -np.linalg.solve(big_a[:3, :3] + 0.5 * np.eye(3), np.asarray(grads["a"]))
    np.testing.assert_allclose(updates["a"], newton, rtol=1e-10)
    np.testing.assert_array_equal(updates["b"], grads["b"])
    with pytest.raises(ValueError, match=r"^masked: the extra args value_fn and outputs_fn"):
        opt.update(grads, opt.init(params), None, value=value, value_fn=value_fn)


def test_optax_extra_args_transformations_are_recognised():
    import optax

    wrapped = optax.with_extra_args_support(optax.scale(2.0))
    assert optim.accepts_extra_args(wrapped)
    chained = optim.chain(wrapped, optim.adam(1e-3))
    params = {"w": jnp.ones(2)}
    chained.update(params, chained.init(params), params, value=jnp.float32(0.0))


MODEL = nn.serial(nn.dense(8), nn.tanh, nn.dropout(0.1), nn.dense(3))


def blobs(n=64):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, n)
    x = 2.0 * np.eye(3)[y] + rng.normal(size=(n, 3))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def hand_written_step(model, opt, loss_fn):
    """The step `make_step` documents, written out: what a plain optimizer must compile to."""

    def step(state, batch):
        x, y = batch

        def objective(params):
            outputs, model_state = model.apply(
                params, state.model_state, x, key=train.step_key(state), train=True
            )
            return loss_fn(outputs, y), (model_state, {})

        (loss, (model_state, values)), grads = jax.value_and_grad(objective, has_aux=True)(
            state.params
        )
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        new = train.TrainState(
            params=optim.apply_updates(state.params, updates),
            model_state=model_state,
            opt_state=opt_state,
            step=(state.step + 1).astype(jnp.int32),
            key=state.key,
        )
        return new, {"loss": loss, **values}

    return step


def test_plain_optimizer_step_is_the_hand_written_program():
    loss_fn, batch = losses.softmax_cross_entropy, blobs(16)
    for opt, same in [
        (optim.adam(1e-2), True),
        (optim.with_extra_args_support(optim.adam(1e-2)), False),
    ]:
        state = train.init_train_state(MODEL, opt, jax.random.key(0), (16, 3))
        step = train.train_step(MODEL, opt, loss_fn=loss_fn, metrics={})
        ours = str(jax.make_jaxpr(step)(state, batch))
        reference = str(jax.make_jaxpr(hand_written_step(MODEL, opt, loss_fn))(state, batch))
        assert (ours == reference) is same


def test_optimizer_key_is_fresh_and_apart_from_the_model_and_shuffle_keys():
    state = train.init_train_state(MODEL, optim.sgd(), jax.random.key(0), (4, 3))
    keys = [optimizer_key(state), optimizer_key(state._replace(step=state.step + 1))]
    others = [
        train.step_key(state),
        train.shuffle_key(state),
        jax.random.fold_in(train.step_key(state), 0),
    ]
    data = [tuple(np.asarray(jax.random.key_data(k)).tolist()) for k in keys + others]
    assert len(set(data)) == len(data)


@pytest.mark.parametrize(
    "opt",
    [optim.sophia(0.05, weight_decay=0.0, update_every=2), optim.hessian_free(cg_iters=5)],
    ids=["sophia_g", "hessian_free"],
)
def test_make_step_passes_extra_args_and_the_loss_falls(opt):
    x, y = blobs()
    weights = jnp.ones(len(y)).at[-8:].set(0.0)  # a padded batch: the last rows do not count
    step = train.make_step(MODEL, opt, loss_fn=losses.softmax_cross_entropy)
    state = train.init_train_state(MODEL, opt, jax.random.key(1), x.shape)
    first = None
    for _ in range(12):
        state, metrics = step(state, (x, y, weights))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < 0.8 * first


def test_fit_trains_with_sophia_h_and_clipping():
    x, y = blobs()
    result = train.fit(
        MODEL,
        optim.sophia(0.05, estimator="hutchinson", weight_decay=0.0, update_every=2),
        (x, y),
        loss_fn=losses.softmax_cross_entropy,
        epochs=3,
        batch_size=16,
        clip_norm=10.0,
        key=jax.random.key(2),
        progress=False,
    )
    loss = result.history["loss"]
    assert loss[-1] < 0.8 * loss[0]
    assert int(result.state.opt_state[1][0].count) == 3 * 4


def test_fit_skips_non_finite_steps_with_a_curvature_optimizer():
    # apply_if_finite, outermost in skip mode, passes the step's extra args on.
    x, y = blobs()
    opt = optim.sophia(0.05, estimator="hutchinson", weight_decay=0.0, update_every=2)
    guarded = optim.apply_if_finite(opt, 3)
    assert optim.accepts_extra_args(guarded)
    assert not optim.accepts_extra_args(optim.apply_if_finite(optim.adam(1e-3), 3))
    result = train.fit(
        MODEL,
        opt,
        (x, y),
        loss_fn=losses.softmax_cross_entropy,
        epochs=2,
        batch_size=16,
        key=jax.random.key(2),
        on_nonfinite="skip",
        progress=False,
    )
    assert result.history["loss"][-1] < result.history["loss"][0]
