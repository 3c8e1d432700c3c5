"""The `funcnet` command: train, evaluate and inspect small models from the shell.

    funcnet train --dataset digits --out runs/digits        # checkpoint, metrics, curves
    funcnet eval --checkpoint runs/digits/checkpoint.npz    # loss and accuracy on a split
    funcnet hessian --checkpoint runs/digits/checkpoint.npz --top-k 5
    funcnet bench --smoke                                    # the benchmark suite

``funcnet COMMAND --help`` lists each command's options. A checkpoint written by ``train``
stores the whole configuration (data set, architecture, optimizer) in its metadata, so
``eval`` and ``hessian`` rebuild the model from the file alone.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

DATASETS = ("digits", "moons", "spirals", "xor")
OPTIMIZERS = (
    "sgd",
    "momentum",
    "nesterov",
    "adam",
    "adamw",
    "nadam",
    "adamax",
    "rmsprop",
    "adagrad",
    "adadelta",
    "lion",
)
SCHEDULES = ("constant", "cosine", "warmup-cosine")
CHECKPOINT, METRICS, CURVES = "checkpoint.npz", "metrics.json", "curves.png"


class CommandError(Exception):
    """A problem with the command's input, reported without a traceback."""


# Data.


class Data(NamedTuple):
    """The splits of a data set, each ``(x, y)`` (``val`` may be None), and its class count."""

    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array] | None
    test: tuple[jax.Array, jax.Array]
    classes: int


