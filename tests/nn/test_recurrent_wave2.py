"""Stacked, masked and stateful gru / lstm against torch.nn.GRU / torch.nn.LSTM."""

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.nn.recurrent import gru, lstm

torch = pytest.importorskip("torch")

HIDDEN, FEATURES, BATCH, TIME = 3, 2, 3, 5
LAYERS = {"gru": gru, "lstm": lstm}


def _key(seed=0):
    # The layers take any typed key; "rbg" keys compile much faster than threefry on CPU.
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _torch_module(kind, features=FEATURES, **settings):
    """A float64 torch module with its own random init, rounded to float32 values."""
    torch.manual_seed(0)
    module = getattr(torch.nn, kind.upper())(features, HIDDEN, batch_first=True, **settings)
    return module.float().double()


def _from_torch(module, kind, grad=False):
    """funcnet params (or their gradients, `grad=True`) from a torch module.

    Kernels are transposed; the LSTM's one bias is ``b_ih + b_hh``, whose gradient is that of
    either torch bias.
    """

    def get(name):
        tensor = getattr(module, name)
        return np.asarray((tensor.grad if grad else tensor).detach().numpy(), np.float32)

    def one(layer, suffix):
        names = [f"{n}_l{layer}{suffix}" for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        w_ih, w_hh, b_ih, b_hh = map(get, names)
        params = {"w_ih": w_ih.T, "w_hh": w_hh.T}
        if kind == "gru":
            return {**params, "b_ih": b_ih, "b_hh": b_hh}
        return {**params, "b": b_ih if grad else b_ih + b_hh}

    layers = []
    for layer in range(module.num_layers):
        if module.bidirectional:
            layers.append({"forward": one(layer, ""), "backward": one(layer, "_reverse")})
        else:
            layers.append(one(layer, ""))
    return layers[0] if module.num_layers == 1 else {f"layer_{i}": p for i, p in enumerate(layers)}


def _as_torch(a):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=True)


def _torch_run(module, kind, x, lengths, initial, weights):
    """Torch's outputs (zero at padding), final states and gradients for the weighted-sum loss.

    `initial` and the final states are in funcnet's layout, (batch, num_layers·D, hidden).
    """
    x_t = _as_torch(x)
    states = None if initial is None else [_as_torch(np.swapaxes(s, 0, 1)) for s in initial]
    hx = None if states is None else (states[0] if kind == "gru" else tuple(states))
    if lengths is None:
        out, final = module(x_t, hx)
    else:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
        )
        out, final = module(packed, hx)
        out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=x.shape[1]
        )
    final = [final] if kind == "gru" else list(final)
    final = [f.transpose(0, 1) for f in final]
    loss = (out * torch.tensor(weights[0], dtype=torch.float64)).sum()
    for f, w in zip(final, weights[1:], strict=True):
        loss = loss + (f * torch.tensor(w, dtype=torch.float64)).sum()
    loss.backward()
    grads = {
        "params": _from_torch(module, kind, grad=True),
        "x": x_t.grad.numpy(),
        "initial": None if states is None else tuple(s.grad.numpy().swapaxes(0, 1) for s in states),
    }
    return out.detach().numpy(), [f.detach().numpy() for f in final], grads


def _assert_close(actual, expected, tol=2e-5):
    jax.tree.map(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=tol, atol=tol), actual, expected
    )


