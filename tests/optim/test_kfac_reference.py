"""K-FAC against kfac-jax 0.0.8: Kronecker factors, preconditioned gradients and three steps of
its optimizer, read from ``tests/data/kfac_jax_0.0.8.npz`` (kfac-jax itself is not needed).

kfac-jax 0.0.8 runs on JAX 0.6, below funcnet's floor, so the file is written in a side
environment by ``tests/reference/kfac_jax_reference.py`` (never collected nor imported by
the suite). To regenerate it (Python 3.11)::

    python3 -m venv /tmp/kfacjax
    /tmp/kfacjax/bin/pip install "jax[cpu]==0.6.2" kfac-jax==0.0.8 numpy
    /tmp/kfacjax/bin/python tests/reference/kfac_jax_reference.py tests/data/kfac_jax_0.0.8.npz

It was written with jax 0.6.2, jaxlib 0.6.2, kfac-jax 0.0.8, numpy 2.4.6 (the script's
docstring lists the whole ``pip freeze``); its ``meta`` entry describes kfac-jax's
conventions with file and line citations, and the script checks each of them against an
independent computation before writing.

The three models are funcnet models (`nn.serial` names and layouts), float64:

- ``mlp``: dense(5) tanh dense(4) tanh dense(3), softmax cross-entropy, batch 8;
- ``cnn``: conv(3, 3×3, SAME) tanh conv(4, 3×3, stride 2, VALID) tanh flatten dense(3),
  softmax cross-entropy, NHWC input (4, 6, 6, 2);
- ``mlp_se``: the mlp with `losses.mse` (kfac-jax's ``register_squared_error_loss`` has no
  ½ and sums over the outputs, so it is registered with weight 1/3 to be `mse`).

What is compared, and how kfac-jax's normalisation maps onto funcnet's:

- `A`: kfac-jax divides a conv's ``Σ_n Σ_t ā āᵀ`` by ``B·T`` and scales its block by `T`
  (``fixed_scale()``, stored as ``<case>/scale/<layer>``), funcnet divides by `B`; so funcnet's
  `A` is `T` times kfac-jax's, and `A ⊗ G` is kfac-jax's whole block `T·A⊗G`. `A` and `G` are
  compared each on its own after that exact integer rescaling (1 for dense layers), which
  implies the Kronecker products agree.
- `G` with ``curvature="ggn"``: kfac-jax's ``ggn_exact`` (its ``ggn_curvature_prop``, the
  default, draws Rademacher vectors and is not exact). Same normalisation.
- `G` with ``curvature="empirical"``: kfac-jax's ``fisher_empirical`` divides the vectors by
  √B on top of the blocks' 1/B, so its `G` is funcnet's divided by `B`.
- funcnet's ``curvature="fisher"`` draws one label per example: not compared here (for these
  losses its mean is the GGN, which is compared).
- The preconditioned gradient ``(F̂ + λI)⁻¹ g`` with kfac-jax's factored Tikhonov damping,
  ``(A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹``, ``π = √((tr A/dim A) / (tr G/dim G))`` (invariant to
  moving `T` between the factors), and with the exact inverse of ``A⊗G + λI``, from funcnet's
  factors.
- Three `kfac_jax.Optimizer` steps on the same batch, the learning rate and momentum from
  the quadratic model with the exact GGN, the inverses recomputed every step: with fixed
  damping 0.1 and kfac-jax's default moving average of the factors (``curvature_ema`` 0.95,
  which is bias-corrected: ``Σ_s 0.95^(t−s) F_s / Σ_s 0.95^(t−s)``), and with adaptive
  damping (initial 0.1, interval 1, decay 0.95) and factors refreshed every step
  (``curvature_ema`` 0). The mlp's two runs are replayed here from funcnet's factors and
  `funcnet.diff.gnvp` (learning rates, momenta, quadratic-model changes, ρ, dampings,
  params); the cnn's adaptive run is `optim.kfac(factor_decay=0,
  damping_adaptation_interval=1)` step for step. The fixed run is not an `optim.kfac` run:
  `optim.kfac` averages its factors as ``ε·F + (1 − ε)·F̂`` from the first estimate, not as
  kfac-jax does (the cnn's fixed run is in the file, unused).

Tolerances are 1e-10 absolute on quantities of order one where the math is the same in
float64.
"""

import functools
import json
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet.nn as nn
from funcnet import losses, optim
from funcnet.diff import gnvp, kronecker_factors
from tests.helpers import ROOT

