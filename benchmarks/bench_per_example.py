"""Section 4: per-example gradients of the small MLP, three ways, for batch sizes 1 to 256.

- ``vmap``: `funcnet.diff.per_example_grads`, one jitted ``vmap(grad)`` over the batch;
- ``loop``: a Python loop calling a jitted single-example gradient once per example;
- ``batched``: one jitted gradient of the mean loss over the batch (not per example: the
  reference cost of one backward pass over the same data).

Times are per whole batch; the ratios are to ``batched`` on the same batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

import funcnet
from benchmarks import workload
from benchmarks.settings import Settings
from benchmarks.timing import measure, run_calls


def gradient_fns(mlp: workload.MLP):
    """``(example_loss, batch_loss)`` of the MLP: one example's loss, and a batch's mean loss."""
    model = workload.funcnet_model(mlp)
    loss = funcnet.losses.softmax_cross_entropy

    def batch_loss(params, batch):
        x, y = batch
        logits, _ = model.apply(params, {}, x)
        return loss(logits, y)

    def example_loss(params, example):
        x, y = example
        return batch_loss(params, (x[None], y[None]))

    return example_loss, batch_loss


def run(settings: Settings, log=print) -> dict:
    """Times the three ways at each batch size of `settings.per_example_batches`."""
    mlp = settings.mlps["small"]
    params = workload.funcnet_params(mlp, workload.initial_weights(mlp))
    example_loss, batch_loss = gradient_fns(mlp)
    per_example = jax.jit(lambda p, b: funcnet.diff.per_example_grads(example_loss, p, b))
    one_example = jax.jit(jax.grad(example_loss))
    batched = jax.jit(jax.grad(batch_loss))
    rows = []
    for size in settings.per_example_batches:
        data = workload.batches(mlp._replace(batch=size), count=1)
        x, y = jnp.asarray(data.x[0]), jnp.asarray(data.y[0])
        examples = [(x[i], y[i]) for i in range(size)]

        def vmapped(n, x=x, y=y):
            run_calls(functools.partial(per_example, params, (x, y)) for _ in range(n))

        def looped(n, examples=examples):
            run_calls(functools.partial(one_example, params, e) for _ in range(n) for e in examples)

        def whole(n, x=x, y=y):
            run_calls(functools.partial(batched, params, (x, y)) for _ in range(n))

        row = {"batch": size}
        for name, fn in (("vmap", vmapped), ("loop", looped), ("batched", whole)):
            timing = measure(fn, repeats=settings.repeats, min_time=settings.min_time)
            row[f"{name}_us"] = timing.median * 1e6
        row["vmap_ratio"] = row["vmap_us"] / row["batched_us"]
        row["loop_ratio"] = row["loop_us"] / row["batched_us"]
        rows.append(row)
        log(
            f"  per-example batch {size:4d}: vmap {row['vmap_us']:.1f} µs, loop "
            f"{row['loop_us']:.1f} µs, batched {row['batched_us']:.1f} µs"
        )
    return {"mlp": mlp.label, "rows": rows}
