"""gru and lstm against step-by-step numpy loops of PyTorch's equations."""

import contextlib
import io
import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import nn
from tests.helpers import backend_compiles

HIDDEN, FEATURES, BATCH, TIME = 4, 3, 2, 5


def _key(seed=0):
    # The layers take any typed key; "rbg" keys compile much faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, dtype=np.float32, seed=1):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


def _sigmoid(a):
    return 1 / (1 + np.exp(-a))


def _np_gru(p, xs):
    """One direction over `xs` (time, features) for one example; returns all states."""
    w_ih, w_hh = np.asarray(p["w_ih"], np.float64), np.asarray(p["w_hh"], np.float64)
    b_ih, b_hh = np.asarray(p["b_ih"], np.float64), np.asarray(p["b_hh"], np.float64)
    gate = lambda a, g: a[..., g * HIDDEN : (g + 1) * HIDDEN]
    h, states = np.zeros(HIDDEN), []
    for x in xs:
        gi, gh = x @ w_ih + b_ih, h @ w_hh + b_hh
        r = _sigmoid(gate(gi, 0) + gate(gh, 0))
        z = _sigmoid(gate(gi, 1) + gate(gh, 1))
        n = np.tanh(gate(gi, 2) + r * gate(gh, 2))
        h = (1 - z) * n + z * h
        states.append(h)
    return np.array(states)


def _np_lstm(p, xs):
    w_ih, w_hh = np.asarray(p["w_ih"], np.float64), np.asarray(p["w_hh"], np.float64)
    b = np.asarray(p["b"], np.float64)
    gate = lambda a, g: a[..., g * HIDDEN : (g + 1) * HIDDEN]
    h, c, states = np.zeros(HIDDEN), np.zeros(HIDDEN), []
    for x in xs:
        a = x @ w_ih + h @ w_hh + b
        i, f = _sigmoid(gate(a, 0)), _sigmoid(gate(a, 1))
        g, o = np.tanh(gate(a, 2)), _sigmoid(gate(a, 3))
        c = f * c + i * g
        h = o * np.tanh(c)
        states.append(h)
    return np.array(states)


def _np_layer(step, params, x, return_sequences, bidirectional):
    outputs = []
    for xs in np.asarray(x, np.float64):
        forward = step(params["forward"] if bidirectional else params, xs)
        if not bidirectional:
            outputs.append(forward if return_sequences else forward[-1])
            continue
        backward = step(params["backward"], xs[::-1])[::-1]  # states back in time order
        if return_sequences:
            outputs.append(np.concatenate([forward, backward], axis=-1))
        else:  # the backward "last" state is the one after reading x_0
            outputs.append(np.concatenate([forward[-1], backward[0]]))
    return np.array(outputs)


def _perturbed(params, seed=2):
    """Params with every entry moved, so that zero biases do not hide a misplaced term."""
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    return jax.tree.unflatten(
        tree, [leaf + 0.3 * rng.normal(size=leaf.shape).astype(leaf.dtype) for leaf in leaves]
    )


MODES = list(itertools.product([True, False], [False, True]))


