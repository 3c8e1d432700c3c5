"""One process of the two-process FSDP test (started by `funcnet.launch`, 4 devices each).

Trains an MLP with its params and Adam's moments cut over the 8 devices of both processes,
saves the state as a sharded checkpoint (``sharded/``, each process its shards), gathers the
final params whole and writes them to ``params_<id>.npz``.
"""

import sys

import jax
import numpy as np

import funcnet as fn
from funcnet import nn

SETTINGS = {
    "loss_fn": fn.losses.softmax_cross_entropy,
    "epochs": 1,
    "batch_size": 32,
}  # and key=jax.random.key(0), made after `initialize`


def model():
    return nn.serial(nn.dense(64), nn.relu, nn.dense(16))


def data(n=160):
    """5 steps of 32 rows of the digits."""
    split = fn.data.digits()
    return np.asarray(split.x_train[:n]), np.asarray(split.y_train[:n])


if __name__ == "__main__":
    from funcnet.launch import initialize

    initialize()
    out = sys.argv[1]
    rank, count = jax.process_index(), jax.process_count()
    assert jax.device_count() == 8, jax.devices()
    x, y = data()
    rows = len(x) // count
    local = (x[rank * rows : (rank + 1) * rows], y[rank * rows : (rank + 1) * rows])
    mesh = fn.train.model_mesh()
    result = fn.train.fit(
        model(),
        fn.optim.adam(1e-2),
        local,
        mesh=mesh,
        rules=fn.train.fsdp(),
        progress=False,
        key=jax.random.key(0),
        **SETTINGS,
    )
    w = result.state.params["dense_0"]["w"]  # (64, 64): the first of equal dimensions
    assert not w.is_fully_addressable and w.sharding.spec == jax.sharding.PartitionSpec("data")
    # Each process writes the shards its devices hold.
    fn.checkpoint.save_sharded(f"{out}/sharded", result.state, step=5)
    params = jax.tree.map(np.asarray, fn.train.local_copy(result.state.params))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
    np.savez(f"{out}/params_{rank}.npz", **flat)
    jax.distributed.shutdown()
