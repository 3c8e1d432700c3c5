"""batch_quantities against BackPACK 1.7.1 on the same models and weights, and against dense
references (per-example `jax.grad`, `jax.hessian`, Jacobians) where BackPACK has none.

The fixture ``tests/data/backpack_1.7.1.npz`` is written by
``tests/reference/backpack_reference.py`` in a side environment (its docstring has the
recipe and the ``pip freeze``: torch 2.14.1, backpack-for-pytorch 1.7.1, numpy 2.4.6), in
float64: an MLP (ReLU and Sigmoid) and a CNN with ``CrossEntropyLoss()``, the MLP with
``MSELoss()``. funcnet's `softmax_cross_entropy` and `mse` are those losses with
``reduction="mean"`` (`mse` has no ½ and averages over all B·C entries, as PyTorch's), so the
quantities agree with no conversion. DiagGGNMC is compared on the very targets BackPACK drew
(stored in the fixture); BackPACK's KFLR and KFAC factors are compared with
`funcnet.diff.kronecker_factors` after converting their normalisation (below).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import funcnet.diff as fd
import funcnet.nn as nn
from funcnet.diff.quantities import _Plan, _quantities
from funcnet.losses import mse, softmax_cross_entropy

FIXTURE = "tests/data/backpack_1.7.1.npz"
EXACT = ("batch_grad", "batch_l2", "sum_grad_squared", "variance", "diag_ggn", "diag_hessian")
MODELS = {
    "mlp": lambda: nn.serial(nn.dense(5), nn.relu, nn.dense(4), nn.sigmoid, nn.dense(3)),
    "mse": lambda: nn.serial(nn.dense(5), nn.relu, nn.dense(4), nn.sigmoid, nn.dense(3)),
    "cnn": lambda: nn.serial(
        nn.conv(3, 3, padding=1),
        nn.relu,
        nn.conv(4, 3, strides=2, padding="VALID"),
        nn.relu,
        nn.flatten(),
        nn.dense(3),
    ),
}


@functools.cache
def _fixture() -> dict:
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def _tree(prefix: str) -> dict:
    """The fixture's entries under `prefix` as a nested dict {layer: {w, b}}."""
    tree: dict = {}
    for k, v in _fixture().items():
        if k.startswith(prefix + "/"):
            layer, leaf = k[len(prefix) + 1 :].split("/")
            tree.setdefault(layer, {})[leaf] = v
    return tree


@functools.cache
def _problem(name: str):
    model = MODELS[name]()
    data = _fixture()
    x = jnp.asarray(data[f"{name}/x"])
    _, shapes, state = model.init(jax.random.key(0), (1, *x.shape[1:]))
    params = {k: {} for k in shapes} | jax.tree.map(jnp.asarray, _tree(f"{name}/params"))
    f = lambda p, xb: model.apply(p, state, xb)[0]
    y = jnp.asarray(data[f"{name}/y"])
    loss = (lambda o: mse(o, y)) if name == "mse" else (lambda o: softmax_cross_entropy(o, y))
    return f, params, x, loss


@functools.cache
def _computed(name: str):
    f, params, x, loss = _problem(name)
    likelihood = "gaussian" if name == "mse" else "categorical"
    draws = jnp.asarray(_fixture()[f"{name}/diag_ggn_mc_draws"])
    run = jax.jit(
        lambda p, d: _quantities(f, p, x, loss, frozenset(EXACT), likelihood, None)._replace(
            diag_ggn_mc=_quantities(
                f, p, x, loss, frozenset({"diag_ggn_mc"}), likelihood, d
            ).diag_ggn_mc
        )
    )
    return run(params, draws)


def _max_diff(got, want) -> float:
    pairs = zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True)
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in pairs)


@pytest.mark.parametrize("name", ["mlp", "cnn", "mse"])
def test_quantities_equal_backpacks(x64, name):
    got = _computed(name)
    assert abs(float(got.loss) - float(_fixture()[f"{name}/loss"])) < 1e-12
    drop_empty = lambda t: {k: v for k, v in t.items() if v}
    assert _max_diff(drop_empty(got.grad), _tree(f"{name}/grad")) < 1e-10
    for quantity in (*EXACT, "diag_ggn_mc"):
        want = _tree(f"{name}/{quantity}")
        assert np.abs(ravel_pytree(want)[0]).max() > 1e-4, quantity  # not a zero test
        assert _max_diff(drop_empty(getattr(got, quantity)), want) < 1e-10, quantity


