"""Bad input gets a clear error naming the layer path (or argument) and the shapes involved.

Each case is a call that must raise a `ValueError` or `TypeError` (`LayerError` is a
`ValueError`) whose message holds every listed fragment: never a silent broadcast, never a
bare JAX error from deep inside a tree map.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn
from funcnet import nn

KEY = jax.random.key(0)
MLP = nn.serial(nn.dense(8), nn.relu, nn.dense(3))
WIDER = nn.serial(nn.dense(9), nn.relu, nn.dense(3))
OTHER = nn.serial(nn.dense(8), nn.tanh, nn.dense(8), nn.dense(3))
CNN = nn.serial(nn.conv(4, 3), nn.flatten(), nn.dense(2))
X = np.ones((10, 5), np.float32)
Y = np.zeros(10, np.int32)
FIT = {
    "loss_fn": fn.losses.softmax_cross_entropy,
    "epochs": 1,
    "batch_size": 4,
    "key": KEY,
    "progress": False,
}


def params(model, in_shape=(4, 5)):
    return model.init(KEY, in_shape)[1:]


def apply(model, inputs, in_shape=(4, 5), made_by=None):
    p, s = params(made_by or model, in_shape)
    return lambda: model.apply(p, s, inputs, key=KEY, train=True)


def layer(make, in_shape, inputs):
    return apply(nn.serial(make), inputs, in_shape)


def state(model, optimizer=None):
    return fn.train.init_train_state(model, optimizer or fn.optim.adam(1e-3), KEY, (4, 5))


def with_nan(array, row):
    array = array.copy()
    array[row, 1] = np.nan
    return array


def fit(data, **kwargs):
    return lambda: fn.train.fit(MLP, fn.optim.adam(1e-3), data, **{**FIT, **kwargs})


def step_with(opt_state):
    step = fn.train.make_step(MLP, fn.optim.adam(1e-3), loss_fn=fn.losses.softmax_cross_entropy)
    return lambda: step(state(MLP)._replace(opt_state=opt_state), (X[:4], Y[:4]))


ADAM = fn.optim.adam(1e-3)
CASES = {
    # Layers: wrong feature size, wrong rank, wrong dtype, params of another model.
    "dense wrong features": (apply(MLP, jnp.ones((4, 6))), ["dense_0", "(4, 6)", "(5, 8)"]),
    "dense params of another width": (
        apply(MLP, jnp.ones((4, 5)), made_by=WIDER),
        ["dense_0", "(5, 9)", "8 features", "another model"],
    ),
    "params of another architecture": (
        apply(MLP, jnp.ones((4, 5)), made_by=OTHER),
        ["relu_1", "no entry 'relu_1'", "another model"],
    ),
    "conv wrong rank": (
        apply(CNN, jnp.ones((2, 8, 8)), (2, 8, 8, 1)),
        ["conv_0", "rank 4", "(2, 8, 8)"],
    ),
    "conv integer images": (
        apply(CNN, jnp.ones((2, 8, 8, 1), jnp.uint8), (2, 8, 8, 1)),
        ["conv_0", "uint8", "float32"],
    ),
    "conv wrong channels": (
        apply(CNN, jnp.ones((2, 8, 8, 3)), (2, 8, 8, 1)),
        ["conv_0", "1 input channels", "(2, 8, 8, 3)"],
    ),
    "batch_norm wrong channels": (
        layer(nn.batch_norm(), (4, 5), jnp.ones((4, 6))),
        ["batch_norm_0", "5 channels", "(4, 6)"],
    ),
    "layer_norm wrong channels": (
        layer(nn.layer_norm(), (4, 5), jnp.ones((4, 6))),
        ["layer_norm_0", "5 channels", "(4, 6)"],
    ),
    "group_norm wrong channels": (
        layer(nn.group_norm(2), (4, 3, 6), jnp.ones((4, 3, 8))),
        ["group_norm_0", "6 channels", "(4, 3, 8)"],
    ),
    "embedding float ids": (
        layer(nn.embedding(10, 4), (2, 3), jnp.ones((2, 3))),
        ["embedding_0", "integer ids", "float32"],
    ),
    "embedding ids out of range": (
        layer(nn.embedding(10, 4), (2, 3), jnp.full((2, 3), 12)),
        ["embedding_0", "[0, 10)", "12"],
    ),
    "gru wrong features": (
        layer(nn.gru(8), (2, 5, 3), jnp.ones((2, 5, 4))),
        ["gru_0", "(batch, time, 3)", "(2, 5, 4)"],
    ),
    "lstm wrong rank": (
        layer(nn.lstm(8), (2, 5, 3), jnp.ones((2, 3))),
        ["lstm_0", "(batch, time, 3)", "(2, 3)"],
    ),
    "attention wrong width": (
        layer(nn.multi_head_attention(2), (2, 5, 8), jnp.ones((2, 5, 6))),
        ["multi_head_attention_0", "8 features", "(2, 5, 6)"],
    ),
    "weight_norm wrong features": (
        layer(nn.weight_norm(nn.dense(3)), (2, 5), jnp.ones((2, 4))),
        ["weight_norm_0", "5 features", "(2, 4)"],
    ),
    "residual branch changes the shape": (
        lambda: nn.residual(nn.dense(3)).init(KEY, (2, 5)),
        ["residual", "(2, 5)", "(2, 3)"],
    ),
    # Losses: labels out of range, of the wrong dtype, of another batch size.
    "labels out of range": (
        lambda: fn.losses.softmax_cross_entropy(jnp.zeros((4, 3)), jnp.array([0, 1, 2, 3])),
        ["softmax_cross_entropy", "[0, 3)", "[0, 3]"],
    ),
    "float class labels": (
        lambda: fn.losses.softmax_cross_entropy(jnp.zeros((4, 3)), jnp.zeros(4)),
        ["softmax_cross_entropy", "integers", "float32"],
    ),
    "labels of another batch size": (
        lambda: fn.losses.softmax_cross_entropy(jnp.zeros((4, 3)), jnp.array([0, 1, 2])),
        ["softmax_cross_entropy", "(3,)", "(4, 3)"],
    ),
    "regression targets that would broadcast": (
        lambda: fn.losses.mse(jnp.zeros((4, 1)), jnp.zeros(4)),
        ["mse", "(4, 1)", "(4,)", "broadcasting"],
    ),
    # Training: mismatched x and y, non-finite data, states of another model or optimizer.
    "fit with x and y of different lengths": (
        fit((X, Y[:9])),
        ["x and y", "(10, 5)", "(9,)"],
    ),
    "fit with NaN inputs": (fit((with_nan(X, 3), Y)), ["train_data x", "(10, 5)", "NaN", "3"]),
    "fit with inf held-out inputs": (
        fit((X, Y), eval_data=(X * np.inf, Y)),
        ["eval_data x", "(10, 5)", "inf", "10 row(s)"],
    ),
    "fit with a state of another model": (
        fit((X, Y), state=state(WIDER)),
        ["fit", "params/dense_0/w", "(5, 9)", "(5, 8)"],
    ),
    "fit with an optimizer state of another params tree": (
        fit((X, Y), state=state(MLP)._replace(opt_state=state(WIDER).opt_state)),
        ["fit", "opt_state/1/mu/dense_0/w", "(5, 9)", "(5, 8)"],
    ),
    "fit with the state of another optimizer": (
        fit((X, Y), state=state(MLP, fn.optim.sgd(0.1, momentum=0.9))),
        ["fit", "missing", "opt_state/1/mu/dense_0/w", "extra", "trace"],
    ),
    "make_step with an optimizer state of another params tree": (
        step_with(state(WIDER).opt_state),
        ["optimizer state does not fit", "dense_0/w", "(5, 9)", "(5, 8)"],
    ),
    "fit on a mesh that cannot share the batch": (
        fit((X, Y), batch_size=3, mesh=jax.sharding.Mesh(np.array(jax.devices() * 2), ("data",))),
        ["global batch size 3", "2 devices"],
    ),
    # Optimizers: a state or updates of another params tree.
    "optimizer update with the state of another tree": (
        lambda: ADAM.update(params(MLP)[0], ADAM.init(params(WIDER)[0])),
        ["optimizer state does not fit", "dense_0/b", "(9,)", "(8,)"],
    ),
    "apply_updates of another tree": (
        lambda: fn.optim.apply_updates(params(MLP)[0], params(WIDER)[0]),
        ["apply_updates", "dense_2/w", "(9, 3)", "(8, 3)"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_with_a_clear_message(name):
    call, fragments = CASES[name]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{name}: {missing} not in the message:\n{message}"
