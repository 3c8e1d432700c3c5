"""per_example_grads against a Python loop of `jax.grad` over single examples.

Every model family funcnet has (dense, convolutional, recurrent, attention), pytree params
and batches, integer labels, float32 and float64, under `jax.jit`; and the program it runs:
each transposed per-example kernel gradient folded away where there is one, JAX's own
`vmap(grad)` where there is none.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from diff_problems import batch_loss

import funcnet.diff as fd
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


CASES = {f.__name__: f for f in (mlp, conv, gru, lstm, attention, pytree)}


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
    """Nothing to fold (elementwise params, a convolution alone): JAX's own program runs."""
    elementwise_params = {"scale": _normal((3,), jnp.float32), "shift": jnp.zeros(3)}
    elementwise_batch = (_normal((B, 3), jnp.float32, 2), _normal((B, 3), jnp.float32, 3))

    def elementwise(params, example):
        x, y = example
        return jnp.sum((params["scale"] * jnp.sin(x) + params["shift"] - y) ** 2)

    conv_only = nn.serial(nn.conv(CLASSES, 3), nn.global_avg_pool())
    for loss, params, batch in (
        (elementwise, elementwise_params, elementwise_batch),
        _classifier(conv_only, (1, 6, 6, 2), _normal((B, 6, 6, 2), jnp.float32), jnp.float32),
    ):
        ours, theirs = _jaxprs(loss, params, batch)
        assert str(ours) == str(theirs)


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
