"""examples/loss_landscape.py: the straight path from init to trained params and the
filter-normalised plane around them, against the loss written out in NumPy."""

import jax
import numpy as np
import pytest

import funcnet
from tests.figure_checks import checked_figures
from tests.helpers import load_module


@pytest.fixture(scope="module")
def example():
    return load_module("examples/loss_landscape.py")


@pytest.fixture(scope="module")
def results(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape")
    with checked_figures() as saved:
        argv = ["--steps", "40", "--path-points", "5", "--grid", "3", "--out", str(out)]
        results = example.main(argv)
    assert [path.name for path in saved] == ["loss_landscape.png"]
    return results


def numpy_loss_and_accuracy(params, x, y):
    """The example's MLP, ``relu(x W₀ + b₀) W₂ + b₂``, and softmax cross-entropy, in NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.maximum(x @ p["dense_0"]["w"] + p["dense_0"]["b"], 0)
    logits = h @ p["dense_2"]["w"] + p["dense_2"]["b"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), y]), np.mean(np.argmax(logits, 1) == y)


@pytest.fixture(scope="module")
def digits():
    data = funcnet.data.digits()
    return (np.asarray(data.x_train, np.float64), np.asarray(data.y_train)), (
        np.asarray(data.x_test, np.float64),
        np.asarray(data.y_test),
    )


def test_the_path_matches_numpy_at_every_alpha(results, digits):
    (x, y), (x_test, y_test) = digits
    path, test_path = results["train_path"], results["test_path"]
    np.testing.assert_allclose(path.alphas, [-0.5, 0.0, 0.5, 1.0, 1.5])
    for i, a in enumerate(np.asarray(path.alphas, np.float64)):
        point = jax.tree.map(
            lambda t0, t1, a=a: (
                (1 - a) * np.asarray(t0, np.float64) + a * np.asarray(t1, np.float64)
            ),
            results["init"],
            results["trained"],
        )
        loss, accuracy = numpy_loss_and_accuracy(point, x, y)
        np.testing.assert_allclose(path.losses[i], loss, rtol=2e-5)
        np.testing.assert_allclose(path.accuracy[i], accuracy, atol=1e-6)
        test_loss, test_accuracy = numpy_loss_and_accuracy(point, x_test, y_test)
        np.testing.assert_allclose(test_path.losses[i], test_loss, rtol=2e-5)
        np.testing.assert_allclose(test_path.accuracy[i], test_accuracy, atol=1e-6)
    # Training made progress, and the printed endpoints are the path's values at α = 0, 1.
    assert results["trained_loss"] < 0.5 * results["init_loss"]
    assert results["init_loss"] == pytest.approx(float(path.losses[1]))
    assert results["trained_loss"] == pytest.approx(float(path.losses[3]))


def test_the_surface_matches_numpy_and_its_centre_is_the_trained_loss(results, digits):
    (x, y), _ = digits
    surface, (d1, d2) = results["surface"], results["directions"]
    assert surface.losses.shape == (3, 3)
    assert results["centre_loss"] == pytest.approx(results["trained_loss"], rel=1e-6)
    for i, a in enumerate(np.asarray(surface.alphas)):
        for j, b in enumerate(np.asarray(surface.betas)):
            point = jax.tree.map(
                lambda t, u, v, a=a, b=b: t + a * u + b * v, results["trained"], d1, d2
            )
            np.testing.assert_allclose(
                surface.losses[i, j], numpy_loss_and_accuracy(point, x, y)[0], rtol=2e-5
            )
    # The kernels' directions are filter-normalised, the biases left out.
    np.testing.assert_allclose(
        np.linalg.norm(d1["dense_0"]["w"], axis=0),
        np.linalg.norm(results["trained"]["dense_0"]["w"], axis=0),
        rtol=1e-5,
    )
    np.testing.assert_array_equal(d2["dense_2"]["b"], 0)
    assert results["figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grids_without_their_centre_are_refused(example):
    with pytest.raises(SystemExit):
        example.main(["--grid", "4"])
    with pytest.raises(SystemExit):
        example.main(["--path-points", "6"])
