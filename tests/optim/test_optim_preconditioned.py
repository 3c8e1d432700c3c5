"""Shampoo and SOAP (`funcnet.optim.preconditioned`) against their papers' algorithms.

Each optimizer runs STEPS steps on a fixed sequence of random gradients beside its algorithm
written as a plain NumPy loop (explicit blocks, an explicit eigh or QR per block and axis),
in float64, and the params agree to 1e-10 at every step. The params are a matrix longer than
the block size along both axes (four blocks, the edge ones smaller), a bias, a 4-D
convolution kernel (HWIO, cut into two blocks along its last axis) and a matrix with an axis
above `max_precond_dim` (left to the grafting rule by Shampoo, unrotated along that axis by
SOAP). The roots and bases are recomputed every few steps and held between.
"""

import functools
import itertools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from optim_helpers import flat, trajectory

import funcnet.optim as fo
from tests.helpers import nested_jaxprs

STEPS = 24
SHAPES = {"w": (6, 5), "b": (5,), "k": (3, 3, 2, 6), "e": (10, 3)}
MAX_PRECOND_DIM = 8  # "e" has an axis of 10


def _problem():
    """Params and STEPS gradients (a leading step axis), each leaf on its own scale."""
    rng = np.random.default_rng(0)
    params = {name: rng.standard_normal(shape) for name, shape in SHAPES.items()}
    scales = {"w": 1.0, "b": 0.3, "k": 2.0, "e": 0.5}
    grads = {
        name: scales[name] * rng.standard_normal((STEPS, *shape)) for name, shape in SHAPES.items()
    }
    return params, grads


def _unfold(x, axis):
    """`x` with `axis` as rows and every other axis along the columns."""
    return np.moveaxis(x, axis, 0).reshape(x.shape[axis], -1)


def _along(x, matrix, axis):
    """`matrix` applied along `axis` of `x`: `y[…, a, …] = Σ_j matrix[a, j]·x[…, j, …]`."""
    return np.moveaxis(np.tensordot(matrix, x, axes=(1, axis)), 0, axis)


def _inverse_root(stats, eps, exponent):
    lam, q = np.linalg.eigh(stats)
    return (q * (np.maximum(lam, 0) + eps) ** -exponent) @ q.T


def shampoo_reference(
    params,
    grads,
    *,
    lr,
    block_size,
    b1,
    b2,
    eps,
    precondition_frequency,
    start_preconditioning_step,
    graft,
    graft_eps=1e-8,
    nesterov=False,
    weight_decay=0.0,
    max_precond_dim=MAX_PRECOND_DIM,
):
    """Shampoo (Gupta et al. 2018), blocked and grafted per block (Anil et al. 2020), with
    momentum on the final step and decoupled weight decay; the params after each step."""
    x = {name: np.array(v) for name, v in params.items()}
    w_old, w_new = (1.0, 1.0) if b2 == 1 else (b2, 1 - b2)
    nu = {name: np.zeros_like(v) for name, v in x.items()}
    buf = dict.fromkeys(x)
    stats, roots, path = {}, {}, []
    for t in range(STEPS):  # t: the steps taken before this one
        for name in x:
            g = grads[name][t]
            if graft == "adagrad":
                nu[name] = nu[name] + g**2
                a = g / (np.sqrt(nu[name]) + graft_eps)
            elif graft in ("rmsprop", "adam"):
                nu[name] = w_old * nu[name] + w_new * g**2
                v = nu[name] / (1 - b2 ** (t + 1)) if graft == "adam" else nu[name]
                a = g / (np.sqrt(v) + graft_eps)
            else:
                a = g
            if g.ndim < 2 or max(g.shape) > max_precond_dim:
                d = a
            else:
                size = block_size or max(g.shape)
                d = np.zeros_like(g)
                for corner in itertools.product(*(range(0, n, size) for n in g.shape)):
                    where = tuple(slice(c, c + size) for c in corner)
                    block = g[where]
                    for axis in range(g.ndim):
                        key = (name, corner, axis)
                        unfolded = _unfold(block, axis)
                        stats[key] = w_old * stats.get(key, 0.0) + w_new * unfolded @ unfolded.T
                        due = (t - start_preconditioning_step) % precondition_frequency == 0
                        if t >= start_preconditioning_step and due:
                            roots[key] = _inverse_root(stats[key], eps, 1 / (2 * g.ndim))
                    if t < start_preconditioning_step:
                        continue
                    direction = block
                    for axis in range(g.ndim):
                        direction = _along(direction, roots[(name, corner, axis)], axis)
                    if graft is not None:
                        direction = direction * np.linalg.norm(a[where]) / np.linalg.norm(direction)
                    d[where] = direction
                if t < start_preconditioning_step:
                    d = a
            if b1 > 0:
                buf[name] = d if buf[name] is None else b1 * buf[name] + d
                d = d + b1 * buf[name] if nesterov else buf[name]
            x[name] = x[name] - lr * (d + weight_decay * x[name])
        path.append({name: v.copy() for name, v in x.items()})
    return path


