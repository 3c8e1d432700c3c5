"""Loss landscapes against plain NumPy loops over the grid points, filter normalisation
against a loop over filters, and slices of a quadratic against their closed form."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import funcnet.diff.landscape as fl

SIZES = (4, 6, 3)


def classifier_data(rng):
    """A tanh MLP 4 → 6 → 3 (51 params) and 30 labelled points, float64 under x64."""
    params = {
        f"dense_{i}": {
            "w": jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m)),
            "b": jnp.asarray(0.3 * rng.normal(size=n)),
        }
        for i, (m, n) in enumerate(itertools.pairwise(SIZES))
    }
    x = jnp.asarray(rng.normal(size=(30, SIZES[0])))
    y = jnp.asarray(rng.integers(0, SIZES[-1], size=30))
    return params, x, y


def logits_of(params, x):
    h = jnp.tanh(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    return h @ params["dense_1"]["w"] + params["dense_1"]["b"]


def loss_and_accuracy(params, batch):
    x, y = batch
    logits = logits_of(params, x)
    log_p = jax.nn.log_softmax(logits)
    loss = -jnp.mean(jnp.take_along_axis(log_p, y[:, None], axis=1))
    return loss, jnp.mean((jnp.argmax(logits, -1) == y).astype(logits.dtype))


def loss_only(params, batch):
    return loss_and_accuracy(params, batch)[0]


def numpy_loss_and_accuracy(params, x, y):
    """The same network and loss, written in NumPy for one params point."""
    h = np.tanh(x @ params["dense_0"]["w"] + params["dense_0"]["b"])
    logits = h @ params["dense_1"]["w"] + params["dense_1"]["b"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), y]), np.mean(np.argmax(logits, 1) == y)


def to_numpy(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def combine(weights, trees):
    """Σᵢ wᵢ Tᵢ, leaf by leaf, in NumPy."""
    return jax.tree.map(lambda *xs: sum(w * x for w, x in zip(weights, xs, strict=True)), *trees)


# Uneven batches: sizes 12, 12, 6; their size-weighted mean is the loss on all 30 points.
SPLITS = [(0, 12), (12, 24), (24, 30)]


def data_forms(x, y):
    return {
        "batch": {"batch": (x, y)},
        "batches": {"batches": [(x[a:b], y[a:b]) for a, b in SPLITS]},
    }


@pytest.mark.parametrize(("form", "chunk_size"), [("batch", None), ("batches", 4)])
def test_interpolation_matches_a_numpy_loop(x64, form, chunk_size):
    rng = np.random.default_rng(0)
    params0, x, y = classifier_data(rng)
    params1, _, _ = classifier_data(rng)
    alphas = np.linspace(-0.5, 1.5, 9)
    result = fl.linear_interpolation(
        loss_and_accuracy,
        params0,
        params1,
        alphas=alphas,
        has_aux=True,
        chunk_size=chunk_size,
        **data_forms(x, y)[form],
    )
    p0, p1, xn, yn = to_numpy(params0), to_numpy(params1), np.asarray(x), np.asarray(y)
    expected = np.array(
        [numpy_loss_and_accuracy(combine([1 - a, a], [p0, p1]), xn, yn) for a in alphas]
    )
    assert result.losses.shape == result.accuracy.shape == (9,)
    np.testing.assert_allclose(result.alphas, alphas)
    np.testing.assert_allclose(result.losses, expected[:, 0], rtol=1e-12)
    np.testing.assert_allclose(result.accuracy, expected[:, 1], rtol=1e-12)
    # The endpoints are the two params themselves.
    assert result.losses[2] == pytest.approx(float(loss_only(params0, (x, y))), rel=1e-14)
    assert result.losses[6] == pytest.approx(float(loss_only(params1, (x, y))), rel=1e-14)


def test_uneven_batches_are_weighted_by_size(x64):
    params, x, y = classifier_data(np.random.default_rng(1))
    direction = fl.random_direction(jax.random.key(0), params)
    alphas = np.array([0.0, 0.7])
    result = fl.loss_line(
        loss_only, params, direction, alphas=alphas, **data_forms(x, y)["batches"]
    )
    xn, yn, p, d = np.asarray(x), np.asarray(y), to_numpy(params), to_numpy(direction)
    for a, loss in zip(alphas, result.losses, strict=True):
        point = combine([1.0, a], [p, d])
        np.testing.assert_allclose(loss, numpy_loss_and_accuracy(point, xn, yn)[0], rtol=1e-12)
        # The plain mean over batches, the wrong weighting, misses by far more than that.
        plain = np.mean([numpy_loss_and_accuracy(point, xn[i:j], yn[i:j])[0] for i, j in SPLITS])
        assert abs(plain - loss) > 1e-4 * loss


def test_surface_matches_a_numpy_loop_and_has_ij_layout(x64):
    params, x, y = classifier_data(np.random.default_rng(2))
    d1 = fl.random_direction(jax.random.key(1), params)
    d2 = fl.random_direction(jax.random.key(2), params)
    alphas, betas = np.linspace(-1, 1, 5), np.linspace(-0.5, 0.5, 3)
    result = fl.loss_surface(
        loss_and_accuracy,
        params,
        (d1, d2),
        alphas=alphas,
        betas=betas,
        batches=[(x[a:b], y[a:b]) for a, b in SPLITS],
        has_aux=True,
        chunk_size=4,
    )
    p, n1, n2 = to_numpy(params), to_numpy(d1), to_numpy(d2)
    xn, yn = np.asarray(x), np.asarray(y)
    expected = np.zeros((5, 3, 2))
    for i, a in enumerate(alphas):
        for j, b in enumerate(betas):
            expected[i, j] = numpy_loss_and_accuracy(combine([1.0, a, b], [p, n1, n2]), xn, yn)
    assert result.losses.shape == result.accuracy.shape == (5, 3)
    np.testing.assert_allclose(result.losses, expected[..., 0], rtol=1e-12)
    np.testing.assert_allclose(result.accuracy, expected[..., 1], rtol=1e-12)
    assert result.losses[2, 1] == pytest.approx(float(loss_only(params, (x, y))), rel=1e-14)
    # With the two directions swapped the grid is a different one.
    assert np.max(np.abs(result.losses[1:4] - expected[1:4, ::-1, 0])) > 1e-3


def test_filter_normalize_matches_a_loop_over_filters(x64):
    rng = np.random.default_rng(3)
    params = {
        "conv": {
            "w": jnp.asarray(rng.normal(size=(3, 3, 2, 4))),
            "b": jnp.asarray(rng.normal(size=4)),
        },
        "dense": {"w": jnp.asarray(rng.normal(size=(5, 4)) * np.arange(1, 5))},
        "norm": {"scale": jnp.asarray(rng.normal(size=4))},
    }
    raw = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), params)
    result = to_numpy(fl.filter_normalize(raw, params))
    for layer in ("conv", "dense"):
        theta, d = np.asarray(params[layer]["w"]), np.asarray(raw[layer]["w"])
        expected = np.empty_like(d)
        for f in range(theta.shape[-1]):  # one filter per output unit / channel
            expected[..., f] = d[..., f] / np.linalg.norm(d[..., f]) * np.linalg.norm(theta[..., f])
        np.testing.assert_allclose(result[layer]["w"], expected, rtol=1e-13)
        for f in range(theta.shape[-1]):
            assert np.linalg.norm(result[layer]["w"][..., f]) == pytest.approx(
                np.linalg.norm(theta[..., f]), rel=1e-13
            )
    # Biases and norm params are left out of the direction by default, copied when asked.
    np.testing.assert_array_equal(result["conv"]["b"], 0)
    np.testing.assert_array_equal(result["norm"]["scale"], 0)
    kept = fl.filter_normalize(raw, params, ignore_biases=False)
    np.testing.assert_array_equal(kept["conv"]["b"], params["conv"]["b"])
    # Normalising along the wrong axis (per input row) misses the filter norms.
    theta, d = np.asarray(params["dense"]["w"]), np.asarray(raw["dense"]["w"])
    rows = (
        d / np.linalg.norm(d, axis=1, keepdims=True) * np.linalg.norm(theta, axis=1, keepdims=True)
    )
    wrong = np.linalg.norm(rows, axis=0) / np.linalg.norm(theta, axis=0)
    assert np.max(np.abs(wrong - 1)) > 0.1


def test_random_direction_is_seeded_and_filter_normalised():
    params, _, _ = classifier_data(np.random.default_rng(4))
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    d = fl.random_direction(jax.random.key(5), params)
    again = fl.random_direction(jax.random.PRNGKey(5), params)  # a legacy key
    jax.tree.map(np.testing.assert_array_equal, d, again)
    assert d["dense_0"]["w"].dtype == jnp.float32
    np.testing.assert_allclose(
        jnp.linalg.norm(d["dense_1"]["w"], axis=0),
        jnp.linalg.norm(params["dense_1"]["w"], axis=0),
        rtol=1e-6,
    )
    np.testing.assert_array_equal(d["dense_1"]["b"], 0)
    raw = fl.random_direction(jax.random.key(5), params, filter_normalized=False)
    assert float(jnp.abs(raw["dense_1"]["b"]).min()) > 0


def quadratic(rng):
    """L(θ) = ½ θᵀAθ over params {"w": (3, 4), "b": (4,)}, A symmetric indefinite (16 × 16)."""
    params = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))}
    m = rng.normal(size=(16, 16))
    a = (m + m.T) / 2

    def loss(p):
        theta = ravel_pytree(p)[0]
        return 0.5 * theta @ jnp.asarray(a) @ theta

    return params, a, loss


def test_quadratic_surface_is_the_closed_form(x64):
    params, a, loss = quadratic(np.random.default_rng(6))
    d1 = fl.random_direction(jax.random.key(1), params, ignore_biases=False)
    d2 = fl.random_direction(jax.random.key(2), params, filter_normalized=False)
    alphas, betas = np.linspace(-1, 1, 7), np.linspace(-2, 2, 5)
    result = fl.loss_surface(loss, params, (d1, d2), alphas=alphas, betas=betas, chunk_size=8)
    theta, v1, v2 = (np.asarray(ravel_pytree(t)[0]) for t in (params, d1, d2))
    closed = np.array(
        [[0.5 * (p := theta + al * v1 + be * v2) @ a @ p for be in betas] for al in alphas]
    )
    np.testing.assert_allclose(result.losses, closed, rtol=1e-12, atol=1e-12 * np.abs(closed).max())
    swapped = np.array(
        [[0.5 * (p := theta + be * v1 + al * v2) @ a @ p for be in betas] for al in alphas]
    )
    assert np.max(np.abs(swapped - closed)) > 1e-3 * np.abs(closed).max()


def test_quadratic_second_difference_is_the_curvature_along_d(x64):
    params, a, loss = quadratic(np.random.default_rng(7))
    d = fl.random_direction(jax.random.key(3), params, ignore_biases=False)
    h = 0.25
    line = fl.loss_line(loss, params, d, alphas=h * np.arange(-4, 5))
    second = np.diff(np.asarray(line.losses), 2) / h**2
    v = np.asarray(ravel_pytree(d)[0])
    curvature = v @ a @ v
    np.testing.assert_allclose(second, np.full(7, curvature), rtol=1e-10)
    # The Rayleigh quotient dᵀAd / dᵀd, a plausible slip, is another number.
    assert abs(curvature / (v @ v) - curvature) > 1e-3 * abs(curvature)


def test_loss_line_along_the_difference_is_the_interpolation(x64):
    rng = np.random.default_rng(8)
    params0, x, y = classifier_data(rng)
    params1, _, _ = classifier_data(rng)
    alphas = np.linspace(0, 1, 5)
    line = fl.loss_line(
        loss_only,
        params0,
        jax.tree.map(jnp.subtract, params1, params0),
        alphas=alphas,
        batch=(x, y),
    )
    path = fl.linear_interpolation(loss_only, params0, params1, alphas=alphas, batch=(x, y))
    np.testing.assert_allclose(line.losses, path.losses, rtol=1e-12)
    assert line.accuracy is None and path.accuracy is None


def test_bad_input_is_reported():
    params, x, y = classifier_data(np.random.default_rng(9))
    d = fl.random_direction(jax.random.key(0), params)
    grid = np.linspace(-1, 1, 3)
    with pytest.raises(ValueError, match="batch or batches, not both"):
        fl.loss_line(loss_only, params, d, alphas=grid, batch=(x, y), batches=[(x, y)])
    with pytest.raises(ValueError, match="batches is empty"):
        fl.loss_line(loss_only, params, d, alphas=grid, batches=[])
    # (x, y) as batches would be two batches, x and then y: refused in one line, naming both.
    directions = (d, fl.random_direction(jax.random.key(1), params))
    for tuple_of_arrays in ((x, y), (x, y, x)):
        with pytest.raises(
            ValueError, match=r"^loss_surface: batches is a tuple of \d arrays \("
        ) as err:
            fl.loss_surface(loss_only, params, directions, alphas=grid, batches=tuple_of_arrays)
        assert "\n" not in str(err.value) and "batch=(x, y)" in str(err.value)
    # A tuple of batches (pairs, not bare arrays) is taken as given.
    as_tuple = fl.loss_line(loss_only, params, d, alphas=grid, batches=((x, y), (x, y)))
    as_one = fl.loss_line(loss_only, params, d, alphas=grid, batch=(x, y))
    np.testing.assert_allclose(as_tuple.losses, as_one.losses, rtol=1e-6)
    with pytest.raises(ValueError, match="share one leading axis"):
        fl.loss_line(loss_only, params, d, alphas=grid, batch=(x, y[:5]))
    with pytest.raises(ValueError, match=r"(?s)direction .*dense_0/w"):
        bad = {**d, "dense_0": {**d["dense_0"], "w": d["dense_0"]["w"][:2]}}
        fl.loss_line(loss_only, params, bad, alphas=grid, batch=(x, y))
    with pytest.raises(ValueError, match="non-empty 1-D grid"):
        fl.loss_line(loss_only, params, d, alphas=np.zeros((2, 2)), batch=(x, y))
    with pytest.raises(ValueError, match="finite"):
        fl.loss_line(loss_only, params, d, alphas=[0.0, np.nan], batch=(x, y))
    with pytest.raises(ValueError, match="chunk_size"):
        fl.loss_line(loss_only, params, d, alphas=grid, batch=(x, y), chunk_size=0)
    with pytest.raises(ValueError, match="a pair"):
        fl.loss_surface(loss_only, params, (d,), alphas=grid, batch=(x, y))
    with pytest.raises(ValueError, match="scalar loss"):
        fl.loss_line(lambda p, b: logits_of(p, b[0]), params, d, alphas=grid, batch=(x, y))
    with pytest.raises(TypeError, match="float arrays"):
        fl.random_direction(jax.random.key(0), {"w": jnp.ones((2, 2), jnp.int32)})
