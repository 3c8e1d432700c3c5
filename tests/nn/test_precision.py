"""Mixed precision: the policy parse, models under a half compute dtype against their float32
selves, and the float32 statistics of softmax (attention's too) against float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from funcnet import losses, nn

BF16, F16, F32 = np.dtype(jnp.bfloat16), np.dtype(jnp.float16), np.dtype(jnp.float32)
HALF = {"bfloat16": BF16, "float16": F16}


def _key(seed=0):
    return jax.random.key(seed, impl="rbg")


def _normal(*shape, seed=1, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(dtype))


# The policy.


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("float32", (F32, F32, F32)),
        ("bfloat16", (F32, BF16, F32)),
        ("mixed_bfloat16", (F32, BF16, F32)),
        ("float16", (F32, F16, F32)),
        ("mixed_float16", (F32, F16, F32)),
        ("params=float32,compute=bfloat16,output=float32", (F32, BF16, F32)),
        ("p=f32,c=bf16,o=f32", (F32, BF16, F32)),
        ("p=float32, c=float16, o=float32", (F32, F16, F32)),
        ("c=bf16", (F32, BF16, BF16)),  # jmp: compute follows params, output follows compute
        ("p=bf16", (BF16, BF16, BF16)),
        ("c=f16,o=f32", (F32, F16, F32)),
        (nn.Policy(jnp.float32, jnp.bfloat16, jnp.float32), (F32, BF16, F32)),
        (nn.Policy("float32", "float16", np.float32), (F32, F16, F32)),
    ],
)
def test_policy_parse(spec, expected):
    got = nn.policy(spec)
    assert isinstance(got, nn.Policy)
    assert tuple(got) == expected
    assert all(isinstance(d, np.dtype) for d in got)


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("int8", ["'int8'", "float32"]),
        ("half", ["'half'", "mixed_bfloat16"]),
        ("float8", ["'float8'", "mixed_bfloat16"]),
        ("params=int8,compute=bfloat16", ["'int8'", "float16, bfloat16, float32 or float64"]),
        ("c=bool", ["'bool'", "float16, bfloat16"]),
        ("o=complex64", ["'complex64'", "float16, bfloat16"]),
        ("weights=float32", ["'weights=float32'", "params, compute or output"]),
        ("p=f32,bf16", ["'bf16'", "key=dtype"]),
        ("params=float64", ["float64", "jax_enable_x64"]),
        (nn.Policy(jnp.float32, jnp.int8, jnp.float32), ["int8", "float16, bfloat16"]),
        (nn.Policy(jnp.float32, jnp.complex64, jnp.float32), ["complex64", "float16"]),
        (jnp.bfloat16, ["expected a Policy or a string"]),
    ],
)
def test_policy_refusals(spec, names):
    with pytest.raises(ValueError, match=r"^policy: ") as err:
        nn.policy(spec)
    message = str(err.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_policy_float64_under_x64(x64):
    assert tuple(nn.policy("p=f64,c=f32")) == (np.dtype(np.float64), F32, F32)


def test_mixed_precision_refuses_a_bad_policy_when_built():
    with pytest.raises(ValueError, match="int8"):
        nn.mixed_precision(nn.dense(3), "c=int8")


# Models under a policy.


def _mlp():
    return nn.serial(nn.dense(32), nn.relu, nn.dense(32), nn.tanh, nn.dense(4)), _normal(8, 16)


def _cnn():
    model = nn.serial(
        nn.conv(8, (3, 3)),
        nn.batch_norm(),
        nn.relu,
        nn.max_pool(2),
        nn.flatten(),
        nn.dense(4),
    )
    return model, _normal(4, 8, 8, 3)


def _lstm():
    mask = jnp.asarray(np.arange(7)[None, :] < np.array([7, 5, 3])[:, None])
    return nn.serial(nn.lstm(16)), (_normal(3, 7, 5), mask)


def _transformer():
    mask = jnp.asarray(np.arange(6)[None, :] < np.array([6, 4])[:, None])
    return nn.serial(nn.transformer_block(2, 32)), (_normal(2, 6, 16), mask)


def _language_model():
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 50, (2, 6)), jnp.int32)
    model = nn.serial(nn.embedding(50, 16), nn.transformer_block(2, 32), nn.dense(50))
    return model, ids


MODELS = {
    "mlp": _mlp,
    "cnn": _cnn,
    "lstm": _lstm,
    "transformer": _transformer,
    "language_model": _language_model,
}


def _shapes(x):
    return jax.tree.map(lambda a: tuple(a.shape), x)


def _floating(tree):
    return [a for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.floating)]


def _matmul_operands(fn, *args):
    """The operand dtypes of every dot_general and convolution in the jaxpr of ``fn(*args)``,
    nested jaxprs (scan, jit, custom_jvp) included."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in ("dot_general", "conv_general_dilated"):
                found.append(tuple(np.dtype(v.aval.dtype) for v in eqn.invars))
            for value in eqn.params.values():
                for sub in value if isinstance(value, (tuple, list)) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _tolerance(dtype):
    """What a few layers of rounding to `dtype` leave of agreement with float32."""
    return {BF16: 6e-2, F16: 8e-3}[dtype]