def soap_reference(
    params,
    grads,
    *,
    lr,
    b1,
    b2,
    eps,
    weight_decay,
    precondition_frequency,
    shampoo_beta=None,
    normalize_grads=False,
    max_precond_dim=MAX_PRECOND_DIM,
):
    """SOAP (Vyas et al. 2024, Algorithm 3, with the refresh of Algorithm 4 and the
    conventions of the authors' code): Adam in the eigenbases of L and R; the params after
    each step."""
    beta_s = b2 if shampoo_beta is None else shampoo_beta
    x = {name: np.array(v) for name, v in params.items()}
    m = {name: np.zeros_like(v) for name, v in x.items()}
    v = {name: np.zeros_like(v) for name, v in x.items()}
    stats, bases, path = {}, {}, []

    def rotated_axes(name):
        shape = x[name].shape
        return [i for i, n in enumerate(shape) if n <= max_precond_dim] if len(shape) > 1 else []

    for t in range(STEPS):  # t: the calls made before this one, the Adam steps taken
        for name in x:
            g, axes = grads[name][t], rotated_axes(name)
            if t == 0:  # the first call builds the bases and takes no step
                for i in axes:
                    stats[name, i] = (1 - beta_s) * _unfold(g, i) @ _unfold(g, i).T
                    bases[name, i] = np.linalg.eigh(stats[name, i])[1][:, ::-1]
                continue

            def rotate(y, name=name, axes=axes):
                for i in axes:
                    y = _along(y, bases[name, i].T, i)
                return y

            def rotate_back(y, name=name, axes=axes):
                for i in axes:
                    y = _along(y, bases[name, i], i)
                return y

            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * rotate(g) ** 2
            n = rotate_back(rotate(m[name]) / (np.sqrt(v[name]) + eps))
            if normalize_grads:
                n = n / (1e-30 + np.sqrt(np.mean(n**2)))
            size = np.sqrt(1 - b2**t) / (1 - b1**t)
            x[name] = x[name] - lr * (size * n + weight_decay * x[name])
            for i in axes:
                stats[name, i] = (
                    beta_s * stats[name, i] + (1 - beta_s) * _unfold(g, i) @ _unfold(g, i).T
                )
            if t % precondition_frequency == 0:
                for i in axes:
                    q, s = bases[name, i], stats[name, i]
                    order = np.argsort(-np.diag(q.T @ s @ q))
                    v[name] = np.take(v[name], order, axis=i)
                    bases[name, i] = np.linalg.qr(s @ q[:, order])[0]
        path.append({name: y.copy() for name, y in x.items()})
    return path


def _agree(opt, reference):
    """`opt`'s params and the reference's after each of the STEPS steps agree to 1e-10."""
    params, grads = _problem()
    ours = trajectory(opt, jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, grads))
    ours = flat(ours, lead_dims=1)
    theirs = np.stack([flat(p) for p in reference(params, grads)])
    assert np.abs(ours - theirs).max() < 1e-10