CASES = {
    # Two bidirectional layers, padded sequences (one full, one of length 1), a given state.
    "bidirectional-masked-initial": dict(num_layers=2, bidirectional=True, lengths=[5, 1, 3]),
    # Three forward layers, no mask, zero state, the last output only.
    "stacked-last-output": dict(num_layers=3, bidirectional=False, lengths=None),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_outputs_final_states_and_gradients_match_torch(kind, case):
    num_layers, bidirectional, lengths = CASES[case].values()
    masked = lengths is not None
    module = _torch_module(kind, num_layers=num_layers, bidirectional=bidirectional)
    layer = LAYERS[kind](
        HIDDEN,
        num_layers=num_layers,
        bidirectional=bidirectional,
        return_sequences=masked,
        return_state=True,
    )
    directions = 2 if bidirectional else 1
    state_shape = (BATCH, num_layers * directions, HIDDEN)
    n_states = 1 if kind == "gru" else 2
    x = _normal(BATCH, TIME, FEATURES)
    initial = [_normal(*state_shape, seed=2 + i) for i in range(n_states)] if masked else None
    mask = None if not masked else np.arange(TIME) < np.array(lengths)[:, None]

    params = _from_torch(module, kind)
    in_shape = (BATCH, TIME, FEATURES)
    if masked:
        in_shape = (in_shape, (BATCH, TIME), state_shape if kind == "gru" else (state_shape,) * 2)
    out_shape, init_params, _ = layer.init(_key(), in_shape)
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, init_params)

    y_weights = _normal(BATCH, TIME, directions * HIDDEN, seed=5)
    s_weights = [_normal(*state_shape, seed=6 + i) for i in range(n_states)]

    def loss(params, x, initial):
        if masked:
            inputs = (x, jnp.asarray(mask), initial[0] if kind == "gru" else tuple(initial))
        else:
            inputs = x
        (y, final), _ = layer.apply(params, {}, inputs)
        final = [final] if kind == "gru" else list(final)
        if masked:
            y, _ = y
        total = jnp.sum(y * y_weights) if masked else 0.0
        total = total + sum(jnp.sum(f * w) for f, w in zip(final, s_weights, strict=True))
        return total, (y, final)

    (_, (y, final)), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(
        params, x, initial
    )
    assert jax.tree.map(np.shape, (y, tuple(final) if n_states == 2 else final[0])) == (
        out_shape if not masked else (out_shape[0][0], out_shape[1])
    )
    out, torch_final, torch_grads = _torch_run(
        module, kind, x, lengths, initial, [y_weights if masked else 0 * y_weights, *s_weights]
    )
    if masked:
        _assert_close(y, out)
        assert np.all(np.asarray(y)[~mask] == 0)
    else:  # the last output is the last layer's final h_n, both directions
        np.testing.assert_array_equal(y, final[0][:, -directions:].reshape(BATCH, -1))
    _assert_close(final, torch_final)
    _assert_close(grads[0], torch_grads["params"])
    _assert_close(grads[1], torch_grads["x"])
    if masked:
        _assert_close(tuple(grads[2]), torch_grads["initial"])


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_a_carried_state_runs_a_sequence_in_chunks(kind):
    layer = LAYERS[kind](HIDDEN, num_layers=2, return_state=True)
    _, params, _ = layer.init(_key(), (2, 6, FEATURES))
    apply = jax.jit(layer.apply)
    x = jnp.asarray(_normal(2, 6, FEATURES))
    mask = jnp.asarray(np.arange(6) < np.array([[6], [2]]))  # the second ends in the first half
    ((y, _), final), _ = apply(params, {}, (x, mask))
    zeros = jnp.zeros((2, 2, HIDDEN))
    state = zeros if kind == "gru" else (zeros, zeros)
    chunks = []
    for t in (slice(0, 3), slice(3, 6)):
        ((y_t, _), state), _ = apply(params, {}, (x[:, t], mask[:, t], state))
        chunks.append(y_t)
    _assert_close(jnp.concatenate(chunks, axis=1), y, tol=1e-6)
    _assert_close(state, final, tol=1e-6)
    # Each example alone, under vmap, as in the batch.
    one = lambda x, m: apply(params, {}, (x[None], m[None]))[0]
    (per_example, _), per_final = jax.vmap(one)(x, mask)
    _assert_close(per_example[:, 0], y, tol=1e-6)
    _assert_close(jax.tree.map(lambda s: s[:, 0], per_final), final, tol=1e-6)


def test_dropout_acts_between_layers_only():
    rate, key = 0.5, _key(7)
    layer = gru(HIDDEN, num_layers=2, dropout=rate)
    plain = gru(HIDDEN, num_layers=2)
    module = _torch_module("gru", num_layers=2)
    params = _from_torch(module, "gru")
    x = _normal(BATCH, TIME, FEATURES)
    weights = _normal(BATCH, TIME, HIDDEN, seed=5)

    def loss(params, x):
        y, _ = layer.apply(params, {}, x, key=key, train=True)
        return jnp.sum(y * weights), y

    (_, y), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    # The reference: torch's two layers, with layer 0's output through funcnet's own dropout
    # drawn from fold_in(key, 0); nothing after the last layer.
    ones = jnp.ones((BATCH, TIME, HIDDEN))
    scale, _ = nn.dropout(rate).apply({}, {}, ones, key=jax.random.fold_in(key, 0), train=True)
    assert 0 < np.count_nonzero(scale) < scale.size
    first, second = _torch_module("gru"), _torch_module("gru", features=HIDDEN)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(first, f"{name}_l0").copy_(getattr(module, f"{name}_l0"))
            getattr(second, f"{name}_l0").copy_(getattr(module, f"{name}_l1"))
    x_t = _as_torch(x)
    hidden_t, _ = first(x_t)
    out, _ = second(hidden_t * torch.tensor(np.asarray(scale, np.float64)))
    (out * torch.tensor(weights, dtype=torch.float64)).sum().backward()
    _assert_close(y, out.detach().numpy())
    _assert_close(grads[1], x_t.grad.numpy())
    expected = {
        "layer_0": _from_torch(first, "gru", grad=True),
        "layer_1": _from_torch(second, "gru", grad=True),
    }
    _assert_close(grads[0], expected)
    # Evaluation is deterministic and ignores the rate; training needs a key.
    evaluated, _ = layer.apply(params, {}, x)
    np.testing.assert_array_equal(evaluated, plain.apply(params, {}, x)[0])
    with pytest.raises(nn.LayerError, match=r"gru: train=True with dropout=0.5 .*needs a key"):
        layer.apply(params, {}, x, train=True)
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        gru(HIDDEN, dropout=0.2)


