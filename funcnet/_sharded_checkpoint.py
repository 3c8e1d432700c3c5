"""Sharded checkpoints: a pytree saved by orbax-checkpoint, every process writing its shards.

Layout
------
`directory` is one orbax ``CheckpointManager`` directory holding several steps, each a folder
named by its step number (``<directory>/1200``) with two orbax items:

- ``tree``: the arrays, saved by orbax's ``StandardSave`` (a TensorStore/OCDBT store; each
  process writes the shards it holds, so a tree sharded over a mesh of several hosts is
  never gathered on one). Orbax writes typed PRNG keys as their key data and records the
  implementation; dicts, NamedTuples, tuples, lists, None and empty containers are kept as
  its tree metadata (NamedTuples as dicts of their fields, tuples as lists).
- ``metadata``: the caller's JSON object, saved by orbax's ``JsonSave``.

On a local file system orbax writes a step into a temporary folder
(``<step>.orbax-checkpoint-tmp``) and renames it into place when every item and process is
done, so a writer killed midway leaves the previous steps whole and a temporary folder that
`sharded_steps` and `load_sharded` never see (the next save of that step replaces it).

Checks on load
--------------
Orbax itself refuses a requested shape that differs from the stored one (without naming the
leaf) and a tree whose leaves differ from the stored ones (in a multi-line listing), but it
casts a different dtype silently, restores nothing and no error for a None in the target where
an array is stored, and for a key ignores the target's shape. `load_sharded` therefore reads
the stored metadata first (shape and dtype per leaf, no array data) and compares it with the
target, raising a one-line `CheckpointError` that names the first leaf at fault.

Unlike the ``.npz`` format there is no checksum: TensorStore does not verify the chunks it
reads, so a flipped byte in a data file loads silently as a changed value (a truncated file
is an error). The data is trusted as the file system stores it.

Leaf paths are written as in the ``.npz`` format, ``opt_state/1/mu/dense_0/w``. Orbax names a
leaf by its path joined with ``.``; two paths that would share a name (``{"a.b": x}`` beside
``{"a": {"b": y}}``) are refused at save, since orbax would silently keep only one.
"""

from __future__ import annotations

import atexit
import os
import pathlib
import threading
from typing import Any

import jax
import numpy as np

from funcnet._checks import check_int
from funcnet._keys import is_key
from funcnet._trees import entry_name
from funcnet.checkpoint import (
    CheckpointError,
    _checked_metadata,
    _describe_leaf,
    _key_impl_name,
    _leaf_info,
    _leaf_paths,
)

PyTree = Any
PathLike = str | os.PathLike

_TREE = "tree"
_METADATA = "metadata"

# Managers of saves that may still be writing, by resolved directory: a later save to the same
# directory must go through the same manager, which waits for the previous write first.
_pending: dict[pathlib.Path, tuple[Any, int | None]] = {}
_pending_lock = threading.Lock()
_waits_at_exit = False


def _orbax() -> Any:
    """`orbax.checkpoint`, imported on first use: with TensorStore it would add about 0.4 s
    to every ``import funcnet``."""
    import orbax.checkpoint as ocp

    return ocp


def _handlers(ocp: Any) -> dict[str, Any]:
    return {_TREE: ocp.StandardCheckpointHandler(), _METADATA: ocp.JsonCheckpointHandler()}


# Saving.


def _check_savable(tree: PyTree) -> None:
    """Refuses, by path, a leaf that is not a jax or numpy array of numbers or keys, and
    paths that orbax's ``.``-joined names would merge."""
    paths, leaves = _leaf_paths(tree)
    for path, leaf in zip(paths, leaves, strict=True):
        if not isinstance(leaf, jax.Array | np.ndarray):
            raise TypeError(
                f"cannot save the leaf {path}, of type {type(leaf).__name__} ({leaf!r:.40}); "
                "sharded checkpoints hold jax and numpy arrays (typed PRNG keys included)"
            )
        _leaf_info(leaf, path)
    names: dict[str, str] = {}
    for path in paths:
        name = path.replace("/", ".")
        if name in names:
            raise ValueError(
                f"cannot save both {names[name]} and {path}: orbax names both {name!r}; "
                "rename the tree keys that contain '.'"
            )
        names[name] = path


def _finish(manager: Any) -> None:
    """Waits for the manager's write (raising its error, if any) and closes it."""
    try:
        manager.wait_until_finished()
    finally:
        manager.close()


