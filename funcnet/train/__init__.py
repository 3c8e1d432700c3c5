"""Training: the train state, compiled steps, the scan-fused `fit` loop and ensembles.

A `TrainState` is a pytree (params, model state, optimizer state, step, key). `make_step`
jits one step of training, donating the state; `fit` runs each epoch as one compiled
`lax.scan` over contiguous slices of the shuffled data, evaluates held-out data, stops early
and keeps the best state; `fit_ensemble` trains K models at once under `vmap` over seeds and
hyperparameters.
"""

from funcnet.train._batching import (
    EpochBatches,
    batch_plan,
    epoch_batches,
    num_batches,
    shuffle,
)
from funcnet.train._epoch import UNCHECKED, EpochOutput, epoch_fn, select
from funcnet.train._fit import (
    FitResult,
    NonFiniteLossError,
    build_optimizer,
    fit,
    fit_ensemble,
    steps_per_epoch,
)
from funcnet.train._sharding import data_mesh, local_copy, process_share
from funcnet.train._state import TrainState, init_train_state, shuffle_key, step_key
from funcnet.train._step import eval_step, make_eval, make_step, train_step

__all__ = [
    "UNCHECKED",
    "EpochBatches",
    "EpochOutput",
    "FitResult",
    "NonFiniteLossError",
    "TrainState",
    "batch_plan",
    "build_optimizer",
    "data_mesh",
    "epoch_batches",
    "epoch_fn",
    "eval_step",
    "fit",
    "fit_ensemble",
    "init_train_state",
    "local_copy",
    "make_eval",
    "make_step",
    "num_batches",
    "process_share",
    "select",
    "shuffle",
    "shuffle_key",
    "step_key",
    "steps_per_epoch",
    "train_step",
]
