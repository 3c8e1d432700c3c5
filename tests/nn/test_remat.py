"""nn.remat: the wrapped layer's params, outputs and gradients, with what the policy saves.

References: the plain layer (gradients in float64 to 1e-12, dropout masks and batch-norm state
bit for bit), and `jax.ad_checkpoint.print_saved_residuals`, JAX's own list of what a
function's gradient keeps from its forward pass.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import nn

POLICIES = [
    None,
    *nn.REMAT_POLICIES,
    jax.checkpoint_policies.save_only_these_names("hidden"),
]
POLICY_IDS = ["None", *nn.REMAT_POLICIES, "save_only_these_names"]


def mlp():
    return nn.serial(nn.dense(16), nn.tanh, nn.checkpoint_name("hidden"), nn.dense(5))


MODELS = {
    # name: (model, input shape); each takes and returns one floating-point array
    "serial": (lambda: nn.serial(mlp(), nn.relu, nn.dropout(0.3), nn.dense(3)), (4, 6)),
    "residual": (lambda: nn.residual(nn.dense(12), nn.gelu, nn.dense(6)), (4, 6)),
    # Without dropout, which triples its compile time; the dropout test runs it with dropout.
    "transformer_block": (lambda: nn.transformer_block(2, 16, causal=True), (2, 5, 8)),
}


def assert_trees_close(a, b, *, rtol, atol=0.0):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def value_and_grads(model, params, state, x, **options):
    """The value and the gradients (params, input) of ``sum(sin(model(x)))``."""

    def loss(params, x):
        y, _ = model.apply(params, state, x, **options)
        return jnp.sum(jnp.sin(y))

    return jax.value_and_grad(loss, argnums=(0, 1))(params, x)


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_equal_the_plain_models_in_float64_for_every_policy(x64, name):
    build, in_shape = MODELS[name]
    plain = build()
    _, params, state = plain.init(jax.random.key(0), in_shape)
    x = jax.random.normal(jax.random.key(1), in_shape, jnp.float64)
    assert jax.tree.leaves(params)[0].dtype == jnp.float64
    # In training with a key, so that the dropouts drop: the recomputation must draw the
    # forward pass's masks. An "rbg" key compiles several times faster than threefry here;
    # test_dropout_masks_are_the_plain_layers_in_training takes the default key.
    options = {"key": jax.random.key(2, impl="rbg"), "train": True}

    @jax.jit
    def all_policies(params, x):
        plain_result = value_and_grads(plain, params, state, x, **options)
        return plain_result, [
            value_and_grads(nn.remat(plain, policy=p), params, state, x, **options)
            for p in POLICIES
        ]

    (value, grads), results = all_policies(params, x)
    for policy, (remat_value, remat_grads) in zip(POLICY_IDS, results, strict=True):
        np.testing.assert_allclose(remat_value, value, rtol=1e-12, err_msg=policy)
        assert_trees_close(remat_grads, grads, rtol=1e-12, atol=1e-14)


def test_init_and_kind_are_the_wrapped_layers():
    plain = nn.transformer_block(2, 16)
    wrapped = nn.remat(plain, policy="dots")
    assert wrapped.kind == plain.kind == "transformer_block"
    assert wrapped.init is plain.init  # the same params and state trees, nothing nested


def test_wrapping_the_blocks_of_a_serial_keeps_its_params_tree():
    blocks = [nn.dense(8), nn.relu, nn.dense(8), nn.relu, nn.dense(2)]
    plain = nn.serial(*blocks)
    wrapped = nn.serial(*[nn.remat(b) for b in blocks])
    key = jax.random.key(0)
    _, params, _ = plain.init(key, (3, 4))
    _, remat_params, _ = wrapped.init(key, (3, 4))
    assert list(remat_params) == ["dense_0", "relu_1", "dense_2", "relu_3", "dense_4"]
    assert_trees_equal(remat_params, params)
    x = jax.random.normal(key, (3, 4))
    y, remat_y = jax.jit(lambda p, x: (plain.apply(p, {}, x)[0], wrapped.apply(p, {}, x)[0]))(
        params, x
    )
    np.testing.assert_array_equal(remat_y, y)


@pytest.mark.parametrize(
    "build, in_shape, impl",
    [
        (
            lambda: nn.serial(nn.dense(32), nn.relu, nn.dropout(0.5), nn.dense(4), nn.dropout(0.3)),
            (8, 6),
            None,  # the default key
        ),
        (
            # An "rbg" key: threefry's masks would triple the compile time of this test.
            lambda: nn.transformer_block(2, 16, dropout_rate=0.3, attention_dropout_rate=0.3),
            (2, 5, 8),
            "rbg",
        ),
    ],
    ids=["serial", "transformer_block"],
)
def test_dropout_masks_are_the_plain_layers_in_training(build, in_shape, impl):
    plain = build()
    _, params, state = plain.init(jax.random.key(0), in_shape)
    x = jax.random.normal(jax.random.key(1), in_shape)
    options = {"key": jax.random.key(7, impl=impl), "train": True}
    models = [plain, nn.remat(plain), nn.remat(plain, policy="dots")]

    @jax.jit
    def outputs(params, x):
        evaluation, _ = plain.apply(params, state, x)
        return evaluation, [m.apply(params, state, x, **options)[0] for m in models]

    evaluation, (y, *remat_ys) = outputs(params, x)
    assert not np.allclose(y, evaluation)  # the dropouts did drop
    for remat_y in remat_ys:
        np.testing.assert_array_equal(remat_y, y)


def test_train_is_static_and_a_missing_key_is_the_layers_error():
    wrapped = nn.remat(nn.serial(nn.dense(4), nn.dropout(0.5)))
    _, params, state = wrapped.init(jax.random.key(0), (2, 3))
    x = jnp.ones((2, 3))
    # train=False with no key: dropout is the identity
    y, _ = jax.jit(lambda p, x: wrapped.apply(p, state, x))(params, x)
    np.testing.assert_array_equal(y, x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    with pytest.raises(nn.LayerError, match="needs a key"):
        wrapped.apply(params, state, x, train=True)


def test_batch_norm_state_passes_through():
    plain = nn.serial(nn.dense(6), nn.batch_norm(), nn.relu, nn.dense(2))
    wrapped = nn.remat(plain, policy="nothing")
    _, params, state = plain.init(jax.random.key(0), (16, 4))
    assert state  # running statistics
    x = jax.random.normal(jax.random.key(1), (16, 4))

    @functools.partial(jax.jit, static_argnums=1)
    def step(params, model):
        def loss(p):
            y, new_state = model.apply(p, state, x, train=True)
            return jnp.sum(y**2), (y, new_state)

        return jax.grad(loss, has_aux=True)(params)

    grads, (y, new_state) = step(params, plain)
    remat_grads, (remat_y, remat_state) = step(params, wrapped)
    np.testing.assert_allclose(remat_y, y, rtol=1e-6, atol=1e-6)
    assert_trees_close(remat_state, new_state, rtol=1e-6, atol=1e-7)
    assert_trees_close(remat_grads, grads, rtol=1e-5, atol=1e-6)
    assert not np.allclose(new_state["batch_norm_1"]["mean"], state["batch_norm_1"]["mean"])


def test_forward_mode_and_vmap_compose(x64):
    plain = nn.residual(nn.dense(8), nn.tanh, nn.dense(3))
    wrapped = nn.remat(plain, policy="dots")
    _, params, state = plain.init(jax.random.key(0), (5, 3))
    x = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(2), (5, 3), jnp.float64)

    @jax.jit
    def derivatives(x, v):
        out = []
        for model in (plain, wrapped):

            def f(x, model=model):
                return model.apply(params, state, x)[0]

            out.append(
                (
                    jax.jvp(f, (x,), (v,))[1],
                    jax.vmap(lambda xi, f=f: f(xi[None])[0])(x),
                    jax.hessian(lambda x, f=f: jnp.sum(f(x) ** 3))(x[:1]),
                )
            )
        return out

    expected, got = derivatives(x, v)
    assert_trees_close(got, expected, rtol=1e-12, atol=1e-13)


def saved(model, params, state, x, capsys) -> list[str]:
    """What the gradient of ``model.apply`` keeps, one line per value, from JAX's listing."""
    capsys.readouterr()
    jax.ad_checkpoint.print_saved_residuals(lambda p, x: model.apply(p, state, x)[0], params, x)
    return capsys.readouterr().out.strip().splitlines()