@pytest.fixture(scope="module", params=sorted(MODELS))
def built(request):
    model, x = MODELS[request.param]()
    _, params, state = model.init(_key(), _shapes(x))
    return request.param, model, params, state, x


@pytest.mark.parametrize("name", sorted(HALF))
def test_half_compute_float32_params_outputs_and_grads(built, name):
    kind, model, params, state, x = built
    half = HALF[name]
    mixed = nn.mixed_precision(model, name)
    assert mixed.kind == model.kind
    _, mixed_params, mixed_state = mixed.init(_key(), _shapes(x))
    # The params tree and values are the plain model's; float32 leaves stay float32.
    assert jax.tree.structure(mixed_params) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(mixed_params), jax.tree.leaves(params), strict=True):
        assert a.dtype == b.dtype == F32
        np.testing.assert_array_equal(a, b)
    assert jax.tree.map(lambda a: a.dtype, mixed_state) == jax.tree.map(lambda a: a.dtype, state)

    train = kind == "cnn"
    # Each computation compiled whole (op by op, the bfloat16 language model alone took 20 s).
    y, new_state = jax.jit(mixed.apply, static_argnames="train")(params, state, x, train=train)
    y_ref, state_ref = jax.jit(model.apply, static_argnames="train")(params, state, x, train=train)
    assert jax.tree.structure(y) == jax.tree.structure(y_ref)
    for out, ref in zip(jax.tree.leaves(y), jax.tree.leaves(y_ref), strict=True):
        if jnp.issubdtype(ref.dtype, jnp.floating):
            assert out.dtype == F32
            scale = max(1.0, float(jnp.max(jnp.abs(ref))))
            np.testing.assert_allclose(out, ref, atol=_tolerance(half) * scale, rtol=0)
        else:  # masks pass through untouched
            assert out.dtype == ref.dtype
            np.testing.assert_array_equal(out, ref)
    # Running statistics keep their float32 and stay close to those of the float32 model.
    for s, ref in zip(jax.tree.leaves(new_state), jax.tree.leaves(state_ref), strict=True):
        assert s.dtype == ref.dtype
        np.testing.assert_allclose(s, ref, atol=_tolerance(half), rtol=_tolerance(half))

    def loss(p, apply):
        out, _ = apply(p, state, x, train=train)
        return sum(jnp.sum(jnp.square(a.astype(F32))) for a in _floating(out))

    grads = jax.jit(jax.grad(loss), static_argnums=1)(params, mixed.apply)
    grads_ref = jax.jit(jax.grad(loss), static_argnums=1)(params, model.apply)
    assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
    for g in jax.tree.leaves(grads):
        assert g.dtype == F32
        assert bool(jnp.all(jnp.isfinite(g)))
    # Gradients as a whole agree with the float32 ones to half precision.
    flat = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)])
    flat_ref = jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads_ref)])
    assert float(jnp.linalg.norm(flat - flat_ref)) <= 4 * _tolerance(half) * float(
        jnp.linalg.norm(flat_ref)
    )

    # Every matmul and convolution, forward and backward, runs in the half dtype.
    forward = _matmul_operands(lambda p, x: mixed.apply(p, state, x, train=train), params, x)
    backward = _matmul_operands(lambda p: jax.grad(loss)(p, mixed.apply), params)
    assert forward and len(backward) > len(forward)
    assert {d for operands in forward + backward for d in operands} == {half}


