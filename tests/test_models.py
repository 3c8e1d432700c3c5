"""The command's model builders: `funcnet.app.models`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from funcnet.app import models


@pytest.mark.parametrize(
    ("model", "in_shape"),
    [
        (models.mlp((8, 8), 3, batch_norm=True), (4, 5)),
        (models.cnn((4,), (8,), 3, batch_norm=True), (4, 8, 8, 1)),
    ],
    ids=["mlp", "cnn"],
)
def test_layers_before_batch_norm_have_no_bias(model, in_shape):
    _, params, state = model.init(jax.random.key(0), in_shape)
    layers = list(_layers(params))
    names = [name for name, _ in layers]
    assert sum(name.startswith("batch_norm") for name in names) == 2
    for (name, layer), (after, _) in itertools.pairwise(layers):
        if after.startswith("batch_norm"):
            assert set(layer) == {"w"}, name
    assert set(layers[-1][1]) == {"w", "b"}  # the output layer keeps its bias
    assert state  # running statistics


def _layers(params):
    """(name, params) of every layer in order, through nested `serial`s."""
    for name, value in params.items():
        if value and all(isinstance(v, dict) for v in value.values()):
            yield from _layers(value)
        else:
            yield name, value


def test_a_bias_before_batch_norm_cancels():
    # (xW + b) − mean(xW + b) = xW − mean(xW): in training mode the bias changes nothing and
    # its gradient is zero, which is why the builders leave it out.
    x = jax.random.normal(jax.random.key(1), (16, 5))
    with_bias = nn.serial(nn.dense(4), nn.batch_norm())
    _, params, state = with_bias.init(jax.random.key(0), x.shape)
    params["dense_0"]["b"] = jnp.array([3.0, -2.0, 0.5, 7.0])

    def out(params):
        y, _ = with_bias.apply(params, state, x, train=True)
        return y

    without = {**params, "dense_0": {"w": params["dense_0"]["w"]}}
    no_bias = nn.serial(nn.dense(4, use_bias=False), nn.batch_norm())
    y_without, _ = no_bias.apply(without, state, x, train=True)
    np.testing.assert_allclose(out(params), y_without, atol=1e-5)
    grads = jax.grad(lambda p: jnp.sum(out(p) * jnp.arange(4.0)))(params)
    np.testing.assert_allclose(grads["dense_0"]["b"], 0.0, atol=1e-5)