def test_shapes_of_every_input_and_output_form():
    state = (BATCH, 4, HIDDEN)  # two bidirectional layers
    x_shape, mask_shape = (BATCH, TIME, FEATURES), (BATCH, TIME)
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    mask = jax.ShapeDtypeStruct(mask_shape, jnp.bool_)
    h = jax.ShapeDtypeStruct(state, jnp.float32)
    for kind in ("gru", "lstm"):
        s_shape, s = (state, h) if kind == "gru" else ((state, state), (h, h))
        forms = [
            (x_shape, x),
            ((x_shape, mask_shape), (x, mask)),
            ((x_shape, mask_shape, s_shape), (x, mask, s)),
            ((x_shape, None, s_shape), (x, None, s)),
        ]
        for return_sequences in (True, False):
            for return_state in (False, True):
                layer = LAYERS[kind](
                    HIDDEN,
                    num_layers=2,
                    bidirectional=True,
                    return_sequences=return_sequences,
                    return_state=return_state,
                )
                for in_shape, inputs in forms:
                    out_shape, params, _ = layer.init(_key(), in_shape)
                    y, _ = jax.eval_shape(partial(layer.apply, params, {}), inputs)
                    assert jax.tree.map(lambda s: s.shape, y) == out_shape
    # The stacked params, and a masked stack in serial.
    assert jax.tree.map(np.shape, params) == {
        f"layer_{i}": {
            d: {"w_ih": (f, 4 * HIDDEN), "w_hh": (HIDDEN, 4 * HIDDEN), "b": (4 * HIDDEN,)}
            for d in ("forward", "backward")
        }
        for i, f in enumerate([FEATURES, 2 * HIDDEN])
    }
    assert not np.allclose(
        params["layer_0"]["forward"]["w_hh"], params["layer_1"]["forward"]["w_hh"]
    )
    model = nn.serial(gru(HIDDEN), lstm(HIDDEN, bidirectional=True, num_layers=2))
    out_shape, _, _ = model.init(_key(), (x_shape, mask_shape))
    assert out_shape == ((BATCH, TIME, 2 * HIDDEN), mask_shape)


@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_bad_settings_and_inputs_are_refused(kind):
    for settings in (dict(num_layers=0), dict(num_layers=1.5), dict(dropout=1.0)):
        with pytest.raises(ValueError, match=f"{kind}: "), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            LAYERS[kind](HIDDEN, **settings)
    layer = LAYERS[kind](HIDDEN, num_layers=2)
    x_shape = (BATCH, TIME, FEATURES)
    with pytest.raises(nn.LayerError, match=rf"{kind}: the mask must have shape .*\(3, 5\)"):
        layer.init(_key(), (x_shape, (BATCH, TIME + 1)))
    with pytest.raises(nn.LayerError, match=rf"{kind}: the initial state .*\(3, 2, 3\), got"):
        layer.init(_key(), (x_shape, None, (BATCH, 1, HIDDEN)))
    _, params, _ = layer.init(_key(), x_shape)
    x = jnp.ones(x_shape)
    mask = jnp.ones((BATCH, TIME), bool)
    h = jnp.zeros((BATCH, 2, HIDDEN))
    state = h if kind == "gru" else (h, h)
    with pytest.raises(nn.LayerError, match=r"bool array of shape \(batch, time\)"):
        layer.apply(params, {}, (x, mask.astype(jnp.float32)))
    with pytest.raises(nn.LayerError, match=r"bool array of shape \(batch, time\)"):
        layer.apply(params, {}, (x, mask[:, :-1]))
    with pytest.raises(nn.LayerError, match=r"\(x, mask, initial_state\), got 4 inputs"):
        layer.apply(params, {}, (x, mask, state, state))
    wrong = h[:, :1] if kind == "gru" else (h, h[:, :1])
    with pytest.raises(nn.LayerError, match=r"initial state must be .*\(3, 2, 3\)"):
        layer.apply(params, {}, (x, mask, wrong))
    with pytest.raises(nn.LayerError, match="floating-point"):
        layer.apply(params, {}, (x, None, jax.tree.map(lambda s: s.astype(jnp.int32), state)))
    if kind == "lstm":
        with pytest.raises(nn.LayerError, match=r"a pair \(h0, c0\)"):
            layer.apply(params, {}, (x, None, h))
