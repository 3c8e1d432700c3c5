"""per_example_grads against a Python loop of `jax.grad` over single examples.

Every model family funcnet has (dense, convolutional, recurrent, attention), pytree params
and batches, integer labels, float32 and float64, under `jax.jit`; and the program it runs:
each conv kernel gradient a batched product, each transposed per-example kernel gradient
folded away where there is one, JAX's own `vmap(grad)` where there is neither.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diff_problems import batch_loss

import funcnet.diff as fd
import funcnet.diff.per_example as per_example
import funcnet.nn as nn
from funcnet.losses import softmax_cross_entropy
from tests.helpers import nested_jaxprs

B = 6
CLASSES = 5


def _classifier(model: nn.Layer, example_shape, inputs, dtype):
    """`(loss, params, batch)` of `model` with a softmax cross-entropy on integer labels.

    `inputs` is the batch of model inputs (a pytree of arrays with a leading axis B); the
    loss takes one example `(inputs_i, label_i)`, adds the batch axis back and runs `model`.
    """
    _, params, state = model.init(jax.random.key(0), example_shape)
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    labels = jnp.arange(B, dtype=jnp.int32) % CLASSES

    def loss(params, example):
        x, label = example
        logits, _ = model.apply(params, state, jax.tree.map(lambda a: a[None], x))
        return softmax_cross_entropy(logits, label[None])

    return loss, params, (inputs, labels)


def _normal(shape, dtype, seed=1):
    return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def mlp(dtype):
    model = nn.serial(nn.dense(8), nn.relu, nn.dense(8), nn.tanh, nn.dense(CLASSES))
    return _classifier(model, (1, 4), _normal((B, 4), dtype), dtype)


def conv(dtype):
    model = nn.serial(
        nn.conv(4, 3),
        nn.relu,
        nn.conv(6, 3, strides=2),
        nn.relu,
        nn.flatten(),
        nn.dense(CLASSES),
    )
    return _classifier(model, (1, 6, 6, 2), _normal((B, 6, 6, 2), dtype), dtype)


def conv_variety(dtype):
    """Strided, dilated, padded, transposed and grouped convolutions, 1-D and 2-D."""
    image = nn.serial(
        nn.conv(3, (3, 2), strides=(2, 1), dilation=(1, 2), padding=((2, 0), (1, 1))),
        nn.tanh,
        nn.conv_transpose(4, 3, strides=2, padding="VALID"),
        nn.relu,
        nn.conv(4, 2, groups=4, padding="VALID"),
        nn.global_avg_pool(),
    )
    signal = nn.serial(nn.conv(2, 3, dilation=2), nn.tanh, nn.conv(3, 1), nn.flatten())
    model = nn.serial(
        nn.parallel(image, signal), lambda pair: jnp.concatenate(pair, -1), nn.dense(CLASSES)
    )
    inputs = (_normal((B, 7, 6, 2), dtype), _normal((B, 5, 2), dtype, 2))
    return _classifier(model, ((1, 7, 6, 2), (1, 5, 2)), inputs, dtype)


def gru(dtype):
    ids = jax.random.randint(jax.random.key(2), (B, 7), 0, 11)
    model = nn.serial(nn.embedding(11, 4, dtype=dtype), nn.gru(6, return_sequences=False))
    model = nn.serial(model, nn.dense(CLASSES))
    return _classifier(model, (1, 7), ids, dtype)


def lstm(dtype):
    model = nn.serial(nn.lstm(6, return_sequences=False), nn.dense(CLASSES))
    return _classifier(model, (1, 7, 3), _normal((B, 7, 3), dtype), dtype)


def attention(dtype):
    """A transformer block on `(x, mask)` pairs: a pytree input with a bool padding mask."""
    x = _normal((B, 5, 4), dtype)
    mask = jnp.arange(5)[None, :] < jnp.array([5, 3, 4, 1, 5, 2])[:, None]
    model = nn.serial(
        nn.transformer_block(2, 8),
        lambda pair: pair[0].mean(axis=1),
        nn.dense(CLASSES),
    )
    return _classifier(model, ((1, 5, 4), (1, 5)), (x, mask), dtype)


def pytree(dtype):
    """Nested params and a dict batch of floats, integer labels and per-example weights."""
    params = {
        "encoder": {"w": _normal((3, 4), dtype, 3), "b": jnp.zeros(4, dtype)},
        "heads": (_normal((4, CLASSES), dtype, 4), _normal((4, 2), dtype, 5)),
        "scale": jnp.ones((), dtype),
    }
    batch = {
        "x": _normal((B, 3), dtype, 6),
        "label": jnp.arange(B, dtype=jnp.int32) % CLASSES,
        "target": _normal((B, 2), dtype, 7),
        "weight": jnp.linspace(0.5, 1.5, B, dtype=dtype),
    }

    def loss(params, example):
        h = jax.nn.gelu(example["x"] @ params["encoder"]["w"] + params["encoder"]["b"])
        logits = params["scale"] * (h @ params["heads"][0])
        ce = softmax_cross_entropy(logits[None], example["label"][None])
        mse = jnp.sum((h @ params["heads"][1] - example["target"]) ** 2)
        return example["weight"] * (ce + mse)

    return loss, params, batch


CASES = {f.__name__: f for f in (mlp, conv, conv_variety, gru, lstm, attention, pytree)}


def loop_of_grads(loss, params, batch):
    """The reference: `jax.grad` of each example alone, stacked on a new leading axis."""
    grad = jax.jit(jax.grad(loss))
    size = jax.tree.leaves(batch)[0].shape[0]
    grads = [grad(params, jax.tree.map(lambda a, i=i: a[i], batch)) for i in range(size)]
    return jax.tree.map(lambda *g: np.stack(g), *grads)


@functools.cache
def case_and_reference(case, dtype):
    """`(loss, params, batch)` of a case with its loop of grads, built once for both methods
    (the same `loss` object lets the compiled reference be reused)."""
    loss, params, batch = CASES[case](dtype)
    return (loss, params, batch), loop_of_grads(loss, params, batch)


def assert_trees_close(actual, expected, rtol, atol):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


@pytest.mark.parametrize("method", ["auto", "vmap"])
@pytest.mark.parametrize("case", CASES)
def test_float32_matches_a_loop_of_grads(case, method):
    (loss, params, batch), expected = case_and_reference(case, jnp.float32)
    grads = jax.jit(lambda p, b: fd.per_example_grads(loss, p, b, method=method))(params, batch)
    assert_trees_close(grads, expected, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES)
def test_float64_matches_a_loop_of_grads(case, x64):
    loss, params, batch = CASES[case](jnp.float64)
    assert all(a.dtype == jnp.float64 for a in jax.tree.leaves(params))
    grads = jax.jit(lambda p, b: fd.per_example_grads(loss, p, b))(params, batch)
    assert_trees_close(grads, loop_of_grads(loss, params, batch), rtol=1e-11, atol=1e-13)


def test_outside_jit_matches_a_loop_of_grads():
    loss, params, batch = mlp(jnp.float32)
    grads = fd.per_example_grads(loss, params, batch)
    assert_trees_close(grads, loop_of_grads(loss, params, batch), rtol=2e-5, atol=1e-6)


def test_mean_of_per_example_grads_is_the_batch_gradient(mlp_problem):
    params = mlp_problem.params
    x, y = mlp_problem.batch

    def example_loss(p, example):
        xi, yi = example
        return batch_loss(p, (xi[None], yi[None]))

    grads = jax.jit(lambda p, b: fd.per_example_grads(example_loss, p, b))(params, (x, y))
    batch_grad = jax.grad(mlp_problem.loss)(params)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(batch_grad), strict=True):
        assert a.shape == (x.shape[0], *b.shape)
        np.testing.assert_allclose(a.mean(axis=0), b, rtol=1e-12, atol=1e-14)


def _loss_with_control_flow(params, example):
    """Dense products inside `jax.checkpoint`, `lax.cond` and a `lax.scan`."""
    x, label = example
    h = jax.checkpoint(lambda x: jnp.tanh(x @ params["w"]))(x)
    h = jax.lax.cond(label > 1, lambda h: h @ params["u"], lambda h: -h @ params["u"], h)
    h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ params["u"]), None), h, length=3)
    return softmax_cross_entropy(h[None], label[None])


def test_products_inside_control_flow_match_a_loop_of_grads():
    params = {"w": _normal((3, 4), jnp.float32, 8), "u": _normal((4, 4), jnp.float32, 9) / 2}
    batch = (_normal((B, 3), jnp.float32), jnp.arange(B, dtype=jnp.int32) % 4)
    grads = jax.jit(lambda p, b: fd.per_example_grads(_loss_with_control_flow, p, b))(params, batch)
    expected = loop_of_grads(_loss_with_control_flow, params, batch)
    assert_trees_close(grads, expected, rtol=2e-5, atol=1e-6)


def _transposes(jaxpr) -> int:
    """`transpose` equations in `jaxpr` and in every jaxpr nested in it."""
    count = sum(eqn.primitive.name == "transpose" for eqn in jaxpr.eqns)
    for eqn in jaxpr.eqns:
        count += sum(_transposes(inner) for inner in nested_jaxprs(eqn.params))
    return count


def _jaxprs(loss, params, batch):
    """The jaxprs of `per_example_grads` and of JAX's own `vmap(grad)` of `loss`."""
    ours = jax.make_jaxpr(lambda p, b: fd.per_example_grads(loss, p, b))(params, batch)
    theirs = jax.make_jaxpr(jax.vmap(jax.grad(loss), in_axes=(None, 0)))(params, batch)
    return ours, theirs


