"""Data-parallel training of the digits MLP, over devices and over processes.

The same `fit` call trains on one device, on several devices of one machine, or on several
processes: only the `mesh` changes. Each minibatch's rows are split over the mesh's ``data``
axis and XLA averages the gradients; the result equals single-device training up to float
round-off.

    python examples/data_parallel.py                                  # every local device
    XLA_FLAGS=--xla_force_host_platform_device_count=8 \\
        python examples/data_parallel.py                              # 8 CPU "devices"
    python -m funcnet.launch -n 2 -- python examples/data_parallel.py --distributed
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import funcnet as fn
from funcnet.launch import initialize, is_leader


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distributed", action="store_true", help="join a multi-process run")
    parser.add_argument("--devices", type=int, default=None, help="use the first N devices")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--out", default=None, help="write checkpoint.npz here (process 0)")
    args = parser.parse_args(argv)
    if args.distributed:
        initialize()  # before anything touches JAX's devices

    split = fn.data.digits()
    rank, count = jax.process_index(), jax.process_count()
    rows = len(split.x_train) // count  # each process loads its own equal share
    local = slice(rank * rows, (rank + 1) * rows)
    train_data = (np.asarray(split.x_train[local]), np.asarray(split.y_train[local]))

    mesh = fn.train.data_mesh(args.devices)
    model = fn.nn.serial(fn.nn.dense(256), fn.nn.relu, fn.nn.dense(10))
    started = time.perf_counter()
    result = fn.train.fit(
        model,
        fn.optim.adam(1e-3),
        train_data,
        loss_fn=fn.losses.softmax_cross_entropy,
        epochs=args.epochs,
        batch_size=args.batch_size,
        key=jax.random.key(0),
        mesh=mesh,
        progress=is_leader(),
    )
    seconds = time.perf_counter() - started

    params = jax.tree.map(np.asarray, result.state.params)  # replicated: every process has it
    logits, _ = model.apply(params, {}, split.x_test)
    accuracy = float(fn.losses.accuracy(logits, split.y_test))
    if args.out:
        fn.checkpoint.save(f"{args.out}/checkpoint.npz", params)  # process 0 writes
    if is_leader():
        print(
            f"{count} process(es), {mesh.shape['data']} device(s) on the data axis: "
            f"test accuracy {accuracy:.4f}, {args.epochs} epochs in {seconds:.1f} s"
        )
    if args.distributed:
        jax.distributed.shutdown()
    return accuracy


if __name__ == "__main__":
    main()
