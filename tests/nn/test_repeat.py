"""nn.repeat: a scanned stack of identical blocks against `serial` of the same blocks.

The reference is ``serial(block, ..., block)`` with the params converted by
`serial_to_repeat`: the same params from the same key, and the same outputs, gradients (float64,
1e-12), dropout masks, batch-norm statistics and attention caches. Compile-size and memory
claims are checked on `jax.make_jaxpr` and XLA's `memory_analysis`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn
from tests.helpers import backend_compiles


def assert_trees_close(a, b, *, rtol, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def mlp_block(dropout_rate=0.0):
    return nn.residual(nn.dense(16), nn.gelu, nn.dropout(dropout_rate), nn.dense(6))


BLOCKS = {
    # name: (block, input shape, n)
    "residual_mlp": (lambda: mlp_block(0.3), (4, 6), 3),
    "transformer_block": (lambda: nn.transformer_block(2, 16, causal=True), (2, 5, 8), 3),
}


def test_params_are_the_serials_stacked_and_convert_exactly():
    block, n = mlp_block(), 4
    key = jax.random.key(0)
    _, stacked, state = nn.repeat(block, n).init(key, (3, 6))
    _, params, serial_state = nn.serial(*[block] * n).init(key, (3, 6))
    assert state == {} and serial_state == {}
    assert jax.tree.map(jnp.shape, stacked) == {
        "dense_0": {"w": (n, 6, 16), "b": (n, 16)},
        "gelu_1": {},
        "dropout_2": {},
        "dense_3": {"w": (n, 16, 6), "b": (n, 6)},
    }
    assert_trees_equal(nn.serial_to_repeat(params), stacked)
    assert_trees_equal(nn.repeat_to_serial(stacked, block), params)
    assert_trees_equal(nn.repeat_to_serial(stacked, "residual"), params)
    assert nn.serial_to_repeat({}) == {} and nn.repeat_to_serial({}, block) == {}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_outputs_and_gradients_equal_the_serials_in_float64(x64, name):
    build, in_shape, n = BLOCKS[name]
    block = build()
    key = jax.random.key(0)
    _, params, state = nn.serial(*[block] * n).init(key, in_shape)
    x = jax.random.normal(jax.random.key(1), in_shape, jnp.float64)
    # An "rbg" key compiles several times faster than threefry; the key test below takes
    # the default one.
    options = {"key": jax.random.key(2, impl="rbg"), "train": True}
    models = [nn.serial(*[block] * n), nn.repeat(block, n), nn.repeat(block, n, remat=True)]

    @jax.jit
    def results(params, x):
        out = []
        for model, p in zip(models, [params, *[nn.serial_to_repeat(params)] * 2], strict=True):

            def loss(p, x, model=model):
                y, _ = model.apply(p, state, x, **options)
                return jnp.sum(jnp.sin(y)), y

            (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(p, x)
            out.append((y, grads))
        return out

    (y, (grads, x_grad)), *scanned = results(params, x)
    for scan_y, (scan_grads, scan_x_grad) in scanned:
        np.testing.assert_allclose(scan_y, y, rtol=1e-12, atol=1e-14)
        assert_trees_close(nn.repeat_to_serial(scan_grads, block), grads, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(scan_x_grad, x_grad, rtol=1e-12, atol=1e-14)


def test_each_block_gets_the_key_serial_gives_its_child():
    block, n = nn.dropout(0.5), 5
    x = jnp.ones((4, 32))
    key = jax.random.key(11)
    serial = nn.serial(*[block] * n)
    _, params, _ = serial.init(key, x.shape)
    y, _ = nn.repeat(block, n).apply({}, {}, x, key=key, train=True)
    expected, _ = serial.apply(params, {}, x, key=key, train=True)
    np.testing.assert_array_equal(y, expected)
    # by hand: block i draws its mask from fold_in(key, i)
    by_hand = x
    for i in range(n):
        by_hand, _ = block.apply({}, {}, by_hand, key=jax.random.fold_in(key, i), train=True)
    np.testing.assert_array_equal(y, by_hand)
    assert 0 < np.count_nonzero(np.asarray(y)) < y.size


def test_batch_norm_state_is_stacked_and_updated_as_in_serial():
    block, n = nn.serial(nn.dense(6), nn.batch_norm(), nn.relu), 3
    key = jax.random.key(0)
    _, params, state = nn.serial(*[block] * n).init(key, (16, 6))
    _, stacked, stacked_state = nn.repeat(block, n).init(key, (16, 6))
    assert jax.tree.map(jnp.shape, stacked_state) == {
        "batch_norm_1": {"mean": (n, 6), "var": (n, 6)}
    }
    assert_trees_equal(nn.serial_to_repeat(state), stacked_state)
    assert_trees_equal(nn.repeat_to_serial(stacked_state, block), state)
    x = jax.random.normal(jax.random.key(1), (16, 6))

    @jax.jit
    def train_and_eval(params, state, stacked, stacked_state):
        serial, repeat = nn.serial(*[block] * n), nn.repeat(block, n)
        trained = serial.apply(params, state, x, train=True)
        scanned = repeat.apply(stacked, stacked_state, x, train=True)
        return trained, scanned, repeat.apply(stacked, scanned[1], x)

    (y, new_state), (scan_y, scan_state), (eval_y, _) = train_and_eval(
        params, state, stacked, stacked_state
    )
    np.testing.assert_allclose(scan_y, y, rtol=1e-6, atol=1e-6)
    assert_trees_close(nn.repeat_to_serial(scan_state, block), new_state, rtol=1e-6, atol=1e-7)
    serial_eval, _ = nn.serial(*[block] * n).apply(params, new_state, x)
    np.testing.assert_allclose(eval_y, serial_eval, rtol=1e-5, atol=1e-6)


def test_cached_decoding_equals_a_serial_of_cached_blocks():
    n, features, length = 2, 8, 6
    block = nn.transformer_block(2, 16, causal=True, cache_length=length)
    key = jax.random.key(0)
    _, params, state = nn.serial(*[block] * n).init(key, (1, 1, features))
    repeat = nn.repeat(block, n)
    _, stacked, stacked_state = repeat.init(key, (1, 1, features))
    assert stacked_state["attention"]["cache"]["k"].shape == (n, 1, 2, length, 4)
    assert_trees_equal(nn.serial_to_repeat(state), stacked_state)
    x = jax.random.normal(jax.random.key(1), (1, length, features))
    # a prompt of 4 positions, then 2 one at a time, against one pass over the sequence
    full, _ = jax.jit(nn.serial(*[nn.transformer_block(2, 16, causal=True)] * n).apply)(
        params, {}, x
    )
    step = jax.jit(repeat.apply)
    ys = []
    for chunk in (x[:, :4], x[:, 4:5], x[:, 5:6]):
        y, stacked_state = step(stacked, stacked_state, chunk)
        ys.append(y)
    np.testing.assert_allclose(jnp.concatenate(ys, axis=1), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(stacked_state["attention"]["cache"]["index"], [length] * n)


def test_jit_vmap_and_grad_compose():
    model = nn.serial(nn.dense(6), nn.repeat(mlp_block(), 4, remat="dots"), nn.dense(2))
    _, params, state = model.init(jax.random.key(0), (5, 3))
    assert list(params) == ["dense_0", "repeat_1", "dense_2"]
    x = jax.random.normal(jax.random.key(1), (5, 3))
    unrolled = nn.serial(nn.dense(6), nn.serial(*[mlp_block()] * 4), nn.dense(2))
    unrolled_params = {**params, "repeat_1": nn.repeat_to_serial(params["repeat_1"], "residual")}
    unrolled_params["serial_1"] = unrolled_params.pop("repeat_1")

    @jax.jit
    def outputs_and_grads(params, unrolled_params, x):
        def loss(p, m):
            return jnp.sum(m.apply(p, state, x)[0] ** 2)

        per_example = jax.vmap(lambda xi: model.apply(params, state, xi[None])[0][0])(x)
        return (
            (model.apply(params, state, x)[0], per_example, jax.grad(loss)(params, model)),
            (
                unrolled.apply(unrolled_params, state, x)[0],
                jax.grad(loss)(unrolled_params, unrolled),
            ),
        )

    (y, per_example, grads), (expected, unrolled_grads) = outputs_and_grads(
        params, unrolled_params, x
    )
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(per_example, expected, rtol=1e-5, atol=1e-6)
    grads["repeat_1"] = nn.repeat_to_serial(grads["repeat_1"], "residual")
    grads["serial_1"] = grads.pop("repeat_1")
    assert_trees_close(grads, unrolled_grads, rtol=1e-5, atol=1e-6)


def count_equations(jaxpr) -> int:
    """Equations of a jaxpr, those of its sub-jaxprs (scan bodies, remat) included."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += count_equations(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += count_equations(sub)
    return total


