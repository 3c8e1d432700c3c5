"""Where a training step's time goes: funcnet's step with one piece added at a time.

    python -m benchmarks.bench_breakdown            # the small MLP
    python -m benchmarks.bench_breakdown --medium   # the medium MLP

Every row runs `funcnet.train.train_step` on the same batches from the same weights; the
rows differ in one piece each, so the difference to ``make_step`` is that piece's cost:

- ``make_step``: the default step (donated state, loss and accuracy, no key drawn for a
  model that draws none);
- ``+ key split``: the state's key split every step and carried, as a step that hands its
  key on must (XLA cannot drop it, because the new key is an output);
- ``+ grad_norm``: ``‖g‖₂`` reported every step;
- ``+ weights``: every batch given per-example weights (all 1), the weighted-mean path;
- ``- donation``: the same jit without donating the state.

The hand-written step (`benchmarks.trainers.raw_jax`) is the baseline. The table also
counts the kernels (fusions and library calls) of each compiled step, and times the two
ways of drawing an epoch's shuffle of the rows of one epoch. Contenders are interleaved
round by round and the median is reported, so a busy machine slows all alike.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import jax
import jax.numpy as jnp

from benchmarks import trainers, workload

ROUNDS = 7


def _kernels(jitted, *args) -> int:
    """The number of kernels (fusions and library calls) XLA runs for one call."""
    hlo = jitted.lower(*args).compile().as_text()
    entry = hlo[hlo.rindex("ENTRY") :]
    return len(re.findall(r"= \S+ (?:fusion|custom-call|dot|convolution|sort|gather)\(", entry))


def step_rows(mlp: workload.MLP, steps: int) -> dict[str, dict]:
    """µs per step and kernel counts of each variant, and of the hand-written step."""
    train, model, loss_fn, optimizer = trainers.funcnet_setup(mlp)
    weights, data = workload.initial_weights(mlp), workload.batches(mlp)
    xs = [jnp.asarray(x) for x in data.x]
    ys = [jnp.asarray(y) for y in data.y]
    ones = jnp.ones((mlp.batch,), jnp.float32)
    pure = train.train_step(model, optimizer, loss_fn=loss_fn)
    norm = train.train_step(model, optimizer, loss_fn=loss_fn, grad_norm=True)

    def split_key(state, batch):
        key, _ = jax.random.split(state.key)
        new, values = pure(state, batch)
        return new._replace(key=key), values

    variants = {
        "make_step": (jax.jit(pure, donate_argnums=0), False),
        "+ key split": (jax.jit(split_key, donate_argnums=0), False),
        "+ grad_norm": (jax.jit(norm, donate_argnums=0), False),
        "+ weights": (jax.jit(pure, donate_argnums=0), True),
        "- donation": (jax.jit(pure), False),
    }
    runs, rows = {}, {}
    for name, (step, weighted) in variants.items():
        state = [trainers.funcnet_state(mlp, weights, optimizer)]

        def batch(i, weighted=weighted):
            return (xs[i % 8], ys[i % 8], ones) if weighted else (xs[i % 8], ys[i % 8])

        def run(n, step=step, state=state, batch=batch):
            for i in range(n):
                state[0], _ = step(state[0], batch(i))
            jax.block_until_ready(state[0])

        runs[name] = run
        fresh = trainers.funcnet_state(mlp, weights, optimizer)
        rows[name] = {"kernels": _kernels(step, fresh, batch(0))}
    raw_step, raw_carry = trainers._raw_step(weights)
    raw = jax.jit(raw_step, donate_argnums=0)
    rows["hand-written"] = {"kernels": _kernels(raw, raw_carry, xs[0], ys[0])}
    runs["hand-written"] = trainers.raw_jax(mlp, weights, data).run
    _interleave(runs, rows, steps)
    return rows


def _interleave(runs: dict, rows: dict, units: int, per_unit: int = 1) -> None:
    for run in runs.values():
        run(max(units // 10, 1))  # compile and warm up
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(ROUNDS):
        for name, run in runs.items():
            start = time.perf_counter()
            run(units)
            samples[name].append((time.perf_counter() - start) / units / per_unit * 1e6)
    for name, values in samples.items():
        rows.setdefault(name, {})["us"] = statistics.median(values)


def shuffle_rows(n: int) -> dict[str, dict]:
    """ms to draw the order of `n` rows: `jax.random.permutation` and `funcnet.train.shuffle`."""
    from funcnet import train

    key = jax.random.key(0)
    ways = {
        "jax.random.permutation": jax.jit(lambda k: jax.random.permutation(k, n)),
        "funcnet.train.shuffle": jax.jit(lambda k: train.shuffle(k, n)),
    }
    runs = {
        name: (lambda count, f=f: [f(key).block_until_ready() for _ in range(count)])
        for name, f in ways.items()
    }
    rows: dict[str, dict] = {}
    _interleave(runs, rows, 10)
    return {name: {"ms": row["us"] / 1e3} for name, row in rows.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--medium", action="store_true", help="the medium MLP")
    args = parser.parse_args(argv)
    mlp = workload.MEDIUM if args.medium else workload.SMALL
    rows = step_rows(mlp, 20 if args.medium else 500)
    base = rows["hand-written"]["us"]
    print(f"{mlp.label}: µs per step, median of {ROUNDS} interleaved rounds")
    print("| variant | µs/step | × hand-written | kernels |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['us']:.1f} | {row['us'] / base:.2f}× | {row['kernels']} |")
    n = 500 * workload.SMALL.batch
    print(f"\nshuffle of {n:,} rows, ms (median of {ROUNDS} rounds)")
    for name, row in shuffle_rows(n).items():
        print(f"| {name} | {row['ms']:.2f} |")


if __name__ == "__main__":
    main()
