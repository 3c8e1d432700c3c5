"""Data sets and batching."""

import jax
import numpy as np
import pytest

from funcnet import data


def test_xor_truth_table():
    x, y = data.xor()
    np.testing.assert_array_equal(y, np.logical_xor(x[:, 0], x[:, 1]).astype(int))


def test_digits_split_is_fixed_stratified_and_scaled():
    a, b = data.digits(), data.digits()
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    counts = np.bincount(np.asarray(a.y_test), minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~36 per class in a stratified 20%
    images = data.digits(images=True)
    assert images.x_train.shape == (1437, 8, 8, 1)


@pytest.mark.parametrize("maker", [data.moons, data.spirals])
def test_synthetic_sets_are_key_seeded(maker):
    x1, y1 = maker(jax.random.key(0), n=100)
    x2, y2 = maker(jax.random.key(0), n=100)
    x3, _ = maker(jax.random.key(1), n=100)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(x1, x3)
    assert x1.shape == (100, 2) and set(np.unique(y1)) == {0, 1}


def test_moons_lie_on_their_half_circles_without_noise():
    x, y = data.moons(jax.random.key(0), n=50, noise=0.0)
    x, y = np.asarray(x), np.asarray(y)
    np.testing.assert_allclose(np.linalg.norm(x[y == 0], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(x[y == 1] - [1.0, 0.5], axis=1), 1.0, rtol=1e-5)


def test_standardize_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, size=(500, 3))
    test = rng.normal(3.0, 2.0, size=(10, 3))
    z_train, z_test = data.standardize(train, test)
    np.testing.assert_allclose(np.mean(z_train, 0), 0.0, atol=1e-6)
    np.testing.assert_allclose(np.std(z_train, 0), 1.0, rtol=1e-6)
    expected = (test - train.mean(0)) / train.std(0)
    np.testing.assert_allclose(z_test, expected, rtol=1e-5)


def test_minibatches_cover_every_row_once():
    x = np.arange(10)
    y = np.arange(10) * 2
    batches = list(data.minibatches((x, y), 4, key=jax.random.key(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    seen = np.concatenate([b[0] for b in batches])
    assert sorted(seen) == list(range(10))
    for bx, by in batches:
        np.testing.assert_array_equal(by, bx * 2)
    assert [len(b[0]) for b in data.minibatches((x,), 4, drop_last=True)] == [4, 4]
    with pytest.raises(ValueError, match="differ in length"):
        list(data.minibatches((x, y[:5]), 2))
