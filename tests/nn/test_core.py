"""The layer protocol, combinators and dense layer, against numpy and finite differences."""

import ast
import importlib
import inspect
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from funcnet import nn
from tests.helpers import check_jit_vmap_grad


def _init(layer, in_shape, seed=0):
    return layer.init(jax.random.key(seed), in_shape)


def _np_dense(params, x):
    return np.asarray(x) @ np.asarray(params["w"]) + np.asarray(params["b"])


def test_dense_params_and_output_match_numpy():
    layer = nn.dense(5)
    out_shape, params, state = _init(layer, (4, 3))
    assert out_shape == (4, 5)
    assert state == {}
    chex.assert_shape([params["w"], params["b"]], [(3, 5), (5,)])
    chex.assert_type([params["w"], params["b"]], jnp.float32)
    x = jax.random.normal(jax.random.key(1), (4, 3))
    y, _ = layer.apply(params, state, x)
    np.testing.assert_allclose(y, _np_dense(params, x), rtol=1e-6)


def test_dense_without_bias_and_with_named_initializers():
    layer = nn.dense(2, use_bias=False, w_init="zeros")
    _, params, _ = _init(layer, (1, 3))
    assert set(params) == {"w"}
    assert not np.any(params["w"])
    _, params, _ = _init(nn.dense(2, b_init=nn.initializers.constant(0.5)), (1, 3))
    np.testing.assert_array_equal(params["b"], [0.5, 0.5])


def test_dense_acts_on_the_last_axis_of_any_rank():
    layer = nn.dense(6)
    out_shape, params, state = _init(layer, (2, 7, 3))
    y, _ = layer.apply(params, state, jnp.ones((2, 7, 3)))
    assert out_shape == y.shape == (2, 7, 6)


def _mlp():
    return nn.serial(nn.dense(16), nn.relu, nn.dense(16), jax.nn.tanh, nn.dense(3))


def test_serial_names_children_by_kind_and_position():
    _, params, state = _init(_mlp(), (8, 4))
    assert list(params) == ["dense_0", "relu_1", "dense_2", "tanh_3", "dense_4"]
    assert params["relu_1"] == {} and params["tanh_3"] == {}
    assert state == {}


def test_params_names_are_stable_and_values_are_seeded():
    _, a, _ = _init(_mlp(), (8, 4), seed=3)
    _, b, _ = _init(_mlp(), (8, 4), seed=3)
    _, c, _ = _init(_mlp(), (8, 4), seed=4)
    chex.assert_trees_all_equal(a, b)
    assert jax.tree.structure(a) == jax.tree.structure(c)
    assert not np.allclose(a["dense_0"]["w"], c["dense_0"]["w"])
    # Every dense layer gets its own key.
    assert not np.allclose(a["dense_2"]["w"][:4], a["dense_0"]["w"][:, :16][:4])


def test_serial_matches_a_numpy_forward_pass():
    model = _mlp()
    out_shape, params, state = _init(model, (8, 4))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    h = np.maximum(_np_dense(params["dense_0"], x), 0)
    h = np.tanh(_np_dense(params["dense_2"], h))
    expected = _np_dense(params["dense_4"], h)
    y, _ = model.apply(params, state, jnp.asarray(x))
    assert y.shape == out_shape
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_serial_accepts_partial_functions_and_names_them():
    import functools

    model = nn.serial(nn.dense(2), functools.partial(nn.leaky_relu, negative_slope=0.2))
    _, params, _ = _init(model, (1, 2))
    assert list(params) == ["dense_0", "leaky_relu_1"]


def test_model_under_jit_vmap_and_grad():
    model = _mlp()
    _, params, state = _init(model, (8, 4))
    check_jit_vmap_grad(model, params, state, jax.random.normal(jax.random.key(2), (8, 4)))


def test_model_gradients_match_finite_differences_in_float64(x64):
    model = nn.serial(nn.dense(5), nn.gelu, nn.dense(4), nn.softplus, nn.dense(2))
    _, params, state = _init(model, (3, 3))
    chex.assert_type(params["dense_0"]["w"], jnp.float64)
    x = jax.random.normal(jax.random.key(5), (3, 3), jnp.float64)

    def loss(flat):
        return jnp.sum(jnp.sin(model.apply(unravel(flat), state, x)[0]))

    flat, unravel = ravel_pytree(params)
    auto = jax.grad(loss)(flat)
    h = 1e-6
    eye = np.eye(flat.size)
    numeric = np.array([(loss(flat + h * e) - loss(flat - h * e)) / (2 * h) for e in eye])
    np.testing.assert_allclose(auto, numeric, rtol=1e-6, atol=1e-9)


