"""`funcnet train`: train a model on a bundled data set or on the user's own file."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import signal
import sys
import time
from typing import Any

import jax
import numpy as np

from funcnet.app.cli.common import (
    CHECKPOINT,
    CURVES,
    DATASETS,
    EPOCHS,
    INT_LIMIT,
    METRICS,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    SHARDED_CHECKPOINT,
    CommandError,
    build,
    check_memory,
    checkpoint_file,
    checkpoint_metadata,
    deployed,
    evaluate_state,
    fraction,
    loss_for,
    loss_name,
    non_negative_float,
    non_negative_int,
    open_checkpoint,
    output_file,
    output_folder,
    positive_float,
    positive_int,
    run_data,
    seed,
    state_shapes,
    widths,
)


def add_parser(commands: Any) -> None:
    """Adds the ``train`` subcommand to `commands` (an argparse subparsers action)."""
    p = commands.add_parser(
        "train",
        help="train a model; write checkpoint, metrics and learning curves",
        description=(
            "Train a model with funcnet.train.fit (each epoch one compiled lax.scan) on a "
            "bundled data set (--dataset) or on a file of your own (--data). Writes "
            f"{CHECKPOINT} (the best and the last train state, with the configuration in its "
            "metadata; rewritten every --checkpoint-every epochs, so a run that crashes can be "
            f"resumed), {EPOCHS} (one line per epoch, as it ends), {METRICS} "
            f"(configuration, history, test metrics) and {CURVES} (learning curves) to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="bundled data set")
    p.add_argument(
        "--data",
        default=None,
        help="train on this file instead: .npz (x, y, optional x_test, y_test), .npy (x; "
        "labels in NAME_y.npy beside it) or .csv (a header row; the label column by --label); "
        "integer labels are classes, float labels a regression",
    )
    p.add_argument("--label", default=None, help="--data csv: the label column")
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp", help="architecture")
    p.add_argument("--hidden", type=widths, default=[1024], help="hidden widths, e.g. 128,128")
    p.add_argument("--channels", type=widths, default=[16, 32], help="cnn: conv channels")
    p.add_argument("--activation", default="relu", help="activation (funcnet.nn.ACTIVATIONS)")
    p.add_argument("--dropout", type=fraction, default=0.0, help="dropout rate of hidden units")
    p.add_argument("--batch-norm", action="store_true", help="batch norm after each layer")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adam", help="optimizer")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="(peak) learning rate")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="learning-rate schedule")
    p.add_argument("--weight-decay", type=non_negative_float, default=None, help="weight decay")
    p.add_argument(
        "--momentum", type=non_negative_float, default=None, help="momentum (sgd, nesterov, ...)"
    )
    p.add_argument("--clip-norm", type=positive_float, default=None, help="clip gradient norm")
    p.add_argument("--skip-nonfinite", action="store_true", help="skip non-finite steps")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="float32",
        help="compute dtype (funcnet.nn.mixed_precision; params stay float32); float16 trains "
        "with a dynamic loss scale",
    )
    p.add_argument(
        "--accumulate",
        type=positive_int,
        default=1,
        metavar="K",
        help="take each step's gradient over K micro-batches in turn (the batch must divide "
        "by K): the same update with 1/K of the activation memory",
    )
    p.add_argument(
        "--ema",
        type=fraction,
        default=None,
        metavar="DECAY",
        help="keep a moving average of the params with this decay (e.g. 0.999); held-out "
        "metrics, the best epoch and the test use the average",
    )
    p.add_argument("--epochs", type=non_negative_int, default=40, help="epochs in total")
    p.add_argument("--batch-size", type=positive_int, default=64, help="examples per step")
    p.add_argument("--patience", type=positive_int, default=None, help="early-stopping patience")
    p.add_argument("--val-fraction", type=fraction, default=0.1, help="validation share of train")
    p.add_argument("--members", type=positive_int, default=1, help="train an ensemble of seeds")
    p.add_argument("--seed", type=seed, default=0, help="seed of initialisation and shuffles")
    p.add_argument("--data-seed", type=seed, default=0, help="seed of the data splits")
    p.add_argument("--resume", default=None, help="continue the last state of this checkpoint")
    p.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=1,
        metavar="EPOCHS",
        help="write the checkpoint after every this many epochs, as well as at the end "
        "(0: at the end only)",
    )
    p.add_argument("--out", default="runs/latest", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--quiet", action="store_true", help="no model summary, no progress bar")
    p.add_argument(
        "--devices",
        type=positive_int,
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
    p.add_argument(
        "--fsdp",
        action="store_true",
        help="with --devices or --distributed: shard the params and optimizer state over the "
        "devices (FSDP, funcnet.train.fsdp) instead of copying them to each; checkpoints go "
        f"to --out/{SHARDED_CHECKPOINT}/, each process writing its own shards",
    )
    p.add_argument(
        "--tensor-parallel",
        type=positive_int,
        default=1,
        metavar="M",
        help="with --devices or --distributed: split each dense layer over groups of M devices "
        "(Megatron-style, funcnet.train.tensor_parallel), the batch over the rest; "
        "checkpoints as with --fsdp",
    )
    p.add_argument(
        "--init-timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="--distributed: seconds to wait for every process to join before giving up "
        "(None: FUNCNET_INIT_TIMEOUT, else 300)",
    )
    p.set_defaults(run=run)


def _check_out(args: argparse.Namespace) -> pathlib.Path:
    """--out as a folder the run's files can be written to; refused when it holds a run,
    unless told to replace or continue it."""
    out = output_folder(args.out)
    for name in (CHECKPOINT, METRICS, EPOCHS, CURVES):
        output_file(out / name)
    sharded = out / SHARDED_CHECKPOINT
    if sharded.exists() and not sharded.is_dir():
        raise CommandError(f"{sharded} is a file; a sharded run checkpoints to a folder there")
    names = (CHECKPOINT, SHARDED_CHECKPOINT, METRICS, EPOCHS)
    held = [name for name in names if (out / name).exists()]
    if held and not (args.overwrite or args.resume):
        checkpoint = out / (SHARDED_CHECKPOINT if SHARDED_CHECKPOINT in held else CHECKPOINT)
        raise CommandError(
            f"{out} already holds a run ({', '.join(held)}); pass --overwrite to replace it, "
            f"--resume {checkpoint} to continue it, or choose another --out"
        )
    return out


def _check_options(args: argparse.Namespace) -> None:
    """Refuses options that cannot go together, before any data is read."""
    from funcnet.nn import ACTIVATIONS

    if args.activation not in ACTIVATIONS:
        raise CommandError(
            f"unknown activation {args.activation!r}; choose from {', '.join(sorted(ACTIVATIONS))}"
        )
    if args.label is not None and not args.data:
        raise CommandError("--label names a column of a --data csv file; there is no --data")
    if args.model == "cnn" and args.data:
        raise CommandError("the cnn needs images; --data files hold feature vectors")
    if args.model == "cnn" and args.dataset != "digits":
        raise CommandError(f"the cnn needs images; the {args.dataset} data set has 2-D points")
    if args.resume is not None:
        checkpoint_metadata(checkpoint_file(args.resume, "--resume"))  # a checkpoint at all?
    if args.patience is not None and args.val_fraction == 0:
        raise CommandError("--patience needs a validation split (--val-fraction > 0)")
    if args.precision == "float16" and args.skip_nonfinite:
        raise CommandError(
            "--precision float16 trains with a loss scale, which skips non-finite steps "
            "itself; leave out --skip-nonfinite"
        )
    if args.members > 1 and (args.distributed or args.devices is not None):
        raise CommandError("--members > 1 does not combine with --distributed or --devices")
    if (args.fsdp or args.tensor_parallel > 1) and not (args.distributed or args.devices):
        flag = "--fsdp" if args.fsdp else "--tensor-parallel"
        raise CommandError(f"{flag} shards over devices; pass --devices N or --distributed too")


def _check_size(model: Any, in_shape: list[int], members: int, eval_rows: int) -> None:
    """Refuses a model that cannot fit in a device's memory. A lower bound on what a run
    needs: the params, gradients and two moments (float32), and the outputs of every layer,
    with their gradients on a training batch (``in_shape[0]`` rows), or on `eval_rows`
    examples at once for the test."""
    from funcnet import nn

    table = nn.summary(model, (1, *in_shape[1:]))
    paths = [row.path for row in table.rows]
    per_example = sum(
        math.prod(row.out_shape)
        for row in table.rows
        if row.path and not any(path.startswith(f"{row.path}/") for path in paths)
    )
    count = table.param_count * members
    rows = max(2 * in_shape[0], eval_rows)
    check_memory(
        4 * (4 * count + rows * per_example * members),
        f"a model of {count:,} parameters on batches of {in_shape[0]} ({eval_rows} for the test)",
    )


# The options that shape a train state, as a run's metadata records them: (part, key, flag).
_STATE_OPTIONS = (
    ("optimizer", "name", "--optimizer"),
    ("optimizer", "momentum", "--momentum"),
    ("optimizer", "weight_decay", "--weight-decay"),
    ("config", "clip_norm", "--clip-norm"),
    ("config", "on_nonfinite", "--skip-nonfinite"),
    ("config", "members", "--members"),
)


def _as_option(flag: str, value: Any) -> str:
    if flag == "--skip-nonfinite":
        return flag if value == "skip" else f"no {flag}"
    return f"no {flag}" if value is None else f"{flag} {value}"


def _check_resumable(path: str, stored: Any, expected: Any, old: dict, new: dict) -> None:
    """Refuses a checkpoint whose last state (`stored`) does not fit the state these options
    build (`expected`), naming the options of its run (`old`, metadata as `new`) that differ."""
    from funcnet._trees import differences

    lines = differences(expected, stored, source="the checkpoint")
    if not lines:
        return
    changed = [
        f"{_as_option(flag, old[part].get(key))} (asked: {_as_option(flag, new[part].get(key))})"
        for part, key, flag in _STATE_OPTIONS
        if old[part].get(key) != new[part].get(key)
    ]
    if changed:
        raise CommandError(
            f"{path} was trained with {', '.join(changed)}, so its train state does not fit "
            "these options; resume it with the options it was trained with"
        )
    raise CommandError(f"{path} holds a train state these options do not build: {lines[0]}")


def _resolved(data: str | None) -> str | None:
    """`--data` as absolute paths, so `eval` and `hessian` find it from any folder."""
    if data is None:
        return None
    return ",".join(str(pathlib.Path(part.strip()).resolve()) for part in data.split(","))


class _BestSoFar:
    """The best state so far and its epoch, chosen as `funcnet.train.fit` chooses them (the
    lowest held-out loss, each ensemble member on its own; the last state without held-out
    data), for the checkpoints written while training runs."""

    def __init__(self, state: Any):
        self.state, self.loss, self.epoch = state, None, None

    def update(self, epoch: int, state: Any, metrics: dict[str, Any]) -> None:
        from funcnet import train

        if "val_loss" in metrics:
            loss = np.asarray(metrics["val_loss"], float)
            self.loss = np.full_like(loss, np.inf) if self.loss is None else self.loss
            improved = loss < self.loss
            self.loss = np.where(improved, loss, self.loss)
        else:
            improved = np.ones(np.shape(metrics["loss"]), bool)
        if self.state is None:  # a new run: its first epoch is the best so far
            self.state = state
            self.epoch = epoch if improved.ndim == 0 else [epoch] * improved.size
        elif improved.ndim == 0:  # one model
            self.state = state if improved else self.state
            self.epoch = epoch if improved else self.epoch
        else:  # an ensemble: a leading member axis
            self.state = train.select(jax.numpy.asarray(improved), state, self.state)
            old = self.epoch or [None] * improved.size
            self.epoch = [epoch if up else e for up, e in zip(improved, old, strict=True)]


def _write_checkpoint(
    out: pathlib.Path, states: dict[str, Any], metadata: dict[str, Any], layout: str
) -> pathlib.Path:
    """Writes ``{"best", "last"}`` where `layout` says: ``"single"``, one file; ``"mesh"``,
    a replicated state gathered into one file (process 0 writes); ``"sharded"``, a new step
    of the sharded checkpoint folder, each process writing its own shards. Returns the path
    to resume from."""
    from funcnet import checkpoint, train

    out.mkdir(parents=True, exist_ok=True)
    if layout != "sharded":
        if layout == "mesh":
            states = train.local_copy(states)
        return checkpoint.save(out / CHECKPOINT, states, metadata=metadata)
    folder = out / SHARDED_CHECKPOINT
    steps = checkpoint.sharded_steps(folder)
    step = steps[-1] + 1 if steps else 0
    checkpoint.save_sharded(folder, states, step=step, metadata=metadata, keep=2)
    return folder


def _save_progress(
    out: pathlib.Path,
    metadata: dict[str, Any],
    best: _BestSoFar,
    state: Any,
    done: int,
    epochs: int,
    layout: str,
) -> None:
    """Writes the checkpoint of a run in progress (`_write_checkpoint`), and has a lost
    peer's message name it (`funcnet.launch.on_peer_failure`)."""
    from funcnet.launch import on_peer_failure

    progress = {"best_epoch": best.epoch, "progress": {"epoch": done, "of": epochs}}
    states = {"best": best.state, "last": state}
    path = _write_checkpoint(out, states, metadata | progress, layout)
    on_peer_failure(f"last checkpoint {path} (epoch {done} of {epochs}); continue with --resume")