def wait_sharded(directory: PathLike | None = None) -> None:
    """Waits until the saves that `save_sharded(..., wait=False)` started in this process
    into `directory` (into any directory if None) are complete, raising a write's error.

    Loading from a directory, or exiting Python, waits for its saves by itself.
    """
    with _pending_lock:
        if directory is None:
            managers = [manager for manager, _ in _pending.values()]
            _pending.clear()
        else:
            entry = _pending.pop(pathlib.Path(directory).resolve(), None)
            managers = [] if entry is None else [entry[0]]
    for manager in managers:
        _finish(manager)


def _wait_at_exit() -> None:
    """Has Python wait for the background saves when it exits, once registered.

    Through threading's exit hooks (as joblib's loky does), not `atexit`: they run before
    concurrent.futures stops its thread pools, which orbax's writes still need, and in
    reverse order, so this one, registered after concurrent.futures was imported (by orbax
    at the latest), runs before it.
    """
    global _waits_at_exit
    if not _waits_at_exit:
        getattr(threading, "_register_atexit", atexit.register)(wait_sharded)
        _waits_at_exit = True


def _check_writable(directory: pathlib.Path) -> None:
    """Creates `directory` if it is missing, and refuses one that is a file, lies under a file
    or cannot be written, in one line, before orbax starts: its writer threads would fail
    there, print their tracebacks, and leave threads behind that hold up Python's exit."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise CheckpointError(f"{directory}: is a file, not a checkpoint directory") from None
    except OSError as err:
        raise CheckpointError(
            f"{directory}: cannot create the checkpoint directory ({err.strerror}: {err.filename})"
        ) from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise CheckpointError(f"{directory}: cannot write to the checkpoint directory")


def _writer(directory: pathlib.Path, keep: int | None) -> Any:
    """The manager to save into `directory` with: the one of a save still writing there (if
    it keeps as many steps), or a new one."""
    with _pending_lock:
        manager, kept = _pending.pop(directory.resolve(), (None, keep))
    if manager is not None and kept == keep:
        return manager
    if manager is not None:
        _finish(manager)
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers(ocp))


def save_sharded(
    directory: PathLike,
    tree: PyTree,
    *,
    step: int,
    metadata: dict[str, Any] | None = None,
    keep: int | None = None,
    wait: bool = True,
) -> pathlib.Path:
    """Saves `tree` as step `step` of the orbax checkpoint directory `directory`.

    In a multi-process run every process calls it with its part of the same global arrays;
    each writes the shards it holds, and the step is complete when all have written.

    Args:
      directory: the checkpoint directory, created if missing; it holds several steps.
      tree: a pytree of jax arrays (sharded over any mesh, or on one device), numpy arrays
        and typed PRNG keys, in dicts, lists, tuples and NamedTuples; None and empty
        containers are kept. Keys must not contain ``/``. A leaf of another kind (a string,
        a Python number) is refused with a TypeError naming its path, before anything is
        written.
      step: the step number, a non-negative int larger than every step already saved there.
      metadata: a JSON object stored beside the arrays, read back by `sharded_metadata`.
      keep: keep only the newest `keep` steps, deleting older ones once this one is
        complete; None keeps every step.
      wait: whether to return once the step is written. With False the arrays are copied to
        host memory, the write goes on in the background, and the call returns: the caller
        may then donate or overwrite the arrays. `wait_sharded` waits for it; a later save to
        the same directory, a load from it and the exit of Python wait for it too.

    Returns the step's folder, ``directory / str(step)`` (once the write is complete).

    Raises:
      TypeError: a leaf or `metadata` that cannot be saved.
      ValueError: `step` or `keep` is not an int in range, `step` is not larger than the
        newest step saved in `directory`, or two leaf paths would share one orbax name.
      CheckpointError (a ValueError): `directory` is a file, lies under one or cannot be
        written; checked before anything is written.
    """
    directory = pathlib.Path(directory).absolute()
    step = check_int("save_sharded", "step", step, minimum=0)
    if keep is not None:
        check_int("save_sharded", "keep", keep)
    metadata = _checked_metadata(metadata)
    _check_savable(tree)
    _check_writable(directory)

    manager = _writer(directory, keep)
    try:
        latest = manager.latest_step()
        if latest is not None and step <= latest:
            raise ValueError(
                f"{directory}: cannot save step {step}, the newest step saved there is {latest}; "
                "steps are saved in increasing order"
            )
        ocp = _orbax()
        args = ocp.args.Composite(
            **{_TREE: ocp.args.StandardSave(tree), _METADATA: ocp.args.JsonSave(metadata)}
        )
        manager.save(step, args=args, force=True)
    except BaseException:
        _finish(manager)
        raise
    if wait:
        _finish(manager)
    else:
        _wait_at_exit()
        with _pending_lock:
            _pending[directory.resolve()] = (manager, keep)
    return directory / str(step)


# Loading.


def _reader(directory: pathlib.Path) -> Any:
    """A manager that reads `directory` (and writes nothing there), once no save of this
    process is writing there."""
    wait_sharded(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: is a file, not a checkpoint directory")
    ocp = _orbax()
    options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
    try:
        return ocp.CheckpointManager(directory, options=options, item_handlers=_handlers(ocp))
    except Exception as err:
        raise CheckpointError(
            f"{directory}: not a readable checkpoint directory: {_first_line(err)}"
        ) from err


def _pick_step(directory: pathlib.Path, manager: Any, step: int | None) -> int:
    steps = sorted(manager.all_steps())
    if not steps:
        raise CheckpointError(f"{directory}: holds no saved steps")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise CheckpointError(f"{directory}: has no step {step}; the saved steps are {steps}")
    return step


def sharded_steps(directory: PathLike) -> list[int]:
    """The steps saved in `directory`, oldest first; ``[]`` if it does not exist.

    Only complete steps count: an unfinished write (a killed process) is not listed.
    """
    directory = pathlib.Path(directory).absolute()
    if not directory.exists():
        wait_sharded(directory)
        return []
    manager = _reader(directory)
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def sharded_metadata(directory: PathLike, step: int | None = None) -> dict[str, Any]:
    """The metadata dict saved with step `step` (the newest if None), without the arrays.

    Raises CheckpointError for a missing directory, no saved step, a missing step (listing
    those saved) or an unreadable metadata item.
    """
    directory = pathlib.Path(directory).absolute()
    manager = _reader(directory)
    try:
        step = _pick_step(directory, manager, step)
        ocp = _orbax()
        try:
            args = ocp.args.Composite(**{_METADATA: ocp.args.JsonRestore()})
            found = manager.restore(step, args=args)[_METADATA]
        except Exception as err:
            raise CheckpointError(
                f"{directory} step {step}: no readable metadata: {_first_line(err)}"
            ) from err
    finally:
        manager.close()
    if not isinstance(found, dict):
        raise CheckpointError(f"{directory} step {step}: the metadata is not a JSON object")
    return found


def _first_line(err: BaseException, limit: int = 300) -> str:
    """The error's type and first line, cut to `limit` characters (TensorStore's messages
    carry its whole spec)."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text if len(text) <= limit else text[:limit] + ' ...'}"