def test_policies_save_what_their_names_say(capsys):
    plain = mlp()
    _, params, state = plain.init(jax.random.key(0), (4, 6))
    x = jnp.ones((4, 6))

    def lines(policy):
        return saved(nn.remat(plain, policy=policy), params, state, x, capsys)

    nothing = lines("nothing")
    assert nothing == lines(None)
    assert all("from the argument" in line for line in nothing)
    dots = [line for line in lines("dots") if "from the argument" not in line]
    # The dense layers' matmuls, and nothing else: JAX names the value `dot_general`, or, in
    # 0.8, the `reduce_precision` it puts on the dot's output.
    assert dots and all("dense.<locals>.apply" in line for line in dots)
    assert all("dot_general" in line or "reduce_precision" in line for line in dots)
    named = lines(jax.checkpoint_policies.save_only_these_names("hidden"))
    named = [line for line in named if "from the argument" not in line]
    # One value, the one named "hidden": JAX 0.10 prints the name, 0.8 the call that named it.
    assert len(named) == 1
    assert "named 'hidden'" in named[0] or "checkpoint_name.<locals>.apply" in named[0]
    assert len(lines("everything")) >= len(saved(plain, params, state, x, capsys))


def test_policy_names():
    policies = jax.checkpoint_policies
    assert nn.remat_policy(None) is None
    assert nn.remat_policy("nothing") is policies.nothing_saveable
    assert nn.remat_policy("dots") is policies.dots_saveable
    assert nn.remat_policy("dots_saveable") is policies.dots_saveable
    assert nn.remat_policy("dots_no_batch") is policies.dots_with_no_batch_dims_saveable
    assert nn.remat_policy("everything_saveable") is policies.everything_saveable
    named = policies.save_only_these_names("a")
    assert nn.remat_policy(named) is named
    with pytest.raises(ValueError, match=r"unknown policy 'dot'.*'nothing', 'dots'"):
        nn.remat(nn.dense(3), policy="dot")
    with pytest.raises(TypeError, match="policy must be None"):
        nn.remat(nn.dense(3), policy=3)
    with pytest.raises(ValueError, match="non-empty string"):
        nn.checkpoint_name("")


def test_a_plain_function_is_wrapped_as_a_layer():
    wrapped = nn.remat(jnp.tanh)
    assert wrapped.kind == "tanh"
    x = jnp.linspace(-2.0, 2.0, 6).reshape(2, 3)
    np.testing.assert_array_equal(wrapped.apply({}, {}, x)[0], jnp.tanh(x))
