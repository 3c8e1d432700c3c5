"""One process of the two-process data-parallel test (started by `funcnet.launch`).

Trains the test model on this process's half of the training rows over a mesh spanning both
processes, then writes its final params to ``params_<id>.npz`` and asks `checkpoint.save`
for ``checkpoint_<id>.npz`` (which only process 0 may write).
"""

import sys

from funcnet.launch import initialize

initialize()

import jax  # noqa: E402
import numpy as np  # noqa: E402

import funcnet as fn  # noqa: E402
from tests.train.dp_common import SETTINGS, global_data, model  # noqa: E402

out = sys.argv[1]
rank, count = jax.process_index(), jax.process_count()
x, y = global_data()
rows = len(x) // count
local = (x[rank * rows : (rank + 1) * rows], y[rank * rows : (rank + 1) * rows])
result = fn.train.fit(
    model(), fn.optim.adam(1e-2), local, mesh=fn.train.data_mesh(), progress=False, **SETTINGS
)
params = jax.tree.map(np.asarray, result.state.params)
flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(params)}
np.savez(f"{out}/params_{rank}.npz", **flat)
fn.checkpoint.save(f"{out}/checkpoint_{rank}.npz", result.state.params)
jax.distributed.shutdown()
