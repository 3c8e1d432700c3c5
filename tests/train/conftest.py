"""Shared toy problem for the training tests: 3 Gaussian blobs in 3-D, a small MLP."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train

N, BATCH = 50, 16  # 50 = 3·16 + 2: every epoch ends on a ragged batch


def blobs(seed, n):
    centres = 2.0 * np.random.default_rng(0).normal(size=(3, 3))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = centres[y] + rng.normal(size=(n, 3))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


@pytest.fixture(scope="session")
def data():
    """``(train, held_out)``, each ``(x, y)``."""
    return blobs(10, N), blobs(11, 30)


@pytest.fixture(scope="session")
def model():
    return nn.serial(nn.dense(8), nn.tanh, nn.dense(3))


@pytest.fixture(scope="session")
def optimizer():
    return optim.adam(3e-2)


def python_epochs(model, optimizer, state, data, epochs, batch_size=BATCH):
    """The reference: a Python loop of `make_step`'s jitted steps, in `fit`'s order and keys.

    Each epoch's order is `batch_plan` with the key `shuffle_key(state)` of the state it
    starts from; full batches go in unweighted, a ragged last one with its weights.
    Returns the state and the per-epoch mean loss over the examples.
    """
    step = train.make_step(model, optimizer, loss_fn=losses.softmax_cross_entropy)
    state = jax.tree.map(jnp.copy, state)  # the step consumes the state it is given
    x, y = data
    history = []
    for _ in range(epochs):
        indices, weights = train.batch_plan(len(y), batch_size, train.shuffle_key(state))
        rows = losses_sum = 0.0
        for idx, w in zip(indices, weights, strict=True):
            batch = (x[idx], y[idx]) if bool(jnp.all(w == 1)) else (x[idx], y[idx], w)
            state, metrics = step(state, batch)
            rows += float(jnp.sum(w))
            losses_sum += float(jnp.sum(w)) * float(metrics["loss"])
        history.append(losses_sum / rows)
    return state, history


@pytest.fixture(scope="session")
def reference():
    return python_epochs