@pytest.mark.parametrize("name", ["float32"])
def test_float32_policy_is_the_plain_model(built, name):
    kind, model, params, state, x = built
    mixed = nn.mixed_precision(model, name)
    train = kind == "cnn"
    y, s = mixed.apply(params, state, x, train=train)
    y_ref, s_ref = model.apply(params, state, x, train=train)
    for a, b in zip(jax.tree.leaves((y, s)), jax.tree.leaves((y_ref, s_ref)), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)

    def jaxpr(apply):
        return str(jax.make_jaxpr(lambda p, x: apply(p, state, x, train=train))(params, x))

    assert jaxpr(mixed.apply) == jaxpr(model.apply)


def test_jit_vmap_grad_under_a_policy():
    model, x = _mlp()
    mixed = nn.mixed_precision(model, "bfloat16")
    members = [mixed.init(_key(seed), x.shape)[1] for seed in range(3)]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *members)

    def loss(p, x):
        y, _ = mixed.apply(p, {}, x)
        return jnp.mean(jnp.square(y))

    eager = [jax.value_and_grad(loss)(p, x) for p in members]
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(0, None)))(stacked, x)
    assert values.dtype == F32
    for i, (value, grad) in enumerate(eager):
        np.testing.assert_allclose(values[i], value, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grad), strict=True):
            assert a.dtype == b.dtype == F32
            np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-7)


def test_half_params_policy_stores_and_differentiates_in_half():
    model, x = _mlp()
    mixed = nn.mixed_precision(model, "p=bf16,c=bf16,o=f32")
    _, params, _ = mixed.init(_key(), x.shape)
    _, plain, _ = model.init(_key(), x.shape)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(plain), strict=True):
        assert a.dtype == BF16
        np.testing.assert_array_equal(a, b.astype(BF16))
    grads = jax.grad(lambda p: jnp.sum(mixed.apply(p, {}, x)[0]))(params)
    assert {g.dtype for g in jax.tree.leaves(grads)} == {BF16}


def test_integer_params_and_inputs_are_left_alone():
    def init(key, in_shape):
        del key
        return in_shape, {"w": jnp.ones(3), "table": jnp.arange(3)}, {}

    def apply(params, state, x, *, key=None, train=False):
        features, ids, flag = x
        seen.append((params["w"].dtype, params["table"].dtype, features.dtype, ids.dtype))
        return (features * params["w"], ids + params["table"], flag), state

    seen = []
    layer = nn.mixed_precision(nn.Layer(init, apply, kind="custom"), "float16")
    _, params, _ = layer.init(_key(), None)
    assert params["table"].dtype == jnp.int32 and params["w"].dtype == F32
    x = (jnp.ones(3), jnp.arange(3), jnp.asarray([True, False, True]))
    (y, ids, flag), _ = layer.apply(params, {}, x)
    assert seen == [(F16, np.dtype(jnp.int32), F16, np.dtype(jnp.int32))]
    assert (y.dtype, ids.dtype, flag.dtype) == (F32, np.dtype(jnp.int32), np.dtype(bool))


def test_batch_norm_state_dtype_is_a_stable_scan_carry():
    """Training steps under lax.scan: the bfloat16 compute must not change the float32 state,
    which would break the carry."""
    model, x = _cnn()
    mixed = nn.mixed_precision(model, "bfloat16")
    _, params, state = mixed.init(_key(), x.shape)
    assert {a.dtype for a in jax.tree.leaves(state)} == {F32}

    def step(state, x):
        _, state = mixed.apply(params, state, x, train=True)
        return state, None

    xs = jnp.stack([x, 2.0 * x, x - 1.0])
    final, _ = lax.scan(step, state, xs)
    reference = state
    for batch in xs:
        _, reference = model.apply(params, reference, batch, train=True)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(reference), strict=True):
        assert a.dtype == F32
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2)
    # Evaluation reads the float32 statistics and returns the state as it is.
    _, same = mixed.apply(params, final, x, train=False)
    assert jax.tree.map(lambda a, b: a is b, same, final) == jax.tree.map(lambda a: True, final)


