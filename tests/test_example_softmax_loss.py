"""examples/softmax_loss.py: the lecture's cat/car/frog softmax loss table."""

import itertools
import math

import numpy as np
import pytest

from tests.helpers import load_module

SCORES = [[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]]  # cat, car, frog images


@pytest.fixture(scope="module")
def results():
    return load_module("examples/softmax_loss.py").main()


def _loss_by_hand(scores, y):
    """−log(e^{s_y} / Σ e^{s_k}), term by term."""
    return -math.log(math.exp(scores[y]) / sum(math.exp(s) for s in scores))


def test_cat_image_loss_is_the_lecture_value(results):
    # exp(3.2) = 24.5, exp(5.1) = 164.0, exp(-1.7) = 0.18; p = 0.13, 0.87, 0.00; L = 2.04
    np.testing.assert_allclose(results["exp scores"][0], [24.5, 164.0, 0.18], atol=0.05)
    np.testing.assert_allclose(results["probabilities"][0], [0.13, 0.87, 0.00], atol=0.005)
    assert round(results["losses"][0], 2) == 2.04


def test_each_loss_and_the_mean_against_numpy(results):
    expected = [_loss_by_hand(s, y) for y, s in enumerate(SCORES)]
    scores = np.array(SCORES)
    log_p = scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))
    assert np.allclose(-log_p[[0, 1, 2], [0, 1, 2]], expected, rtol=1e-12)
    np.testing.assert_allclose(results["losses"], expected, rtol=1e-12)
    assert results["mean loss"] == pytest.approx(np.mean(expected), rel=1e-12)
    np.testing.assert_allclose(results["funcnet losses"], expected, rtol=1e-12)
    assert results["funcnet mean loss"] == pytest.approx(np.mean(expected), rel=1e-12)


def test_gradient_is_p_minus_one_hot(results):
    scores = np.array(SCORES)
    p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
    expected = p - np.eye(3)
    np.testing.assert_allclose(results["gradient"], expected, atol=1e-12)
    np.testing.assert_allclose(results["jax.grad gradient"], expected, atol=1e-12)
    # each image's gradient sums to zero over the classes
    np.testing.assert_allclose(np.sum(results["gradient"], axis=1), 0.0, atol=1e-12)


def test_range_of_the_loss(results):
    assert results["uniform loss"] == pytest.approx(math.log(3), rel=1e-12)
    assert round(results["uniform loss"], 4) == 1.0986
    assert results["uniform loss, shifted scores"] == pytest.approx(math.log(3), rel=1e-12)
    towards_zero, unbounded = results["loss towards zero"], results["loss unbounded"]
    for t, low, high in zip(results["margins"], towards_zero, unbounded, strict=True):
        assert low == pytest.approx(math.log1p(2 * math.exp(-t)), rel=1e-9)
        assert high == pytest.approx(math.log1p(2 * math.exp(t)), rel=1e-12)
        assert low > 0
        assert high > t
    assert all(a > b for a, b in itertools.pairwise(towards_zero))