@pytest.mark.parametrize("remat", [None, True])
def test_the_program_does_not_grow_with_depth(remat):
    block = nn.transformer_block(2, 16, causal=True)
    x = jnp.ones((2, 5, 8))

    def size(n):
        model = nn.repeat(block, n, remat=remat)
        _, params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), x.shape))

        def loss(params):
            return jnp.sum(model.apply(params, state, x)[0] ** 2)

        return count_equations(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)

    assert size(2) == size(16)

    # while the unrolled serial grows with every block
    def serial_size(n):
        model = nn.serial(*[block] * n)
        _, params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), x.shape))
        grad = jax.grad(lambda params: jnp.sum(model.apply(params, state, x)[0] ** 2))
        return count_equations(jax.make_jaxpr(grad)(params).jaxpr)

    assert serial_size(4) > serial_size(2)


def test_remat_cuts_the_temporary_memory_of_the_gradient():
    """On 8 residual MLP blocks 64 → 256 → 64, batch 128, XLA:CPU's temporary buffers for the
    gradient take 0.79 MB with remat against 2.03 MB without (39%)."""
    block = nn.residual(nn.dense(256), nn.relu, nn.dense(64))
    x = jnp.ones((128, 64))

    def temp_bytes(remat):
        model = nn.repeat(block, 8, remat=remat)
        _, params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), x.shape))

        def loss(params, x):
            return jnp.mean(model.apply(params, state, x)[0] ** 2)

        compiled = jax.jit(jax.grad(loss)).lower(params, x).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    plain, remat = temp_bytes(None), temp_bytes(True)
    assert remat < 0.5 * plain, (remat, plain)


