"""K-FAC against a plain NumPy loop of Martens & Grosse's algorithm, and its preconditioner
against a dense solve with `numpy.kron`.

The loop takes the factors from their definitions (the per-example `J_sᵀ H_n J_s` of the
hand-written MLP), the exact Gauss-Newton matrix as a dense `Σ_n J_nᵀ H_n J_n / B` from
`jax.jacfwd` of the hand-written model, and the gradient from `jax.grad` of the same.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.nn as nn
from funcnet import losses, optim, train
from funcnet.diff import kronecker_factors, kronecker_layers

B, D, H, C = 6, 4, 3, 3


def _problem():
    x = np.asarray(jax.random.normal(jax.random.key(1), (B, D)))
    y = np.array([0, 1, 2, 1, 0, 2])
    keys = jax.random.split(jax.random.key(2), 5)
    params = {
        "dense_0": {"w": jax.random.normal(keys[0], (D, H)), "b": 0.1 * jnp.arange(H)},
        "scale": 1.0 + 0.1 * jax.random.normal(keys[1], (H,)),
        "dense_2": {"w": jax.random.normal(keys[2], (H, C)), "b": jnp.zeros(C)},
    }
    return x, y, params


def _model(params, x):
    h = jnp.tanh(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    return (h * params["scale"]) @ params["dense_2"]["w"] + params["dense_2"]["b"]


# The NumPy loop. θ is kept as the tuple (W1, b1, s, W2, b2).


def _unflat(theta):
    w1, b1, s, w2, b2 = theta
    return {"dense_0": {"w": w1, "b": b1}, "scale": s, "dense_2": {"w": w2, "b": b2}}


def _flat(tree):
    return [
        np.asarray(tree["dense_0"]["w"], np.float64),
        np.asarray(tree["dense_0"]["b"], np.float64),
        np.asarray(tree["scale"], np.float64),
        np.asarray(tree["dense_2"]["w"], np.float64),
        np.asarray(tree["dense_2"]["b"], np.float64),
    ]


def _vec(theta):
    return np.concatenate([t.ravel() for t in theta])


def _unvec(v, like):
    out, i = [], 0
    for t in like:
        out.append(v[i : i + t.size].reshape(t.shape))
        i += t.size
    return out


def _ce(f, y):
    return -jax.nn.log_softmax(f)[np.arange(len(y)), y].mean()


def _numpy_kfac(
    theta, x, y, steps, *, lr, momentum, damping, l2, decay, f1, f2, t2, curvature, clip=None
):
    lam, omega = damping, (19 / 20) ** t2
    loss = lambda th: float(_ce(_model(_unflat(th), x), y))
    h_obj = lambda th: loss(th) + 0.5 * l2 * sum(float(np.sum(t * t)) for t in th)
    a1 = g1 = a2 = g2 = v = None
    prev = [np.zeros_like(t) for t in theta]
    history = []
    for k in range(steps):
        w1, b1, s, w2, b2 = theta
        s1 = x @ w1 + b1
        hid = np.tanh(s1)
        z = hid * s
        f = z @ w2 + b2
        p = np.exp(f - f.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        onehot = np.eye(C)[y]
        if curvature == "ggn":
            hess = np.stack([np.diag(pn) - np.outer(pn, pn) for pn in p])
        else:
            u = p - onehot
            hess = np.einsum("ni,nj->nij", u, u)
        grads = _flat(jax.grad(lambda t: _ce(_model(t, x), y))(_unflat(theta)))
        if k % f1 == 0:
            xb = np.concatenate([x, np.ones((B, 1))], 1)
            zb = np.concatenate([z, np.ones((B, 1))], 1)
            jac1 = w2.T[None] * (s * (1 - hid**2))[:, None, :]  # (B, C, H) = ∂f/∂s1
            new = (
                xb.T @ xb / B,
                np.einsum("nci,ncd,ndj->ij", jac1, hess, jac1) / B,
                zb.T @ zb / B,
                hess.sum(0) / B,
            )
            if k == 0:
                a1, g1, a2, g2 = new
            else:
                a1, g1, a2, g2 = (
                    decay * o + (1 - decay) * n for o, n in zip((a1, g1, a2, g2), new, strict=True)
                )
        v = grads[2] ** 2 if k == 0 else decay * v + (1 - decay) * grads[2] ** 2
        gamma = lam + l2
        if k % f2 == 0:
            inverses = []
            for fa, fg in ((a1, g1), (a2, g2)):
                pi = np.sqrt((np.trace(fa) / len(fa)) / (np.trace(fg) / len(fg)))
                inverses.append(
                    (
                        np.linalg.inv(fa + pi * np.sqrt(gamma) * np.eye(len(fa))),
                        np.linalg.inv(fg + np.sqrt(gamma) / pi * np.eye(len(fg))),
                    )
                )
        gh = [g + l2 * t for g, t in zip(grads, theta, strict=True)]
        d1 = -inverses[0][0] @ np.concatenate([gh[0], gh[1][None]]) @ inverses[0][1]
        d2 = -inverses[1][0] @ np.concatenate([gh[3], gh[4][None]]) @ inverses[1][1]
        delta = [d1[:D], d1[D], -gh[2] / (v + gamma), d2[:H], d2[H]]
        # The exact Gauss-Newton matrix, dense.
        fn = lambda vec, like=theta: _model(_unflat(_unvec(vec, like)), x)
        jac = np.asarray(jax.jacfwd(fn)(jnp.asarray(_vec(theta))))  # (B, C, P)
        hess_true = np.stack([np.diag(pn) - np.outer(pn, pn) for pn in p])
        ggn = np.einsum("nci,ncd,ndj->ij", jac, hess_true, jac) / B
        dv, pv, gv = _vec(delta), _vec(prev), _vec(gh)
        if clip is not None:  # the F̆-norm of αΔ is α²·|∇hᵀΔ|
            nu = min(1.0, np.sqrt(clip / (lr**2 * abs(gv @ dv))))
            delta, dv = [nu * d for d in delta], nu * dv
        vecs = np.stack([dv, pv], 1)
        m, nn_ = vecs.T @ ggn @ vecs, vecs.T @ vecs
        b = vecs.T @ gv
        cmat = m + gamma * nn_
        if lr is None and momentum is None:
            if k == 0:
                alpha, mu = -b[0] / cmat[0, 0], 0.0
            else:
                alpha, mu = -np.linalg.solve(cmat, b)
        elif lr is not None and momentum is not None:
            alpha, mu = lr, momentum
        elif lr is None:
            mu = momentum
            alpha = -(b[0] + mu * cmat[0, 1]) / cmat[0, 0]
        else:
            alpha = lr
            mu = 0.0 if k == 0 else -(b[1] + alpha * cmat[0, 1]) / cmat[1, 1]
        step = [alpha * d + mu * q for d, q in zip(delta, prev, strict=True)]
        if k % t2 == 0:
            coef = np.array([alpha, mu])
            model = 0.5 * coef @ (m + l2 * nn_) @ coef + coef @ b
            moved = [t + st for t, st in zip(theta, step, strict=True)]
            rho = (h_obj(moved) - h_obj(theta)) / model
            lam = lam * omega if rho > 0.75 else (lam if rho >= 0.25 else lam / omega)
            lam = min(max(lam, 1e-8), 1e4)
        theta = [t + st for t, st in zip(theta, step, strict=True)]
        prev = step
        history.append((theta, lam))
    return history


CONFIGS = [
    dict(lr=None, momentum=None, damping=1e-1, l2=1e-3, decay=0.95, f1=1, f2=3, t2=2,
         curvature="ggn"),
    dict(lr=None, momentum=0.5, damping=1e-1, l2=0.0, decay=0.9, f1=2, f2=4, t2=3,
         curvature="empirical"),
    dict(lr=0.3, momentum=None, damping=1e-3, l2=1e-2, decay=0.8, f1=1, f2=1, t2=5,
         curvature="ggn"),
    dict(lr=0.5, momentum=0.5, damping=1e-2, l2=0.0, decay=0.95, f1=1, f2=2, t2=2,
         curvature="ggn", clip=0.05),
]  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS)
def test_kfac_equals_numpy_loop(x64, config):
    steps = 20
    x, y, params = _problem()
    want = _numpy_kfac(_flat(params), x, y, steps, **config)
    opt = optim.kfac(
        config["lr"],
        config["momentum"],
        damping=config["damping"],
        l2_reg=config["l2"],
        factor_decay=config["decay"],
        curvature_update_frequency=config["f1"],
        inverse_update_frequency=config["f2"],
        damping_adaptation_interval=config["t2"],
        curvature=config["curvature"],
        norm_constraint=config.get("clip"),
    )
    outputs_fn = lambda p: _model(p, x)
    loss_of_outputs = lambda f: losses.softmax_cross_entropy(f, y)
    value_fn = lambda p: loss_of_outputs(outputs_fn(p))

    @jax.jit
    def run(params):
        def body(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(value_fn)(params)
            updates, state = opt.update(
                grads,
                state,
                params,
                value=value,
                value_fn=value_fn,
                outputs_fn=outputs_fn,
                loss_of_outputs=loss_of_outputs,
            )
            params = optim.apply_updates(params, updates)
            return (params, state), (params, state.damping)

        _, trace = jax.lax.scan(body, (params, opt.init(params)), None, length=steps)
        return trace

    got_params, got_damping = run(params)
    for k, (theta, lam) in enumerate(want):
        got = _flat(jax.tree.map(lambda leaf, k=k: leaf[k], got_params))
        for g, w in zip(got, theta, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10, err_msg=f"step {k + 1}")
        np.testing.assert_allclose(got_damping[k], lam, rtol=1e-10)
    assert len({float(d) for d in got_damping}) > 1  # the damping did adapt


def test_preconditioner_is_the_dense_kronecker_solve(x64):
    model = nn.serial(nn.conv(3, (2, 2), strides=2), nn.relu, nn.flatten(), nn.dense(3))
    x = jax.random.normal(jax.random.key(3), (4, 5, 5, 2))
    y = jnp.array([0, 1, 2, 0])
    _, params, state = model.init(jax.random.key(4), x.shape)
    outputs_fn = lambda p: model.apply(p, state, x)[0]
    loss = lambda f: losses.softmax_cross_entropy(f, y)
    grads = jax.grad(lambda p: loss(outputs_fn(p)))(params)
    gamma = 0.3
    opt = optim.scale_by_kfac(damping=gamma)
    u, _ = jax.jit(opt.update, static_argnames=("outputs_fn", "loss_of_outputs"))(
        grads, opt.init(params), params, outputs_fn=outputs_fn, loss_of_outputs=loss
    )
    factors = jax.jit(lambda p: kronecker_factors(outputs_fn, p, loss_of_outputs=loss))(params)
    layers = kronecker_layers(outputs_fn, params)
    for name, layer in layers.items():
        a, g = np.asarray(factors[name].a), np.asarray(factors[name].g)
        pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
        dense = np.kron(
            a + pi * np.sqrt(gamma) * np.eye(len(a)), g + np.sqrt(gamma) / pi * np.eye(len(g))
        )
        parent = name.split("/")[0]
        gw, gb = np.asarray(grads[parent]["w"]), np.asarray(grads[parent]["b"])
        wbar = np.concatenate([gw.reshape(-1, layer.out_dim), gb[None]])
        want = np.linalg.solve(dense, wbar.reshape(-1)).reshape(wbar.shape)
        np.testing.assert_allclose(u[parent]["w"].reshape(-1, layer.out_dim), want[:-1], atol=1e-12)
        np.testing.assert_allclose(u[parent]["b"], want[-1], atol=1e-12)


def test_fit_trains_on_digits():
    (x, y), _ = train_split()
    model = nn.serial(nn.dense(16), nn.relu, nn.dense(10))
    result = train.fit(
        model,
        optim.kfac(inverse_update_frequency=5),
        (x, y),
        loss_fn=losses.softmax_cross_entropy,
        epochs=2,
        batch_size=64,
        key=jax.random.key(0),
        progress=False,
    )
    loss = result.history["loss"]
    assert loss[-1] < 0.5 * loss[0]


def train_split():
    from funcnet import data

    split = data.digits()
    x_train, y_train = split[0][:512], split[1][:512]
    (x_train,) = data.standardize(x_train)
    return (x_train, y_train), None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: optim.kfac(damping=0.0), "kfac: damping must be a finite number > 0, got 0.0"),
        (lambda: optim.kfac(inverse_update_frequency=2.0),
         "kfac: inverse_update_frequency must be a positive int, got 2.0"),
        (lambda: optim.scale_by_kfac(curvature_update_frequency=0),
         "scale_by_kfac: curvature_update_frequency must be a positive int, got 0"),
        (lambda: optim.kfac(damping_adaptation_interval=-1),
         "damping_adaptation_interval must be a positive int"),
        (lambda: optim.kfac(curvature="hessian"), "kfac: curvature must be one of 'ggn'"),
        (lambda: optim.kfac(likelihood="poisson"), "kfac: likelihood must be one of"),
        (lambda: optim.kfac(norm_constraint=1.0), "norm_constraint acts with a fixed"),
        (lambda: optim.kfac(damping=1e5), r"damping must lie in \[min_damping, max_damping\]"),
    ],
)  # fmt: skip
def test_bad_settings_are_one_line(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_factor_above_max_dim_names_the_layer():
    params = {"dense_0": {"w": jnp.ones((8, 3)), "b": jnp.ones(3)}}
    with pytest.raises(
        ValueError,
        match=r"'dense_0/w' has an input factor of 9 × 9 > max_factor_dim=8: raise max_factor_dim",
    ) as info:
        optim.kfac(max_factor_dim=8).init(params)
    assert "\n" not in str(info.value)


def test_update_without_extra_args_says_what_to_pass():
    _, _, params = _problem()
    opt = optim.kfac()
    with pytest.raises(
        TypeError, match=r"kfac\.update needs the keyword arguments `outputs_fn`"
    ) as info:
        opt.update(params, opt.init(params), params)
    assert "\n" not in str(info.value)


def test_a_w_used_twice_is_refused_with_the_fix():
    params = {"w": jnp.eye(3), "b": jnp.zeros(3)}
    x = jnp.ones((2, 3))
    outputs_fn = lambda p: x @ p["w"] @ p["w"] + p["b"]
    opt = optim.scale_by_kfac()
    with pytest.raises(
        ValueError,
        match=r"layer 'w' .* is not used once as a dense or conv kernel.*kronecker_layers",
    ) as info:
        opt.update(params, opt.init(params), params, outputs_fn=outputs_fn,
                   loss_of_outputs=jnp.mean)  # fmt: skip
    assert "\n" not in str(info.value)