@pytest.mark.parametrize(("return_sequences", "bidirectional"), MODES)
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_matches_a_numpy_loop(kind, return_sequences, bidirectional):
    layer = getattr(nn, kind)(
        HIDDEN, return_sequences=return_sequences, bidirectional=bidirectional
    )
    out_shape, params, state = layer.init(_key(), (BATCH, TIME, FEATURES))
    width = HIDDEN * (2 if bidirectional else 1)
    assert out_shape == ((BATCH, TIME, width) if return_sequences else (BATCH, width))
    assert state == {}
    params = _perturbed(params)
    x = _normal(BATCH, TIME, FEATURES)
    y, _ = jax.jit(layer.apply)(params, state, x)
    assert y.shape == out_shape
    step = _np_gru if kind == "gru" else _np_lstm
    expected = _np_layer(step, params, x, return_sequences, bidirectional)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_params_names_and_shapes():
    _, gru_params, _ = nn.gru(HIDDEN).init(_key(), (BATCH, TIME, FEATURES))
    assert jax.tree.map(jnp.shape, gru_params) == {
        "w_ih": (FEATURES, 3 * HIDDEN),
        "w_hh": (HIDDEN, 3 * HIDDEN),
        "b_ih": (3 * HIDDEN,),
        "b_hh": (3 * HIDDEN,),
    }
    _, lstm_params, _ = nn.lstm(HIDDEN, bidirectional=True).init(_key(), (BATCH, TIME, FEATURES))
    assert set(lstm_params) == {"forward", "backward"}
    assert jax.tree.map(jnp.shape, lstm_params["backward"]) == {
        "w_ih": (FEATURES, 4 * HIDDEN),
        "w_hh": (HIDDEN, 4 * HIDDEN),
        "b": (4 * HIDDEN,),
    }
    b = np.asarray(lstm_params["forward"]["b"]).reshape(4, HIDDEN)
    np.testing.assert_array_equal(b, [[0] * HIDDEN, [1] * HIDDEN, [0] * HIDDEN, [0] * HIDDEN])
    # Each gate's recurrent block is orthogonal.
    for block in np.split(np.asarray(gru_params["w_hh"]), 3, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(HIDDEN), atol=1e-5)
    assert not np.allclose(lstm_params["forward"]["w_ih"], lstm_params["backward"]["w_ih"])


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_under_vmap_and_with_a_sequence_model(kind):
    model = nn.serial(
        nn.embedding(7, FEATURES), getattr(nn, kind)(HIDDEN, bidirectional=True), nn.dense(7)
    )
    out_shape, params, state = model.init(_key(), (BATCH, TIME))
    assert out_shape == (BATCH, TIME, 7)
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 7, (BATCH, TIME)))
    apply = jax.jit(model.apply)
    y, _ = apply(params, state, ids)
    per_example = jax.vmap(lambda i: apply(params, state, i[None])[0][0])(ids)
    np.testing.assert_allclose(per_example, y, rtol=1e-5, atol=1e-6)
    # Changing the last token changes only the last output of a forward-only recurrence.
    layer = getattr(nn, kind)(HIDDEN)
    _, p, s = layer.init(_key(), (1, TIME, FEATURES))
    x = _normal(1, TIME, FEATURES)
    a, _ = layer.apply(p, s, x)
    b, _ = layer.apply(p, s, x.at[0, -1].add(1.0))
    np.testing.assert_array_equal(a[0, :-1], b[0, :-1])
    assert not np.allclose(a[0, -1], b[0, -1])


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_gradients_match_finite_differences_in_float64(x64, kind):
    layer = getattr(nn, kind)(3)
    _, params, state = layer.init(_key(), (2, 3, 2))
    params = _perturbed(params)
    x = _normal(2, 3, 2, dtype=np.float64)
    weights = _normal(2, 3, 3, dtype=np.float64, seed=4)

    def loss(args):
        p, x = args
        return jnp.sum(weights * layer.apply(p, state, x)[0])

    fn.diff.check_grads(jax.jit(loss), (params, x))