def test_parallel_fanout_and_fan_ins():
    model = nn.serial(nn.fanout(2), nn.parallel(nn.dense(3), nn.dense(5)), nn.concat(), nn.dense(2))
    out_shape, params, _ = _init(model, (4, 6))
    assert out_shape == (4, 2)
    assert list(params["parallel_1"]) == ["dense_0", "dense_1"]
    x = jax.random.normal(jax.random.key(0), (4, 6))
    y, _ = model.apply(params, {}, x)
    a = _np_dense(params["parallel_1"]["dense_0"], x)
    b = _np_dense(params["parallel_1"]["dense_1"], x)
    expected = _np_dense(params["dense_3"], np.concatenate([a, b], axis=-1))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)

    summed = nn.serial(nn.fanout(3), nn.parallel(nn.dense(4), nn.dense(4), nn.tanh), nn.sum())
    out_shape, params, _ = _init(summed, (2, 4))
    y, _ = summed.apply(params, {}, x[:2, :4])
    p = params["parallel_1"]
    expected = _np_dense(p["dense_0"], x[:2, :4]) + _np_dense(p["dense_1"], x[:2, :4])
    expected = expected + np.tanh(x[:2, :4])
    assert out_shape == y.shape == (2, 4)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_residual_adds_the_input():
    model = nn.residual(nn.dense(4), nn.tanh)
    out_shape, params, _ = _init(model, (3, 4))
    x = jax.random.normal(jax.random.key(0), (3, 4))
    y, _ = model.apply(params, {}, x)
    assert out_shape == (3, 4)
    np.testing.assert_allclose(y, x + np.tanh(_np_dense(params["dense_0"], x)), rtol=1e-5)


def _stochastic(name="noise"):
    """A test layer that adds key-dependent noise, to see which key each child gets."""

    def init(key, in_shape):
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        if key is None:
            raise ValueError("needs a key")
        return x + jax.random.normal(key, x.shape), state

    return nn.Layer(init, apply, kind=name)


def test_combinators_give_each_child_its_own_key():
    model = nn.serial(nn.fanout(2), nn.parallel(_stochastic(), _stochastic()))
    _, params, state = _init(model, (1, 3))
    (a, b), _ = model.apply(params, state, jnp.zeros((1, 3)), key=jax.random.key(0))
    assert not np.allclose(a, b)
    (a2, _), _ = model.apply(params, state, jnp.zeros((1, 3)), key=jax.random.key(0))
    np.testing.assert_array_equal(a, a2)


def test_legacy_uint32_keys_are_accepted():
    model = _mlp()
    _, typed, _ = model.init(jax.random.key(0), (2, 4))
    _, legacy, _ = model.init(jax.random.PRNGKey(0), (2, 4))
    chex.assert_trees_all_equal_shapes(typed, legacy)


# --- errors -----------------------------------------------------------------------------------


def test_wrong_feature_size_names_the_layer_path_and_shapes():
    model = nn.serial(nn.dense(4), nn.relu, nn.residual(nn.dense(4), nn.relu), nn.dense(2))
    _, params, state = _init(model, (2, 3))
    with pytest.raises(ValueError, match=r"dense_0: .*3 features.*\(2, 5\)"):
        model.apply(params, state, jnp.ones((2, 5)))
    params["residual_2"]["dense_0"]["w"] = jnp.ones((7, 4))
    with pytest.raises(nn.LayerError, match=r"^residual_2/dense_0: .*7 features.*\(2, 4\)"):
        model.apply(params, state, jnp.ones((2, 3)))


def test_error_is_raised_under_jit_too():
    model = nn.serial(nn.dense(4), nn.dense(2))
    _, params, state = _init(model, (2, 3))
    with pytest.raises(ValueError, match="dense_0"):
        jax.jit(model.apply)(params, state, jnp.ones((2, 5)))


def test_params_from_another_model_are_refused():
    _, params, state = _init(nn.serial(nn.dense(4), nn.dense(2)), (2, 3))
    other = nn.serial(nn.dense(4), nn.relu, nn.dense(2))
    with pytest.raises(ValueError, match=r"params has no entry 'relu_1'.*another model"):
        other.apply(params, state, jnp.ones((2, 3)))


def test_residual_branch_that_changes_shape_is_refused_at_init():
    with pytest.raises(ValueError, match=r"residual: .*\(2, 3\) to \(2, 5\)"):
        _init(nn.residual(nn.dense(5)), (2, 3))


def test_fan_in_errors():
    with pytest.raises(ValueError, match=r"concat: .*differ outside"):
        _init(nn.concat(axis=-1), ((2, 3), (4, 3)))
    with pytest.raises(ValueError, match=r"sum: .*one shape"):
        _init(nn.sum(), ((2, 3), (2, 4)))
    with pytest.raises(ValueError, match=r"parallel: .*2 entries"):
        _init(nn.parallel(nn.dense(2), nn.dense(2)), ((2, 3),) * 3)


def test_not_a_layer_is_a_type_error():
    with pytest.raises(TypeError, match="Layer or a function"):
        nn.serial(nn.dense(2), 3)


