"""`fit`'s two ways to run an epoch: one compiled `lax.scan`, or each step compiled on its own
and called from the host. Both take the same steps on the same batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train
from tests.test_checkpoint import leaves_as_numpy as leaves
from tests.train.conftest import BATCH, blobs

CE = losses.softmax_cross_entropy
OPT = optim.adam(2e-2)
CNN = nn.serial(nn.conv(4, 3), nn.relu, nn.max_pool(2), nn.flatten(), nn.dense(3))


def images(seed, n=50):
    x, y = blobs(seed, n)
    pictures = jnp.tile(x[:, None, None, :], (1, 6, 6, 1))[..., :1] + 0.1 * x[:, None, None, 1:2]
    return pictures.astype(jnp.float32), y


def run(model, data, loop, **kwargs):
    settings = dict(loss_fn=CE, epochs=3, batch_size=BATCH, key=jax.random.key(4), progress=False)
    return train.fit(model, OPT, data, loop=loop, **settings, **kwargs)


@pytest.mark.parametrize(
    "model, data",
    [(CNN, images(10)), (nn.serial(nn.dense(8), nn.tanh, nn.dense(3)), blobs(10, 50))],
    ids=["cnn", "mlp"],
)
def test_step_by_step_epochs_take_the_scanned_epochs_steps(model, data):
    held_out = data[0][:20], data[1][:20]
    scan = run(model, data, "scan", eval_data=held_out)
    step = run(model, data, "step", eval_data=held_out)
    assert (scan.loop, step.loop) == ("scan", "step")
    for a, b in zip(leaves(scan.state), leaves(step.state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in scan.history:
        np.testing.assert_allclose(scan.history[name], step.history[name], rtol=1e-5, atol=1e-6)


def test_step_by_step_resume_is_bit_identical():
    data = images(10)
    whole = run(CNN, data, "step")
    half = train.fit(
        CNN, OPT, data, loss_fn=CE, epochs=1, batch_size=BATCH,
        key=jax.random.key(4), progress=False, loop="step",
    )  # fmt: skip
    rest = train.fit(
        CNN, OPT, data, loss_fn=CE, epochs=3, batch_size=BATCH,
        state=half.state, progress=False, loop="step",
    )  # fmt: skip
    for a, b in zip(leaves(whole.state), leaves(rest.state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_step_by_step_ensemble_equals_its_members_alone():
    data = images(10)
    settings = dict(loss_fn=CE, epochs=2, batch_size=BATCH, progress=False, loop="step")
    ensemble = train.fit_ensemble(CNN, OPT, data, members=2, key=jax.random.key(1), **settings)
    assert ensemble.loop == "step"
    for k, key in enumerate(jax.random.split(jax.random.key(1), 2)):
        alone = train.fit(CNN, OPT, data, key=key, **settings)
        member = jax.tree.map(lambda leaf, k=k: leaf[k], ensemble.state.params)
        for a, b in zip(leaves(member), leaves(alone.state.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_step_by_step_stops_at_a_non_finite_step_with_the_last_good_state():
    from tests.train.test_train_nonfinite import LOSS, batch_of_bad_row, poisoned

    data = images(10)
    settings = dict(loss_fn=LOSS, batch_size=BATCH, progress=False, loop="step")
    first = train.fit(CNN, OPT, data, epochs=1, key=jax.random.key(0), **settings)
    bad_batch = batch_of_bad_row(first.state)
    with pytest.raises(train.NonFiniteLossError) as err:
        train.fit(CNN, OPT, poisoned(data), epochs=3, state=first.state, **settings)
    assert (err.value.epoch, err.value.batch) == (1, bad_batch)
    assert int(err.value.state.step) == 4 + bad_batch
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves(err.value.state.params))


def test_auto_takes_steps_for_convolutions_on_the_cpu_and_scans_otherwise():
    settings = dict(loss_fn=CE, epochs=0, batch_size=BATCH, key=jax.random.key(0), progress=False)
    expected = "step" if jax.default_backend() == "cpu" else "scan"
    assert train.fit(CNN, optim.sgd(0.1), images(10), **settings).loop == expected
    mlp = nn.serial(nn.dense(8), nn.relu, nn.dense(3))
    assert train.fit(mlp, optim.sgd(0.1), blobs(10, 50), **settings).loop == "scan"
    with pytest.raises(ValueError, match="loop must be one of"):
        train.fit(mlp, optim.sgd(0.1), blobs(10, 50), loop="python", **settings)