FIXTURE = ROOT / "tests" / "data" / "kfac_jax_0.0.8.npz"
CASES = ("mlp", "cnn", "mlp_se")
TOL = 1e-10
STEPS = 3


def _mlp():
    return nn.serial(nn.dense(5), nn.tanh, nn.dense(4), nn.tanh, nn.dense(3))


def _cnn():
    return nn.serial(
        nn.conv(3, (3, 3), padding="SAME"),
        nn.tanh,
        nn.conv(4, (3, 3), strides=2, padding="VALID"),
        nn.tanh,
        nn.flatten(),
        nn.dense(3),
    )


@pytest.fixture(scope="module")
def ref() -> dict:
    with np.load(FIXTURE) as f:
        return {k: f[k] for k in f.files}


def _layers(ref: dict, prefix: str) -> dict:
    """``{layer: {leaf: array}}`` of the entries ``prefix/<layer>/<leaf>``."""
    out: dict = {}
    for k, v in ref.items():
        if k.startswith(prefix + "/"):
            layer, leaf = k[len(prefix) + 1 :].split("/")
            out.setdefault(layer, {})[leaf] = v
    return out


class _Case(NamedTuple):
    """A fixture model in funcnet: its params (float64 NumPy) and compiled functions of them."""

    params: dict
    loss_and_grad: Callable
    factors: Callable  # (params, curvature) -> {kernel path: KroneckerFactors}
    quad_model: Callable  # (params, vectors, grads) -> (VᵀGV, VᵀV, Vᵀg), G the exact GGN
    loss: Callable
    outputs_fn: Callable
    loss_of_outputs: Callable


@functools.cache
def _case(case: str) -> _Case:
    """The funcnet model of `case` at the fixture's params, built once for the module."""
    with np.load(FIXTURE) as ref:
        x, y = ref[f"{case}/x"], ref[f"{case}/y"]
        stored = {k: ref[k] for k in ref.files if k.startswith(f"{case}/params/")}
    net = _cnn() if case == "cnn" else _mlp()
    _, shapes, state = jax.eval_shape(lambda: net.init(jax.random.key(0), x.shape))
    stored = _layers(stored, f"{case}/params")
    assert {k for k, v in shapes.items() if v} == set(stored)
    params = {k: {leaf: stored[k][leaf] for leaf in v} for k, v in shapes.items()}
    assert jax.tree.map(np.shape, params) == jax.tree.map(lambda s: s.shape, shapes)
    assert state == {}

    def outputs_fn(p):
        return net.apply(p, state, jnp.asarray(x))[0]

    def loss_of_outputs(z):
        if case == "mlp_se":
            return losses.mse(z, jnp.asarray(y))
        return losses.softmax_cross_entropy(z, jnp.asarray(y))

    def loss(p):
        return loss_of_outputs(outputs_fn(p))

    def quad_model(p, vectors, grads):
        gv = [gnvp(outputs_fn, loss_of_outputs, p, v) for v in vectors]
        quad = jnp.array([[_tree_dot(u, w) for w in gv] for u in vectors])
        dots = jnp.array([[_tree_dot(u, w) for w in vectors] for u in vectors])
        return quad, dots, jnp.array([_tree_dot(grads, v) for v in vectors])

    @functools.partial(jax.jit, static_argnames="curvature")
    def factors(p, curvature):
        return kronecker_factors(
            outputs_fn, p, loss_of_outputs=loss_of_outputs, curvature=curvature
        )

    return _Case(
        params,
        jax.jit(jax.value_and_grad(loss)),
        factors,
        jax.jit(quad_model),
        jax.jit(loss),
        outputs_fn,
        loss_of_outputs,
    )


def _tree_dot(u, v) -> jax.Array:
    pairs = zip(jax.tree.leaves(u), jax.tree.leaves(v), strict=True)
    return sum(jnp.vdot(a, b) for a, b in pairs)


def _float64(tree):
    assert jax.config.read("jax_enable_x64")
    return jax.tree.map(jnp.asarray, tree)


def _kernel(name: str) -> str:
    return f"{name}/w"


def _stack(layer: dict) -> np.ndarray:
    """``[W; bᵀ]``, the kernel as ``reshape(-1, out)``."""
    w = np.asarray(layer["w"])
    return np.concatenate([w.reshape(-1, w.shape[-1]), np.asarray(layer["b"])[None]])