def test_diag_hessian_of_a_sigmoid_net_is_not_its_ggn(x64):
    # The MLP's Sigmoid gives the Hessian a residual term BackPACK's DiagHessian includes.
    got = _computed("mlp")
    assert _max_diff(got.diag_hessian, got.diag_ggn) > 1e-3
    cnn = _computed("cnn")  # ReLU only: the two diagonals are the same
    assert _max_diff(cnn.diag_hessian, cnn.diag_ggn) < 1e-12


def _problem_of(model, x_shape, labels, seed):
    """A float64 model on a batch of `x_shape`: (f, params, x, loss of the outputs, labels)."""
    _, params, state = model.init(jax.random.key(seed), (1, *x_shape[1:]))
    params = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    x = jax.random.normal(jax.random.key(seed + 1), x_shape, jnp.float64)
    y = jnp.array(labels)
    f = lambda p, xb: model.apply(p, state, xb)[0]
    return f, params, x, lambda o: softmax_cross_entropy(o, y), y


def _sequence_problem():
    """A dense layer over 3 positions (a kernel shared over positions, which BackPACK's
    extensions for Linear refuse), tanh, and a dense layer, with per-example references."""
    model = nn.serial(nn.dense(4), nn.tanh, nn.flatten(), nn.dense(3))
    return _problem_of(model, (4, 3, 2), [0, 2, 1, 2], seed=3)


def _attention_problem():
    """Self-attention (its kernels read per head, through a reshape), flatten, dense."""
    model = nn.serial(nn.multi_head_attention(2), nn.flatten(), nn.dense(3))
    return _problem_of(model, (4, 3, 4), [1, 0, 2, 2], seed=5)


@pytest.mark.parametrize(
    "problem, kernels",
    [(_sequence_problem, 2), (_attention_problem, 5)],
    ids=["sequence", "attention"],
)
def test_structured_kernels_against_dense_references(x64, problem, kernels):
    f, params, x, loss, y = problem()
    # The kernels the structured rule takes (the attention's q, k, v, o and the dense one).
    assert len(_Plan(f, params, x).kernels) == kernels
    got = jax.jit(lambda p: fd.batch_quantities(f, p, x, loss_of_outputs=loss, quantities=EXACT))(
        params
    )
    flat, unravel = ravel_pytree(params)
    b = x.shape[0]
    one = lambda t, xi, yi: softmax_cross_entropy(f(unravel(t), xi[None]), yi[None]) / b

    @jax.jit
    def references(t):
        per = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(t, x, y)  # (B, P)
        hess = jax.hessian(lambda t: loss(f(unravel(t), x)))(t)
        jac = jax.jacrev(lambda t: f(unravel(t), x))(t)  # (B, C, P)
        h_out = jax.hessian(loss)(f(unravel(t), x))  # (B, C, B, C)
        return per, hess, jnp.einsum("ncp,ncmd,mdp->p", jac, h_out, jac)

    per, hess, ggn = references(flat)
    flat_of = lambda tree: ravel_pytree(tree)[0]
    per_got = jax.vmap(flat_of)(got.batch_grad)
    np.testing.assert_allclose(per_got, per, atol=1e-12)
    np.testing.assert_allclose(flat_of(got.sum_grad_squared), (per**2).sum(0), atol=1e-12)
    np.testing.assert_allclose(
        flat_of(got.variance), (per**2).mean(0) - per.mean(0) ** 2, atol=1e-12
    )
    l2 = sum(jax.tree.leaves(got.batch_l2))
    np.testing.assert_allclose(l2, (per**2).sum(1), atol=1e-12)
    np.testing.assert_allclose(flat_of(got.diag_ggn), ggn, atol=1e-12)
    np.testing.assert_allclose(flat_of(got.diag_hessian), jnp.diag(hess), atol=1e-12)
    assert np.abs(jnp.diag(hess) - ggn).max() > 1e-3  # tanh's residual is there


def test_mc_estimate_averages_to_the_ggn(x64):
    f, params, x, loss = _problem("mlp")
    run = jax.jit(
        lambda p, k: (
            fd.batch_quantities(
                f, p, x, loss_of_outputs=loss, quantities="diag_ggn_mc", key=k, mc_samples=4000
            ).diag_ggn_mc
        )
    )
    got = ravel_pytree(run(params, jax.random.key(5)))[0]
    want = ravel_pytree(_tree("mlp/diag_ggn"))[0]
    assert np.max(np.abs(got - want)) < 0.05 * np.max(want)


