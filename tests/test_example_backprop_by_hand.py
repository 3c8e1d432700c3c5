"""examples/backprop_by_hand.py: the lecture's sigmoid neuron and an N-layer NumPy backward."""

import math

import numpy as np
import pytest

from tests.helpers import load_module


@pytest.fixture(scope="module")
def example():
    return load_module("examples/backprop_by_hand.py")


@pytest.fixture(scope="module")
def results(example):
    return example.main(depth=3, activation="sigmoid", loss="cross_entropy")


def test_neuron_matches_the_lecture_numbers(results):
    # forward: w0x0 = -2, w1x1 = 6, sum 4, z = 1, σ(1) = 0.73
    values = {node: row["value"] for node, row in results["nodes"].items()}
    assert (values["a"], values["b"], values["s"], values["z"]) == (-2.0, 6.0, 4.0, 1.0)
    assert round(results["f"], 2) == 0.73
    assert results["f"] == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-15)
    # backward: dw = (-0.20, -0.39, 0.20), dx = (0.39, -0.59)
    assert [round(v, 2) for v in results["dw"]] == [-0.20, -0.39, 0.20]
    assert [round(v, 2) for v in results["dx"]] == [0.39, -0.59]


def test_sigmoid_nodes_chain_to_sigma_times_one_minus_sigma(results):
    # the lecture's expanded gate: e^{-1} = 0.37, 1 + e = 1.37, -1/1.37² = -0.53, then 0.20
    nodes = results["sigmoid nodes"]
    assert round(nodes["e"]["value"], 2) == 0.37
    assert round(nodes["d"]["value"], 2) == 1.37
    assert round(nodes["d"]["grad"], 2) == -0.53
    f = results["f"]
    assert nodes["z"]["grad"] == pytest.approx(f * (1 - f), rel=1e-12)


def test_neuron_agrees_with_jax_grad_and_vjp(results):
    for mode in ("jax.grad", "jax.vjp"):
        np.testing.assert_allclose(results[f"{mode} dw"], results["dw"], rtol=1e-12)
        np.testing.assert_allclose(results[f"{mode} dx"], results["dx"], rtol=1e-12)


def test_main_reports_every_dense_layer(results):
    network = results["network"]
    assert list(network) == ["dense_0", "dense_2", "dense_4"]
    assert max(max(d.values()) for d in network.values()) <= 1e-6


@pytest.mark.parametrize("depth", [2, 5])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("loss", ["cross_entropy", "squared"])
def test_numpy_backward_matches_jax_grad(example, depth, activation, loss):
    differences = example.compare_network(depth, activation, loss, seed=depth)
    assert len(differences) == depth
    for name, diff in differences.items():
        assert diff["w"] <= 1e-6, (name, diff)
        assert diff["b"] <= 1e-6, (name, diff)


def test_numpy_backward_by_finite_differences(example):
    # an outside check of the NumPy backward: central differences of the NumPy loss
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 4)), rng.integers(0, 3, size=6)
    layers = [
        (rng.normal(size=(4, 5)), rng.normal(size=5)),
        (rng.normal(size=(5, 3)), rng.normal(size=3)),
    ]

    def loss(layers):
        scores, _ = example.numpy_forward(layers, x, "sigmoid")
        p = np.exp(scores) / np.exp(scores).sum(axis=1, keepdims=True)
        return -np.mean(np.log(p[np.arange(6), y]))

    scores, cache = example.numpy_forward(layers, x, "sigmoid")
    delta = example.output_delta(scores, y, "cross_entropy")
    grads = example.numpy_backward(layers, cache, delta, "sigmoid")
    h = 1e-6
    for i, (w, b) in enumerate(layers):
        for j, param in ((0, w), (1, b)):
            numeric = np.zeros_like(param)
            for idx in np.ndindex(param.shape):
                plus = [(a.copy(), c.copy()) for a, c in layers]
                minus = [(a.copy(), c.copy()) for a, c in layers]
                plus[i][j][idx] += h
                minus[i][j][idx] -= h
                numeric[idx] = (loss(plus) - loss(minus)) / (2 * h)
            np.testing.assert_allclose(grads[i]["wb"[j]], numeric, rtol=1e-6, atol=1e-9)