def test_param_count():
    _, params, _ = _init(_mlp(), (1, 4))
    assert nn.param_count(params) == (4 * 16 + 16) + (16 * 16 + 16) + (16 * 3 + 3)


def _identity_layer(**kind):
    def init(key, in_shape):
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        return x, state

    return nn.Layer(init, apply, **kind)


def test_a_hand_built_layer_is_named_by_its_kind():
    plain, block = _identity_layer(), _identity_layer(kind="block")
    assert (plain.kind, block.kind) == ("layer", "block")
    assert (nn.layer_name(plain), nn.layer_name(block)) == ("layer", "block")
    _, params, _ = _init(nn.serial(nn.dense(2), plain, block), (1, 3))
    assert list(params) == ["dense_0", "layer_1", "block_2"]
    init, apply, kind = block
    assert (init, apply, kind) == (block.init, block.apply, "block")


def test_built_in_layers_carry_their_kind():
    assert nn.dense(2).kind == "dense"
    assert nn.from_function(jnp.tanh).kind == "tanh"
    assert nn.from_function(jnp.tanh, name="squash").kind == "squash"
    assert nn.serial(nn.relu).kind == "serial"


# Every layer that refuses a non-float input, with a model input shape it accepts.
FLOAT_ONLY = {
    "conv": (lambda: nn.conv(2, 3), (1, 5, 5, 1)),
    "avg_pool": (lambda: nn.avg_pool(2), (1, 4, 4, 1)),
    "batch_norm": (nn.batch_norm, (2, 3)),
    "layer_norm": (nn.layer_norm, (2, 3)),
    "group_norm": (lambda: nn.group_norm(1), (2, 4, 3)),
    "instance_norm": (nn.instance_norm, (2, 4, 3)),
    "dropout": (lambda: nn.dropout(0.5), (2, 3)),
    "alpha_dropout": (lambda: nn.alpha_dropout(0.5), (2, 3)),
    "gru": (lambda: nn.gru(2), (2, 4, 3)),
    "lstm": (lambda: nn.lstm(2), (2, 4, 3)),
    "multi_head_attention": (lambda: nn.multi_head_attention(1), (2, 4, 3)),
    "transformer_block": (lambda: nn.transformer_block(1, 4), (2, 4, 3)),
}


@pytest.mark.parametrize("kind", sorted(FLOAT_ONLY))
def test_non_float_input_gets_one_error_naming_kind_dtype_and_shape(kind):
    make, in_shape = FLOAT_ONLY[kind]
    layer = make()
    _, params, state = _init(layer, in_shape)
    x = jnp.ones(in_shape, jnp.int32)
    message = (
        rf"^{kind}: expected a floating-point input \(e.g. float32\), got dtype int32 of shape "
    )
    with pytest.raises(nn.LayerError, match=message + re.escape(str(in_shape))):
        layer.apply(params, state, x, key=jax.random.key(0), train=True)


def test_check_shape_checks_rank_and_last_axis():
    assert nn.core.check_shape("k", [2, 3], "x", min_rank=1, max_rank=2, last=3) == (2, 3)
    for shape, limits in [
        ((2,), {"min_rank": 2}),
        ((1, 2, 3), {"max_rank": 2}),
        ((2, 4), {"last": 3}),
    ]:
        message = r"^k: expected an input \(…\), got shape " + re.escape(str(shape))
        with pytest.raises(nn.LayerError, match=message):
            nn.core.check_shape("k", shape, "an input (…)", **limits)
    with pytest.raises(nn.LayerError, match=r"got shape \(\)"):
        nn.core.check_shape("k", (), "an input", last=3)


NN_MODULES = [
    "activations",
    "attention",
    "conv",
    "core",
    "dropout",
    "embedding",
    "initializers",
    "linear",
    "norm",
    "precision",
    "recurrent",
    "remat",
    "repeat",
    "summary",
]


@pytest.mark.parametrize("module", NN_MODULES)
def test_each_module_lists_its_public_names(module):
    mod = importlib.import_module(f"funcnet.nn.{module}")
    assert all(hasattr(mod, name) and not name.startswith("_") for name in mod.__all__)
    defined = {
        name
        for name, value in vars(mod).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == mod.__name__
    }
    assert defined <= set(mod.__all__)


def test_the_package_exports_names_its_modules_list():
    listed = {n for m in NN_MODULES for n in importlib.import_module(f"funcnet.nn.{m}").__all__}
    assert set(nn.__all__) - {"initializers"} <= listed


def test_no_private_name_of_funcnet_nn_is_imported_elsewhere():
    root = pathlib.Path(nn.__file__).parents[2]
    offenders = []
    for path in [
        *root.glob("funcnet/**/*.py"),
        *root.glob("examples/**/*.py"),
        *root.glob("tests/**/*.py"),
    ]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("funcnet.nn"):
                offenders += [
                    f"{path}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")
                ]
    assert offenders == []
