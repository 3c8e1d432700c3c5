"""Influence functions against dense solves, and against leave-one-out retraining.

The references: (C + λI)⁻¹v from `numpy.linalg.solve` of the Hessian formed by `jax.hessian`
(or the Gauss-Newton matrix formed from `jax.jacobian` and the loss's Hessian in the outputs);
and, on softmax regression (convex, so the formula's assumptions hold), the change of the
test loss when each training point is removed and the model retrained to its exact optimum by
Newton's method.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import funcnet as fn
from funcnet.diff import influence, inverse_hvp, self_influence

pytestmark = pytest.mark.usefixtures("x64")


def _mlp():
    net = fn.nn.serial(fn.nn.dense(5), fn.nn.tanh, fn.nn.dense(3))
    _, params, state = net.init(jax.random.key(0), (12, 4))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(1), (12, 4), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (12,), 0, 3)
    model = lambda p, x: net.apply(p, state, x)[0]
    return model, fn.losses.softmax_cross_entropy, params, (x, y)


def _dense_curvature(model, loss, params, data, curvature):
    flat, unravel = ravel_pytree(params)
    x, y = data
    if curvature == "hessian":
        return np.asarray(jax.hessian(lambda t: loss(model(unravel(t), x), y))(flat))
    out = model(params, x)
    jac = jax.jacobian(lambda t: model(unravel(t), x))(flat).reshape(out.size, -1)
    h_out = jax.hessian(lambda o: loss(o.reshape(out.shape), y))(out.reshape(-1))
    return np.asarray(jac.T @ h_out @ jac)


def _vectors(params, k, seed=3):
    flat, unravel = ravel_pytree(params)
    rows = jax.random.normal(jax.random.key(seed), (k, flat.size), flat.dtype)
    return rows, jax.vmap(unravel)(rows)


@pytest.mark.parametrize("curvature", ["hessian", "ggn"])
@pytest.mark.parametrize(
    ("method", "settings", "rtol"),
    [
        ("exact", {}, 1e-10),
        ("cg", {"cg_iters": 200, "cg_tol": 1e-14}, 1e-8),
        ("lissa", {"lissa_depth": 3000, "key": jax.random.key(5)}, 1e-6),
    ],
)
def test_inverse_hvp_equals_dense_solve(curvature, method, settings, rtol):
    model, loss, params, data = _mlp()
    damping = 1.0 if curvature == "hessian" else 0.1  # the damped Hessian is positive definite
    matrix = _dense_curvature(model, loss, params, data, curvature) + damping * np.eye(43)
    assert np.linalg.eigvalsh(matrix).min() > 0
    rows, vectors = _vectors(params, 3)
    got = inverse_hvp(
        model, loss, params, data, vectors, method=method, curvature=curvature, damping=damping,
        **settings,
    )  # fmt: skip
    got = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(got))
    want = np.linalg.solve(matrix, np.asarray(rows).T).T
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max())


def test_stochastic_lissa_averages_to_the_solve():
    model, loss, params, data = _mlp()
    matrix = _dense_curvature(model, loss, params, data, "ggn") + 0.2 * np.eye(43)
    rows, vectors = _vectors(params, 1)
    got = inverse_hvp(
        model, loss, params, data, vectors, method="lissa", damping=0.2, batch_size=6,
        lissa_depth=800, lissa_repeats=16, key=jax.random.key(7),
    )  # fmt: skip
    got = np.asarray(ravel_pytree(jax.tree.map(lambda a: a[0], got))[0])
    want = np.linalg.solve(matrix, np.asarray(rows[0]))
    # Minibatch curvature makes each run noisy; the average lands near the solve.
    assert np.corrcoef(got, want)[0, 1] > 0.99
    assert np.linalg.norm(got - want) < 0.2 * np.linalg.norm(want)


def test_influence_and_self_influence_are_the_bilinear_forms():
    model, loss, params, data = _mlp()
    test = (data[0][:4] + 0.1, data[1][:4])
    matrix = _dense_curvature(model, loss, params, data, "ggn") + 0.1 * np.eye(43)

    def grads(d):
        one = lambda x, y: ravel_pytree(
            jax.grad(lambda p: loss(model(p, x[None]), y[None]))(params)
        )[0]
        return np.asarray(jax.vmap(one)(*d))

    g_train, g_test = grads(data), grads(test)
    want = g_test @ np.linalg.solve(matrix, g_train.T) / 12
    got = influence(model, loss, params, data, test, method="exact", damping=0.1)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-10, atol=1e-14)
    want_self = np.einsum("np,np->n", g_train, np.linalg.solve(matrix, g_train.T).T)
    got_self = self_influence(model, loss, params, data, method="cg", damping=0.1, cg_tol=1e-14)
    np.testing.assert_allclose(np.asarray(got_self), want_self, rtol=1e-8)


def _softmax_regression(n_train=120, n_test=60):
    """Softmax regression on the digits, each image averaged to 4×4 (170 params)."""
    split = fn.data.digits(test_fraction=0.3, seed=1)
    pool = lambda x: np.asarray(x, np.float64).reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4))
    x, y = pool(split.x_train[:n_train]).reshape(n_train, 16), split.y_train[:n_train]
    xt, yt = pool(split.x_test[:n_test]).reshape(n_test, 16), split.y_test[:n_test]
    model = lambda p, x: x @ p["w"] + p["b"]
    return model, (jnp.asarray(x), jnp.asarray(y)), (jnp.asarray(xt), jnp.asarray(yt))


def test_influence_predicts_leave_one_out_retraining():
    """Koh & Liang's Figure 2 check on a convex model: the predicted change of the test loss
    against the change measured by retraining without each point."""
    model, train, test = _softmax_regression()
    lam = 0.05
    n = train[0].shape[0]

    def objective(flat, weights):
        p = unravel(flat)
        per = fn.losses.softmax_cross_entropy(model(p, train[0]), train[1], reduction="none")
        return jnp.sum(weights * per) / n + 0.5 * lam * jnp.sum(flat**2)

    params = {"w": jnp.zeros((16, 10)), "b": jnp.zeros(10)}
    flat0, unravel = ravel_pytree(params)

    def newton(flat, weights, steps):
        def step(flat, _):
            g = jax.grad(objective)(flat, weights)
            return flat - jnp.linalg.solve(jax.hessian(objective)(flat, weights), g), None

        return jax.lax.scan(step, flat, None, length=steps)[0]

    optimum = newton(flat0, jnp.ones(n), 25)
    assert float(jnp.linalg.norm(jax.jit(jax.grad(objective))(optimum, jnp.ones(n)))) < 1e-10
    test_loss = lambda flat: fn.losses.softmax_cross_entropy(model(unravel(flat), test[0]), test[1])
    # From the full optimum, Newton's method without one point converges in 3 steps (a 4th
    # or 6th changes no figure below by more than 1e-10).
    retrained = jax.jit(jax.vmap(lambda w: newton(optimum, w, 3)))(1.0 - jnp.eye(n))
    actual = jax.jit(lambda r, o: jax.vmap(test_loss)(r) - test_loss(o))(retrained, optimum)
    # The regularised objective's Hessian is the data term's plus λI: λ is the damping.
    scores = influence(
        model, fn.losses.softmax_cross_entropy, unravel(optimum), train, test,
        method="exact", curvature="hessian", damping=lam,
    )  # fmt: skip
    predicted = scores.sum(axis=0) / test[0].shape[0]  # the mean test loss's change
    assert np.corrcoef(predicted, actual)[0, 1] >= 0.99
    # First order in 1/n: at n = 120 the largest miss is under a tenth of the largest change.
    assert np.abs(predicted - actual).max() < 0.15 * np.abs(actual).max()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "newton"}, "self_influence: method must be one of"),
        ({"curvature": "fisher"}, "self_influence: curvature must be one of"),
        ({"damping": -1.0}, "damping"),
        ({"max_params": 10}, "above max_params=10; use method='cg'"),
        ({"method": "lissa"}, "method='lissa' draws minibatches and needs a key"),
        ({"cg_iter": 3}, "unknown solver settings ['cg_iter']"),
        ({"method": "ekfac", "curvature": "hessian"}, "approximates the Gauss-Newton matrix"),
    ],
)
def test_bad_settings_are_one_line(settings, message):
    model, loss, params, data = _mlp()
    with pytest.raises((ValueError, TypeError)) as caught:
        self_influence(model, loss, params, data, **settings)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_data_that_is_not_a_pair_is_one_line():
    model, loss, params, data = _mlp()
    with pytest.raises(TypeError, match=r"^influence: data must be a pair \(x, y\), got \w+$"):
        influence(model, loss, params, data[0], data)


def test_ekfac_is_the_gauss_newton_diagonal_in_the_kronecker_eigenbasis():
    """George et al.'s EK-FAC, built from the dense Gauss-Newton matrix: each dense layer's
    block rotated into the eigenbasis Q_A ⊗ Q_G of its factors and replaced by its diagonal
    there; the layer norm's leaves keep the matrix's own diagonal."""
    net = fn.nn.serial(fn.nn.dense(5), fn.nn.layer_norm(), fn.nn.tanh, fn.nn.dense(3))
    _, params, state = net.init(jax.random.key(0), (12, 4))
    params = jax.tree.map(
        lambda a: jax.random.normal(jax.random.key(9), a.shape, jnp.float64), params
    )
    x = jax.random.normal(jax.random.key(1), (12, 4), jnp.float64)
    y = jax.random.randint(jax.random.key(2), (12,), 0, 3)
    model = lambda p, x: net.apply(p, state, x)[0]
    loss = fn.losses.softmax_cross_entropy
    ggn = _dense_curvature(model, loss, params, (x, y), "ggn")
    flat, unravel = ravel_pytree(params)
    index = unravel(jnp.arange(flat.size, dtype=jnp.float64))  # each leaf's flat positions
    factors = fn.diff.kronecker_factors(
        lambda p: model(p, x), params, loss_of_outputs=lambda o: loss(o, y)
    )
    approx = np.diag(np.diag(ggn))  # the unmatched leaves: the exact diagonal
    for name in ("dense_0", "dense_3"):
        rows = np.concatenate([np.asarray(index[name]["w"]), np.asarray(index[name]["b"])[None]])
        rows = rows.astype(int).reshape(-1)  # W̄ = [W; bᵀ] row-major
        qa = np.linalg.eigh(np.asarray(factors[f"{name}/w"].a))[1]
        qg = np.linalg.eigh(np.asarray(factors[f"{name}/w"].g))[1]
        basis = np.kron(qa, qg)
        eigenvalues = np.diag(basis.T @ ggn[np.ix_(rows, rows)] @ basis)
        approx[np.ix_(rows, rows)] = basis @ np.diag(eigenvalues) @ basis.T
    assert set(fn.diff.kronecker_unmatched(lambda p: model(p, x), params)) == {
        "layer_norm_1/scale",
        "layer_norm_1/bias",
    }
    rows, vectors = _vectors(params, 3)
    got = inverse_hvp(model, loss, params, (x, y), vectors, method="ekfac", damping=0.1)
    got = np.asarray(jax.vmap(lambda v: ravel_pytree(v)[0])(got))
    want = np.linalg.solve(approx + 0.1 * np.eye(flat.size), np.asarray(rows).T).T
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
