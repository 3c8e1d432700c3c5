"""Save and load pytrees of arrays: params, optimizer states, whole train states.

File format (version 1)
-----------------------
A checkpoint is a zip archive in numpy's ``.npz`` layout, stored uncompressed, so
``numpy.load(path)`` reads it too. It holds

- ``__header__.json``: UTF-8 JSON with
    - ``"format": "funcnet.checkpoint"`` and ``"version": 1``;
    - ``"leaves"``: one entry per array leaf, in the tree's flattening order:
      ``{"path": "params/dense_0/w", "dtype": "float32", "shape": [64, 128]}``, plus
      ``"key_impl": "threefry2x32"`` for a typed PRNG key (stored as its key data);
    - ``"structure"``: the tree's containers, to rebuild it without a template:
      ``{"dict": {name: node}}``, ``{"list": [node, ...]}``, ``{"tuple": [...]}``,
      ``{"namedtuple": class name, "fields": {field: node}}``, ``{"node": class name,
      "children": {key: node}}`` for other pytree nodes, ``{"leaf": index}`` and ``null``
      for None;
    - ``"metadata"``: the caller's JSON object (e.g. the model's architecture);
    - ``"sha256"``: the hex SHA-256 of the payload, the leaves' raw bytes (C order)
      concatenated in order.
- ``<path>.npy`` for each leaf, in numpy's ``.npy`` format. A leaf's path joins with ``/`` the
  dict keys, NamedTuple field names and sequence indices leading to it
  (``opt_state/1/mu/dense_0/w``). Dtypes that ``.npy`` cannot name (``bfloat16``, ``float8_*``)
  are stored as unsigned integers of the same width and viewed back on load.

Writes are atomic: the archive is written to ``<path>.tmp-<pid>`` in the same folder,
flushed and fsynced, renamed over `path` with `os.replace`, and the folder is fsynced. A
writer killed midway leaves the previous checkpoint at `path` intact (and a stray temporary
file). When several processes train together only process 0 writes (see
`funcnet.launch.is_leader`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pathlib
import zipfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._keys import is_key
from funcnet._trees import entry_name, leaf_differences
from funcnet.launch import is_leader

PyTree = Any
PathLike = str | os.PathLike

FORMAT = "funcnet.checkpoint"
VERSION = 1
HEADER = "__header__.json"

__all__ = ["CheckpointError", "load", "metadata", "save"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not match the expected tree."""


# The tree, described.


def _check_name(name: str, where: str) -> str:
    if not name or "/" in name:
        raise ValueError(
            f"cannot checkpoint the entry {name!r} under {where or 'the root'}: tree keys must "
            "be non-empty and contain no '/'"
        )
    return name


