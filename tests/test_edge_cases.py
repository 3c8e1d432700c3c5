"""Numerical edge cases: every activation and loss at the extremes of each float dtype, and
empty batches refused everywhere they reach (layers, losses, `fit`, `make_step`,
`make_evaluate`), and the batch of one that batch norm refuses in training.

Extremes are ±(largest finite), ±(smallest normal), ±(smallest subnormal), ±0 and ±2 of the
dtype, then ±inf and NaN. Values are checked against float64 numpy/scipy formulas rounded to
the output dtype, so a true value beyond the dtype's range is expected as ±inf (e.g.
``selu(max) = λ·max``); gradients must be finite wherever the true gradient is representable.
XLA on CPU flushes subnormals to zero, hence an absolute tolerance of the smallest normal.
Activations and losses are evaluated, with their gradients, under `jax.jit` (as training runs
them; one compilation a case instead of one per operation).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

from funcnet import losses, nn, optim, train

DTYPES = {"float16": jnp.float16, "bfloat16": jnp.bfloat16, "float32": jnp.float32}
DTYPES["float64"] = jnp.float64
FINITE = 10  # the first FINITE entries of `_extremes` are finite, then inf, -inf, nan
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


@pytest.fixture(params=list(DTYPES))
def dtype(request):
    if request.param == "float64":
        request.getfixturevalue("x64")
    return DTYPES[request.param]


def _extremes(dtype) -> jax.Array:
    fi = jnp.finfo(dtype)
    big, tiny, sub = float(fi.max), float(fi.tiny), float(fi.smallest_subnormal)
    values = [big, -big, tiny, -tiny, sub, -sub, 0.0, -0.0, 2.0, -2.0, np.inf, -np.inf, np.nan]
    return jnp.asarray(values, dtype)


def _flushed(x: np.ndarray, dtype) -> np.ndarray:
    """`x` with values below the smallest normal of the type XLA computes in (float32 for
    half precision) as ±0: XLA on CPU flushes them to zero."""
    tiny = float(jnp.finfo(jnp.promote_types(dtype, jnp.float32)).tiny)
    return np.where(np.abs(x) < tiny, np.copysign(0.0, x), x)


def _rounded(reference, dtype) -> np.ndarray:
    """A float64 reference as the dtype rounds it (±inf beyond its range), back in float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(reference).astype(jnp.dtype(dtype)).astype(np.float64)


def _assert_close(got, reference, dtype):
    fi = jnp.finfo(dtype)
    np.testing.assert_allclose(
        np.asarray(got, np.float64),
        _rounded(reference, dtype),
        rtol=(4 if fi.bits < 32 else 8) * float(fi.eps),  # a few roundings in half precision
        atol=float(fi.tiny),
    )


# ---------------------------------------------------------------------------------------------
# Activations. softmax and log_softmax act on rows (v, 0) and glu on rows (v, v); checked is
# the first entry: σ(v), log σ(v) and v·σ(v).

_PAIRWISE = {"softmax", "log_softmax", "glu"}
ACTIVATION_REFERENCES = {
    "sigmoid": special.expit,
    "tanh": np.tanh,
    "relu": lambda x: np.where(x > 0, x, 0.0),
    "relu6": lambda x: np.clip(x, 0, 6),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "celu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
    "selu": lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
    "gelu": lambda x: x * special.ndtr(x),
    "softplus": lambda x: np.logaddexp(x, 0.0),
    "softsign": lambda x: x / (1 + np.abs(x)),
    "swish": lambda x: x * special.expit(x),
    "silu": lambda x: x * special.expit(x),
    "mish": lambda x: x * np.tanh(np.logaddexp(x, 0.0)),
    "log_sigmoid": special.log_expit,
    "sinc": lambda x: np.sinc(x / np.pi),
    "step": lambda x: np.heaviside(x, 0.0),
    "sine": lambda x: np.sin(30.0 * x),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hard_swish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "softmax": lambda x: special.expit(x),  # softmax((v, 0))[0] = σ(v)
    "log_softmax": lambda x: special.log_expit(x),
    "glu": lambda x: x * special.expit(x),
}
# sin(ω₀x) needs ω₀x, which overflows float32 (where half inputs are computed) and float64
# for |x| > max / ω₀: the value and gradient there are NaN.
_SINE_OVERFLOWS = {"bfloat16", "float32", "float64"}


