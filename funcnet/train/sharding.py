"""Data parallelism on JAX's own sharding: a ``data`` mesh axis, replicated state.

With a mesh, `fit` places the train state replicated on every device (``P()``) and asks the
compiled epoch to lay each minibatch's rows out over the mesh's ``data`` axis
(``P("data")``). XLA then partitions the step: each device runs the model on its rows, and
the gradient of the batch-mean loss, ``g = (1/B) Σ_d Σ_{i ∈ rows(d)} ∇ℓ_i``, is summed across
devices by an all-reduce it inserts itself. The result is the single-device step up to the
order of floating-point additions.

Across processes (after `funcnet.launch.initialize`) the mesh spans every process's devices,
and each process passes `fit` its own shard of the data: equal row counts, which
`jax.make_array_from_process_local_data` joins into one global array along the example axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet._keys import is_key
from funcnet._trees import leading_size

__all__ = [
    "data_mesh",
    "local_copy",
    "process_share",
]

DATA_AXIS = "data"
PyTree = Any


def data_mesh(devices: int | Sequence[jax.Device] | None = None) -> Mesh:
    """A one-axis mesh named ``"data"`` over `devices`.

    `devices`: None for every device of every process, an int for the first that many
    devices, or a list of devices.
    """
    everything = jax.devices()
    if devices is None:
        chosen = everything
    elif isinstance(devices, int):
        if not 1 <= devices <= len(everything):
            raise ValueError(f"data_mesh: asked for {devices} devices, {len(everything)} exist")
        chosen = everything[:devices]
    else:
        chosen = list(devices) if isinstance(devices, list | tuple) else []
        if not chosen or not all(isinstance(d, jax.Device) for d in chosen):
            raise TypeError(
                f"data_mesh: devices must be None, a number of devices or a list of jax devices, "
                f"got {devices!r:.60}"
            )
    return Mesh(np.array(chosen), (DATA_AXIS,))


def check_mesh(mesh: Mesh, batch_size: int | None) -> None:
    """Refuses a mesh without a ``data`` axis, or a batch its devices cannot share evenly
    (`batch_size` None: no batch to check)."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh needs an axis named {DATA_AXIS!r}, got axes {mesh.axis_names}")
    count = mesh.shape[DATA_AXIS]
    if batch_size is not None and batch_size % count:
        raise ValueError(
            f"the global batch size {batch_size} does not divide by the {count} devices of the "
            f"mesh's {DATA_AXIS!r} axis; use a multiple of {count}"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows over the ``data`` axis: the layout of every minibatch leaf."""
    return NamedSharding(mesh, P(DATA_AXIS))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
    """A stack of minibatches, ``(steps, batch, ...)``: each batch's rows over ``data``."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every leaf of `tree` copied whole onto every device of `mesh`.

    In a multi-process run each process must pass the same values (as it does for a state
    initialised from the same key).
    """
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    return _map_arrays(
        lambda array: jax.make_array_from_process_local_data(sharding, np.asarray(array)), tree
    )


def place_data(data: PyTree, mesh: Mesh) -> PyTree:
    """A data set ``(x, y)`` on the mesh.

    In one process the whole set is replicated; each minibatch is then split over the devices
    inside the compiled epoch. Across processes `data` is this process's shard, and the shards
    are joined along the example axis into global arrays laid out over the ``data`` axis.
    """
    if jax.process_count() == 1:
        return replicate(tuple(data), mesh)
    leading_size(data, what="this process's x and y")
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda leaf: jax.make_array_from_process_local_data(sharding, np.asarray(leaf)),
        tuple(data),
    )


def local_copy(tree: PyTree) -> PyTree:
    """A tree on a mesh (such as `fit`'s result) as plain single-device arrays.

    A replicated leaf is copied from this process's devices; a sharded one is gathered
    whole (across processes too, an all-gather every process must join), so each process
    gets the same copy, ready for evaluation or saving outside the mesh. Typed PRNG keys
    stay typed keys.
    """

    def whole(array):
        if isinstance(array, jax.Array) and not array.is_fully_addressable:
            array = multihost_utils.process_allgather(array, tiled=True)
        return jax.device_put(np.asarray(array))

    return _map_arrays(whole, tree)


def _map_arrays(fn, tree: PyTree) -> PyTree:
    """`fn` on every leaf's array; a typed PRNG key goes through as its key data (which
    numpy and the process-local constructors accept) and comes back a key of its kind."""

    def apply(leaf):
        if is_key(leaf):
            data = fn(jax.random.key_data(leaf))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return fn(leaf)

    return jax.tree.map(apply, tree)


def process_share(data: PyTree) -> PyTree:
    """This process's equal share of a data set's rows: the `process_index`-th of
    `process_count` contiguous blocks (the last ``n mod process_count`` rows are left out).
    In one process, the whole set."""
    rank, count = jax.process_index(), jax.process_count()
    if count == 1:
        return data
    share = leading_size(data, what="process_share: the leaves of data") // count
    return jax.tree.map(lambda leaf: leaf[rank * share : (rank + 1) * share], data)
