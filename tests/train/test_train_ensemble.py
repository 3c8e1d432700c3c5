"""`fit_ensemble`: K members under `vmap` equal K separate `fit` runs."""

import jax
import numpy as np
import pytest

from funcnet import losses, optim, train

LOSS = losses.softmax_cross_entropy
BATCH = 16


def assert_member_equals(ensemble, k, single, rtol=1e-5):
    member = jax.tree.map(lambda leaf: leaf[k], ensemble.params)
    for a, b in zip(jax.tree.leaves(member), jax.tree.leaves(single.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6)


def test_ensemble_over_seeds_and_learning_rates_equals_separate_runs(data, model):
    """Members differ in seed and learning rate, and stop early at their own epochs."""
    learning_rates = [0.003, 0.1]

    def make(learning_rate):
        return optim.sgd(learning_rate, momentum=0.9)

    kwargs = dict(
        loss_fn=LOSS, epochs=12, batch_size=BATCH, eval_data=data[1], patience=1, progress=False
    )
    result = train.fit_ensemble(
        model,
        make,
        data[0],
        hparams={"learning_rate": learning_rates},
        key=jax.random.key(5),
        **kwargs,
    )
    assert jax.tree.leaves(result.state.params)[0].shape[0] == 2
    assert len(result.history) == len(result.best_epoch) == 2
    keys = jax.random.split(jax.random.key(5), 2)
    for k, lr in enumerate(learning_rates):
        single = train.fit(model, make(lr), data[0], key=keys[k], **kwargs)
        assert result.history[k]["epoch"] == single.history["epoch"]
        assert result.best_epoch[k] == single.best_epoch
        for name in ("loss", "accuracy", "val_loss"):
            np.testing.assert_allclose(result.history[k][name], single.history[name], rtol=1e-5)
        assert_member_equals(result.best, k, single.best)
        assert_member_equals(result.state, k, single.state)
    lengths = [len(h["epoch"]) for h in result.history]
    assert lengths[0] != lengths[1] and min(lengths) < 12  # one member stopped early


def test_ensemble_refuses_an_ambiguous_member_count(data, model):
    with pytest.raises(ValueError, match="ambiguous"):
        train.fit_ensemble(
            model,
            lambda learning_rate: optim.sgd(learning_rate),
            data[0],
            loss_fn=LOSS,
            epochs=1,
            batch_size=BATCH,
            members=3,
            hparams={"learning_rate": [0.1, 0.2]},
            key=jax.random.key(0),
        )