def test_every_activation_has_a_reference():
    assert set(ACTIVATION_REFERENCES) == {*nn.ACTIVATIONS, "glu"}


def _activation(name):
    fn = nn.glu if name == "glu" else nn.ACTIVATIONS[name]
    if name not in _PAIRWISE:
        return fn, fn
    # Rows (v, 0) for softmax / log_softmax, (v, v) for glu; the entry of v (index 0).
    make_row = (lambda v: jnp.stack([v, v])) if name == "glu" else (lambda v: jnp.stack([v, 0 * v]))

    def at(x):
        return jax.vmap(lambda v: fn(make_row(v))[0])(x)

    return at, lambda v: fn(make_row(v))[0]


@pytest.mark.parametrize("name", sorted(ACTIVATION_REFERENCES))
def test_activation_at_the_extremes_of_its_dtype(name, dtype):
    _, scalar = _activation(name)
    x = _extremes(dtype)
    x64 = _flushed(np.asarray(x, np.float64), dtype)
    y, grads = jax.jit(jax.vmap(jax.value_and_grad(scalar)))(x)  # one compilation for both
    assert y.dtype == dtype  # activations return their input's dtype
    grads = np.asarray(grads, np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        reference = ACTIVATION_REFERENCES[name](x64)
    finite = slice(0, FINITE)
    if name == "sine" and jnp.dtype(dtype).name in _SINE_OVERFLOWS:
        assert np.all(np.isnan(np.asarray(y[:2], np.float64)))
        finite = slice(2, FINITE)
    _assert_close(y[finite], reference[finite], dtype)
    # ±inf: the limit (relu(inf) = inf, sigmoid(−inf) = 0, ...), except for softmax and
    # log_softmax, whose shift by the largest logit makes inf − inf = NaN (as in PyTorch).
    if name not in ("softmax", "log_softmax"):
        _assert_close(y[FINITE : FINITE + 2], reference[FINITE : FINITE + 2], dtype)
    # (At ±inf itself the gradient is not defined; some give the limit, some NaN: not checked.)
    assert np.all(np.isfinite(grads[finite])), grads


@pytest.mark.parametrize(
    "name",
    [n for n in sorted(ACTIVATION_REFERENCES)],
)
def test_activation_of_nan_is_nan(name):
    batched, _ = _activation(name)
    assert np.isnan(float(batched(jnp.asarray([jnp.nan], jnp.float32))[0]))


# ---------------------------------------------------------------------------------------------
# Losses. Each case builds, from a vector v of extremes, inputs holding v, and gives the float64
# value per example and the gradient per example of the loss with respect to its first input.


def _alternating(n, a, b):
    return np.where(np.arange(n) % 2 == 0, a, b)


def _pairs(v):
    """Rows (v, 0) as logits / scores, and the class labels 0, 1, 0, 1, ..."""
    return np.stack([v, np.zeros_like(v)], -1), _alternating(len(v), 0, 1)


def _class_case(per_example, grad_row):
    def make(v):
        z, y = _pairs(v)
        return z, y, per_example(z, y), grad_row(z, y)

    return make


def _softmax_ce(z, y):
    lse = np.logaddexp(z[:, 0], z[:, 1])
    return lse - np.take_along_axis(z, y[:, None], -1)[:, 0]


def _multiclass_hinge(z, y):
    true = np.take_along_axis(z, y[:, None], -1)
    other = np.take_along_axis(z, 1 - y[:, None], -1)
    return np.maximum(0.0, 1.0 - true + other)[:, 0] / 2


def _multiclass_hinge_grad(z, y):
    active = (_multiclass_hinge(z, y) > 0)[:, None] / 2
    return np.where(np.arange(2) == y[:, None], -active, active)


def _elementwise(targets, value, grad):
    def make(v):
        t = targets(len(v))
        return v, t, value(v, t), grad(v, t)

    return make


LOSS_CASES = {
    "mse": (losses.mse, _elementwise(np.zeros, lambda p, t: (p - t) ** 2, lambda p, t: 2 * p)),
    "mae": (losses.mae, _elementwise(np.zeros, lambda p, t: np.abs(p), lambda p, t: np.sign(p))),
    "huber": (
        losses.huber,
        _elementwise(
            np.zeros,
            lambda p, t: np.where(np.abs(p) <= 1, 0.5 * p**2, np.abs(p) - 0.5),
            lambda p, t: np.clip(p, -1, 1),
        ),
    ),
    "binary_cross_entropy": (
        losses.binary_cross_entropy,
        _elementwise(
            lambda n: _alternating(n, 1.0, 0.0),
            lambda z, y: np.logaddexp(0, z) - y * z,
            lambda z, y: special.expit(z) - y,
        ),
    ),
    "logistic_loss": (
        losses.logistic_loss,
        _elementwise(
            lambda n: _alternating(n, 1.0, -1.0),
            lambda z, y: np.logaddexp(0, -y * z),
            lambda z, y: -y * special.expit(-y * z),
        ),
    ),
    "hinge": (
        losses.hinge,
        _elementwise(
            lambda n: _alternating(n, 1.0, -1.0),
            lambda s, y: np.maximum(0.0, 1 - y * s),
            lambda s, y: np.where(1 - y * s > 0, -y, 0.0),
        ),
    ),
    "softmax_cross_entropy": (
        losses.softmax_cross_entropy,
        _class_case(_softmax_ce, lambda z, y: special.softmax(z, -1) - np.eye(2)[y]),
    ),
    "nll": (
        losses.nll,
        _class_case(
            lambda z, y: -np.take_along_axis(z, y[:, None], -1)[:, 0], lambda z, y: -np.eye(2)[y]
        ),
    ),
    "multiclass_hinge": (
        losses.multiclass_hinge,
        _class_case(_multiclass_hinge, _multiclass_hinge_grad),
    ),
}


def _loss_dtype(dtype):
    """Losses compute half precision in float32 and return float32; other dtypes as they are."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loss_at_the_extremes_of_its_dtype(name, dtype):
    loss, make = LOSS_CASES[name]
    v = np.asarray(_extremes(dtype)[:FINITE], np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        a, b, value, grad = make(v)
    first = jnp.asarray(a, dtype)
    second = jnp.asarray(b, jnp.int32 if b.dtype.kind == "i" else dtype)
    out_dtype = _loss_dtype(dtype)

    per_example = jax.jit(lambda a, b: loss(a, b, reduction="none"))(first, second)
    assert per_example.dtype == out_dtype
    _assert_close(per_example, value, out_dtype)

    mean, grads = jax.jit(jax.value_and_grad(lambda p, b: loss(p, b)))(first, second)
    assert mean.dtype == out_dtype and grads.dtype == dtype
    # The mean sums first (as `jnp.mean`): where the sum overflows the output dtype (mae of
    # ±max in float32) it is inf, though the mean itself would be representable.
    with np.errstate(over="ignore"):
        _assert_close(mean, _rounded(np.sum(value), out_dtype) / len(v), out_dtype)
    # The gradient of the mean is grad / n. Where it and the loss are representable (a loss
    # that overflows, as mse of ±max in float32 does, has a gradient of ±inf too: 2·x comes
    # first), and away from subnormals and ±0 (flushed to 0, where mae and huber have a kink
    # and JAX takes the slope of x ≥ 0), it must come out finite and right.
    expected = _rounded(grad / len(v), dtype)
    fi = jnp.finfo(dtype)
    rows = np.abs(a).reshape(len(v), -1).max(axis=1)
    representable = (
        np.isfinite(expected).reshape(len(v), -1).all(axis=1)
        & np.isfinite(_rounded(value, out_dtype))
        & (rows >= float(fi.tiny))
    )
    got = np.asarray(grads, np.float64)
    assert np.all(np.isfinite(got[representable])), (got, expected)
    np.testing.assert_allclose(
        got[representable], expected[representable], rtol=4 * float(fi.eps), atol=float(fi.tiny)
    )


@pytest.mark.parametrize("name", sorted(LOSS_CASES))
def test_loss_of_nan_is_nan(name):
    loss, make = LOSS_CASES[name]
    a, b, _, _ = make(np.asarray([0.5, 2.0, 3.0]))
    a = np.array(a)
    a[1, ...] = np.nan  # the example's every entry, so a class loss sees it too
    first = jnp.asarray(a, jnp.float32)
    second = jnp.asarray(b, jnp.int32 if b.dtype.kind == "i" else jnp.float32)
    per_example = np.asarray(loss(first, second, reduction="none"))
    assert np.isnan(per_example[1]) and np.all(np.isfinite(per_example[[0, 2]]))
    assert np.isnan(float(loss(first, second)))


def test_penalties_of_half_precision_params_do_not_overflow(dtype):
    big = float(jnp.finfo(dtype).max)
    params = {"w": jnp.full((2, 2), big, dtype), "b": jnp.asarray([-big, 0.0], dtype)}
    l1, l2 = losses.l1_penalty(params), losses.l2_penalty(params)
    assert l1.dtype == l2.dtype == _loss_dtype(dtype)
    _assert_close(l1, 5 * big, _loss_dtype(dtype))
    with np.errstate(over="ignore"):
        _assert_close(l2, 0.5 * 5 * np.float64(big) ** 2, _loss_dtype(dtype))
    grads = jax.grad(losses.l2_penalty)(params)
    assert grads["w"].dtype == dtype
    if dtype == jnp.float16:  # computed in float32; 2·max overflows float32 from bfloat16 up
        np.testing.assert_array_equal(np.asarray(grads["w"], np.float64), big)
    assert np.isnan(float(losses.l2_penalty({"w": jnp.asarray([1.0, jnp.nan], dtype)})))


def test_accuracy_is_float32_and_counts_extremes(dtype):
    z, y = _pairs(np.asarray(_extremes(dtype)[:2], np.float64))  # rows (max, 0), (−max, 0)
    acc = losses.accuracy(jnp.asarray(z, dtype), jnp.asarray(y))
    assert acc.dtype == jnp.float32
    assert float(acc) == 1.0  # argmax 0 for label 0, argmax 1 for label 1


# ---------------------------------------------------------------------------------------------
# Empty batches: refused at trace time (shapes are static) with the function and the shape.

EMPTY = jnp.zeros((0, 3), jnp.float32)


@pytest.mark.parametrize(
    ("name", "args", "what"),
    [
        ("mse", (EMPTY, EMPTY), "predictions"),
        ("mae", (EMPTY, EMPTY), "predictions"),
        ("huber", (EMPTY, EMPTY), "predictions"),
        ("binary_cross_entropy", (EMPTY, EMPTY), "logits"),
        ("logistic_loss", (EMPTY, EMPTY), "logits"),
        ("hinge", (EMPTY, EMPTY), "scores"),
        ("softmax_cross_entropy", (EMPTY, jnp.zeros((0,), jnp.int32)), "logits"),
        ("nll", (EMPTY, jnp.zeros((0,), jnp.int32)), "log_probs"),
        ("multiclass_hinge", (EMPTY, jnp.zeros((0,), jnp.int32)), "scores"),
        ("accuracy", (EMPTY, jnp.zeros((0,), jnp.int32)), "logits"),
    ],
)
def test_losses_refuse_an_empty_batch(name, args, what):
    message = rf"^{name}: got an empty batch \({what} of shape \(0, 3\)\)"
    with pytest.raises(ValueError, match=message):
        getattr(losses, name)(*args)
    with pytest.raises(ValueError, match=message):  # under jit too, at trace time
        jax.jit(getattr(losses, name))(*args)


def test_losses_refuse_examples_without_elements():
    with pytest.raises(ValueError, match=r"^mse: got examples with no elements \(predictions"):
        losses.mse(jnp.zeros((4, 0)), jnp.zeros((4, 0)))


def _gru():
    return nn.gru(4)


# (kind, layer, input shape, where the shared check in `check_shape` refuses: init, apply).
# batch_norm refuses 0 rows in evaluation too (training needs more than one value per channel).
EMPTY_LAYERS = [
    ("dense", functools.partial(nn.dense, 4), (0, 3), "init apply"),
    ("conv", functools.partial(nn.conv, 2, 3), (0, 5, 5, 3), "init apply"),
    ("batch_norm", nn.batch_norm, (0, 3), "init apply"),
    ("layer_norm", nn.layer_norm, (0, 3), "init apply"),
    ("rms_norm", nn.rms_norm, (0, 3), "init apply"),
    ("group_norm", functools.partial(nn.group_norm, 1), (0, 4, 3), "init apply"),
    (
        "multi_head_attention",
        functools.partial(nn.multi_head_attention, 1),
        (0, 5, 4),
        "init apply",
    ),
    ("embedding", functools.partial(nn.embedding, 10, 4), (0, 7), "init apply"),
    ("gru", _gru, (0, 5, 3), "init apply"),
    ("flatten", nn.flatten, (0, 2, 2), "init apply"),
]


@pytest.mark.parametrize(("kind", "layer", "shape", "refused"), EMPTY_LAYERS)
def test_layers_refuse_an_empty_batch(kind, layer, shape, refused, key):
    message = rf"^{kind}: got an empty batch \(input of shape \({shape[0]}, "
    layer = layer()
    if "init" in refused:
        with pytest.raises(nn.LayerError, match=message):
            layer.init(key, shape)
    if "apply" in refused:
        _, params, state = layer.init(key, (2, *shape[1:]))
        x = jnp.zeros(shape, jnp.int32 if kind == "embedding" else jnp.float32)
        with pytest.raises(nn.LayerError, match=message):
            layer.apply(params, state, x)


@pytest.mark.parametrize(
    "layer", [functools.partial(nn.dense, 2), nn.rms_norm, functools.partial(nn.embedding, 5, 2)]
)
def test_a_layer_of_one_input_refuses_a_tuple_of_shapes(layer, key):
    kind = layer().kind
    with pytest.raises(nn.LayerError, match=rf"^{kind}: expected .*, got \(\(2, 4, 3\), \(2, 2"):
        layer().init(key, ((2, 4, 3), (2, 2, 2)))


def _blobs(n, seed=0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(n, 2)), jnp.float32), jnp.asarray(rng.integers(0, 3, n))


MLP = nn.serial(nn.dense(4), nn.relu, nn.dense(3))
BN_MLP = nn.serial(nn.dense(4), nn.batch_norm(), nn.relu, nn.dense(3))


def _fit(model, data, batch_size, **kwargs):
    return train.fit(
        model,
        optim.sgd(0.1),
        data,
        loss_fn=losses.softmax_cross_entropy,
        epochs=kwargs.pop("epochs", 1),
        batch_size=batch_size,
        key=jax.random.key(0),
        progress=False,
        **kwargs,
    )


def test_fit_refuses_empty_data():
    message = r"^fit: got train_data of 0 rows \(x of shape \(0, 2\)\); pass at least one example$"
    with pytest.raises(ValueError, match=message):
        _fit(MLP, _blobs(0), 2)
    with pytest.raises(ValueError, match=r"^fit: got eval_data of 0 rows \(x of shape \(0, 2\)\)"):
        _fit(MLP, _blobs(4), 2, eval_data=_blobs(0))


def test_make_step_and_make_evaluate_refuse_empty_batches(key):
    state = train.init_train_state(MLP, optim.sgd(0.1), key, (2, 2))
    step = train.make_step(MLP, optim.sgd(0.1), loss_fn=losses.softmax_cross_entropy)
    x, y = _blobs(0)
    message = r"^make_step: got a batch of 0 rows \(x of shape \(0, 2\)\)"
    with pytest.raises(ValueError, match=message):
        step(state, (x, y))
    with pytest.raises(ValueError, match=message):  # weighted: would be a silent 0, not NaN
        step(state, (x, y, jnp.zeros((0,))))
    evaluate = train.make_evaluate(MLP, loss_fn=losses.softmax_cross_entropy, batch_size=2)
    with pytest.raises(ValueError, match=r"^make_evaluate: got a data set of 0 rows \(x of shape"):
        evaluate(state.params, state.model_state, (x, y))


# ---------------------------------------------------------------------------------------------
# Batch norm and batches of one row in `fit`.


def test_fit_with_batch_norm_and_batches_of_one_is_refused():
    with pytest.raises(nn.LayerError, match=r"^batch_norm_1: training needs more than one value"):
        _fit(BN_MLP, _blobs(5), 1)


@pytest.mark.parametrize("n", [5, 1], ids=["ragged_last_batch_of_1", "one_example"])
def test_fit_pads_a_last_batch_of_one_row_for_batch_norm(n):
    # n = 5 in batches of 2: the last batch holds one real row and one filler row of weight 0
    # (`funcnet.train.batching`), so batch norm sees two rows. n = 1: four copies of the row.
    result = _fit(BN_MLP, _blobs(n), 2 if n == 5 else 4, epochs=2)
    assert np.all(np.isfinite(result.history["loss"]))