def _rule_state(state):
    """The `ScaleByShampooState` or `ScaleBySoapState` inside a named optimizer's state."""
    found = jax.tree.leaves(state, is_leaf=lambda s: hasattr(s, "stats"))
    return next(s for s in found if hasattr(s, "stats"))


SHAMPOO_CASES = {
    "adagrad": dict(
        block_size=4,
        b1=0.9,
        b2=0.9,
        eps=1e-3,
        precondition_frequency=3,
        start_preconditioning_step=2,
        graft="adagrad",
        weight_decay=0.01,
    ),
    "rmsprop-sum-nesterov": dict(
        block_size=4,
        b1=0.5,
        b2=1.0,
        eps=1e-2,
        precondition_frequency=4,
        start_preconditioning_step=0,
        graft="rmsprop",
        nesterov=True,
    ),
    "adam-unblocked-kernel": dict(
        block_size=None,
        b1=0.0,
        b2=0.99,
        eps=1e-3,
        precondition_frequency=5,
        start_preconditioning_step=3,
        graft="adam",
        max_precond_dim=10,
    ),
    "sgd": dict(
        block_size=3,
        b1=0.9,
        b2=0.95,
        eps=1e-3,
        precondition_frequency=2,
        start_preconditioning_step=1,
        graft="sgd",
    ),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", SHAMPOO_CASES)
def test_shampoo_is_the_papers_algorithm(case):
    kwargs = SHAMPOO_CASES[case]
    opt = fo.shampoo(0.05, **{"max_precond_dim": MAX_PRECOND_DIM, **kwargs})
    _agree(opt, lambda params, grads: shampoo_reference(params, grads, lr=0.05, **kwargs))


SOAP_CASES = {
    "defaults": dict(b1=0.95, b2=0.95, eps=1e-8, weight_decay=0.01, precondition_frequency=3),
    "normalized": dict(
        b1=0.9,
        b2=0.99,
        eps=1e-6,
        weight_decay=0.0,
        precondition_frequency=2,
        shampoo_beta=0.8,
        normalize_grads=True,
    ),
}


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("case", SOAP_CASES)
def test_soap_is_the_papers_algorithm(case):
    kwargs = SOAP_CASES[case]
    opt = fo.soap(0.01, max_precond_dim=MAX_PRECOND_DIM, **kwargs)
    _agree(opt, lambda params, grads: soap_reference(params, grads, lr=0.01, **kwargs))


@pytest.mark.usefixtures("x64")
def test_shampoo_first_step_is_the_closed_form():
    """One block, no grafting, the plain sum, roots every step: the first update is
    `−α·(G·Gᵀ + εI)^(−1/4)·G·(Gᵀ·G + εI)^(−1/4)`, near `−α·U·Vᵀ` for `G = U·S·Vᵀ`."""
    g = np.random.default_rng(1).standard_normal((4, 6))
    eps = 1e-12
    opt = fo.shampoo(
        0.5,
        block_size=8,
        graft=None,
        b1=0.0,
        b2=1.0,
        eps=eps,
        precondition_frequency=1,
        start_preconditioning_step=0,
    )
    params = {"w": jnp.zeros((4, 6))}
    updates, _ = opt.update({"w": jnp.asarray(g)}, opt.init(params), params)
    left = _inverse_root(g @ g.T, eps, 0.25)
    right = _inverse_root(g.T @ g, eps, 0.25)
    np.testing.assert_allclose(updates["w"], -0.5 * left @ g @ right, rtol=0, atol=1e-10)
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    np.testing.assert_allclose(updates["w"], -0.5 * u @ vt, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "opt",
    [
        lambda rate: fo.shampoo(rate, block_size=4, precondition_frequency=2),
        lambda rate: fo.soap(rate, precondition_frequency=2),
    ],
    ids=["shampoo", "soap"],
)
def test_jit_vmap_over_rates_and_fixed_state(opt):
    """A sweep of rates under one jitted vmap; the state keeps its shapes and dtypes (float32
    statistics for bfloat16 params), and the eigendecompositions run only inside a cond."""
    rng = np.random.default_rng(2)
    params = {
        "w": jnp.asarray(rng.standard_normal((6, 5)), jnp.float32),
        "b": jnp.zeros(5, jnp.bfloat16),
        "k": jnp.asarray(rng.standard_normal((3, 2, 4)), jnp.bfloat16),
    }
    grads = jax.tree.map(lambda x: jnp.ones((5, *x.shape), x.dtype), params)
    rates = jnp.array([1e-3, 1e-2, 1e-1])

    def run(rate):
        return trajectory(opt(rate), params, grads)

    paths = jax.jit(jax.vmap(run))(rates)
    assert paths["w"].shape == (3, 5, 6, 5) and paths["k"].dtype == jnp.bfloat16
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(paths))
    moved = jnp.abs(paths["w"][:, -1] - params["w"]).sum(axis=(1, 2))
    assert moved[0] < moved[1] < moved[2]

    tx = opt(1e-2)
    state = tx.init(params)
    step = jax.jit(tx.update)
    after = state
    for i in range(5):
        _, after = step(jax.tree.map(lambda x, i=i: x[i], grads), after, params)
    shapes = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)
    assert shapes(after) == shapes(state)
    inner = jax.tree.leaves(_rule_state(state).stats)
    assert all(x.dtype == jnp.float32 for x in inner)

    jaxpr = jax.make_jaxpr(tx.update)(jax.tree.map(lambda x: x[0], grads), state, params)
    outside, inside = _primitives(jaxpr.jaxpr)
    factorisations = {"eigh", "geqrf", "householder_product", "qr"}
    assert not outside & factorisations and inside & factorisations