def _stored_leaves(where: str, manager: Any, step: int) -> dict[str, Any]:
    """``{path: orbax metadata}`` of the stored arrays, read without their data."""
    try:
        item = manager.item_metadata(step)[_TREE]
    except Exception as err:
        raise CheckpointError(f"{where}: unreadable array metadata: {_first_line(err)}") from err
    if item is None:
        raise CheckpointError(f"{where}: no {_TREE!r} item (not written by save_sharded?)")
    tree = getattr(item, "tree", item)
    pairs, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(entry_name(e) for e in key_path): leaf for key_path, leaf in pairs}


def _stored_description(meta: Any) -> str:
    if not hasattr(meta, "shape") or not hasattr(meta, "dtype"):
        return f"a {type(meta).__name__}"
    return _describe_leaf({"dtype": np.dtype(meta.dtype).name, "shape": list(meta.shape)})


def _expected(leaf: Any) -> tuple[jax.ShapeDtypeStruct, str]:
    """What a target leaf expects stored, and its description: a key expects its key data."""
    if is_key(leaf):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
        described = _describe_leaf({"dtype": data.dtype.name, "shape": list(data.shape)})
        return data, f"{leaf.dtype}{tuple(leaf.shape)}, whose key data is {described}"
    info = _leaf_info(leaf, "")
    shape = tuple(info["shape"])
    return jax.ShapeDtypeStruct(shape, np.dtype(info["dtype"])), _describe_leaf(info)


