"""Training resumed from a checkpoint repeats the uninterrupted run bit for bit."""

import jax
import numpy as np

from funcnet import checkpoint, losses, train


def test_resume_from_a_checkpoint_equals_uninterrupted_training(tmp_path, data, model, optimizer):
    kwargs = dict(
        loss_fn=losses.softmax_cross_entropy, batch_size=16, eval_data=data[1], progress=False
    )

    def save_every_epoch(epoch, state, metrics):
        checkpoint.save(tmp_path / f"epoch-{epoch}.npz", state, metadata={"epoch": epoch})

    full = train.fit(
        model,
        optimizer,
        data[0],
        epochs=4,
        key=jax.random.key(3),
        on_epoch_end=save_every_epoch,
        **kwargs,
    )
    template = train.init_train_state(model, optimizer, jax.random.key(99), (16, 3))
    restored = checkpoint.load(tmp_path / "epoch-1.npz", like=template)
    assert checkpoint.metadata(tmp_path / "epoch-1.npz") == {"epoch": 1}
    assert isinstance(restored, train.TrainState)

    resumed = train.fit(model, optimizer, data[0], epochs=4, state=restored, **kwargs)
    assert resumed.history["epoch"] == [2, 3]
    for name in ("loss", "val_loss", "val_accuracy"):
        assert resumed.history[name] == full.history[name][2:]
    for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(full.state), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