def _leaf_paths(tree: PyTree) -> tuple[list[str], list[Any]]:
    """The ``/``-joined paths and the leaves of `tree`, in JAX's flattening order."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths = []
    for key_path, _ in pairs:
        names = [entry_name(entry) for entry in key_path]
        for i, name in enumerate(names):
            _check_name(name, "/".join(names[:i]))
        paths.append("/".join(names))
    if paths == [""]:
        raise ValueError("cannot checkpoint a bare array; put it in a dict, e.g. {'x': x}")
    if len(set(paths)) != len(paths):
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        raise ValueError(f"cannot checkpoint a tree with repeated leaf paths: {repeated}")
    return paths, [leaf for _, leaf in pairs]


def _describe(tree: PyTree, prefix: str, index: dict[str, int]) -> Any:
    """The JSON structure of `tree`, whose leaves are numbered by `index` (path -> index)."""

    def child(name: Any, node: Any) -> Any:
        name = str(name)
        return _describe(node, f"{prefix}/{name}" if prefix else name, index)

    if tree is None:
        return None
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        fields = {f: child(f, getattr(tree, f)) for f in tree._fields}
        return {"namedtuple": type(tree).__name__, "fields": fields}
    if isinstance(tree, (tuple, list)):
        kind = "tuple" if isinstance(tree, tuple) else "list"
        return {kind: [child(i, node) for i, node in enumerate(tree)]}
    if isinstance(tree, dict):
        return {"dict": {str(k): child(k, tree[k]) for k in sorted(tree)}}
    if prefix in index:
        return {"leaf": index[prefix]}
    children, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: x is not tree)
    return {
        "node": type(tree).__name__,
        "children": {entry_name(p[0]): child(entry_name(p[0]), node) for p, node in children},
    }


def _flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    """``[(path, leaf)]`` in flattening order, and the JSON structure of `tree`."""
    paths, leaves = _leaf_paths(tree)
    structure = _describe(tree, "", {p: i for i, p in enumerate(paths)})
    return list(zip(paths, leaves, strict=True)), structure


def _rebuild(node: Any, arrays: list[Any]) -> PyTree:
    """A tree from its JSON structure; NamedTuples come back as namedtuples of the same name
    and fields, other custom nodes as dicts."""
    if node is None:
        return None
    if "leaf" in node:
        return arrays[node["leaf"]]
    if "dict" in node:
        return {k: _rebuild(v, arrays) for k, v in node["dict"].items()}
    if "list" in node:
        return [_rebuild(v, arrays) for v in node["list"]]
    if "tuple" in node:
        return tuple(_rebuild(v, arrays) for v in node["tuple"])
    if "namedtuple" in node:
        cls = collections.namedtuple(node["namedtuple"], list(node["fields"]))
        return cls(*(_rebuild(v, arrays) for v in node["fields"].values()))
    return {k: _rebuild(v, arrays) for k, v in node["children"].items()}


# Leaves.


def _leaf_info(leaf: Any) -> dict[str, Any]:
    if is_key(leaf):
        impl = str(jax.random.key_impl(leaf)) if isinstance(leaf, jax.Array) else None
        return {"dtype": "key", "shape": list(leaf.shape), "key_impl": impl}
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return {"dtype": jnp.dtype(leaf.dtype).name, "shape": list(leaf.shape)}
    dtype = leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
    if np.dtype(dtype).kind not in "biufcV":
        raise TypeError(f"cannot checkpoint a leaf of type {type(leaf).__name__} ({dtype})")
    return {"dtype": jnp.dtype(dtype).name, "shape": list(np.shape(leaf))}


def _describe_leaf(info: dict[str, Any]) -> str:
    """``float32(64, 128)``, or ``key<threefry2x32>(3,)`` (``key(3,)`` if the kind is unknown)."""
    dtype = info["dtype"]
    if dtype == "key" and info.get("key_impl") is not None:
        dtype = f"key<{info['key_impl']}>"
    return f"{dtype}{tuple(info['shape'])}"


def _to_numpy(leaf: Any) -> np.ndarray:
    """The bytes to store for a leaf: key data for keys, an unsigned view for exotic floats."""
    if is_key(leaf):
        leaf = jax.random.key_data(leaf)
    array = np.asarray(jax.device_get(leaf), order="C")
    if array.dtype.kind not in "biufc":
        array = array.view(f"u{array.dtype.itemsize}")
    return array


def _raw_bytes(array: np.ndarray) -> np.ndarray:
    """The bytes of an array in C order, as a flat uint8 array."""
    return np.asarray(array, order="C").reshape(-1).view(np.uint8)


def _write_leaf(archive: zipfile.ZipFile, path: str, array: np.ndarray) -> None:
    with archive.open(f"{path}.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array(member, array, allow_pickle=False)


def _fsync_dir(folder: pathlib.Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # folders cannot be opened on some platforms (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(path: PathLike, tree: PyTree, *, metadata: dict[str, Any] | None = None) -> pathlib.Path:
    """Writes `tree` and `metadata` to `path` atomically, in the format of the module doc.

    Args:
      path: the file to write (conventionally ``*.npz``); its folder must exist.
      tree: a pytree of arrays (jax or numpy, typed PRNG keys included) in dicts, lists,
        tuples, NamedTuples or other registered pytree nodes; keys must not contain ``/``.
      metadata: a JSON-serialisable dict stored alongside, read back by `metadata`.

    Returns the path. In a multi-process run only process 0 writes (`launch.is_leader`):
    every process holds the same replicated tree, so one copy is written.
    """
    path = pathlib.Path(path)
    metadata = {} if metadata is None else metadata
    try:
        metadata_json = json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {err}") from err
    if not is_leader():
        return path

    leaves, structure = _flatten(tree)
    arrays = [(p, _to_numpy(leaf)) for p, leaf in leaves]
    digest = hashlib.sha256()
    for _, array in arrays:
        digest.update(_raw_bytes(array))
    header = {
        "format": FORMAT,
        "version": VERSION,
        "leaves": [{"path": p, **_leaf_info(leaf)} for p, leaf in leaves],
        "structure": structure,
        "metadata": metadata_json,
        "sha256": digest.hexdigest(),
    }

    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                archive.writestr(HEADER, json.dumps(header, indent=1))
                for p, array in arrays:
                    _write_leaf(archive, p, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


# Loading.


def _open(path: pathlib.Path) -> tuple[zipfile.ZipFile, dict[str, Any]]:
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint archive (truncated or corrupted?): {err}"
        ) from err
    try:
        header = json.loads(archive.read(HEADER))
    except KeyError as err:
        archive.close()
        raise CheckpointError(f"{path}: not a funcnet checkpoint (no {HEADER})") from err
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        archive.close()
        raise CheckpointError(f"{path}: unreadable checkpoint header (corrupted?): {err}") from err
    if header.get("format") != FORMAT:
        archive.close()
        raise CheckpointError(f"{path}: not a funcnet checkpoint (format {header.get('format')!r})")
    if header.get("version") != VERSION:
        archive.close()
        raise CheckpointError(
            f"{path}: checkpoint format version {header.get('version')} is not supported "
            f"(this funcnet reads version {VERSION})"
        )
    return archive, header


def metadata(path: PathLike) -> dict[str, Any]:
    """The metadata dict stored in a checkpoint, read without loading the arrays."""
    archive, header = _open(pathlib.Path(path))
    archive.close()
    return header["metadata"]


def _check_like(path: pathlib.Path, stored: list[dict[str, Any]], like: PyTree) -> list[str]:
    """The paths of `like`'s leaves; raises listing every missing, extra or mismatched leaf.

    A template key whose implementation is unknown (a `jax.ShapeDtypeStruct`) matches a
    stored key of any implementation.
    """
    paths, leaves = _leaf_paths(like)
    wanted = {p: _leaf_info(leaf) for p, leaf in zip(paths, leaves, strict=True)}
    found = {}
    for info in stored:
        want = wanted.get(info["path"], {})
        if want.get("dtype") == "key" and want.get("key_impl") is None:
            info = {**info, "key_impl": None}
        found[info["path"]] = _describe_leaf(info)
    expected = {p: _describe_leaf(info) for p, info in wanted.items()}
    lines = leaf_differences(expected, found, source="the file")
    if lines:
        raise CheckpointError("\n  ".join([f"{path} does not match the expected tree:", *lines]))
    return paths


def _read_leaf(path: pathlib.Path, archive: zipfile.ZipFile, info: dict[str, Any]) -> np.ndarray:
    try:
        with archive.open(f"{info['path']}.npy") as member:
            array = np.lib.format.read_array(member, allow_pickle=False)
    except KeyError as err:
        raise CheckpointError(f"{path}: leaf {info['path']} is listed but not stored") from err
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: leaf {info['path']} is unreadable (corrupted?): {err}"
        ) from err
    return array


def _restore(array: np.ndarray, info: dict[str, Any]) -> Any:
    if info["dtype"] == "key":
        return jax.random.wrap_key_data(array, impl=info.get("key_impl"))
    dtype = jnp.dtype(info["dtype"])
    return array if array.dtype == dtype else array.view(dtype)


def load(path: PathLike, *, like: PyTree | None = None) -> PyTree:
    """Reads a checkpoint written by `save`, checking its SHA-256.

    Args:
      path: the checkpoint file.
      like: optional template: a tree of arrays or `jax.ShapeDtypeStruct` with the expected
        structure, shapes and dtypes (e.g. a fresh `TrainState`, or its `jax.eval_shape`).
        The file must hold exactly its leaves; the result has its exact pytree types
        (NamedTuples included), with jax arrays where `like` has jax arrays or
        ShapeDtypeStructs and numpy arrays elsewhere.

    Without `like` the tree is rebuilt from the file: dicts, lists and tuples as saved,
    NamedTuples as namedtuples of the same name and fields, other nodes as dicts; leaves are
    numpy arrays (typed PRNG keys are jax key arrays).

    Raises:
      CheckpointError (a ValueError): the file is not a readable funcnet checkpoint, fails
        its checksum, or does not match `like` (the message lists every missing, extra and
        mismatched leaf by path).
    """
    path = pathlib.Path(path)
    archive, header = _open(path)
    with archive:
        stored = header["leaves"]
        order = _check_like(path, stored, like) if like is not None else None
        raw = [_read_leaf(path, archive, info) for info in stored]
    digest = hashlib.sha256()
    for array in raw:
        digest.update(_raw_bytes(array))
    if digest.hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupted")
    arrays = [_restore(array, info) for array, info in zip(raw, stored, strict=True)]
    if order is None:
        return _rebuild(header["structure"], arrays)

    by_path = dict(zip((info["path"] for info in stored), arrays, strict=True))
    like_leaves, treedef = jax.tree.flatten(like)
    restored = []
    for p, template in zip(order, like_leaves, strict=True):
        array = by_path[p]
        if isinstance(template, jax.Array | jax.ShapeDtypeStruct) and not is_key(template):
            array = jnp.asarray(array, dtype=template.dtype)
        restored.append(array)
    return jax.tree.unflatten(treedef, restored)
