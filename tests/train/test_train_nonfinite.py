"""Non-finite losses: `fit` stops naming epoch and step with the last good state, or skips.

NaN gradients are injected mid-training through the loss: one training row carries the label
`POISON`, which no class has, and `LOSS` is NaN in value and gradient on any batch that holds
it. (NaN in the input data itself is refused by `fit` before training starts.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train

BATCH, BAD_ROW, POISON = 16, 17, 3


def nan_on_poison(outputs, labels):
    """Softmax cross-entropy, NaN (value and gradient) on a batch holding a `POISON` label."""
    clean = losses.softmax_cross_entropy(
        outputs, jnp.where(labels == POISON, 0, labels), reduction="none"
    )
    return jnp.mean(jnp.where(labels == POISON, jnp.nan, 1.0) * clean)


LOSS = nan_on_poison


def poisoned(data):
    x, y = data
    return x, y.at[BAD_ROW].set(POISON)


def batch_of_bad_row(state):
    """The batch index holding `BAD_ROW` in the next epoch of `state`."""
    indices, weights = train.batch_plan(50, BATCH, train.shuffle_key(state))
    rows, _ = np.nonzero((np.asarray(indices) == BAD_ROW) & (np.asarray(weights) > 0))
    return int(rows[0])


def test_nonfinite_loss_raises_with_epoch_step_and_the_last_good_state(
    data, model, optimizer, reference
):
    kwargs = dict(loss_fn=LOSS, batch_size=BATCH, progress=False)
    first = train.fit(model, optimizer, data[0], epochs=1, key=jax.random.key(0), **kwargs)
    bad_batch = batch_of_bad_row(first.state)
    with pytest.raises(train.NonFiniteLossError) as info:
        train.fit(model, optimizer, poisoned(data[0]), epochs=3, state=first.state, **kwargs)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.batch, err.step) == (1, bad_batch, 4 + bad_batch)
    assert f"step {4 + bad_batch} (epoch 1, batch {bad_batch} of 4)" in str(err)
    assert err.history["epoch"] == [1]

    step = train.make_step(model, optimizer, loss_fn=LOSS)
    expected = first.state
    x, y = poisoned(data[0])
    indices, _ = train.batch_plan(50, BATCH, train.shuffle_key(expected))
    for b in range(bad_batch):
        expected, _ = step(expected, (x[indices[b]], y[indices[b]]))
    assert int(err.state.step) == int(expected.step)
    for a, b in zip(
        jax.tree.leaves(err.state.params), jax.tree.leaves(expected.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        assert np.all(np.isfinite(a))


def test_skip_mode_skips_only_the_nonfinite_steps(data, model, optimizer):
    x, y = poisoned(data[0])
    result = train.fit(
        model,
        optimizer,
        (x, y),
        loss_fn=LOSS,
        epochs=2,
        batch_size=BATCH,
        key=jax.random.key(0),
        on_nonfinite="skip",
        progress=False,
    )
    assert np.all(np.isfinite(result.history["loss"]))

    # Reference: plain steps, where a step on the poisoned batch only advances step and key.
    step = train.make_step(model, optimizer, loss_fn=LOSS)
    state = train.init_train_state(model, optimizer, jax.random.key(0), (BATCH, 3))
    skipped = []
    for _ in range(2):
        skipped.append(0)
        indices, weights = train.batch_plan(50, BATCH, train.shuffle_key(state))
        for idx, w in zip(indices, weights, strict=True):
            batch = (x[idx], y[idx]) if bool(jnp.all(w == 1)) else (x[idx], y[idx], w)
            new, metrics = step(jax.tree.map(jnp.copy, state), batch)
            good = bool(jnp.isfinite(metrics["loss"]))
            state = new if good else state._replace(step=new.step)
            skipped[-1] += not good
    # The poisoned row is in one batch an epoch, twice when it also fills the ragged one.
    assert result.history["skipped"] == skipped
    assert all(count in (1, 2) for count in skipped)
    for a, b in zip(
        jax.tree.leaves(result.state.params), jax.tree.leaves(state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_skip_mode_raises_after_too_many_nonfinite_steps_in_a_row(data, model, optimizer):
    with pytest.raises(train.NonFiniteLossError, match="epoch 0"):
        train.fit(
            model,
            optimizer,
            poisoned(data[0]),
            loss_fn=LOSS,
            epochs=1,
            batch_size=BATCH,
            key=jax.random.key(0),
            on_nonfinite="skip",
            max_consecutive_skips=0,
            progress=False,
        )


def test_an_ensemble_stops_where_each_member_alone_stops(data, model, optimizer):
    kwargs = dict(loss_fn=LOSS, epochs=2, batch_size=BATCH, progress=False)
    with pytest.raises(train.NonFiniteLossError) as ensemble:
        train.fit_ensemble(
            model, optimizer, poisoned(data[0]), members=2, key=jax.random.key(0), **kwargs
        )
    err = ensemble.value
    assert err.member == 0 and err.epoch == 0
    with pytest.raises(train.NonFiniteLossError) as alone:
        member_key = jax.random.split(jax.random.key(0), 2)[0]
        train.fit(model, optimizer, poisoned(data[0]), key=member_key, **kwargs)
    assert (err.epoch, err.batch, err.step) == (
        alone.value.epoch,
        alone.value.batch,
        alone.value.step,
    )
    for a, b in zip(
        jax.tree.leaves(jax.tree.map(lambda leaf: leaf[0], err.state.params)),
        jax.tree.leaves(alone.value.state.params),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def nan_gradient_on_poison(outputs, labels):
    """A finite loss whose gradient is NaN on a batch holding a `POISON` label:
    ``d√(m·o²)/do = m·o / √(m·o²)`` is 0/0 where the mask ``m`` is 0."""
    clean = losses.softmax_cross_entropy(outputs, jnp.where(labels == POISON, 0, labels))
    mask = jnp.where(labels == POISON, 0.0, 1.0)
    return clean + 1e-3 * jnp.mean(jnp.sqrt(mask * outputs[:, 0] ** 2))


def test_a_nan_gradient_under_a_finite_loss_stops_at_its_step(data, model, optimizer):
    x, y = poisoned(data[0])
    start = train.init_train_state(model, optimizer, jax.random.key(0), (BATCH, 3))
    bad_batch = batch_of_bad_row(start)
    with pytest.raises(train.NonFiniteLossError) as info:
        train.fit(
            model,
            optimizer,
            (x, y),
            loss_fn=nan_gradient_on_poison,
            epochs=1,
            batch_size=BATCH,
            key=jax.random.key(0),
            progress=False,
        )
    assert (info.value.epoch, info.value.batch, info.value.step) == (0, bad_batch, bad_batch)
    step = train.make_step(model, optimizer, loss_fn=nan_gradient_on_poison)
    expected = start
    indices, _ = train.batch_plan(50, BATCH, train.shuffle_key(start))
    for b in range(bad_batch):
        expected, metrics = step(expected, (x[indices[b]], y[indices[b]]))
    bad = (x[indices[bad_batch]], y[indices[bad_batch]])
    _, metrics = step(jax.tree.map(jnp.copy, expected), bad)
    assert np.isfinite(metrics["loss"])  # the loss itself stays finite
    for a, b in zip(
        jax.tree.leaves(info.value.state.params), jax.tree.leaves(expected.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _first_nonfinite_step(model, optimizer, state, data, epochs):
    """The reference: `make_step` in `fit`'s order until the params stop being finite; returns
    that step's index and the state before it."""
    step = train.make_step(model, optimizer, loss_fn=losses.softmax_cross_entropy)
    x, y = data
    for _ in range(epochs):
        indices, weights = train.batch_plan(len(y), BATCH, train.shuffle_key(state))
        for idx, w in zip(indices, weights, strict=True):
            before = jax.tree.map(jnp.copy, state)
            state, _ = step(state, (x[idx], y[idx], w))
            if not train.all_finite(state.params):
                return int(before.step), before
    return None, state


