"""Activations lower to what XLA fuses: conv → activation → pool compiles to no more kernels
than the same forward written by hand with `jax.lax` and `jax.nn`.

On XLA:CPU a compare-and-select between a convolution and a pooling stops the fusion of the
three and writes every activation to memory; a max does not. The kernels counted are the
fusions and custom calls of the compiled entry computation.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from funcnet import nn

SHAPE = (8, 12, 12, 3)

# Each activation and the hand-written form of the same function (jax.nn's, where it has one).
TWINS = {
    "relu": (nn.relu, jax.nn.relu),
    "relu6": (nn.relu6, jax.nn.relu6),
    "leaky_relu": (nn.leaky_relu, jax.nn.leaky_relu),
    "hard_tanh": (nn.hard_tanh, jax.nn.hard_tanh),
    "hard_sigmoid": (nn.hard_sigmoid, jax.nn.hard_sigmoid),
    "hard_swish": (nn.hard_swish, jax.nn.hard_swish),
    "elu": (nn.elu, lambda x: jnp.maximum(x, 0) + jnp.expm1(jnp.minimum(x, 0))),
    "selu": (nn.selu, jax.nn.selu),
    "celu": (nn.celu, jax.nn.celu),
    "softplus": (nn.softplus, jax.nn.softplus),
    "log_sigmoid": (nn.log_sigmoid, jax.nn.log_sigmoid),
    "mish": (nn.mish, jax.nn.mish),
    "gelu": (nn.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
    "silu": (nn.silu, jax.nn.silu),
    "sigmoid": (nn.sigmoid, jax.nn.sigmoid),
    "tanh": (nn.tanh, jnp.tanh),
    "softsign": (nn.softsign, jax.nn.soft_sign),
}


def kernels(fn, *args) -> int:
    text = jax.jit(fn).lower(*args).compile().as_text()
    entry = text[text.index("ENTRY") :]
    return len(re.findall(r"= \S+ (?:fusion|custom-call)\(", entry))


def funcnet_forward(activation):
    model = nn.serial(nn.conv(16, 3), activation, nn.max_pool(2))
    _, params, state = model.init(jax.random.key(0), SHAPE)
    return (lambda p, x: model.apply(p, state, x)[0]), params


def hand_written_forward(activation):
    def forward(params, x):
        w, b = params["conv_0"]["w"], params["conv_0"]["b"]
        y = lax.conv_general_dilated(
            x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        y = activation(y + b)
        return lax.reduce_window(y, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")

    return forward


@pytest.mark.parametrize("name", sorted(TWINS))
def test_conv_activation_pool_compiles_to_no_more_kernels_than_by_hand(name):
    ours, theirs = TWINS[name]
    forward, params = funcnet_forward(ours)
    x = jnp.asarray(np.random.default_rng(0).normal(size=SHAPE), jnp.float32)
    np.testing.assert_allclose(
        forward(params, x), hand_written_forward(theirs)(params, x), rtol=2e-6, atol=2e-6
    )
    assert kernels(forward, params, x) <= kernels(hand_written_forward(theirs), params, x)


def test_relu_network_is_one_kernel_per_conv_relu_pool():
    forward, params = funcnet_forward(nn.relu)
    x = jnp.ones(SHAPE, jnp.float32)
    assert kernels(forward, params, x) == kernels(hand_written_forward(jax.nn.relu), params, x)


@pytest.mark.parametrize(
    "fn, points, slopes",
    [
        (nn.relu, [0.0, -1.0, 2.0], [0.0, 0.0, 1.0]),
        (nn.relu6, [0.0, 6.0, 3.0, 7.0], [0.0, 0.0, 1.0, 0.0]),
        (nn.leaky_relu, [0.0, -2.0], [1.0, 0.01]),
        (nn.hard_tanh, [-1.0, 1.0, 0.5, 2.0], [1.0, 1.0, 1.0, 0.0]),
        (nn.elu, [0.0, -1.0, 1.0], [1.0, np.exp(-1.0), 1.0]),
    ],
)
def test_kink_gradients_and_nan_are_kept(fn, points, slopes):
    x = jnp.asarray(points, jnp.float32)
    np.testing.assert_allclose(jax.vmap(jax.grad(fn))(x), slopes, rtol=1e-6)
    assert bool(jnp.isnan(fn(jnp.float32(jnp.nan))))
    # Piecewise linear pieces have no curvature.
    if fn is not nn.elu:
        assert float(jax.grad(jax.grad(fn))(jnp.float32(0.3))) == 0.0