def _split_off(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """``(rest, part)``: a random `fraction` of the rows split off, None if that is no rows."""
    n_part = round(fraction * len(y))
    if n_part == 0:
        return (x, y), None
    if n_part >= len(y):
        raise CommandError(f"a split fraction of {fraction} leaves no examples to train on")
    order = np.random.default_rng(seed).permutation(len(y))
    rest, part = order[n_part:], order[:n_part]
    return (x[rest], y[rest]), (x[part], y[part])


def load_data(name: str, *, val_fraction: float, seed: int = 0, images: bool = False) -> Data:
    """A data set's train / validation / test splits, fixed by `seed`.

    ``digits``: scikit-learn's 8×8 digits, 20% test (stratified), shape ``(n, 64)`` or
    ``(n, 8, 8, 1)`` with `images`. ``moons`` (1,000 points, noise 0.2) and ``spirals``
    (1,500 points, 3 arms): 20% test. ``xor``: the four points, also its own test set. The
    validation split is `val_fraction` of the training split.
    """
    from funcnet import data

    if images and name != "digits":
        raise CommandError(f"the cnn needs images; the {name} data set has 2-D points")
    if name == "digits":
        split = data.digits(seed=seed, images=images)
        x_train, y_train = np.asarray(split.x_train), np.asarray(split.y_train)
        test = (np.asarray(split.x_test), np.asarray(split.y_test))
        classes = 10
    elif name == "xor":
        x, y = (np.asarray(a) for a in data.xor())
        x_train, y_train, test, classes = x, y, (x, y), 2
        val_fraction = 0.0
    elif name in ("moons", "spirals"):
        key = jax.random.key(seed)
        if name == "moons":
            x, y = data.moons(key, n=1000, noise=0.2)
            classes = 2
        else:
            x, y = data.spirals(key, n=1500, classes=3)
            classes = 3
        (x_train, y_train), test = _split_off(np.asarray(x), np.asarray(y), 0.2, seed)
    else:
        raise CommandError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    train, val = _split_off(x_train, y_train, val_fraction, seed + 1)

    def device(pair):
        return None if pair is None else (jnp.asarray(pair[0]), jnp.asarray(pair[1], jnp.int32))

    return Data(device(train), device(val), device(test), classes)


# Optimizers.


def make_optimizer(config: dict[str, Any]):
    """The optimizer a configuration names, learning-rate schedule included.

    `config`: ``name`` (one of `OPTIMIZERS`), ``learning_rate``, ``schedule`` (``constant``,
    ``cosine`` to 0 over ``total_steps``, or ``warmup-cosine`` with one epoch,
    ``warmup_steps``, of linear warm-up), and optional ``weight_decay`` and ``momentum``.
    """
    from funcnet import optim

    name, lr = config["name"], config["learning_rate"]
    if name not in OPTIMIZERS:
        raise CommandError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    total, warmup = config.get("total_steps", 1), config.get("warmup_steps", 0)
    schedule = config.get("schedule", "constant")
    if schedule == "constant":
        rate = lr
    elif schedule == "cosine":
        rate = optim.cosine_decay_schedule(lr, max(total, 1))
    elif schedule == "warmup-cosine":
        rate = optim.warmup_cosine_decay_schedule(0.0, lr, min(warmup, total - 1), max(total, 1))
    else:
        raise CommandError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    factory = getattr(optim, name)
    accepted = inspect.signature(factory).parameters
    kwargs = {}
    if config.get("weight_decay") is not None:
        if "weight_decay" not in accepted:
            raise CommandError(f"the {name} optimizer takes no weight decay")
        kwargs["weight_decay"] = config["weight_decay"]
    if config.get("momentum") is not None:
        slot = "momentum" if "momentum" in accepted else "beta" if "beta" in accepted else None
        if slot is None:
            raise CommandError(f"the {name} optimizer takes no momentum")
        kwargs[slot] = config["momentum"]
    return factory(rate, **kwargs)


def build(model_config: dict[str, Any], optimizer_config: dict[str, Any]):
    """The model and the optimizer of two configurations (see `funcnet.app.models.build` and
    `make_optimizer`)."""
    from funcnet.app import models

    return models.build(model_config), make_optimizer(optimizer_config)


# Checkpoints written by `train`.


class Run(NamedTuple):
    """What a checkpoint's metadata rebuilds: the data, model, optimizer and a template."""

    metadata: dict[str, Any]
    data: Data
    model: Any
    optimizer: Any
    template: Any


def rebuild(metadata: dict[str, Any]) -> Run:
    """The data, model, optimizer and the checkpoint's tree shapes from `train`'s metadata."""
    from funcnet import train

    try:
        config, model_config = metadata["config"], metadata["model"]
        opt_config = metadata["optimizer"]
    except KeyError as err:
        raise CommandError(
            f"the checkpoint's metadata has no {err}; was it written by `funcnet train`?"
        ) from err
    data = load_data(
        config["dataset"],
        val_fraction=config["val_fraction"],
        seed=config["data_seed"],
        images=model_config["name"] == "cnn",
    )
    model, optimizer = build(model_config, opt_config)
    optimizer = train.build_optimizer(
        optimizer,
        clip_norm=config.get("clip_norm"),
        on_nonfinite=config.get("on_nonfinite", "raise"),
    )
    in_shape = tuple(metadata["in_shape"])
    members = metadata.get("members", 1)

    def init(key):
        return train.init_train_state(model, optimizer, key, in_shape)

    if members > 1:
        one = jax.eval_shape(jax.vmap(init), jax.random.split(jax.random.key(0), members))
    else:
        one = jax.eval_shape(init, jax.random.key(0))
    return Run(metadata, data, model, optimizer, {"best": one, "last": one})


def open_checkpoint(path: str | pathlib.Path) -> tuple[Run, dict[str, Any]]:
    """`rebuild`'s run and the checkpoint's ``{"best", "last"}`` train states."""
    from funcnet import checkpoint

    path = pathlib.Path(path)
    if not path.exists():
        raise CommandError(f"no checkpoint at {path}")
    run = rebuild(checkpoint.metadata(path))
    return run, checkpoint.load(path, like=run.template)


def _evaluate(model, state, data, members: int) -> dict[str, float]:
    """Loss and accuracy of a state on ``(x, y)``; for an ensemble, each member's and the
    accuracy of the members' mean predicted probabilities."""
    from funcnet import losses, train

    evaluate = train.make_evaluate(model, loss_fn=losses.softmax_cross_entropy, batch_size=1024)
    if members == 1:
        return {k: float(v) for k, v in evaluate(state.params, state.model_state, data).items()}
    per_member = jax.vmap(evaluate, in_axes=(0, 0, None))(state.params, state.model_state, data)

    @jax.jit
    def mean_probabilities(params, model_state, x):
        logits = jax.vmap(lambda p, s: model.apply(p, s, x)[0])(params, model_state)
        return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)

    probs = mean_probabilities(state.params, state.model_state, data[0])
    result = {f"member_{k}": [float(v) for v in values] for k, values in per_member.items()}
    result["loss"] = float(np.mean(per_member["loss"]))
    result["accuracy"] = float(np.mean(per_member["accuracy"]))
    result["ensemble_accuracy"] = float(jnp.mean(jnp.argmax(probs, -1) == data[1]))
    return result