def _kron_in_funcnet_order(name: str, layer: str, a: np.ndarray) -> np.ndarray:
    """BackPACK's A over funcnet's input order: conv patches (C, kh, kw) -> (kh, kw, C); the
    CNN's last Linear, rows after Flatten (C, H, W) -> (H, W, C)."""
    if name == "cnn" and layer in ("conv_0", "conv_2"):
        c = a.shape[0] // 9
        perm = np.arange(a.shape[0]).reshape(c, 3, 3).transpose(1, 2, 0).reshape(-1)
        return a[np.ix_(perm, perm)]
    if name == "cnn" and layer == "dense_5":
        perm = np.arange(36).reshape(4, 3, 3).transpose(1, 2, 0).reshape(-1)
        return a[np.ix_(perm, perm)]
    return a


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_kflr_equals_kronecker_factors_ggn(x64, name):
    # BackPACK: A = (1/B) Σ_n Σ_t x xᵀ without a bias row; funcnet's A has the bias's row and
    # column last, so A_backpack = A[:-1, :-1]. For a dense layer both G are
    # (1/B) Σ_n J_nᵀ H_n J_n with H_n = B ∂²L/∂f_n² (BackPACK's square root carries L's 1/B),
    # equal as they are. For a conv layer BackPACK's G is Σ_n Σ_k (Σ_t s_t)(Σ_t s_t)ᵀ, the
    # Gauss-Newton block of the bias (its docstring), not KFC's (1/B) Σ_n (1/T) Σ_t δ δᵀ that
    # funcnet computes: no factor converts one into the other, so its diagonal is checked
    # against funcnet's diag_ggn of the bias instead.
    f, params, x, loss = _problem(name)
    factors = jax.jit(lambda p: fd.kronecker_factors(lambda q: f(q, x), p, loss_of_outputs=loss))(
        params
    )
    for layer in _tree(f"{name}/kflr"):
        a, g = factors[f"{layer}/w"]
        want_a = _kron_in_funcnet_order(name, layer, _fixture()[f"{name}/kflr/{layer}/A"])
        want_g = _fixture()[f"{name}/kflr/{layer}/G"]
        np.testing.assert_allclose(a[:-1, :-1], want_a, atol=1e-10)
        if layer.startswith("conv"):
            np.testing.assert_allclose(
                np.diag(want_g), _computed(name).diag_ggn[layer]["b"], atol=1e-10
            )
        else:
            np.testing.assert_allclose(g, want_g, atol=1e-10)


def test_kfac_fisher_averages_to_backpacks_kflr(x64):
    # KFAC draws one target per example; its G averages to KFLR's G, and A is the same.
    f, params, x, loss = _problem("mlp")
    one = lambda k: fd.kronecker_factors(
        lambda p: f(p, x), params, curvature="fisher", key=k, loss_of_outputs=loss
    )
    mean = jax.jit(lambda ks: jax.tree.map(lambda v: v.mean(0), jax.vmap(one)(ks)))
    factors = mean(jax.random.split(jax.random.key(6), 4000))
    for layer in _tree("mlp/kfac"):
        a, g = factors[f"{layer}/w"]
        np.testing.assert_allclose(a[:-1, :-1], _fixture()[f"mlp/kfac/{layer}/A"], atol=1e-10)
        want = _fixture()[f"mlp/kflr/{layer}/G"]
        assert np.max(np.abs(g - want)) < 0.05 * np.max(np.abs(want)), layer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quantities": "diag_fisher"}, "unknown quantity 'diag_fisher'"),
        ({"quantities": "diag_ggn_mc"}, "'diag_ggn_mc' samples targets and needs key"),
        ({"quantities": "diag_ggn", "likelihood": "poisson"}, "likelihood must be"),
        ({"quantities": "diag_ggn_mc", "mc_samples": 0, "key": jax.random.key(0)}, "mc_samples"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(x64, kwargs, message):
    f, params, x, loss = _problem("mlp")
    with pytest.raises(ValueError, match=message) as info:
        fd.batch_quantities(f, params, x, loss_of_outputs=loss, **kwargs)
    assert "\n" not in str(info.value) and "batch_quantities" in str(info.value)
