"""Section 5: K small MLPs trained at once under `vmap` against K trained one after another.

Every member starts from its own initialisation (`funcnet.train.init_train_state` with its
own key) and trains on the same batches with Adam, as `funcnet.train.fit_ensemble` does.
Four ways, each after compilation:

- ``vmap_epoch``: `funcnet.train.fit_ensemble`, the scan-fused epoch under `vmap`: one
  compiled call trains all K members for an epoch;
- ``sequential_epoch``: `funcnet.train.fit` once per member, K runs one after another;
- ``vmap_step``: `funcnet.train.train_step` under `vmap`, jitted with the states donated, one
  call per step for all K;
- ``sequential_step``: `make_step` called once per member per step.

The figure is throughput: model-steps per second (K · steps / seconds).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks import trainers, workload
from benchmarks.settings import Settings
from benchmarks.timing import measure

METHODS = ("vmap_epoch", "sequential_epoch", "vmap_step", "sequential_step")


def _member_states(mlp: workload.MLP, optimizer, members: int):
    from funcnet.train import init_train_state

    model = workload.funcnet_model(mlp)
    keys = jax.random.split(jax.random.key(1), members)
    in_shape = (mlp.batch, mlp.sizes[0])
    return [init_train_state(model, optimizer, k, in_shape) for k in keys]


def _stack(states):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)


def runners(mlp: workload.MLP, members: int, epoch_steps: int) -> dict[str, trainers.Runner]:
    """The four ways of training `members` MLPs, each as a `Runner` of whole epochs or steps."""
    train, model, loss_fn, optimizer = trainers.funcnet_setup(mlp)
    data = workload.batches(mlp)
    train_data = trainers.epoch_data(mlp, data, epoch_steps)
    common = {"loss_fn": loss_fn, "batch_size": mlp.batch, "metrics": {}, "progress": False}
    step = train.make_step(model, optimizer, loss_fn=loss_fn, metrics={})
    one_step = train.train_step(model, optimizer, loss_fn=loss_fn, metrics={})
    all_steps = jax.jit(jax.vmap(one_step, in_axes=(0, None)), donate_argnums=0)
    batches = [(jnp.asarray(x), jnp.asarray(y)) for x, y in zip(data.x, data.y, strict=True)]

    states = _member_states(mlp, optimizer, members)
    held = {
        "vmap_epoch": _stack(states),
        "sequential_epoch": list(states),
        "vmap_step": _stack(states),
        "sequential_step": list(states),
    }
    epochs_done = {"vmap_epoch": 0, "sequential_epoch": 0}

    def vmap_epoch(n):
        epochs = epochs_done["vmap_epoch"] = epochs_done["vmap_epoch"] + n
        result = train.fit_ensemble(
            model,
            optimizer,
            train_data,
            epochs=epochs,
            members=members,
            state=held["vmap_epoch"],
            **common,
        )
        held["vmap_epoch"] = result.state
        return jax.block_until_ready(result.state)

    def sequential_epoch(n):
        epochs = epochs_done["sequential_epoch"] = epochs_done["sequential_epoch"] + n
        held["sequential_epoch"] = [
            train.fit(model, optimizer, train_data, epochs=epochs, state=s, **common).state
            for s in held["sequential_epoch"]
        ]
        return jax.block_until_ready(held["sequential_epoch"])

    def vmap_step(n):
        state = held["vmap_step"]
        for i in range(n):
            state, _ = all_steps(state, batches[i % len(batches)])
        held["vmap_step"] = state
        return jax.block_until_ready(state)

    def sequential_step(n):
        states = held["sequential_step"]
        for i in range(n):
            batch = batches[i % len(batches)]
            states = [step(s, batch)[0] for s in states]
        held["sequential_step"] = states
        return jax.block_until_ready(states)

    return {
        "vmap_epoch": trainers.Runner(vmap_epoch, epoch_steps),
        "sequential_epoch": trainers.Runner(sequential_epoch, epoch_steps),
        "vmap_step": trainers.Runner(vmap_step, 1),
        "sequential_step": trainers.Runner(sequential_step, 1),
    }


def run(settings: Settings, log=print) -> dict:
    """Model-steps per second of each way, for each ensemble size in `settings`."""
    mlp = settings.mlps["small"]
    rows = []
    for members in settings.ensemble_sizes:
        try:
            ways = runners(mlp, members, settings.ensemble_epoch_steps)
        except trainers.Unavailable as err:
            return {"mlp": mlp.label, "rows": [], "status": str(err)}
        row: dict = {"members": members}
        for name in METHODS:
            runner = ways[name]
            timing = measure(runner.run, repeats=settings.repeats, min_time=settings.min_time)
            row[f"{name}_model_steps_per_s"] = members * runner.steps_per_call / timing.median
        row["vmap_speedup_epoch"] = (
            row["vmap_epoch_model_steps_per_s"] / row["sequential_epoch_model_steps_per_s"]
        )
        row["vmap_speedup_step"] = (
            row["vmap_step_model_steps_per_s"] / row["sequential_step_model_steps_per_s"]
        )
        rows.append(row)
        log(
            f"  ensemble K={members:3d}: "
            + ", ".join(f"{m} {row[f'{m}_model_steps_per_s']:.0f}" for m in METHODS)
            + " model-steps/s"
        )
    return {"mlp": mlp.label, "epoch_steps": settings.ensemble_epoch_steps, "rows": rows}