def _unstack(mat: np.ndarray, like: dict) -> dict:
    return {"w": mat[:-1].reshape(like["w"].shape), "b": mat[-1]}


def _pi_inverse(a, g, damping, v):
    """``(A ⊗ G + λI)⁻¹ vec(V)`` by kfac-jax's factored Tikhonov damping with π."""
    pi = np.sqrt((np.trace(a) / len(a)) / (np.trace(g) / len(g)))
    r = np.sqrt(damping)
    left = np.linalg.solve(a + pi * r * np.eye(len(a)), v)
    return np.linalg.solve(g + r / pi * np.eye(len(g)), left.T).T


def _exact_inverse(a, g, damping, v):
    full = np.kron(a, g) + damping * np.eye(len(a) * len(g))
    return np.linalg.solve(full, v.reshape(-1)).reshape(v.shape)


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_the_fixture_records_its_versions_and_conventions(ref):
    meta = json.loads(str(ref["meta"]))
    assert meta["versions"]["kfac-jax"] == "0.0.8"
    assert {"factors", "estimation_modes", "losses", "damping", "optimizer"} <= set(meta)


@pytest.mark.parametrize("case", CASES)
def test_the_models_are_funcnet_models(x64, ref, case):
    model = _case(case)
    loss, grads = model.loss_and_grad(_float64(model.params))
    assert abs(float(loss) - float(ref[f"{case}/loss"])) < 1e-12
    for name, layer in _layers(ref, f"{case}/grad").items():
        for leaf, value in layer.items():
            assert _max_diff(grads[name][leaf], value) < 1e-12, (name, leaf)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("curvature", ["ggn", "empirical"])
def test_factors_match_kfac_jax(x64, ref, case, curvature):
    model = _case(case)
    got = model.factors(_float64(model.params), curvature)
    mode = "ggn_exact" if curvature == "ggn" else "fisher_empirical"
    a_ref = _layers(ref, f"{case}/ggn_exact")  # A is the same in every mode
    g_ref = _layers(ref, f"{case}/{mode}")
    batch = ref[f"{case}/x"].shape[0]
    assert set(got) == {_kernel(name) for name in g_ref}
    for name in g_ref:
        t = float(ref[f"{case}/scale/{name}"])  # T for a conv, 1 for a dense layer
        g_scale = batch if curvature == "empirical" else 1.0
        a, g = got[_kernel(name)]
        assert _max_diff(a, t * a_ref[name]["a"]) < TOL, name
        assert _max_diff(g, g_scale * g_ref[name]["g"]) < TOL, name


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("inverse", ["pi", "exact"])
def test_preconditioned_gradient_matches_kfac_jax(x64, ref, case, inverse):
    model = _case(case)
    factors = model.factors(_float64(model.params), "ggn")
    damping = 0.05  # the fixture's DAMPING
    solve = _pi_inverse if inverse == "pi" else _exact_inverse
    grads = _layers(ref, f"{case}/grad")
    for name, want in _layers(ref, f"{case}/precon_{inverse}").items():
        a, g = (np.asarray(f) for f in factors[_kernel(name)])
        got = solve(a, g, damping, _stack(grads[name]))
        assert _max_diff(got, _stack(want)) < TOL, name