@pytest.mark.parametrize("case", ["mlp", "gru", "attention"])
def test_transposed_kernel_gradients_are_folded(case):
    loss, params, batch = CASES[case](jnp.float32)
    ours, theirs = _jaxprs(loss, params, batch)
    assert _transposes(ours.jaxpr) < _transposes(theirs.jaxpr)
    if case == "mlp":
        assert _transposes(ours.jaxpr) == 0


def test_programs_without_products_run_jax_vmap_grad():
    """Nothing to rewrite (elementwise params): JAX's own program runs."""
    elementwise_params = {"scale": _normal((3,), jnp.float32), "shift": jnp.zeros(3)}
    elementwise_batch = (_normal((B, 3), jnp.float32, 2), _normal((B, 3), jnp.float32, 3))

    def elementwise(params, example):
        x, y = example
        return jnp.sum((params["scale"] * jnp.sin(x) + params["shift"] - y) ** 2)

    ours, theirs = _jaxprs(elementwise, elementwise_params, elementwise_batch)
    assert str(ours) == str(theirs)


def _convs(jaxpr) -> list:
    """The `conv_general_dilated` equations of `jaxpr` and of every jaxpr nested in it."""
    found = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "conv_general_dilated"]
    for eqn in jaxpr.eqns:
        found += [conv for inner in nested_jaxprs(eqn.params) for conv in _convs(inner)]
    return found


