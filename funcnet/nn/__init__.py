"""Pure-function layers, combinators, activations and initializers.

A layer is ``Layer(init, apply, kind="layer")``; see `funcnet.nn.core` for the protocol.
Each module (``core``, ``activations``, ``linear``, ``conv``, ...) lists its public names in
``__all__``; the ones below are the package's public API. ``ACTIVATIONS`` maps each
activation's name to its function; ``SELU_ALPHA`` and ``SELU_SCALE`` are SELU's constants.
"""

from funcnet.nn import initializers
from funcnet.nn.activations import (
    ACTIVATIONS,
    SELU_ALPHA,
    SELU_SCALE,
    celu,
    elu,
    gelu,
    hard_tanh,
    leaky_relu,
    log_sigmoid,
    log_softmax,
    mish,
    relu,
    selu,
    sigmoid,
    silu,
    sinc,
    sine,
    softmax,
    softplus,
    softsign,
    step,
    swish,
    tanh,
)
from funcnet.nn.attention import multi_head_attention, transformer_block
from funcnet.nn.conv import (
    avg_pool,
    conv,
    flatten,
    global_avg_pool,
    global_max_pool,
    max_pool,
)
from funcnet.nn.core import (
    Layer,
    LayerError,
    as_layer,
    concat,
    fanout,
    from_function,
    layer_name,
    parallel,
    param_count,
    residual,
    serial,
    sum,
)
from funcnet.nn.dropout import alpha_dropout, dropout
from funcnet.nn.embedding import embedding
from funcnet.nn.linear import dense
from funcnet.nn.norm import batch_norm, group_norm, instance_norm, layer_norm, weight_norm
from funcnet.nn.recurrent import gru, lstm
from funcnet.nn.summary import summary

__all__ = [
    "ACTIVATIONS",
    "SELU_ALPHA",
    "SELU_SCALE",
    "Layer",
    "LayerError",
    "alpha_dropout",
    "as_layer",
    "avg_pool",
    "batch_norm",
    "celu",
    "concat",
    "conv",
    "dense",
    "dropout",
    "elu",
    "embedding",
    "fanout",
    "flatten",
    "from_function",
    "gelu",
    "global_avg_pool",
    "global_max_pool",
    "group_norm",
    "gru",
    "hard_tanh",
    "initializers",
    "instance_norm",
    "layer_name",
    "layer_norm",
    "leaky_relu",
    "log_sigmoid",
    "log_softmax",
    "lstm",
    "max_pool",
    "mish",
    "multi_head_attention",
    "parallel",
    "param_count",
    "relu",
    "residual",
    "selu",
    "serial",
    "sigmoid",
    "silu",
    "sinc",
    "sine",
    "softmax",
    "softplus",
    "softsign",
    "step",
    "sum",
    "summary",
    "swish",
    "tanh",
    "transformer_block",
    "weight_norm",
]