def _primitives(jaxpr, in_cond=False, found=None):
    """The primitives of a jaxpr, nested ones included: `(outside any cond, inside one)`."""
    found = found or (set(), set())
    for eqn in jaxpr.eqns:
        found[in_cond].add(eqn.primitive.name)
        for sub in nested_jaxprs(eqn.params):
            _primitives(sub, in_cond or eqn.primitive.name == "cond", found)
    return found


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="jaxlib's CPU LAPACK kernels")
@pytest.mark.parametrize(
    ("opt", "branches"),
    [(fo.shampoo(0.1, block_size=4, start_preconditioning_step=0), 1), (fo.soap(), 2)],
    ids=["shampoo", "soap"],
)
def test_factorisations_run_one_at_a_time(opt, branches):
    """Two of jaxlib's batched CPU eigh (or QR) kernels in flight at once can each hold the
    intra-op thread the other waits for (`preconditioned._after`): in the compiled step, the
    LAPACK calls of each branch that has several (Shampoo's roots; SOAP's first bases and its
    refresh) form one chain of data dependencies."""
    params = {"w": jnp.zeros((6, 5)), "k": jnp.zeros((3, 2, 4)), "v": jnp.zeros((5, 3))}
    hlo = jax.jit(opt.update).lower(params, opt.init(params), params).compile().as_text()
    assert _chained_lapack_computations(hlo) == branches


def _chained_lapack_computations(hlo):
    """How many computations of compiled HLO text hold two LAPACK calls or more, after
    checking that in each of them every two calls are ordered by a path of operands."""
    found = 0
    for body in hlo.split("\n\n"):
        operands, calls = {}, []
        for line in body.splitlines():
            if " = " not in line:
                continue
            name, rest = line.split(" = ", 1)
            name = name.replace("ROOT", "").strip()
            operands[name] = re.findall(r"%[\w.\-]+", rest)
            if re.search(r'custom_call_target="lapack_\w*(syevd|geqrf|orgqr)', rest):
                calls.append(name)
        if len(calls) >= 2:
            _check_chain(operands, calls)
            found += 1
    return found


def _check_chain(operands, calls):
    """Every two of `calls` are ordered: one is among the other's ancestors in `operands`."""

    @functools.cache
    def ancestors(name):
        direct = set(operands.get(name, ()))
        return direct.union(*(ancestors(n) for n in direct))

    for i, a in enumerate(calls):
        for b in calls[i + 1 :]:
            assert a in ancestors(b) or b in ancestors(a), (a, b)