def _drop_epochs_after(path: pathlib.Path, epochs: int) -> None:
    """Keeps the first `epochs` lines of a run's per-epoch metrics, those of the state a
    resumed run continues from; a run stopped after a checkpoint may have written more."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _epoch_of(line) < epochs]
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def _epoch_of(line: str) -> float:
    """The epoch of a line of per-epoch metrics; infinity for a line cut short by a crash."""
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return np.inf


def run(args: argparse.Namespace) -> int:
    from funcnet import __version__, nn, train
    from funcnet.app import plots
    from funcnet.launch import LaunchError, initialize, is_leader
    from funcnet.train.batching import num_batches
    from funcnet.train.loop import SignalStop

    if args.distributed:
        try:
            initialize(timeout=args.init_timeout)  # before anything touches JAX's devices
        except LaunchError as err:
            raise CommandError(str(err)) from err
    leader = is_leader()
    out = _check_out(args)
    _check_options(args)
    started = time.perf_counter()
    cnn = args.model == "cnn"
    config = {
        "dataset": None if args.data else args.dataset,
        "data": _resolved(args.data),
        "label": args.label,
        "data_seed": args.data_seed,
        "val_fraction": args.val_fraction,
    }
    data = run_data(config, images=cnn)
    mesh, rules = None, []
    if args.distributed or args.devices is not None:
        try:
            mesh = train.data_mesh(args.devices)
            if args.tensor_parallel > 1:
                devices = list(mesh.devices.flat)
                mesh = train.model_mesh(model=args.tensor_parallel, devices=devices)
        except ValueError as err:
            raise CommandError(str(err)) from err
        rules += [train.tensor_parallel()] if args.tensor_parallel > 1 else []
        rules += [train.fsdp()] if args.fsdp else []
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
    if args.precision != "float32":  # absent for float32, as in checkpoints that predate it
        model_config["precision"] = args.precision
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
    if args.epochs * steps > INT_LIMIT:
        raise CommandError(
            f"--epochs {args.epochs} of {steps} steps each make more steps than the step "
            f"counter (int32) holds, {INT_LIMIT}"
        )
    if args.schedule != "constant":
        opt_config.update(total_steps=args.epochs * steps, warmup_steps=steps)
    try:
        model, optimizer = build(model_config, opt_config)
    except ValueError as err:  # an unknown activation
        raise CommandError(str(err)) from err
    config |= {
        "task": data.task,
        "epochs": args.epochs,
        "batch_size": batch_size,
        "seed": args.seed,
        "patience": args.patience,
        "clip_norm": args.clip_norm,
        "on_nonfinite": "skip" if args.skip_nonfinite else "raise",
        "members": args.members,
        "accumulate": args.accumulate,
        "ema": args.ema,
        "loss_scale": "dynamic" if args.precision == "float16" else None,
        "fsdp": args.fsdp,
        "tensor_parallel": args.tensor_parallel,
    }
    if batch_size % args.accumulate:
        raise CommandError(
            f"--accumulate {args.accumulate} does not divide the batch of {batch_size} rows; "
            "choose a --batch-size that is a multiple of it"
        )
    in_shape = [batch_size, *data.train[0].shape[1:]]
    _check_size(model, in_shape, args.members, max(batch_size, min(len(data.test[1]), 1024)))
    metadata = {
        "funcnet_version": __version__,
        "config": config,
        "model": model_config,
        "optimizer": opt_config,
        "in_shape": in_shape,
        "members": args.members,
        "data_info": data.info,
    }
    if args.patience is not None and data.val is None:
        raise CommandError("--patience needs a validation split (--val-fraction > 0)")
    state = None
    layout = "sharded" if rules else "single" if mesh is None else "mesh"
    if args.resume:
        run_, states = open_checkpoint(
            args.resume,
            "--resume",
            layout=(lambda shapes: train.state_shardings(shapes, mesh, rules)) if rules else None,
        )
        if (run_.metadata["model"], run_.metadata["in_shape"]) != (model_config, in_shape):
            raise CommandError(
                f"{args.resume} holds another model, precision or data shape than asked"
            )
        if run_.metadata["config"].get("ema") != args.ema:
            raise CommandError(
                f"{args.resume} was trained with --ema {run_.metadata['config'].get('ema')}, "
                f"not {args.ema}; resume it with the same --ema"
            )
        expected = state_shapes(
            model,
            train.build_optimizer(
                optimizer, clip_norm=args.clip_norm, on_nonfinite=config["on_nonfinite"]
            ),
            config,
            in_shape,
            args.members,
        )
        _check_resumable(args.resume, states["last"], expected, run_.metadata, metadata)
        state = states["last"]
        if leader:
            _drop_epochs_after(out / EPOCHS, int(np.min(jax.device_get(state.step))) // steps)
    if leader and not args.quiet:
        print(nn.summary(model, tuple(in_shape)))

    epochs_file = None
    best = _BestSoFar(state)

    def on_epoch_end(epoch, state, metrics):
        nonlocal epochs_file
        best.update(epoch, state, metrics)
        every = args.checkpoint_every
        if every and (epoch + 1) % every == 0 and epoch + 1 < args.epochs:  # the end saves
            _save_progress(out, metadata, best, state, epoch + 1, args.epochs, layout)
        if not leader:
            return
        # Opened at the first epoch's end: every process has checked --out by then (the
        # epoch's collectives wait for all), so none finds this file and refuses.
        if epochs_file is None:
            out.mkdir(parents=True, exist_ok=True)
            epochs_file = (out / EPOCHS).open("a" if args.resume else "w")
        epochs_file.write(json.dumps({"epoch": epoch, **metrics}) + "\n")
        epochs_file.flush()

    interrupt = SignalStop(install=not args.distributed)
    kwargs = dict(
        loss_fn=loss_for(data.task),
        epochs=args.epochs,
        batch_size=batch_size,
        key=jax.random.key(args.seed),
        state=state,
        eval_data=data.val,
        patience=args.patience,
        clip_norm=args.clip_norm,
        on_nonfinite=config["on_nonfinite"],
        accumulate=args.accumulate,
        ema=args.ema,
        loss_scale=config["loss_scale"],
        progress=leader and not args.quiet,
        on_epoch_end=on_epoch_end,
        stop=interrupt,
    )
    # A first Ctrl-C or SIGTERM stops after the epoch in progress, to write a checkpoint to
    # resume from; a second stops at once. Not in a multi-process run: each process would
    # stop at its own epoch and the others would wait for it forever.
    with interrupt:
        try:
            if args.members > 1:
                result = train.fit_ensemble(
                    model, optimizer, data.train, members=args.members, **kwargs
                )
            elif mesh is not None:
                try:
                    result = train.fit(
                        model, optimizer, data.train, mesh=mesh, rules=rules or None, **kwargs
                    )
                except ValueError as err:  # a batch the mesh cannot share evenly
                    raise CommandError(str(err)) from err
                if not rules:  # a sharded state is saved as it lies
                    result = result._replace(
                        state=train.local_copy(result.state), best=train.local_copy(result.best)
                    )
            else:
                result = train.fit(model, optimizer, data.train, **kwargs)
        finally:
            if epochs_file is not None:
                epochs_file.close()
        if interrupt():
            done = int(jax.device_get(result.state.step).min()) // steps
            metadata["best_epoch"] = result.best_epoch
            metadata["interrupted"] = {
                "epoch": done,
                "signal": signal.Signals(interrupt.signum).name,
            }
            states = {"best": result.best, "last": result.state}
            saved = _write_checkpoint(out, states, metadata, layout if rules else "single")
            print(
                f"funcnet: interrupted at epoch {done} of {args.epochs}; checkpoint {saved}; "
                "continue with --resume",
                file=sys.stderr,
            )
            return interrupt.exit_code
    trained = time.perf_counter() - started

    states = {"best": result.best, "last": result.state}
    best_state = train.local_copy(result.best) if rules else result.best
    test = evaluate_state(model, deployed(best_state), data.test, args.members, task=data.task)
    metadata["best_epoch"] = result.best_epoch
    metadata["test"] = test
    metadata["data_parallel"] = (
        None
        if mesh is None
        else {"devices": int(mesh.devices.size), "processes": jax.process_count()}
    )
    saved = _write_checkpoint(out, states, metadata, layout if rules else "single")
    if not leader:  # process 0 writes the checkpoint, the report and the plot
        return 0
    report = {**metadata, "history": result.history, "seconds": round(trained, 2)}
    (out / METRICS).write_text(json.dumps(report, indent=1) + "\n")
    source = pathlib.Path(args.data).name if args.data else args.dataset
    title = f"{args.model} on {source} ({args.optimizer}, lr {args.lr:g})"
    loss = loss_name(data.task)
    if args.members > 1:
        plots.plot_ensemble(result.history, out / CURVES, title=title, loss_name=loss)
    else:
        plots.plot_history(result.history, out / CURVES, title=title, loss_name=loss)

    where = ", ".join(str(path) for path in (saved, *(out / n for n in (EPOCHS, METRICS, CURVES))))
    if data.task == "regression":
        print(f"test mean squared error {test['loss']:.4g}; trained in {trained:.1f} s")
    elif args.members > 1:
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
