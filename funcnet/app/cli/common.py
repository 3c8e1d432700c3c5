"""What the subcommands share: data sets, optimizers, checkpoints of `train`, and the
parser's argument types."""

from __future__ import annotations

import argparse
import inspect
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from funcnet.app.models import deployed

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
PRECISIONS = ("float32", "bfloat16", "float16")
CHECKPOINT, METRICS, CURVES = "checkpoint.npz", "metrics.json", "curves.png"
# A run with sharded params (--fsdp, --tensor-parallel) checkpoints to this folder instead:
# orbax's steps, one per checkpointed epoch, each process writing its own shards.
SHARDED_CHECKPOINT = "checkpoint"
EPOCHS = "metrics.jsonl"


class CommandError(Exception):
    """A problem with the command's input, reported without a traceback."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``funcnet CMD: error: ...``, exit 2.
    `subcommands` maps each subcommand's name to its parser (the command's, once built)."""

    subcommands: dict[str, argparse.ArgumentParser]

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(kind, text: str, test, wanted: str):
    try:
        value = kind(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from err
    if not test(value):
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


# Counts, sizes and step numbers are int32 in JAX: nothing larger can be an array's size.
INT_LIMIT = 2**31 - 1


def _count(text: str, test, wanted: str) -> int:
    value = _number(int, text, test, wanted)
    if value > INT_LIMIT:
        raise argparse.ArgumentTypeError(f"expected at most {INT_LIMIT}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _count(text, lambda v: v > 0, "a positive integer")


def non_negative_int(text: str) -> int:
    return _count(text, lambda v: v >= 0, "a non-negative integer")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: 0 < v < float("inf"), "a positive number")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: 0 <= v < float("inf"), "a non-negative number")


def fraction(text: str) -> float:
    return _number(float, text, lambda v: 0 <= v < 1, "a fraction in [0, 1)")


SEED_LIMIT = 2**32


def seed(text: str) -> int:
    """A seed: an integer in [0, 2³²), which both JAX's keys and numpy's generators take."""
    return _number(int, text, lambda v: 0 <= v < SEED_LIMIT, "a seed in [0, 2**32)")


