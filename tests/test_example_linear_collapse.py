"""examples/linear_collapse.py: a stack of dense layers is one dense layer, until an
activation sits between them."""

import jax
import numpy as np
import pytest

from tests.helpers import load_module


@pytest.fixture(scope="module")
def example():
    return load_module("examples/linear_collapse.py")


@pytest.fixture(scope="module")
def results(example):
    return example.main(["--batch", "256"])


def test_the_collapsed_layer_is_the_product_of_the_kernels(example):
    _, params, _ = example.stack().init(jax.random.key(1), (1, example.IN_FEATURES))
    layers = [{k: np.asarray(v, np.float64) for k, v in p.items()} for p in params.values()]
    w1, w2, w3, w4 = (layer["w"] for layer in layers)
    b1, b2, b3, b4 = (layer["b"] for layer in layers)
    single = example.collapse(params)
    np.testing.assert_allclose(single["w"], w1 @ w2 @ w3 @ w4, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        single["b"], ((b1 @ w2 + b2) @ w3 + b3) @ w4 + b4, rtol=1e-5, atol=1e-6
    )
    assert np.any(np.abs(b4) > 0.1)  # the biases are not all zero, so b's formula is tested


def test_the_stack_and_its_collapse_agree_to_float32_round_off(results):
    assert results["dtype"] == "float32"
    assert results["difference"] < 1e-5


def test_in_float64_they_agree_to_float64_round_off(example):
    results = example.main(["--batch", "64", "--x64"])
    assert results["dtype"] == "float64"
    assert results["difference"] < 1e-12
    assert results["residual"]["none (linear stack)"] < 1e-12
    assert not jax.config.read("jax_enable_x64")  # the setting is restored


def test_the_rank_is_capped_by_the_narrowest_width(results):
    assert results["narrowest"] == 3
    assert results["rank"] == 3
    s = results["singular_values"]
    assert len(s) == 4 and s[3] < 1e-5 * s[0] and s[2] > 1e-2 * s[0]


def test_least_squares_recovers_the_collapsed_map(example):
    x = np.random.default_rng(0).normal(size=(100, example.IN_FEATURES)).astype(np.float32)
    _, params, _ = example.stack().init(jax.random.key(2), x.shape)
    y, _ = example.stack().apply(params, {}, x)
    design = np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)
    beta, *_ = np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)
    single = example.collapse(params)
    np.testing.assert_allclose(beta[:-1], single["w"], atol=1e-5)
    np.testing.assert_allclose(beta[-1], single["b"], atol=1e-5)


def test_an_activation_between_the_layers_breaks_the_collapse(results):
    residual = results["residual"]
    assert residual["none (linear stack)"] < 1e-5
    assert residual["relu"] > 0.1
    assert residual["tanh"] > 0.1
