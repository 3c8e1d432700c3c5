"""Training: the train state, compiled steps, the scan-fused `fit` loop and ensembles.

A `TrainState` is a pytree (params, model state, optimizer state, step, key). `make_step`
jits one step of training, donating the state; `fit` runs each epoch as one compiled
`lax.scan` over contiguous slices of the shuffled data, evaluates held-out data, stops early
and keeps the best state; `fit_ensemble` trains K models at once under `vmap` over seeds and
hyperparameters. Growing past one device's memory: `accumulate` micro-batches per step, a
moving average of the params (`ParamsEma`) and a dynamic loss scale for float16
(`DynamicLossScale`), both kept in the train state. Past one device: a `data_mesh` for data
parallelism, or a `model_mesh` with layout rules (`fsdp`, `tensor_parallel`, `by_path`) that
shard the params and optimizer state (`funcnet.train.partition`).
"""

from funcnet.train.batching import (
    EpochBatches,
    batch_plan,
    epoch_batches,
    shuffle,
    steps_per_epoch,
)
from funcnet.train.ema import ParamsEma, ema_decay, params_ema, update_ema
from funcnet.train.epoch import UNCHECKED, EpochOutput, epoch_fn, select
from funcnet.train.fit import (
    CompiledEpoch,
    EnsembleResult,
    EpochSettings,
    FitResult,
    build_optimizer,
    compile_epoch,
    fit,
    fit_ensemble,
)
from funcnet.train.loop import Members, NonFiniteLossError, run_loop
from funcnet.train.loss_scale import (
    DynamicLossScale,
    adjust,
    all_finite,
    dynamic_loss_scale,
    scale_loss,
    unscale_grads,
)
from funcnet.train.partition import (
    by_path,
    fsdp,
    model_mesh,
    param_specs,
    shard_state,
    state_shardings,
    tensor_parallel,
)
from funcnet.train.sharding import data_mesh, local_copy, process_share
from funcnet.train.state import TrainState, init_train_state, shuffle_key, step_key
from funcnet.train.step import eval_step, make_evaluate, make_step, optimizer_key, train_step

__all__ = [
    "UNCHECKED",
    "CompiledEpoch",
    "DynamicLossScale",
    "EnsembleResult",
    "EpochBatches",
    "EpochOutput",
    "EpochSettings",
    "FitResult",
    "Members",
    "NonFiniteLossError",
    "ParamsEma",
    "TrainState",
    "adjust",
    "all_finite",
    "batch_plan",
    "build_optimizer",
    "by_path",
    "compile_epoch",
    "data_mesh",
    "dynamic_loss_scale",
    "ema_decay",
    "epoch_batches",
    "epoch_fn",
    "eval_step",
    "fit",
    "fit_ensemble",
    "fsdp",
    "init_train_state",
    "local_copy",
    "make_evaluate",
    "make_step",
    "model_mesh",
    "optimizer_key",
    "param_specs",
    "params_ema",
    "process_share",
    "run_loop",
    "scale_loss",
    "select",
    "shard_state",
    "shuffle",
    "shuffle_key",
    "state_shardings",
    "step_key",
    "steps_per_epoch",
    "tensor_parallel",
    "train_step",
    "unscale_grads",
    "update_ema",
]