@pytest.mark.parametrize(
    "opt",
    [fo.shampoo(0.1, block_size=4, start_preconditioning_step=2), fo.soap(0.03)],
    ids=["shampoo", "soap"],
)
def test_least_squares_loss_falls(opt):
    rng = np.random.default_rng(3)
    a = jnp.asarray(rng.standard_normal((64, 6)), jnp.float32)
    truth = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    y = a @ truth + 1.0

    def loss(p):
        return jnp.mean((a @ p["w"] + p["b"] - y) ** 2)

    params = {"w": jnp.zeros((6, 5)), "b": jnp.zeros(5)}

    @jax.jit
    def run(params):
        def step(carry, _):
            p, s = carry
            updates, s = opt.update(jax.grad(loss)(p), s, p)
            return (fo.apply_updates(p, updates), s), loss(p)

        return jax.lax.scan(step, (params, opt.init(params)), length=100)[1]

    losses = run(params)
    assert losses[-1] < 0.05 * losses[0], losses[::10]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: fo.shampoo(0.1, block_size=0), "shampoo: block_size must be a positive int"),
        (lambda: fo.shampoo(0.1, block_size=2.5), "shampoo: block_size must be a positive int"),
        (lambda: fo.shampoo(0.1, precondition_frequency=0), "precondition_frequency must be"),
        (lambda: fo.soap(precondition_frequency=0), "soap: precondition_frequency must be"),
        (lambda: fo.shampoo(0.1, b1=1.0), r"shampoo: b1 must lie in \[0, 1\)"),
        (lambda: fo.shampoo(0.1, b2=1.5), r"shampoo: b2 must lie in \[0, 1\]"),
        (lambda: fo.soap(b2=1.0), r"soap: b2 must lie in \[0, 1\)"),
        (lambda: fo.soap(shampoo_beta=-0.1), r"soap: shampoo_beta must lie in \[0, 1\)"),
        (lambda: fo.shampoo(0.1, eps=0.0), "shampoo: eps must be a finite number > 0"),
        (lambda: fo.soap(eps=-1e-8), "soap: eps must be a finite number > 0"),
        (lambda: fo.shampoo(0.1, graft="lamb"), "shampoo: graft must be one of"),
        (lambda: fo.shampoo(0.1, b2=1.0, graft="adam"), "graft='adam' .* needs b2 < 1"),
        (lambda: fo.scale_by_soap(max_precond_dim=0), "max_precond_dim must be a positive int"),
    ],
)
def test_bad_hyperparameters(build, message):
    with pytest.raises(ValueError, match=message) as error:
        build()
    assert "\n" not in str(error.value)


def test_unblocked_factor_too_large_is_refused():
    opt = fo.shampoo(0.1, block_size=None, max_precond_dim=64)
    params = {"embed": {"w": jnp.zeros((100, 8))}}
    message = (
        r"shampoo: param \['embed'\]\['w'\] of shape \(100, 8\) has an axis of 100 > "
        r"max_precond_dim=64.*set block_size .* or raise max_precond_dim"
    )
    with pytest.raises(ValueError, match=message) as error:
        opt.init(params)
    assert "\n" not in str(error.value)
    # Blocked, the same param is left to the grafting rule (an axis above max_precond_dim).
    blocked = fo.shampoo(0.1, block_size=32, max_precond_dim=64)
    assert _rule_state(blocked.init(params)).stats["embed"]["w"] == ()


@pytest.mark.parametrize("opt", [fo.shampoo(0.1), fo.soap()], ids=["shampoo", "soap"])
def test_state_of_another_tree_is_refused(opt):
    state = opt.init({"w": jnp.zeros((4, 3))})
    with pytest.raises(ValueError, match="state does not fit the gradients"):
        opt.update({"w": jnp.zeros((3, 4))}, state, {"w": jnp.zeros((3, 4))})