@pytest.mark.parametrize("case", ["float16 adam", "sgd at an infinite rate"])
def test_the_error_state_is_finite_when_a_finite_gradient_makes_the_params_nonfinite(data, case):
    """The loss and gradient are finite, the update is not: float16 params with Adam's
    default ε = 1e-8, which is 0 in float16, so a gradient that underflows divides 0 by 0; and
    a rate of inf (through a schedule: ``sgd(inf)`` itself is refused)."""
    x, y = data[0]
    if case == "float16 adam":
        half = jnp.float16
        model = nn.serial(nn.dense(8, dtype=half), nn.relu, nn.dense(3, dtype=half))
        x, optimizer = x.astype(half), optim.adam()
    else:
        model = nn.serial(nn.dense(8), nn.relu, nn.dense(3))
        optimizer = optim.sgd(lambda count: jnp.inf)
    key = jax.random.key(0)
    with pytest.raises(train.NonFiniteLossError) as info:
        train.fit(
            model,
            optimizer,
            (x, y),
            loss_fn=losses.softmax_cross_entropy,
            epochs=2,
            batch_size=BATCH,
            key=key,
            progress=False,
        )
    err = info.value
    assert train.all_finite(err.state.params)
    assert train.all_finite(err.state.opt_state)
    start = train.init_train_state(model, optimizer, key, (BATCH, 3))
    step, expected = _first_nonfinite_step(model, optimizer, start, (x, y), epochs=2)
    assert err.step == step == int(err.state.step)
    for got, want in zip(
        jax.tree.leaves(err.state.params), jax.tree.leaves(expected.params), strict=True
    ):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