def _saved_by_the_scans(f, *args) -> int:
    """Floats of the residuals the recurrences' scans keep for the backward pass (outputs of
    the jitted function that runs each scan, as JAX names them)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        jax.ad_checkpoint.print_saved_residuals(f, *args)
    sizes = [
        math.prod(int(n) for n in re.search(r"\[([\d,]*)\]", line).group(1).split(",") if n)
        for line in buffer.getvalue().splitlines()
        if "output of jitted function 'run'" in line
    ]
    assert sizes, buffer.getvalue()
    return sum(sizes)


@pytest.mark.parametrize("kind, per_step", [("lstm", 4 + 2), ("gru", 2 + 1 + 1 + 1)])
def test_a_step_keeps_only_its_gates_pre_activations_and_carry(kind, per_step):
    """Per step, per example, the backward pass keeps the gates' pre-activations (the LSTM's
    4·hidden; the GRU's r and z sums and its two candidate terms) and the carry: ``per_step``
    times hidden floats, where keeping every nonlinearity and its derivative took 12 (LSTM)
    and 9 (GRU)."""
    batch, time, hidden = 2, 5, 4
    layer = getattr(nn, kind)(hidden, return_sequences=False)
    x = _normal(batch, time, 3)
    _, params, state = layer.init(_key(), x.shape)
    saved = _saved_by_the_scans(lambda p: layer.apply(p, state, x)[0].sum(), params)
    assert saved == time * batch * per_step * hidden


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_unrolled_loops_give_the_same_outputs_and_gradients(kind):
    """`unroll` changes how many steps a loop iteration takes, not what is computed: 1, 3 (11
    steps: three iterations and a remainder) and the layer's own choice, bidirectional and
    masked."""
    x, mask = _normal(3, 11, 4), jnp.arange(11)[None, :] < jnp.array([[11], [6], [1]])
    results = []
    for unroll in (1, 3, None):
        layer = getattr(nn, kind)(5, bidirectional=True, unroll=unroll)
        _, params, state = layer.init(_key(), ((3, 11, 4), (3, 11)))
        f = lambda p, layer=layer, state=state: layer.apply(p, state, (x, mask))[0][0]
        results.append((f(params), jax.grad(lambda p, f=f: jnp.sum(f(p) ** 2))(params)))
    for got in results[1:]:
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(results[0]), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _scan_unroll(layer, x_shape) -> int:
    """The `unroll` of the scan the layer's apply runs, read off its jaxpr."""
    _, params, state = layer.init(_key(), x_shape)
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    jaxpr = jax.make_jaxpr(lambda p, x: layer.apply(p, state, x)[0])(params, x)
    (run,) = {e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("jit", "pjit")}
    (unroll,) = {e.params["unroll"] for e in run.params["jaxpr"].eqns if e.primitive.name == "scan"}
    return unroll


def test_the_layer_unrolls_small_steps_over_long_enough_sequences_on_the_cpu():
    assert jax.default_backend() == "cpu"
    assert _scan_unroll(nn.lstm(256), (32, 64, 64)) == 4  # the benchmark's: 10.5 M per step
    assert _scan_unroll(nn.lstm(512), (32, 64, 64)) == 1  # hidden 512: 37.7 M multiply-adds
    assert _scan_unroll(nn.gru(256), (32, 7, 64)) == 1  # under 8 steps
    assert _scan_unroll(nn.gru(8), (4, 64, 8)) == 1  # 4·16·24 = 1,536: tiny, compile time wins
    assert _scan_unroll(nn.gru(512, unroll=2), (32, 64, 64)) == 2
    with pytest.raises(ValueError, match=r"lstm: unroll must be a positive int, got 0"):
        nn.lstm(4, unroll=0)
    with pytest.raises(ValueError, match=r"gru: unroll must be a positive int, got 2.5"):
        nn.gru(4, unroll=2.5)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bad_inputs_are_refused(kind):
    layer = getattr(nn, kind)(HIDDEN)
    with pytest.raises(nn.LayerError, match=rf"{kind}: .*\(batch, time, features\).*\(2, 3\)"):
        layer.init(_key(), (2, 3))
    _, params, state = layer.init(_key(), (BATCH, TIME, FEATURES))
    with pytest.raises(nn.LayerError, match=rf"{kind}: .*\(batch, time, 3\).*\(2, 5, 4\)"):
        layer.apply(params, state, jnp.ones((BATCH, TIME, 4)))
    with pytest.raises(nn.LayerError, match=r"floating-point.*int32"):
        layer.apply(params, state, jnp.ones((BATCH, TIME, FEATURES), jnp.int32))


def test_an_eager_apply_compiles_once_per_shape():
    """Outside `jit`, each direction's scan is compiled at the first call only: the scan's body
    is a new closure at each call, so JAX would trace and compile it every time (60–100 ms
    for a small GRU) if the layer did not run it under a `jit` of its own."""
    layer = nn.gru(4, num_layers=2, bidirectional=True)
    x = _normal(2, 3, 5)
    _, params, state = layer.init(_key(), x.shape)
    first = layer.apply(params, state, x)[0]
    with backend_compiles() as compiles:
        again = layer.apply(params, state, x)[0]
    assert compiles == []
    np.testing.assert_array_equal(first, again)