def _check_like(where: str, stored: dict[str, Any], paths: list[str], leaves: list[Any]) -> None:
    """Raises a one-line CheckpointError for the first target leaf missing from the
    checkpoint or stored with another shape or dtype, then for the first stored leaf the
    target lacks."""
    expected = set(paths)
    missing = [p for p in paths if p not in stored]
    extra = [p for p in stored if p not in expected]
    more = len(missing) + len(extra) - 1
    tail = f" (and {more} more missing or extra leaves)" if more > 0 else ""
    for path, leaf in zip(paths, leaves, strict=True):
        want, described = _expected(leaf)
        if path not in stored:
            raise CheckpointError(
                f"{where}: the checkpoint has no leaf {path}, expected {described}{tail}"
            )
        meta = stored[path]
        shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
        if shape is None or tuple(shape) != want.shape or np.dtype(dtype) != want.dtype:
            raise CheckpointError(
                f"{where}: leaf {path} is stored as {_stored_description(meta)}, "
                f"expected {described}"
            )
    if extra:
        raise CheckpointError(
            f"{where}: the checkpoint's leaf {extra[0]} ({_stored_description(stored[extra[0]])}) "
            f"is not in the expected tree{tail}"
        )


def _target(leaf: Any, default: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    """The shape, dtype and sharding to restore a leaf as: the target's own sharding, or the
    default device's."""
    sharding = getattr(leaf, "sharding", None) or default
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    return jax.ShapeDtypeStruct(tuple(np.shape(leaf)), dtype, sharding=sharding)


def _as_target(array: Any, leaf: Any) -> Any:
    """A restored array as the target asks: a typed key where it has a key, key data where
    it has an array (orbax restores a stored key as a key whatever the target says)."""
    if is_key(leaf) and not is_key(array):
        return jax.random.wrap_key_data(array, impl=_key_impl_name(leaf))
    if is_key(array) and not is_key(leaf):
        return jax.random.key_data(array)
    return array


def load_sharded(directory: PathLike, *, like: PyTree, step: int | None = None) -> PyTree:
    """Restores step `step` (the newest if None) of `directory` onto the layout of `like`.

    Args:
      directory: a directory written by `save_sharded`.
      like: the target: a pytree of the saved tree's structure whose leaves are jax arrays
        or `jax.ShapeDtypeStruct` (e.g. ``jax.eval_shape`` of the state's init, with
        shardings), with the stored shapes and dtypes. Each leaf is restored with the
        target's sharding, on any mesh and number of devices or processes (orbax reads the
        parts each device needs, whatever layout wrote them); a leaf without a sharding
        (a ShapeDtypeStruct without one, a numpy array) goes to the default device. A key
        leaf is restored as a typed key, an array leaf as an array, even where the other
        was saved.
      step: the step to restore.

    Returns a tree of `like`'s exact pytree type (NamedTuples and None included) of jax
    arrays. In a multi-process run every process calls it, with the same global target.

    Before any array is read, the stored metadata (shape and dtype per leaf) is compared with
    `like`, since orbax itself would cast a different dtype and skip a leaf the target holds
    as None.

    Raises:
      CheckpointError (a ValueError), with one line naming what is wrong: the directory is
        missing or a file, holds no step, lacks `step` (the message lists the saved steps),
        is unreadable; or a leaf of `like` is not stored, is stored with another shape or
        dtype (the message gives its path, as ``params/dense_0/w``, the stored and the
        expected shape and dtype), or a stored leaf is not in `like`. Orbax failures while
        reading are raised as CheckpointError too.
    """
    directory = pathlib.Path(directory).absolute()
    paths, leaves = _leaf_paths(like)
    treedef = jax.tree.structure(like)
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    targets = [_target(leaf, default) for leaf in leaves]
    manager = _reader(directory)
    try:
        step = _pick_step(directory, manager, step)
        where = f"{directory} step {step}"
        _check_like(where, _stored_leaves(where, manager, step), paths, leaves)
        ocp = _orbax()
        args = ocp.args.Composite(
            **{_TREE: ocp.args.StandardRestore(jax.tree.unflatten(treedef, targets))}
        )
        try:
            restored = manager.restore(step, args=args)[_TREE]
            arrays = treedef.flatten_up_to(restored)
        except Exception as err:
            raise CheckpointError(
                f"{where}: orbax could not restore it: {_first_line(err)}"
            ) from err
    finally:
        manager.close()
    return jax.tree.unflatten(
        treedef, [_as_target(a, leaf) for a, leaf in zip(arrays, leaves, strict=True)]
    )
