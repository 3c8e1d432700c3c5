"""The cost of each of `funcnet.diff.batch_quantities`' quantities next to one gradient.

Two models on the 8×8 digits, float32, jitted: the digits MLP (64 → 128 → 64 → 10, ReLU,
batch 128) and a small CNN (conv 8 k3, ReLU, conv 16 k3 stride 2, ReLU, flatten, dense 10 on
8×8×1 images, batch 64), both with `softmax_cross_entropy`. Each row times one jitted call of
`batch_quantities` asking for that quantity alone (``diag_ggn_mc`` with one sample), and
``all`` every quantity at once, against one jitted `jax.value_and_grad` of the mean loss on
the same batch; the repeats of a model's contenders are interleaved (one of each per round)
and the medians compared. The models are ReLU nets, so ``diag_hessian`` is the GGN's
diagonal (read off the jaxpr) and costs what ``diag_ggn`` costs.

BackPACK is not in funcnet's environment, so no PyTorch column: the ratios to one gradient
are the figures (BackPACK's paper reports its own as ratios to a gradient too).

Run ``python -m benchmarks.bench_quantities`` (``--quick`` for a smoke run of a few
milliseconds per figure on the MLP at batch 8: the gradient, ``diag_ggn`` and ``all``); it
prints a Markdown table and returns the rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import jax
import jax.numpy as jnp

import funcnet
import funcnet.nn as nn
from benchmarks.timing import measure_interleaved, run_calls
from funcnet.losses import softmax_cross_entropy

QUANTITIES = funcnet.diff.QUANTITIES
QUICK = ("diag_ggn",)  # with "gradient" and "all": what --quick times


def models(quick: bool) -> dict[str, tuple[nn.Layer, tuple[int, ...], int]]:
    """name -> (model, one example's input shape, batch size); the MLP alone when quick."""
    found = {
        "digits MLP": (
            nn.serial(nn.dense(128), nn.relu, nn.dense(64), nn.relu, nn.dense(10)),
            (64,),
            8 if quick else 128,
        ),
        "CNN": (
            nn.serial(
                nn.conv(8, 3),
                nn.relu,
                nn.conv(16, 3, strides=2),
                nn.relu,
                nn.flatten(),
                nn.dense(10),
            ),
            (8, 8, 1),
            64,
        ),
    }
    return {"digits MLP": found["digits MLP"]} if quick else found


def contenders(
    model: nn.Layer, shape: tuple[int, ...], batch: int, quantities: tuple[str, ...]
) -> tuple[dict, dict]:
    """The params, and name -> jitted function of params returning what it computes."""
    split = funcnet.data.digits(images=len(shape) == 3)
    x = jnp.asarray(split.x_train[:batch], jnp.float32).reshape(batch, *shape)
    y = jnp.asarray(split.y_train[:batch])
    _, params, state = model.init(jax.random.key(0), (1, *shape))
    f = lambda p, xb: model.apply(p, state, xb)[0]
    loss = lambda o: softmax_cross_entropy(o, y)
    key = jax.random.key(1)

    def asking(quantities) -> Callable:
        return jax.jit(
            lambda p: funcnet.diff.batch_quantities(
                f, p, x, loss_of_outputs=loss, quantities=quantities, key=key
            )
        )

    runs = {"gradient": jax.jit(jax.value_and_grad(lambda p: loss(f(p, x))))}
    runs |= {q: asking(q) for q in quantities}
    runs["all"] = asking(QUANTITIES)
    return params, runs


def _repeated(fn: Callable, params) -> Callable[[int], None]:
    """`n -> None`: `fn(params)` called `n` times, every result waited for."""
    return lambda n: run_calls(lambda: fn(params) for _ in range(n))


def run(quick: bool = False, log=print) -> list[dict]:
    rows = []
    for name, (model, shape, batch) in models(quick).items():
        params, runs = contenders(model, shape, batch, QUICK if quick else QUANTITIES)
        calls = {k: _repeated(fn, params) for k, fn in runs.items()}
        timings = measure_interleaved(
            calls, repeats=1 if quick else 7, min_time=0.001 if quick else 0.2
        )
        base = timings["gradient"].median
        for contender, timing in timings.items():
            rows.append(
                {
                    "model": name,
                    "batch": batch,
                    "quantity": contender,
                    "ms": 1e3 * timing.median,
                    "ratio": timing.median / base,
                }
            )
        log(f"{name}: done")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| model | batch | quantity | ms | × gradient |", "|---|---:|---|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['quantity']} | {r['ms']:.3f} | {r['ratio']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny batches")
    args = parser.parse_args(argv)
    rows = run(args.quick, log=lambda *_: None)
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