# Commands.


def _widths(text: str) -> list[int]:
    try:
        widths = [int(w) for w in text.split(",") if w.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected widths like 128,128, got {text!r}") from err
    if any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    return widths


def cmd_train(args: argparse.Namespace) -> int:
    from funcnet import __version__, checkpoint, losses, train
    from funcnet.app import plots
    from funcnet.launch import initialize, is_leader
    from funcnet.train.batching import num_batches

    if args.distributed:
        initialize()  # before anything touches JAX's devices
    leader = is_leader()
    started = time.perf_counter()
    cnn = args.model == "cnn"
    data = load_data(args.dataset, val_fraction=args.val_fraction, seed=args.data_seed, images=cnn)
    mesh = None
    if args.distributed or args.devices is not None:
        if args.members > 1:
            raise CommandError("--members > 1 does not combine with --distributed or --devices")
        try:
            mesh = train.data_mesh(args.devices)
        except ValueError as err:
            raise CommandError(str(err)) from err
        # Each process keeps its share of the rows; together they make the global set.
        data = data._replace(
            train=train.process_share(data.train),
            val=None if data.val is None else train.process_share(data.val),
        )
    model_config: dict[str, Any] = {
        "name": args.model,
        "hidden": args.hidden,
        "classes": data.classes,
        "activation": args.activation,
        "dropout": args.dropout,
        "batch_norm": args.batch_norm,
    }
    if cnn:
        model_config["channels"] = args.channels
    train_rows = len(data.train[1]) * jax.process_count()
    batch_size = min(args.batch_size, train_rows)
    steps = num_batches(train_rows, batch_size)
    opt_config = {
        "name": args.optimizer,
        "learning_rate": args.lr,
        "schedule": args.schedule,
        "weight_decay": args.weight_decay,
        "momentum": args.momentum,
    }
    if args.schedule != "constant":
        opt_config.update(total_steps=args.epochs * steps, warmup_steps=steps)
    model, optimizer = build(model_config, opt_config)
    config = {
        "dataset": args.dataset,
        "data_seed": args.data_seed,
        "val_fraction": args.val_fraction,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "seed": args.seed,
        "patience": args.patience,
        "clip_norm": args.clip_norm,
        "on_nonfinite": "skip" if args.skip_nonfinite else "raise",
        "members": args.members,
    }
    in_shape = [batch_size, *data.train[0].shape[1:]]
    metadata = {
        "funcnet_version": __version__,
        "config": config,
        "model": model_config,
        "optimizer": opt_config,
        "in_shape": in_shape,
        "members": args.members,
    }
    state = None
    if args.resume:
        run, states = open_checkpoint(args.resume)
        if (run.metadata["model"], run.metadata["in_shape"]) != (model_config, in_shape):
            raise CommandError(f"{args.resume} holds another model or data shape than asked")
        state = states["last"]
    if args.patience is not None and data.val is None:
        raise CommandError("--patience needs a validation split (--val-fraction > 0)")

    kwargs = dict(
        loss_fn=losses.softmax_cross_entropy,
        epochs=args.epochs,
        batch_size=batch_size,
        key=jax.random.key(args.seed),
        state=state,
        eval_data=data.val,
        patience=args.patience,
        clip_norm=args.clip_norm,
        on_nonfinite=config["on_nonfinite"],
        progress=leader and not args.quiet,
    )
    if args.members > 1:
        result = train.fit_ensemble(model, optimizer, data.train, members=args.members, **kwargs)
    elif mesh is not None:
        try:
            result = train.fit(model, optimizer, data.train, mesh=mesh, **kwargs)
        except ValueError as err:  # a batch the mesh cannot share evenly
            raise CommandError(str(err)) from err
        result = result._replace(
            state=train.local_copy(result.state), best=train.local_copy(result.best)
        )
    else:
        result = train.fit(model, optimizer, data.train, **kwargs)
    trained = time.perf_counter() - started

    test = _evaluate(model, result.best, data.test, args.members)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata["best_epoch"] = result.best_epoch
    metadata["test"] = test
    metadata["data_parallel"] = (
        None
        if mesh is None
        else {
            "devices": int(mesh.devices.size),
            "processes": jax.process_count(),
        }
    )
    checkpoint.save(
        out / CHECKPOINT, {"best": result.best, "last": result.state}, metadata=metadata
    )
    if not leader:  # process 0 writes the checkpoint, the report and the plot
        return 0
    report = {**metadata, "history": result.history, "seconds": round(trained, 2)}
    (out / METRICS).write_text(json.dumps(report, indent=1) + "\n")
    title = f"{args.model} on {args.dataset} ({args.optimizer}, lr {args.lr:g})"
    if args.members > 1:
        plots.plot_ensemble(result.history, out / CURVES, title=title)
    else:
        plots.plot_history(result.history, out / CURVES, title=title)

    where = ", ".join(str(out / name) for name in (CHECKPOINT, METRICS, CURVES))
    if args.members > 1:
        print(
            f"test accuracy {test['accuracy']:.4f} (mean of {args.members} members), "
            f"ensemble {test['ensemble_accuracy']:.4f}; trained in {trained:.1f} s"
        )
    else:
        epoch = "-" if result.best_epoch is None else result.best_epoch + 1
        print(
            f"test accuracy {test['accuracy']:.4f} (loss {test['loss']:.4f}) with the best "
            f"state, epoch {epoch} of {args.epochs}; trained in {trained:.1f} s"
        )
    print(f"wrote {where}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    run, states = open_checkpoint(args.checkpoint)
    data = getattr(run.data, args.split)
    if data is None:
        raise CommandError(f"this run has no {args.split} split")
    metrics = _evaluate(run.model, states["best"], data, run.metadata.get("members", 1))
    if args.json:
        print(json.dumps({"split": args.split, "examples": len(data[1]), **metrics}))
    else:
        print(
            f"{args.split}: {len(data[1])} examples, loss {metrics['loss']:.4f}, "
            f"accuracy {metrics['accuracy']:.4f}"
        )
    return 0


def cmd_hessian(args: argparse.Namespace) -> int:
    from funcnet import diff, losses, nn
    from funcnet.app import plots

    run, states = open_checkpoint(args.checkpoint)
    best = states["best"]
    members = run.metadata.get("members", 1)
    if members > 1:
        if not 0 <= args.member < members:
            raise CommandError(f"--member must lie in [0, {members}), got {args.member}")
        best = jax.tree.map(lambda leaf: leaf[args.member], best)
    x, y = run.data.train
    x, y = x[: args.examples], y[: args.examples]

    def loss(params):
        logits, _ = run.model.apply(params, best.model_state, x)
        return losses.softmax_cross_entropy(logits, y)

    n = nn.param_count(best.params)
    top_k = min(args.top_k, n)
    iters = min(args.iters, n)
    keys = jax.random.split(jax.random.key(args.seed), 3)
    eigs = diff.hessian_eigs(loss, best.params, key=keys[0], k=top_k, num_iters=iters)
    trace = diff.hessian_trace(loss, best.params, key=keys[1], num_samples=args.trace_samples)
    density = diff.hessian_density(
        loss, best.params, key=keys[2], num_iters=iters, num_probes=args.probes
    )
    nodes = np.asarray(density.nodes)
    pad = 0.05 * (nodes.max() - nodes.min() + 1e-12)
    grid = np.linspace(nodes.min() - pad, nodes.max() + pad, 600)
    phi = diff.density_on_grid(density, jnp.asarray(grid))

    eigenvalues = [float(v) for v in eigs.eigenvalues]
    out = pathlib.Path(args.out) if args.out else pathlib.Path(args.checkpoint).parent
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


def _benchmark_main():
    """`benchmarks.run.main` from the current folder or the source tree, or None."""
    candidates = [None, pathlib.Path(__file__).resolve().parents[1]]
    for root in candidates:
        if root is not None:
            if not (root / "benchmarks" / "run.py").exists():
                continue
            sys.path.insert(0, str(root))
        try:
            return importlib.import_module("benchmarks.run").main
        except ModuleNotFoundError as err:
            if err.name not in ("benchmarks", "benchmarks.run"):
                raise
        finally:
            if root is not None:
                sys.path.remove(str(root))
    return None


def cmd_bench(argv: list[str]) -> int:
    main = _benchmark_main()
    if main is None:
        print(
            "funcnet bench: the benchmark suite (benchmarks/run.py) is not available here; "
            "run it from a source checkout of funcnet that has the benchmarks/ folder.",
            file=sys.stderr,
        )
        return 2
    return int(main(argv[1:] if argv[:1] == ["--"] else argv) or 0)


# The parser.


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `funcnet` command and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="funcnet",
        description="Train, evaluate and inspect funcnet models.",
        epilog="Run `funcnet COMMAND --help` for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter

    p = commands.add_parser(
        "train",
        help="train a model; write checkpoint, metrics and learning curves",
        description=(
            "Train a classifier with funcnet.train.fit (each epoch one compiled lax.scan). "
            f"Writes {CHECKPOINT} (the best and the last train state, with the configuration "
            f"in its metadata), {METRICS} (configuration, per-epoch history, test metrics) and "
            f"{CURVES} (learning curves) to --out, and prints the test accuracy."
        ),
        formatter_class=formatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="data set")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="architecture")
    p.add_argument("--hidden", type=_widths, default=[1024], help="hidden widths, e.g. 128,128")
    p.add_argument("--channels", type=_widths, default=[16, 32], help="cnn: conv channels")
    p.add_argument("--activation", default="relu", help="activation (funcnet.nn ACTIVATIONS)")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate of hidden units")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each layer")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer")
    p.add_argument("--lr", type=float, default=1e-3, help="(peak) learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule")
    p.add_argument("--weight-decay", type=float, default=None, help="weight decay")
    p.add_argument(
        "--momentum", type=float, default=None, help="momentum (sgd, momentum, nesterov)"
    )
    p.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this norm")
    p.add_argument("--skip-nonfinite", action="store_true", help="skip non-finite steps")
    p.add_argument("--epochs", type=int, default=40, help="epochs in total")
    p.add_argument("--batch-size", type=int, default=64, help="examples per step")
    p.add_argument("--patience", type=int, default=None, help="early-stopping patience")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of train")
    p.add_argument("--members", type=int, default=1, help="train an ensemble of this many seeds")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffles")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the data splits")
    p.add_argument("--resume", default=None, help="continue the last state of this checkpoint")
    p.add_argument("--out", default="runs/latest", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--devices",
        type=int,
        default=None,
        help="train data parallel over the first N devices (the batch must divide by N)",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-process run (started by `python -m funcnet.launch -n N -- ...`, or "
        "with FUNCNET_COORDINATOR_ADDRESS, FUNCNET_NUM_PROCESSES, FUNCNET_PROCESS_ID set) and "
        "train data parallel over every process's devices",
    )
    p.set_defaults(run=cmd_train)

    p = commands.add_parser(
        "eval",
        help="evaluate a checkpoint's best state on a split",
        description="Rebuild the model of a `funcnet train` checkpoint and report loss and "
        "accuracy of its best state.",
        formatter_class=formatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file of `funcnet train`")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="split")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser(
        "hessian",
        help="Hessian spectrum of a checkpoint: top eigenvalues, trace, density plot",
        description="Matrix-free Hessian of the training loss at a checkpoint's best params "
        "(funcnet.diff): top eigenvalues by Lanczos, trace by Hutchinson, and the eigenvalue "
        "density by stochastic Lanczos quadrature, drawn to hessian.png.",
        formatter_class=formatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file of `funcnet train`")
    p.add_argument("--top-k", type=int, default=5, help="how many top eigenvalues")
    p.add_argument("--iters", type=int, default=80, help="Lanczos steps")
    p.add_argument("--probes", type=int, default=4, help="probe vectors of the density")
    p.add_argument("--trace-samples", type=int, default=50, help="Hutchinson probes")
    p.add_argument("--examples", type=int, default=512, help="training examples in the loss")
    p.add_argument("--member", type=int, default=0, help="ensemble member to inspect")
    p.add_argument("--seed", type=int, default=0, help="seed of the random probes")
    p.add_argument("--out", default=None, help="output folder (default: the checkpoint's)")
    p.set_defaults(run=cmd_hessian)

    p = commands.add_parser(
        "bench",
        help="run the benchmark suite (benchmarks/run.py)",
        description="Run the benchmark suite of a source checkout; the remaining arguments go "
        "to it (`funcnet bench -- --help` shows its own options).",
    )
    p.add_argument("args", nargs="*", help="arguments for the benchmark suite")
    p.set_defaults(run=lambda args: cmd_bench(args.args))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `funcnet` command with `argv` (default: the process's); returns the exit code."""
    from funcnet.checkpoint import CheckpointError
    from funcnet.train import NonFiniteLossError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        return cmd_bench(argv[1:])  # every argument after `bench` belongs to the suite
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (CommandError, CheckpointError) as err:
        print(f"funcnet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"funcnet {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
