"""Property tests: random architectures drawn from the layer catalogue.

For every drawn model: the shapes `init` infers equal the shapes `apply` produces under
`jax.jit` (in training and in evaluation), `jax.vmap` over single examples agrees with the
batch, the gradient is finite on finite input, and params names are unique and the same
across two inits.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from funcnet import nn

ACTIVATIONS = [nn.relu, nn.tanh, nn.gelu, nn.elu, nn.selu, nn.softplus, nn.mish, nn.sigmoid]
SETTINGS = settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
BATCH = 3

activation = st.sampled_from(ACTIVATIONS)
width = st.integers(1, 6)


@st.composite
def vector_block(draw, depth=0):
    """A block acting on ``(batch, features)``."""
    options = ["dense", "activation", "layer_norm", "batch_norm", "dropout"]
    if depth < 2:
        options += ["residual", "branches"]
    kind = draw(st.sampled_from(options))
    if kind == "dense":
        return nn.dense(draw(width), w_init=draw(st.sampled_from(["he_normal", "glorot_uniform"])))
    if kind == "activation":
        return draw(activation)
    if kind == "layer_norm":
        return nn.layer_norm()
    if kind == "batch_norm":
        return nn.batch_norm()
    if kind == "dropout":
        return nn.dropout(draw(st.sampled_from([0.0, 0.2, 0.5])))
    if kind == "residual":
        # The residual body must keep the width: end it with a dense of the input width,
        # which is only known at init, so use a parameter-free or width-keeping body.
        return nn.residual(nn.layer_norm(), draw(activation))
    n = draw(st.integers(2, 3))
    branches = [nn.serial(nn.dense(draw(width)), draw(activation)) for _ in range(n)]
    if draw(st.booleans()):
        return nn.serial(nn.fanout(n), nn.parallel(*branches), nn.concat())
    k = draw(width)
    return nn.serial(
        nn.fanout(n), nn.parallel(*[nn.serial(b, nn.dense(k)) for b in branches]), nn.sum()
    )


@st.composite
def vector_models(draw):
    blocks = draw(st.lists(vector_block(), min_size=1, max_size=5))
    return nn.serial(*blocks, nn.dense(draw(width))), (BATCH, draw(width))


@st.composite
def image_models(draw):
    ndim = draw(st.sampled_from([1, 2]))
    in_size = size = draw(st.integers(5, 9))
    in_channels = channels = draw(st.integers(1, 3))
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        kernel, stride = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        dilation = draw(st.integers(1, 2))
        span = dilation * (kernel - 1) + 1
        paddings = ["SAME", ((1, 1),) * ndim] + (["VALID"] if size >= span else [])
        padding = draw(st.sampled_from(paddings))
        pad = {"SAME": None, "VALID": 0}[padding] if isinstance(padding, str) else 2
        size = -(-size // stride) if pad is None else (size + pad - span) // stride + 1
        groups = draw(st.sampled_from([1, channels]))
        features = groups * draw(st.integers(1, 3))
        layers.append(
            nn.conv(
                features, kernel, strides=stride, padding=padding, dilation=dilation, groups=groups
            )
        )
        channels = features
        norm = draw(st.sampled_from(["batch", "instance", "group", "none"]))
        if norm != "none":
            layers.append(
                {"batch": nn.batch_norm, "instance": nn.instance_norm}.get(
                    norm, lambda: nn.group_norm(1)
                )()
            )
        layers.append(draw(activation))
        if draw(st.booleans()):
            layers.append(
                draw(st.sampled_from([nn.max_pool, nn.avg_pool]))(2, strides=1, padding="SAME")
            )
    head = draw(st.sampled_from([nn.flatten(), nn.global_avg_pool(), nn.global_max_pool()]))
    shape = (BATCH, *(in_size,) * ndim, in_channels)
    return nn.serial(*layers, head, nn.dense(draw(width))), shape


@st.composite
def sequence_models(draw):
    features = draw(st.sampled_from([4, 6]))
    options = st.sampled_from(["gru", "lstm", "attention", "transformer", "dense"])
    layers = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(options)
        if kind in ("gru", "lstm"):
            cell = nn.gru if kind == "gru" else nn.lstm
            hidden = draw(st.integers(1, 3))
            bidirectional = draw(st.booleans())
            layers.append(cell(hidden, bidirectional=bidirectional))
            layers.append(nn.dense(features))
        elif kind == "attention":
            layers.append(nn.multi_head_attention(2, causal=draw(st.booleans())))
        elif kind == "transformer":
            layers.append(nn.transformer_block(2, mlp_dim=8, causal=draw(st.booleans())))
        else:
            layers.append(nn.serial(nn.dense(features), draw(activation)))
    return nn.serial(nn.dense(features), *layers), (BATCH, draw(st.integers(2, 5)), 3)


def _paths(tree):
    return [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _check_model(model, in_shape):
    out_shape, params, state = model.init(jax.random.key(0), in_shape)
    x = jax.random.normal(jax.random.key(1), in_shape)
    evaluate = jax.jit(model.apply)

    # The training pass runs inside the gradient's program (no second compile of it): its
    # output and state come back as the loss's auxiliary values.
    def loss(p):
        y, new_state = model.apply(p, state, x, key=jax.random.key(2), train=True)
        return jnp.mean(y**2), (y, new_state)

    (_, (y_train, new_state)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    # init's shapes equal apply's, in training and in evaluation, and apply runs under jit.
    y_eval, _ = evaluate(params, state, x)
    assert y_train.shape == y_eval.shape == tuple(out_shape)
    assert jax.tree.structure(new_state) == jax.tree.structure(state)
    assert np.all(np.isfinite(y_eval))

    # vmap over single examples agrees with the batch (evaluation is per-example).
    per_example = jax.jit(jax.vmap(lambda xi: model.apply(params, state, xi[None])[0][0]))(x)
    np.testing.assert_allclose(per_example, y_eval, rtol=1e-4, atol=1e-5)

    # Gradients are finite on finite input.
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

    # Names are unique and stable across inits with other keys.
    _, params_again, state_again = model.init(jax.random.key(9), in_shape)
    paths = _paths(params)
    assert len(paths) == len(set(paths))
    assert paths == _paths(params_again)
    assert _paths(state) == _paths(state_again)


@SETTINGS
@given(vector_models())
def test_random_vector_models(model_and_shape):
    _check_model(*model_and_shape)


@SETTINGS
@given(image_models())
def test_random_convolutional_models(model_and_shape):
    _check_model(*model_and_shape)


@SETTINGS
@given(sequence_models())
def test_random_sequence_models(model_and_shape):
    _check_model(*model_and_shape)