def _grouped_by_example(conv) -> bool:
    """Whether `vmap` made `conv` a grouped convolution with groups per example (B of them,
    times the layer's own groups)."""
    groups = max(conv.params["feature_group_count"], conv.params["batch_group_count"])
    return groups > 1 and groups % B == 0


@pytest.mark.parametrize("case", ["conv", "conv_variety"])
def test_conv_kernel_gradients_are_batched_products(case):
    """vmap(grad) computes each per-example conv kernel gradient as one grouped convolution
    (groups per example); ours has none left."""
    loss, params, batch = CASES[case](jnp.float32)
    ours, theirs = _jaxprs(loss, params, batch)
    n_layers = {"conv": 2, "conv_variety": 5}[case]
    assert sum(map(_grouped_by_example, _convs(theirs.jaxpr))) == n_layers
    assert not any(map(_grouped_by_example, _convs(ours.jaxpr)))


def test_conv_rule_is_for_the_cpu_only(monkeypatch):
    """On another backend (grouped convolutions of its own) JAX's program is kept."""
    loss, params, batch = CASES["conv"](jnp.float32)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    ours, _ = _jaxprs(loss, params, batch)
    assert sum(map(_grouped_by_example, _convs(ours.jaxpr))) == 2


def _setting(lhs, rhs, strides, padding, names, lhs_dil=None, rhs_dil=None, groups=(1, 1)):
    n = len(strides)
    return lhs, rhs, strides, padding, lhs_dil or (1,) * n, rhs_dil or (1,) * n, names, groups