def test_attention_cache_keeps_its_dtype_under_a_policy():
    block = nn.mixed_precision(nn.transformer_block(2, 32, causal=True, cache_length=8), "bfloat16")
    _, params, state = block.init(_key(), (2, 1, 16))
    dtypes = jax.tree.map(lambda a: a.dtype, state)

    def step(state, x):
        y, state = block.apply(params, state, x)
        return state, y

    state, ys = lax.scan(step, state, _normal(5, 2, 1, 16))
    assert jax.tree.map(lambda a: a.dtype, state) == dtypes
    assert ys.dtype == F32 and int(state["attention"]["cache"]["index"]) == 5


# Softmax statistics in float32.


def _ulps(got, expected, dtype):
    """|got − expected| in units of `dtype`'s spacing at `expected`."""
    expected = np.asarray(expected, np.float64)
    spacing = np.spacing(np.abs(expected).astype(np.float32)).astype(np.float64)
    spacing *= 2.0 ** (np.finfo(np.float32).nmant - jnp.finfo(dtype).nmant)
    spacing = np.maximum(spacing, float(jnp.finfo(dtype).smallest_subnormal))
    return np.abs(np.asarray(got, np.float64) - expected) / spacing


def _np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_softmax_of_half_inputs_is_rounded_once(dtype):
    # 4096 terms: summed in bfloat16 the total would keep two or three digits.
    x = _normal(3, 4096, seed=4, dtype=np.float32).astype(dtype) * 3
    y = nn.softmax(x)
    assert y.dtype == dtype
    expected = _np_softmax(x)
    assert float(np.max(_ulps(y, expected, dtype))) <= 0.51

    log_y = nn.log_softmax(x)
    assert log_y.dtype == dtype
    assert float(np.max(_ulps(log_y, np.log(expected), dtype))) <= 0.51


@pytest.mark.parametrize("dtype", [BF16, F16], ids=["bfloat16", "float16"])
def test_softmax_gradient_of_half_inputs(dtype):
    x = _normal(2, 64, seed=5).astype(dtype)
    w = _normal(2, 64, seed=6)
    g = jax.grad(lambda x: jnp.sum(nn.softmax(x).astype(F32) * w))(x)
    ref = jax.grad(lambda x: jnp.sum(nn.softmax(x) * w))(x.astype(F32))
    assert g.dtype == dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), ref, atol=2e-2 * float(jnp.max(ref)))


def test_attention_weights_of_bfloat16_scores_are_rounded_once():
    """Identity projections and small integer inputs make the bfloat16 scores exact, so the
    weights can be checked against a float64 softmax of those scores."""
    time, d = 512, 4
    layer = nn.multi_head_attention(1, return_weights=True)
    _, params, state = layer.init(_key(), (1, time, d))
    eye = jnp.eye(d, dtype=BF16)
    params = dict(params)
    for name in "qkvo":
        params[name] = {"w": eye, "b": jnp.zeros(d, BF16)}
    ints = np.random.default_rng(7).integers(-3, 4, (1, time, d))
    x = jnp.asarray(ints, BF16)
    (y, weights), _ = layer.apply(params, state, x)
    assert weights.dtype == BF16 and y.dtype == BF16
    scores = np.einsum("btd,bsd->bts", ints, ints) / np.sqrt(d)
    expected = _np_softmax(scores)
    assert float(np.max(_ulps(weights[:, 0], expected, BF16))) <= 0.51
    # The graph: the max and the sum over keys are taken in float32.
    jaxpr = str(jax.make_jaxpr(lambda x: layer.apply(params, state, x))(x))
    reductions = [
        line for line in jaxpr.splitlines() if "reduce_max" in line or "reduce_sum" in line
    ]
    assert reductions and all(":f32[" in line for line in reductions)


def test_softmax_cross_entropy_of_bfloat16_logits():
    logits = (_normal(16, 1000, seed=8) * 4).astype(BF16)
    labels = jnp.asarray(np.random.default_rng(9).integers(0, 1000, 16))
    loss = losses.softmax_cross_entropy(logits, labels)
    assert loss.dtype == F32
    z = np.asarray(logits, np.float64)
    shifted = z - z.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    expected = -np.mean(log_p[np.arange(16), np.asarray(labels)])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)
    grad = jax.grad(lambda z: losses.softmax_cross_entropy(z, labels))(logits)
    assert grad.dtype == BF16
    p = np.exp(log_p)
    p[np.arange(16), np.asarray(labels)] -= 1.0
    np.testing.assert_allclose(np.asarray(grad, np.float64), p / 16, atol=1e-3 / 16, rtol=1e-2)
