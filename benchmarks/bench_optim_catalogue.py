"""The cost of one step of each optimizer of optax's catalogue, relative to Adam's.

One step is ``opt.update(g, state, params)`` followed by ``apply_updates``, under one
`jax.jit`, on a float32 tree of 1,000,640 params (two dense layers, 784 → 1024 → 192, with
biases) and a fixed gradient; the loss, its gradient and the forward pass are left out, so the
figure is the optimizer's own work. Each optimizer is timed in turns with `fo.adam(1e-3)`
(`benchmarks.timing.measure_interleaved`), and the ratio of the two medians is reported.

The params and state are donated, as `funcnet.train`'s step donates them. `polyak_sgd`,
`lbfgs` and `sam` get the extra args `value`, `grad` and `value_fn` of the quadratic ``½‖x − x*‖²``,
whose gradient replaces the fixed one for them; its Hessian is the identity, so L-BFGS's line
search accepts its first trial and the figure is the direction plus one value-and-gradient of
that cheap function (on a network each trial costs a forward and backward pass more; so does
SAM's second gradient).

    python -m benchmarks.bench_optim_catalogue            # 15 repeats of about 0.1 s
    python -m benchmarks.bench_optim_catalogue --smoke    # one short repeat
    python -m benchmarks.bench_optim_catalogue --only lookahead schedule_free_sgd
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import funcnet.optim as fo
from benchmarks.timing import measure_interleaved

SHAPES = {"w1": (784, 1024), "b1": (1024,), "w2": (1024, 192), "b2": (192,)}


def optimizers() -> dict[str, fo.GradientTransformation]:
    key = jax.random.key(0)
    return {
        "adabelief": fo.adabelief(1e-3),
        "adafactor": fo.adafactor(1e-3),
        "adan": fo.adan(1e-3, weight_decay=1e-2),
        "amsgrad": fo.amsgrad(1e-3),
        "fromage": fo.fromage(1e-2),
        "lamb": fo.lamb(1e-3, weight_decay=1e-2),
        "lars": fo.lars(1e-1, weight_decay=1e-4),
        "lbfgs": fo.lbfgs(),
        "noisy_sgd": fo.noisy_sgd(1e-2, key=key),
        "novograd": fo.novograd(1e-3),
        "optimistic_gradient_descent": fo.optimistic_gradient_descent(1e-2),
        "polyak_sgd": fo.polyak_sgd(),
        "radam": fo.radam(1e-3),
        "rprop": fo.rprop(1e-2),
        "sm3": fo.sm3(1e-2),
        "yogi": fo.yogi(1e-3),
        # optax's contrib level (lookahead around Adam).
        "lookahead": fo.lookahead(fo.adam(1e-3), 5, 0.5),
        "schedule_free_sgd": fo.schedule_free_sgd(1e-2),
        "schedule_free_adamw": fo.schedule_free_adamw(),
        "muon": fo.muon(0.02),
        "prodigy": fo.prodigy(),
        "sam": fo.sam(fo.adam(1e-3)),
    }


def stepper(opt, params, grads, target):
    """`run(n)`: n more jitted steps of `opt`, the params and state donated (as the training
    step donates them) and carried from one call to the next; blocks at the end."""

    def value_fn(p):
        squares = jax.tree.map(lambda a, b: jnp.sum((a - b) ** 2), p, target)
        return 0.5 * sum(jax.tree.leaves(squares))

    def step(params, state):
        if fo.accepts_extra_args(opt):
            # The line search needs the gradient of the function it searches.
            value, g = jax.value_and_grad(value_fn)(params)
            extra = {"value": value, "grad": g, "value_fn": value_fn}
            updates, state = opt.update(g, state, params, **extra)
        else:
            updates, state = opt.update(grads, state, params)
        return fo.apply_updates(params, updates), state

    return donated_loop(step, params, opt.init(params))


def donated_loop(step, params, state, *args):
    """`run(n)`: n more calls of ``step(params, state, *args) -> (params, state)``, jitted with
    params and state donated and carried from one call to the next (starting from copies of
    those given); blocks at the end and returns the params."""
    step = jax.jit(step, donate_argnums=(0, 1))
    carry = [jax.tree.map(jnp.copy, params), state]

    def run(n: int):
        for _ in range(n):
            carry[:] = step(*carry, *args)
        return jax.block_until_ready(carry[0])

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short repeat")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="time these optimizers only")
    args = parser.parse_args()
    repeats, min_time = (1, 0.01) if args.smoke else (15, 0.1)
    rng = np.random.default_rng(0)
    params, grads, target = (
        {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in SHAPES.items()}
        for _ in range(3)
    )
    print(f"{sum(x.size for x in jax.tree.leaves(params)):,} params, {jax.devices()[0]}")
    adam = stepper(fo.adam(1e-3), params, grads, target)
    print(f"{'optimizer':<30} {'ms/step':>8} {'adam ms':>8} {'× adam':>7}")
    for name, opt in optimizers().items():
        if args.only and name not in args.only:
            continue
        times = measure_interleaved(
            {"adam": adam, name: stepper(opt, params, grads, target)},
            repeats=repeats,
            min_time=min_time,
        )
        ours, base = times[name].median, times["adam"].median
        print(f"{name:<30} {ours * 1e3:8.3f} {base * 1e3:8.3f} {ours / base:7.2f}")


if __name__ == "__main__":
    main()
