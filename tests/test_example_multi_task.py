"""examples/multi_task.py: two inputs and two heads learn both tasks; a frozen trunk stays put."""

import jax
import numpy as np
import pytest

import funcnet as fn
from tests.helpers import load_module


@pytest.fixture(scope="module")
def example():
    return load_module("examples/multi_task.py")


@pytest.fixture(scope="module")
def results(example):
    return example.main(steps=150, transfer_steps=150)


def test_both_losses_fall_and_the_digit_head_beats_chance(results):
    assert results["cross_entropy_end"] < 0.3 * results["cross_entropy_start"]
    assert results["ink_mse_end"] < 0.3 * results["ink_mse_start"]
    assert results["accuracy_end"] > 0.85  # chance is 0.1


def test_the_frozen_trunk_is_bit_identical_and_the_new_head_learns(results):
    assert results["digit_accuracy"] > 0.85
    assert results["trunk_unchanged"] == 1.0
    assert results["parity_pretrained_trunk"] > 0.75  # chance is about 0.5


def test_freeze_keeps_frozen_params_exactly_and_moves_the_others(example):
    params = {"trunk": {"w": np.ones((3, 2), np.float32)}, "head": {"w": np.ones(2, np.float32)}}
    grads = jax.tree.map(lambda p: np.full_like(p, 0.5), params)
    optimizer = example.freeze({"trunk": True, "head": False}, fn.optim.adam(0.1))
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    new = fn.optim.apply_updates(params, updates)
    assert np.array_equal(new["trunk"]["w"], params["trunk"]["w"])
    assert not np.any(new["head"]["w"] == params["head"]["w"])


def test_gradient_of_the_weighted_sum_is_the_weighted_sum_of_gradients(example):
    split = fn.data.digits()
    inputs, targets = example.multi_task_data(split.x_train[:64], split.y_train[:64], 0.3, 0.1)
    model = example.multi_task_model()
    _, params, state = model.init(jax.random.key(0), tuple(x.shape for x in inputs))
    weight = 0.7

    def loss(i):
        return lambda p: example.task_losses(model, p, state, inputs, targets)[i]

    @jax.jit
    def gradients(params):
        total = jax.grad(lambda p: loss(0)(p) + weight * loss(1)(p))(params)
        return total, jax.grad(loss(0))(params), jax.grad(loss(1))(params)

    total, grad_1, grad_2 = gradients(params)
    expected = jax.tree.map(lambda a, b: a + weight * b, grad_1, grad_2)
    assert jax.tree.structure(total) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(total), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