def test_unroll_is_passed_to_the_scan():
    block, n = mlp_block(), 4
    _, params, _ = nn.repeat(block, n).init(jax.random.key(0), (3, 6))
    x = jax.random.normal(jax.random.key(1), (3, 6))
    ys = [nn.repeat(block, n, unroll=u).apply(params, {}, x)[0] for u in (1, 2, True)]
    for y in ys[1:]:
        np.testing.assert_allclose(y, ys[0], rtol=1e-6, atol=1e-6)
    jaxpr = jax.make_jaxpr(lambda p: nn.repeat(block, n, unroll=2).apply(p, {}, x))(params)
    (run,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ("jit", "pjit")]
    (scan,) = [e for e in run.params["jaxpr"].eqns if e.primitive.name == "scan"]
    assert scan.params["unroll"] == 2


def test_an_eager_apply_compiles_once_per_shape():
    """Outside `jit`, the scan over the blocks is compiled at the first call only (its body is
    a new closure at each call: JAX traced and compiled it again every time)."""
    layer = nn.repeat(mlp_block(), 3)
    _, params, state = layer.init(jax.random.key(0), (3, 6))
    x = jax.random.normal(jax.random.key(1), (3, 6))
    first = layer.apply(params, state, x)[0]
    with backend_compiles() as compiles:
        again = layer.apply(params, state, x)[0]
    assert compiles == []
    np.testing.assert_array_equal(first, again)


def test_a_block_that_changes_the_shape_is_refused():
    with pytest.raises(nn.LayerError, match=r"repeat: the block \(dense\) maps shape \(3, 6\)"):
        nn.repeat(nn.dense(4), 2).init(jax.random.key(0), (3, 6))
    # a dtype change shows only in apply
    cast = nn.from_function(lambda x: x.astype(jnp.float16), name="cast")
    with pytest.raises(nn.LayerError, match=r"float32\[3, 6\] to float16\[3, 6\]"):
        nn.repeat(cast, 2).apply({}, {}, jnp.ones((3, 6)))


def test_params_of_the_wrong_form_are_refused():
    block = mlp_block()
    _, params, _ = nn.serial(*[block] * 3).init(jax.random.key(0), (3, 6))
    with pytest.raises(nn.LayerError, match=r"leading axis of length 3.*serial_to_repeat"):
        nn.repeat(block, 3).apply(params, {}, jnp.ones((3, 6)))
    with pytest.raises(nn.LayerError, match="leading axis of length 2"):
        nn.repeat(block, 2).apply(nn.serial_to_repeat(params), {}, jnp.ones((3, 6)))
    with pytest.raises(ValueError, match="n must be a positive int"):
        nn.repeat(block, 0)


def test_conversion_errors_name_the_problem():
    with pytest.raises(ValueError, match="one kind numbered 0 to 1"):
        nn.serial_to_repeat({"dense_0": {}, "dense_2": {}})
    with pytest.raises(ValueError, match="one kind numbered"):
        nn.serial_to_repeat({"dense_0": {}, "relu_1": {}})
    with pytest.raises(ValueError, match="not a serial slot"):
        nn.serial_to_repeat({"w": jnp.ones(3)})
    w = {"w": jnp.ones((2, 3))}
    with pytest.raises(ValueError, match="dense_1 differs from dense_0"):
        nn.serial_to_repeat({"dense_0": w, "dense_1": {"w": jnp.ones((2, 4))}})
    with pytest.raises(ValueError, match="one leading axis"):
        nn.repeat_to_serial({"w": jnp.ones((2, 3)), "b": jnp.ones((3,))}, "dense")