def widths(text: str) -> list[int]:
    """``"128,128"`` as ``[128, 128]``; every width positive."""
    try:
        values = [int(w) for w in text.split(",") if w.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected widths like 128,128, got {text!r}") from err
    if not values or any(w < 1 for w in values):
        raise argparse.ArgumentTypeError(f"widths must be positive, got {text!r}")
    if any(w > INT_LIMIT for w in values):
        raise argparse.ArgumentTypeError(f"widths must be at most {INT_LIMIT}, got {text!r}")
    return values


# Paths: every one is checked before anything is computed.

# What `Figure.savefig` writes without anything beyond matplotlib (pgf needs a LaTeX install).
FIGURE_FORMATS = ("png", "pdf", "svg", "svgz", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def input_file(path: str, flag: str, *, what: str = "file") -> pathlib.Path:
    """`path`, refused with a `CommandError` unless it names a readable file."""
    if not path:
        raise CommandError(f"{flag} is empty; expected a {what}")
    file = pathlib.Path(path)
    if file.is_dir():
        raise CommandError(f"{flag} {path} is a folder; expected a {what}")
    if not file.exists():
        raise CommandError(f"{flag}: no {what} at {path}")
    if not os.access(file, os.R_OK):
        raise CommandError(f"{flag} {path} cannot be read")
    return file


def _check_creatable(path: pathlib.Path, flag: str) -> None:
    """Refuses a path whose nearest existing ancestor is a file or cannot be written in."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CommandError(f"{flag} {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise CommandError(f"{flag} {path}: cannot write in the folder {parent}")
            return


def output_folder(path: str, flag: str = "--out") -> pathlib.Path:
    """`path` as a folder to write into (created later, when needed), refused with a
    `CommandError` when it is a file, lies under a file, or cannot be written in."""
    if not path:
        raise CommandError(f"{flag} is empty; expected a folder")
    folder = pathlib.Path(path)
    if folder.exists():
        if not folder.is_dir():
            raise CommandError(f"{flag} {path} is a file; expected a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise CommandError(f"{flag} {path}: cannot write in this folder")
    else:
        _check_creatable(folder, flag)
    return folder


def output_file(path: str | pathlib.Path, flag: str = "--out", *, figure: bool = False):
    """`path` as a file to write (its folders created later), refused with a `CommandError`
    when it is a folder, lies under a file, cannot be written, or, for a `figure`, has an
    extension matplotlib cannot write (`FIGURE_FORMATS`)."""
    if not str(path):
        raise CommandError(f"{flag} is empty; expected a file name")
    file = pathlib.Path(path)
    if file.is_dir():
        raise CommandError(f"{flag} {file} is a folder; expected a file name")
    if figure:
        suffix = file.suffix[1:].lower()
        if suffix not in FIGURE_FORMATS:
            got = f"an extension .{suffix}" if suffix else "no extension"
            raise CommandError(
                f"{flag} {file} has {got}; a figure is written as one of "
                f"{', '.join('.' + s for s in FIGURE_FORMATS)}"
            )
    if file.exists():
        if not os.access(file, os.W_OK):
            raise CommandError(f"{flag} {file} cannot be overwritten")
    else:
        _check_creatable(file, flag)
    return file


# Memory.


def memory_bytes() -> int:
    """The memory one device offers: an accelerator's limit, else the machine's RAM."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed: float, what: str) -> None:
    """Refuses, with a `CommandError`, work that needs more than `memory_bytes`."""
    available = memory_bytes()
    if needed > available:
        raise CommandError(
            f"{what} needs at least {needed / 2**30:,.1f} GiB of memory, more than the "
            f"{available / 2**30:,.1f} GiB here"
        )


# Data.


class Data(NamedTuple):
    """The splits of a data set, each ``(x, y)`` (``val`` may be None); its class count (for
    regression, the number of targets); the task, ``"classification"`` or ``"regression"``;
    and, for a user's file, its description (see `funcnet.app.datafile`)."""

    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array] | None
    test: tuple[jax.Array, jax.Array]
    classes: int
    task: str = "classification"
    info: dict[str, Any] | None = None


def loss_for(task: str):
    """The training loss of a task: softmax cross-entropy for classes, MSE for regression."""
    from funcnet import losses

    return losses.mse if task == "regression" else losses.softmax_cross_entropy


def loss_name(task: str) -> str:
    """The name of `loss_for`'s loss, for figures."""
    return "mean squared error" if task == "regression" else "softmax cross-entropy"


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


def run_data(config: dict[str, Any], *, images: bool = False) -> Data:
    """The data of a `train` configuration: a user's file (``config["data"]``) or a bundled
    data set (``config["dataset"]``), split as the run split it."""
    if config.get("data"):
        if images:
            raise CommandError("the cnn needs images; --data files hold feature vectors")
        return load_file_data(
            config["data"],
            label=config.get("label"),
            val_fraction=config["val_fraction"],
            seed=config["data_seed"],
        )
    return load_data(
        config["dataset"],
        val_fraction=config["val_fraction"],
        seed=config["data_seed"],
        images=images,
    )


def load_file_data(path: str, *, label: str | None, val_fraction: float, seed: int) -> Data:
    """A user's data file (`funcnet.app.datafile.load_file`) as the command's `Data`: the
    features of each example flattened to one vector (`flat_features`), the input of the
    mlp, and a regression's targets as ``(n, k)``, the shape of the model's output."""
    from funcnet.app.datafile import DataFileError, load_file

    try:
        data, info = load_file(path, label=label, val_fraction=val_fraction, seed=seed)
    except DataFileError as err:
        raise CommandError(str(err)) from err

    def targets(pair):
        if pair is None:
            return None
        x, y = flat_features(pair[0]), pair[1]
        if data.task == "regression" and y.ndim == 1:
            y = y[:, None]
        return x, y

    return Data(
        targets(data.train),
        targets(data.val),
        targets(data.test),
        data.outputs,
        data.task,
        info,
    )


def flat_features(x: Any) -> Any:
    """Examples of shape ``(n, d₁, d₂, ...)`` as vectors ``(n, d₁·d₂·...)``: a data file's
    features as the mlp takes them (``(n, d)`` stays as it is)."""
    return x if x.ndim <= 2 else x.reshape(x.shape[0], -1)


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
        opt_config, in_shape = metadata["optimizer"], metadata["in_shape"]
    except KeyError as err:
        raise CommandError(
            f"the checkpoint's metadata has no {err}; was it written by `funcnet train`?"
        ) from err
    try:
        data = run_data(config, images=model_config.get("name") == "cnn")
        model, optimizer = build(model_config, opt_config)
        optimizer = train.build_optimizer(
            optimizer,
            clip_norm=config.get("clip_norm"),
            on_nonfinite=config.get("on_nonfinite", "raise"),
        )
        one = state_shapes(model, optimizer, config, in_shape, metadata.get("members", 1))
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CommandError(
            f"the checkpoint's metadata does not describe a run of `funcnet train` ({err})"
        ) from err
    return Run(metadata, data, model, optimizer, {"best": one, "last": one})


def state_shapes(model, optimizer, config: dict[str, Any], in_shape, members: int):
    """The shapes (`jax.eval_shape`) of the train state a run of `config` holds, with a
    leading member axis for an ensemble; `optimizer` as `funcnet.train.build_optimizer`
    wraps it."""
    from funcnet import train

    loss_scale = train.dynamic_loss_scale() if config.get("loss_scale") else None

    def init(key):
        return train.init_train_state(
            model, optimizer, key, tuple(in_shape), ema=config.get("ema"), loss_scale=loss_scale
        )

    if members > 1:
        return jax.eval_shape(jax.vmap(init), jax.random.split(jax.random.key(0), members))
    return jax.eval_shape(init, jax.random.key(0))


def is_sharded(path: pathlib.Path) -> bool:
    """Whether `path` is a folder of sharded checkpoint steps (`SHARDED_CHECKPOINT`)."""
    from funcnet import checkpoint

    return path.is_dir() and bool(checkpoint.sharded_steps(path))


def checkpoint_file(path: str, flag: str = "--checkpoint") -> pathlib.Path:
    """`path`, refused with a `CommandError` unless it names a readable checkpoint file or a
    folder of sharded checkpoint steps; a run's folder is refused with the name of the
    checkpoint in it."""
    file = pathlib.Path(path)
    if not path or not file.exists():
        raise CommandError(f"no checkpoint at {path}")
    if file.is_dir():
        if is_sharded(file):
            return file
        inside = [file / name for name in (CHECKPOINT, SHARDED_CHECKPOINT)]
        found = [str(p) for p in inside if p.is_file() or (p.is_dir() and is_sharded(p))]
        hint = f"; pass the checkpoint in it, {found[0]}" if found else ""
        raise CommandError(f"{flag} {path} is a folder, not a checkpoint file{hint}")
    return input_file(path, flag, what="checkpoint")


def checkpoint_metadata(file: pathlib.Path) -> dict[str, Any]:
    """The metadata of a checkpoint file or of the newest step of a sharded one."""
    from funcnet import checkpoint

    return checkpoint.sharded_metadata(file) if file.is_dir() else checkpoint.metadata(file)


def open_checkpoint(
    path: str, flag: str = "--checkpoint", *, layout: Any = None
) -> tuple[Run, dict[str, Any]]:
    """`rebuild`'s run and the checkpoint's ``{"best", "last"}`` train states. A sharded
    checkpoint is restored onto this process's first device, or with `layout` (a function
    of a train state's shapes giving its shardings) onto those shardings."""
    from funcnet import checkpoint

    file = checkpoint_file(path, flag)
    run = rebuild(checkpoint_metadata(file))
    if not file.is_dir():
        return run, checkpoint.load(file, like=run.template)
    like = run.template
    if layout is not None:
        like = {
            name: jax.tree.map(
                lambda leaf, sharding: jax.ShapeDtypeStruct(
                    leaf.shape, leaf.dtype, sharding=sharding
                ),
                shapes,
                layout(shapes),
            )
            for name, shapes in like.items()
        }
    return run, checkpoint.load_sharded(file, like=like)


def best_of_member(run: Run, states: dict[str, Any], member: int):
    """The checkpoint's best train state, of ensemble member `member` when the run trained
    several (``--member``), refused with a `CommandError` when out of range; its params are
    the ones the run deploys (`deployed`)."""
    best = states["best"]
    members = run.metadata.get("members", 1)
    if members > 1:
        if not 0 <= member < members:
            raise CommandError(f"--member must lie in [0, {members}), got {member}")
        best = jax.tree.map(lambda leaf: leaf[member], best)
    return deployed(best)


def evaluate_state(
    model, state, data, members: int, *, task: str = "classification"
) -> dict[str, float]:
    """Loss and accuracy of a state on ``(x, y)`` (for regression, the mean squared error as
    ``loss``); for an ensemble, each member's, and the accuracy of the members' mean predicted
    probabilities."""
    from funcnet import train

    evaluate = train.make_evaluate(model, loss_fn=loss_for(task), batch_size=1024)
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
    if task == "regression":
        return result
    result["accuracy"] = float(np.mean(per_member["accuracy"]))
    result["ensemble_accuracy"] = float(jnp.mean(jnp.argmax(probs, -1) == data[1]))
    return result
