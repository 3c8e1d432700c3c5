"""The cost of a Shampoo, a SOAP and a K-FAC step relative to Adam's, on a 256-wide MLP.

The model is a dense MLP 256 → 256 → 256 → 256 (ReLU, with biases: three 256 × 256 kernels,
197,376 params, float32), trained on a fixed batch of 128 with a squared error. Two figures
per optimizer, each the ratio of its median to Adam's, timed in turns with `fo.adam(1e-3)`
(`benchmarks.timing.measure_interleaved`):

- update: ``opt.update(g, state, params)`` and `apply_updates` alone, on a fixed gradient;
- step: the loss, its gradient and the update, the training step a user runs.

Both are jitted with the params and state donated, as `funcnet.train`'s step donates them.
K-FAC takes the extra args `funcnet.train.make_step` passes (the model's outputs and the loss
of outputs on the batch, a key), and samples its factors' targets from a Gaussian (the Fisher,
KFAC-MC: one backward pass; the exact GGN's factors would take one per output, 256 here), so
its update pays for that backward pass, its quadratic
model's two Gauss-Newton products and, every 5 steps, the loss at the new params (damping
adaptation), in both rows; its inverses are due every 20 steps.
Every repeat runs many steps (at least 0.5 s), so the eigendecompositions (Shampoo's inverse
roots, SOAP's QR refreshes), due every `precondition_frequency` = 10 steps, are counted at
their share of the steps, and SOAP's first call (its eigh) is left to the warm-up.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.bench_preconditioned   # 9 repeats of 0.5 s+
    python -m benchmarks.bench_preconditioned --smoke                  # one short repeat

On a CPU shared with other jobs, set OPENBLAS_NUM_THREADS=1: the eigendecompositions run in
OpenBLAS, whose own threads wait for each other by spinning, and under load that made the
steps with a refresh about ten times slower (measured on the 2-core machine of the docs).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import funcnet.optim as fo
from benchmarks.bench_optim_catalogue import donated_loop
from benchmarks.timing import measure_interleaved

WIDTH, DEPTH, BATCH = 256, 3, 128


def optimizers() -> dict[str, fo.GradientTransformation]:
    return {
        "shampoo": fo.shampoo(1e-3),
        "soap": fo.soap(),
        "kfac": fo.kfac(curvature="fisher", likelihood="gaussian"),
    }


def problem():
    """The MLP's params, a batch `(x, y)` and a fixed gradient, all float32."""
    rng = np.random.default_rng(0)
    params = {}
    for i in range(DEPTH):
        w = rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)
        params[f"dense_{i}"] = {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(WIDTH)}
    x, y = (jnp.asarray(rng.standard_normal((BATCH, WIDTH)), jnp.float32) for _ in range(2))
    grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    return params, (x, y), grads


def outputs(params, x):
    for i in range(DEPTH):
        layer = params[f"dense_{i}"]
        x = x @ layer["w"] + layer["b"]
        if i < DEPTH - 1:
            x = jax.nn.relu(x)
    return x


def loss(params, batch):
    x, y = batch
    return jnp.mean((outputs(params, x) - y) ** 2)


def extra_args(params, batch) -> dict:
    """What `funcnet.train.make_step` passes an optimizer that takes extra args."""
    x, y = batch
    value = loss(params, batch)
    return {
        "value": value,
        "value_fn": lambda p: loss(p, batch),
        "outputs_fn": lambda p: outputs(p, x),
        "loss_of_outputs": lambda out: jnp.mean((out - y) ** 2),
        "key": jax.random.key(0),
    }


def stepper(opt, params, batch, grads, *, train: bool):
    """`run(n)`: n more jitted steps of `opt`, params and state donated and carried from one
    call to the next; blocks at the end. With `train`, each step takes the gradient of the
    loss on the batch, else it applies the fixed gradient."""

    def step(params, state, batch, grads):
        g = jax.grad(loss)(params, batch) if train else grads
        extra = extra_args(params, batch) if fo.accepts_extra_args(opt) else {}
        updates, state = opt.update(g, state, params, **extra)
        return fo.apply_updates(params, updates), state

    # The batch and the gradient are arguments, not constants XLA would fold at compile time.
    return donated_loop(step, params, opt.init(params), batch, grads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short repeat")
    args = parser.parse_args()
    repeats, min_time = (1, 0.01) if args.smoke else (9, 0.5)
    params, batch, grads = problem()
    count = sum(x.size for x in jax.tree.leaves(params))
    print(f"{count:,} params, batch {BATCH}, {jax.devices()[0]}")
    print(f"{'optimizer':<10} {'what':<7} {'ms/step':>8} {'adam ms':>8} {'× adam':>7}")
    for train in (False, True):
        adam = stepper(fo.adam(1e-3), params, batch, grads, train=train)
        for name, opt in optimizers().items():
            ours = stepper(opt, params, batch, grads, train=train)
            times = measure_interleaved(
                {"adam": adam, name: ours}, repeats=repeats, min_time=min_time
            )
            mine, base = times[name].median, times["adam"].median
            what = "step" if train else "update"
            print(f"{name:<10} {what:<7} {mine * 1e3:8.3f} {base * 1e3:8.3f} {mine / base:7.2f}")


if __name__ == "__main__":
    main()
