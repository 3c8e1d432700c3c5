"""`funcnet hessian`: the Hessian spectrum of a checkpoint's training loss."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.app.cli.common import (
    CommandError,
    best_of_member,
    check_memory,
    checkpoint_file,
    loss_for,
    non_negative_int,
    open_checkpoint,
    output_file,
    output_folder,
    positive_int,
    seed,
)


def add_parser(commands: Any) -> None:
    """Adds the ``hessian`` subcommand to `commands`."""
    p = commands.add_parser(
        "hessian",
        help="Hessian spectrum of a checkpoint: top eigenvalues, trace, density plot",
        description="Matrix-free Hessian of the training loss at a checkpoint's best params "
        "(funcnet.diff): top eigenvalues by Lanczos, trace by Hutchinson, and the eigenvalue "
        "density by stochastic Lanczos quadrature, drawn to hessian.png.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file of `funcnet train`")
    p.add_argument(
        "--top-k",
        type=positive_int,
        default=5,
        help="how many top eigenvalues (at most the model's parameter count)",
    )
    p.add_argument(
        "--iters",
        type=positive_int,
        default=80,
        help="Lanczos steps (raised to --top-k, lowered to the parameter count)",
    )
    p.add_argument("--probes", type=positive_int, default=4, help="probe vectors of the density")
    p.add_argument("--trace-samples", type=positive_int, default=50, help="Hutchinson probes")
    p.add_argument("--examples", type=positive_int, default=512, help="training examples")
    p.add_argument("--member", type=non_negative_int, default=0, help="ensemble member")
    p.add_argument("--seed", type=seed, default=0, help="seed of the random probes")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from funcnet import diff, nn
    from funcnet.app import plots

    checkpoint_file(args.checkpoint)
    out = pathlib.Path(args.checkpoint).parent if args.out is None else output_folder(args.out)
    for name in ("hessian.png", "hessian.json"):
        output_file(out / name, "--out")
    run, states = open_checkpoint(args.checkpoint)
    best = best_of_member(run, states, args.member)
    x, y = run.data.train
    x, y = x[: args.examples], y[: args.examples]
    n = nn.param_count(best.params)
    if args.top_k > n:
        raise CommandError(f"--top-k {args.top_k} is more than the model's {n:,} parameters")
    iters = min(max(args.iters, args.top_k), n)
    # The Lanczos basis: iters + 1 vectors of n float32 numbers, and as many again at once.
    check_memory(2 * 4 * (iters + 1) * n, f"{iters} Lanczos steps on {n:,} parameters")

    loss_fn = loss_for(run.metadata["config"].get("task", "classification"))

    def loss(params):
        outputs, _ = run.model.apply(params, best.model_state, x)
        return loss_fn(outputs, y)

    value = float(loss(best.params))
    if not np.isfinite(value):
        raise CommandError(
            f"the training loss at the checkpoint's params is {value}; its Hessian is undefined"
        )
    top_k = args.top_k
    keys = jax.random.split(jax.random.key(args.seed), 3)
    eigs = diff.hessian_eigs(loss, best.params, key=keys[0], k=top_k, num_iters=iters)
    trace = diff.hessian_trace(loss, best.params, key=keys[1], num_samples=args.trace_samples)
    density = diff.hessian_density(
        loss, best.params, key=keys[2], num_iters=iters, num_probes=args.probes
    )
    nodes = np.asarray(density.nodes)
    if not np.all(np.isfinite(nodes)):
        raise CommandError("the Hessian-vector products at the checkpoint's params overflow")
    pad = 0.05 * (nodes.max() - nodes.min() + 1e-12)
    grid = np.linspace(nodes.min() - pad, nodes.max() + pad, 600)
    phi = diff.density_on_grid(density, jnp.asarray(grid))

    eigenvalues = [float(v) for v in eigs.eigenvalues]
    out.mkdir(parents=True, exist_ok=True)
    figure = plots.plot_density(
        grid,
        phi,
        out / "hessian.png",
        eigenvalues=eigenvalues,
        title=f"Hessian density, {n} params, loss on {len(y)} training examples",
    )
    report = {
        "params": n,
        "examples": len(y),
        "top_eigenvalues": eigenvalues,
        "trace": float(trace.estimate),
        "trace_stderr": float(trace.stderr),
        "density": {"grid": grid.tolist(), "density": np.asarray(phi).tolist()},
    }
    (out / "hessian.json").write_text(json.dumps(report) + "\n")
    print(f"top {top_k} eigenvalues: " + ", ".join(f"{v:.4g}" for v in eigenvalues))
    print(f"trace ≈ {float(trace.estimate):.4g} ± {float(trace.stderr):.2g} (Hutchinson)")
    print(f"wrote {figure}, {out / 'hessian.json'}")
    return 0