def _replay(ref: dict, case: str, run: str) -> dict[str, float]:
    """kfac_jax.Optimizer's three steps replayed from funcnet's factors (module doc): the
    largest difference from the fixture of each recorded quantity."""
    model = _case(case)
    params = _float64(model.params)
    record = {
        k: ref[f"{case}/{run}/{k}"]
        for k in ("learning_rate", "momentum", "damping", "rho", "next_damping")
    }
    record["quad_change"] = ref[f"{case}/{run}/quad_model_change"]
    adaptive = run == "opt_adaptive_damping"
    ema = float(ref[f"{case}/{run}/curvature_ema"])
    decay = float(ref[f"{case}/{run}/damping_adaptation_decay"])  # per step: interval 1
    damping = 0.1
    velocity = jax.tree.map(jnp.zeros_like, params)
    weight, running = 0.0, None
    diffs = dict.fromkeys((*record, "params"), 0.0)

    def note(what, got, want):
        diffs[what] = max(diffs[what], _max_diff(got, want))

    for step in range(STEPS):
        fresh = model.factors(params, "ggn")
        weight = ema * weight + 1.0
        eta = 1.0 / weight  # kfac-jax's bias-corrected EMA: Σ ema^(t−s) F_s / Σ ema^(t−s)
        if running is None:
            running = {k: tuple(np.asarray(m) for m in f) for k, f in fresh.items()}
        else:
            running = {
                k: tuple(
                    (1 - eta) * old + eta * np.asarray(new)
                    for old, new in zip(running[k], f, strict=True)
                )
                for k, f in fresh.items()
            }
        note("damping", damping, record["damping"][step])
        loss, grads = model.loss_and_grad(params)
        precon = {}
        for name, layer in params.items():
            if layer:
                a, g = running[_kernel(name)]
                mat = _pi_inverse(a, g, damping, _stack(grads[name]))
                precon[name] = _unstack(mat, layer)
            else:
                precon[name] = {}
        quad, dots, lin = map(np.asarray, model.quad_model(params, (precon, velocity), grads))
        damped = quad + damping * dots
        if step == 0:  # no velocity yet: the learning rate alone, momentum 0
            w = np.array([-lin[0] / damped[0, 0], 0.0])
        else:
            w = -np.linalg.solve(damped, lin)
        note("learning_rate", -w[0], record["learning_rate"][step])
        note("momentum", w[1], record["momentum"][step])
        change = 0.5 * w @ quad @ w + w @ lin  # without the damping term
        note("quad_change", change, record["quad_change"][step])
        delta = jax.tree.map(lambda u, v, w=w: w[0] * u + w[1] * v, precon, velocity)
        params = jax.tree.map(jnp.add, params, delta)
        velocity = delta
        for name, layer in _layers(ref, f"{case}/{run}/step{step + 1}").items():
            for leaf, value in layer.items():
                note("params", params[name][leaf], value)
        if adaptive:  # adapted every step: damping_adaptation_interval 1
            rho = (float(model.loss(params)) - float(loss)) / change
            note("rho", rho, record["rho"][step])
            if rho > 0.75:
                damping *= decay
            elif rho < 0.25:
                damping /= decay
            note("next_damping", damping, record["next_damping"][step])
        else:
            assert np.isnan(record["rho"][step])
    return diffs


@pytest.mark.parametrize("run", ["opt_fixed_damping", "opt_adaptive_damping"])
def test_optimizer_steps_match_kfac_jax(x64, ref, run):
    # The mlp only: the cnn's runs are `optim.kfac`'s test below, and compiling its quadratic
    # model would add a second or two to a file kept under ten.
    diffs = _replay(ref, "mlp", run)
    assert max(diffs.values()) < TOL, diffs


def test_funcnet_kfac_matches_kfac_jax(x64, ref):
    """`optim.kfac` against kfac_jax.Optimizer's adaptive-damping run, which refreshes the
    factors every step (curvature_ema 0) and adapts the damping by (19/20) every step: the
    settings both share. The params after each step, the damping and ρ. The cnn only (conv
    and dense layers both): compiling `optim.kfac`'s step takes about 4 s per model."""
    case, run = "cnn", "opt_adaptive_damping"
    assert float(ref[f"{case}/{run}/curvature_ema"]) == 0.0
    assert float(ref[f"{case}/{run}/damping_adaptation_decay"]) == 0.95  # funcnet's ω per step
    model = _case(case)
    opt = optim.kfac(
        damping=0.1,
        damping_adaptation_interval=1,
        factor_decay=0.0,
        curvature_update_frequency=1,
        inverse_update_frequency=1,
        curvature="ggn",
    )

    @jax.jit
    def step(params, state):
        value, grads = jax.value_and_grad(model.loss)(params)
        updates, state = opt.update(
            grads,
            state,
            params,
            value=value,
            value_fn=model.loss,
            outputs_fn=model.outputs_fn,
            loss_of_outputs=model.loss_of_outputs,
        )
        return optim.apply_updates(params, updates), state

    params = _float64(model.params)
    state = opt.init(params)
    for k in range(STEPS):
        params, state = step(params, state)
        for name, layer in _layers(ref, f"{case}/{run}/step{k + 1}").items():
            for leaf, value in layer.items():
                assert _max_diff(params[name][leaf], value) < TOL, (k, name, leaf)
        assert abs(float(state.damping) - ref[f"{case}/{run}/next_damping"][k]) < TOL
        assert abs(float(state.rho) - ref[f"{case}/{run}/rho"][k]) < TOL