CONV_SETTINGS = [
    _setting((2, 3, 9), (4, 3, 3), (1,), ((1, 1),), ("NCH", "OIH", "NCH")),
    _setting(
        (1, 8, 7, 3),
        (5, 4, 3, 2),
        (2, 1),
        ((0, 1), (2, -1)),
        ("NHWC", "HWIO", "NHWC"),
        lhs_dil=(1, 2),
    ),
    _setting(
        (3, 2, 6, 5),
        (3, 2, 4, 3),
        (1, 2),
        ((1, 2), (0, 0)),
        ("CNHW", "IOWH", "HCNW"),
        lhs_dil=(2, 1),
        rhs_dil=(2, 1),
    ),
    _setting((2, 6, 5), (4, 3, 2), (1,), ((0, 0),), ("NCH", "OIH", "NCH"), groups=(2, 1)),
    _setting((6, 5, 4), (3, 4, 6), (2,), ((1, 0),), ("NHC", "HIO", "NHC"), groups=(1, 3)),
    _setting(
        (2, 4, 4, 3, 2),
        (1, 2, 2, 2, 3),
        (1, 1, 2),
        ((1, 0),) * 3,
        ("NDHWC", "DHWIO", "NDHWC"),
        rhs_dil=(1, 2, 1),
    ),
]


@pytest.mark.parametrize("setting", CONV_SETTINGS)
def test_conv_by_slices_is_the_convolution(setting, x64):
    """`_conv_by_slices` against `lax.conv_general_dilated` itself, including settings (the
    forward convolutions here) that per_example_grads leaves to XLA."""
    lhs_shape, rhs_shape, strides, padding, lhs_dil, rhs_dil, names, groups = setting
    lhs = _normal(lhs_shape, jnp.float64, 3)
    rhs = _normal(rhs_shape, jnp.float64, 4)
    settings = dict(
        window_strides=strides,
        padding=padding,
        lhs_dilation=lhs_dil,
        rhs_dilation=rhs_dil,
        dimension_numbers=jax.lax.conv_dimension_numbers(lhs_shape, rhs_shape, names),
        feature_group_count=groups[0],
        batch_group_count=groups[1],
        precision=None,
        preferred_element_type=None,
    )
    expected = jax.lax.conv_general_dilated(lhs, rhs, **settings)
    actual = per_example._conv_by_slices(lhs, rhs, **settings)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-12)


def test_composes_with_grad_and_vmap_and_closures():
    loss, params, batch = mlp(jnp.float32)
    reference = jax.vmap(jax.grad(loss), in_axes=(None, 0))  # JAX's own, compiled below

    def squared_norm(grads):
        return sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))

    # The gradient of the summed squared per-example gradient norms (second order).
    ours = jax.jit(jax.grad(lambda p: squared_norm(fd.per_example_grads(loss, p, batch))))
    theirs = jax.jit(jax.grad(lambda p: squared_norm(reference(p, batch))))
    assert_trees_close(ours(params), theirs(params), rtol=1e-4, atol=1e-6)
    # vmap over two copies of the params, as an ensemble would.
    stacked = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)
    ours = jax.vmap(lambda p: fd.per_example_grads(loss, p, batch))(stacked)
    theirs = jax.jit(jax.vmap(lambda p: reference(p, batch)))(stacked)
    assert_trees_close(ours, theirs, rtol=2e-5, atol=1e-6)
    # A loss closing over a value traced by an enclosing jit.
    ours = jax.jit(lambda t, p: fd.per_example_grads(lambda q, e: t * loss(q, e), p, batch))
    theirs = jax.tree.map(lambda g: 3.0 * g, loop_of_grads(loss, params, batch))
    assert_trees_close(ours(3.0, params), theirs, rtol=2e-5, atol=1e-5)


def test_unknown_method_is_refused():
    loss, params, batch = mlp(jnp.float32)
    with pytest.raises(ValueError, match="'auto' or 'vmap'"):
        fd.per_example_grads(loss, params, batch, method="loop")
