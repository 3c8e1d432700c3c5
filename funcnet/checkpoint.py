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
      concatenated in order;
    - ``"jax"``: the version of JAX that wrote it (absent in files written before it was added;
      informative only, named in the error when a key's implementation is missing here).
- ``<path>.npy`` for each leaf, in numpy's ``.npy`` format. A leaf's path joins with ``/`` the
  dict keys, NamedTuple field names and sequence indices leading to it
  (``opt_state/1/mu/dense_0/w``). Dtypes that ``.npy`` cannot name (``bfloat16``, ``float8_*``)
  are stored as unsigned integers of the same width and viewed back on load.

Loading treats the file as untrusted. Before any array memory is allocated, and without ever
writing to disk or unpickling, `load` and `metadata` check the zip's central directory (at
most `MAX_MEMBERS` members; unique, UTF-8, relative names without ``..``; stored or deflated
members only, a deflated member expanding at most `MAX_COMPRESSION_RATIO` times; members
inside the file and not overlapping; at most `MAX_HEADER_BYTES` of header and
`MAX_TOTAL_BYTES` in all) and the header (well-formed, one member per listed leaf and no
other); `load` then checks every leaf's ``.npy`` header (plain numeric dtype, the shape and
dtype the header lists, exactly shape x itemsize bytes of data). With a template (``like=``)
the file must also hold exactly the template's leaves, so it can allocate no more than the
template's size.

Writes are atomic: the archive is written to a temporary file of its own,
``<path>.tmp-<pid>-<random>`` in the same folder (created exclusively, so saves from several
threads or processes never share one), flushed and fsynced, renamed over `path` with
`os.replace`, and the folder is fsynced. A writer killed midway leaves the previous checkpoint
at `path` intact (and a stray temporary file); of saves racing to one path, the last rename
wins and the file is always one whole checkpoint. When several processes train together only
process 0 writes (see `funcnet.launch.is_leader`).

Sharded checkpoints
-------------------
For trees sharded over devices or processes, `save_sharded` writes a step of an
orbax-checkpoint directory (every process its own shards, optionally in the background:
`wait_sharded`), and `load_sharded` restores a step onto any mesh, checking the stored shapes
and dtypes against a target tree first; `sharded_steps` and `sharded_metadata` read the
directory. The format and its checks are described in ``funcnet/_sharded_checkpoint.py``.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import math
import os
import pathlib
import secrets
import zipfile
import zlib
from typing import Any, NamedTuple

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

MAX_MEMBERS = 100_000
"""The most members (leaves plus the header) a checkpoint archive may list."""
MAX_HEADER_BYTES = 64 * 2**20
"""The largest ``__header__.json`` read, in bytes."""
MAX_TOTAL_BYTES = 64 * 2**30
"""The most uncompressed bytes all members together may declare; raise it to load larger trees."""
MAX_COMPRESSION_RATIO = 100
"""The most a deflated member may expand (`save` stores members uncompressed)."""
_CHUNK = 16 * 2**20  # leaf data is read in pieces of this size into its preallocated array

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_HEADER_BYTES",
    "MAX_MEMBERS",
    "MAX_TOTAL_BYTES",
    "CheckpointError",
    "load",
    "load_sharded",
    "metadata",
    "save",
    "save_sharded",
    "sharded_metadata",
    "sharded_steps",
    "wait_sharded",
]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or that does not match the expected tree."""


# The tree, described.


def _check_name(name: str, where: str) -> str:
    if name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(
            f"cannot checkpoint the entry {name!r} under {where or 'the root'}: tree keys must "
            "be non-empty, not '.' or '..', and contain no '/', '\\' or NUL"
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


def _leaf_info(leaf: Any, path: str) -> dict[str, Any]:
    """The header entry of a leaf (less its path); a leaf that is not an array of numbers or a
    PRNG key is refused by its path and type."""
    if is_key(leaf):
        impl = _key_impl_name(leaf) if isinstance(leaf, jax.Array) else None
        return {"dtype": "key", "shape": list(leaf.shape), "key_impl": impl}
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return {"dtype": jnp.dtype(leaf.dtype).name, "shape": list(leaf.shape)}
    dtype = None
    if not isinstance(leaf, str | bytes):
        try:
            dtype = jnp.dtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
        except (TypeError, ValueError):
            dtype = None
    if dtype is None or dtype.kind not in "biufcV" or (dtype.kind == "V" and not _exotic(dtype)):
        shown = f"{type(leaf).__name__}" + (f" of dtype {dtype}" if dtype is not None else "")
        raise TypeError(
            f"cannot checkpoint the leaf {path or '(the root)'}, of type {shown} ({leaf!r:.40}); "
            "checkpoints hold arrays of numbers (bool, int, float, complex) and PRNG keys"
        )
    return {"dtype": dtype.name, "shape": list(np.shape(leaf))}


# JAX's built-in PRNG implementations under the names every supported version accepts in
# `jax.random.wrap_key_data`, by the short tags some versions print instead (JAX 0.4 printed
# ``key_impl`` of a threefry key as "fry", which it could not read back).
KEY_IMPL_NAMES = {"fry": "threefry2x32", "rbg": "rbg", "urbg": "unsafe_rbg"}


def _key_impl_name(key: Any) -> str:
    """The name of a key's implementation, as stored: ``"threefry2x32"``, not ``"fry"``. A key
    array's own; a `jax.ShapeDtypeStruct`'s read from its dtype, ``key<tag>``."""
    if isinstance(key, jax.Array):
        impl = str(jax.random.key_impl(key))
    else:
        impl = str(key.dtype).removeprefix("key<").removesuffix(">")
    return KEY_IMPL_NAMES.get(impl, impl)


def _exotic(dtype: np.dtype) -> bool:
    """Whether a dtype of kind "V" is an ml_dtypes float (bfloat16, float8_*), not a record."""
    return dtype.type.__module__ == "ml_dtypes"


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


def _create_temporary(path: pathlib.Path) -> tuple[pathlib.Path, int]:
    """A new, empty file next to `path`, ``<path>.tmp-<pid>-<random>``, and its descriptor.

    Created exclusively (``O_EXCL``), so no two saves share one, whether in threads of one
    process or in several processes; with the permissions a plain `open` would give.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue


def _checked_metadata(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """`metadata` ({} for None) as JSON gives it back; a TypeError line for anything that is
    not a JSON-serialisable dict."""
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise TypeError(f"checkpoint metadata must be a dict, got {type(metadata).__name__}")
    try:
        return json.loads(json.dumps(metadata))
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint metadata must be JSON-serialisable: {err}") from err


def _check_destination(path: pathlib.Path) -> None:
    """Refuses, in one line, a `path` that is a folder or whose folder is missing or a file,
    before the temporary file is made."""
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    folder = path.parent
    if not folder.is_dir():
        fault = "is a file" if folder.exists() else "does not exist"
        raise CheckpointError(f"{path}: its folder {folder} {fault}; save into an existing folder")


def save(path: PathLike, tree: PyTree, *, metadata: dict[str, Any] | None = None) -> pathlib.Path:
    """Writes `tree` and `metadata` to `path` atomically, in the format of the module doc.

    Args:
      path: the file to write (conventionally ``*.npz``); its folder must exist.
      tree: a pytree of arrays (jax or numpy, typed PRNG keys included) in dicts, lists,
        tuples, NamedTuples or other registered pytree nodes; keys must not contain ``/``.
        Any other leaf (a string, an object) is refused with a TypeError naming its path and
        type, before anything is written.
      metadata: a JSON-serialisable dict stored alongside, read back by `metadata`.

    Returns the path. In a multi-process run only process 0 writes (`launch.is_leader`):
    every process holds the same replicated tree, so one copy is written.

    Raises:
      TypeError: a leaf or `metadata` that cannot be saved.
      CheckpointError: `path` is a folder, or its folder is missing or a file.
    """
    path = pathlib.Path(path)
    metadata_json = _checked_metadata(metadata)
    if not is_leader():
        return path

    leaves, structure = _flatten(tree)
    infos = [{"path": p, **_leaf_info(leaf, p)} for p, leaf in leaves]
    arrays = [(p, _to_numpy(leaf)) for p, leaf in leaves]
    digest = hashlib.sha256()
    for _, array in arrays:
        digest.update(_raw_bytes(array))
    header = {
        "format": FORMAT,
        "version": VERSION,
        "leaves": infos,
        "structure": structure,
        "metadata": metadata_json,
        "sha256": digest.hexdigest(),
        "jax": jax.__version__,
    }

    _check_destination(path)
    tmp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
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


# Loading. The file is untrusted: everything that sizes an allocation is checked first.


def _refuse(path: pathlib.Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: {reason}; refusing to load it")


def _name_fault(name: str, orig: str) -> str | None:
    """Why a member name is unsafe to use, or None."""
    if "\0" in orig:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    parts = name.replace("\\", "/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "has an empty, '.' or '..' component"
    return None


def _check_directory(path: pathlib.Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, once the central directory shows nothing hostile."""
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _refuse(
            path, f"the archive lists {len(infos)} members, more than MAX_MEMBERS={MAX_MEMBERS}"
        )
    size = path.stat().st_size
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename
        if not info.flag_bits & 0x800 and not name.isascii():
            raise _refuse(path, f"member name {name!r} is not marked as UTF-8")
        fault = _name_fault(name, info.orig_filename)
        if fault:
            raise _refuse(path, f"member name {info.orig_filename!r} {fault}")
        if name in members:
            raise _refuse(path, f"member {name!r} appears more than once")
        members[name] = info
        if info.flag_bits & 0x1:
            raise _refuse(path, f"member {name!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size:
                raise _refuse(
                    path,
                    f"stored member {name!r} declares {info.file_size} bytes but occupies "
                    f"{info.compress_size}",
                )
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            if info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
                raise _refuse(
                    path,
                    f"member {name!r} would expand {info.compress_size} bytes to "
                    f"{info.file_size}, more than MAX_COMPRESSION_RATIO={MAX_COMPRESSION_RATIO} "
                    "times (a zip bomb?)",
                )
        else:
            raise _refuse(
                path,
                f"member {name!r} uses compression method {info.compress_type}; only stored "
                "and deflated members are read",
            )
        if info.header_offset + info.compress_size > size:
            raise _refuse(path, f"member {name!r} extends past the end of the file (truncated?)")
    spans = sorted((info.header_offset, info.compress_size, info.filename) for info in infos)
    for (start, length, name), (next_start, _, next_name) in itertools.pairwise(spans):
        if start + length > next_start:
            raise _refuse(path, f"members {name!r} and {next_name!r} overlap (a zip bomb?)")
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise _refuse(
            path,
            f"its members declare {total} bytes in all, more than "
            f"MAX_TOTAL_BYTES={MAX_TOTAL_BYTES} (raise funcnet.checkpoint.MAX_TOTAL_BYTES "
            "to load a tree this large)",
        )
    return members


def _stored_dtype(dtype: str) -> np.dtype | None:
    """The numpy dtype a header dtype name is stored as, None for keys; raises if unknown."""
    if dtype == "key":
        return None
    parsed = jnp.dtype(dtype)
    if parsed.name != dtype or parsed.hasobject or parsed.names is not None:
        raise ValueError(dtype)
    if parsed.kind in "biufc":
        return np.dtype(parsed)
    if parsed.type.__module__ != "ml_dtypes":
        raise ValueError(dtype)
    return np.dtype(f"u{parsed.itemsize}")


def _check_leaves(
    path: pathlib.Path, header: dict[str, Any], members: dict[str, zipfile.ZipInfo]
) -> None:
    """Checks the header's leaf list: well-formed, one member per leaf and no other member, and
    no leaf declaring more bytes than its member holds."""
    leaves = header.get("leaves")
    if not isinstance(leaves, list) or not isinstance(header.get("sha256"), str):
        raise _refuse(path, "malformed checkpoint header (no leaf list or checksum)")
    listed = {HEADER}
    for i, info in enumerate(leaves):
        leaf = info.get("path") if isinstance(info, dict) else None
        shape = info.get("shape") if isinstance(info, dict) else None
        ok = isinstance(leaf, str) and isinstance(shape, list) and len(shape) <= 64
        ok = ok and all(type(n) is int and n >= 0 for n in shape)
        try:
            dtype = _stored_dtype(info["dtype"]) if ok else None
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or (info["dtype"] == "key" and not isinstance(info.get("key_impl"), str | None)):
            raise _refuse(path, f"malformed checkpoint header: leaf entry {i} is {info!r:.200}")
        if info["dtype"] == "key" and info.get("key_impl") in KEY_IMPL_NAMES:
            info["key_impl"] = KEY_IMPL_NAMES[info["key_impl"]]  # a short tag, as JAX 0.4 wrote
        name = f"{leaf}.npy"
        if name in listed:
            raise _refuse(path, f"the header lists leaf {leaf} more than once")
        listed.add(name)
        if name not in members:
            raise CheckpointError(f"{path}: leaf {leaf} is listed but not stored")
        if dtype is not None:
            declared = math.prod(shape) * dtype.itemsize
            if declared > members[name].file_size:
                raise _refuse(
                    path,
                    f"leaf {leaf} is declared {_describe_leaf(info)}, {declared} bytes, but its "
                    f"member holds {members[name].file_size}",
                )
    extra = sorted(set(members) - listed)
    if extra:
        raise _refuse(path, f"member {extra[0]!r} is not a leaf listed in the header")


def _open(path: pathlib.Path) -> tuple[zipfile.ZipFile, dict[str, Any], dict[str, zipfile.ZipInfo]]:
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: no such checkpoint file") from err
    except IsADirectoryError as err:
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file") from err
    except PermissionError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint (permission denied)") from err
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read the checkpoint: {err}") from err
    except UnicodeDecodeError as err:
        raise _refuse(path, f"a member name marked as UTF-8 is not valid UTF-8 ({err})") from err
    except zipfile.BadZipFile as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint archive (truncated or corrupted?): {err}"
        ) from err
    try:
        members = _check_directory(path, archive)
        if HEADER not in members:
            raise CheckpointError(f"{path}: not a funcnet checkpoint (no {HEADER})")
        if members[HEADER].file_size > MAX_HEADER_BYTES:
            raise _refuse(
                path,
                f"its header declares {members[HEADER].file_size} bytes, more than "
                f"MAX_HEADER_BYTES={MAX_HEADER_BYTES}",
            )
        try:
            header = json.loads(archive.read(HEADER))
        except (
            zipfile.BadZipFile,
            zlib.error,
            ValueError,
            OSError,
            EOFError,
            RecursionError,
        ) as err:
            raise CheckpointError(
                f"{path}: unreadable checkpoint header (corrupted?): {err}"
            ) from err
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            found = header.get("format") if isinstance(header, dict) else None
            raise CheckpointError(f"{path}: not a funcnet checkpoint (format {found!r})")
        if header.get("version") != VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {header.get('version')} is not supported "
                f"(this funcnet reads version {VERSION})"
            )
        if not isinstance(header.get("metadata"), dict):
            raise _refuse(path, "malformed checkpoint header (metadata is not a JSON object)")
        _check_leaves(path, header, members)
    except BaseException:
        archive.close()
        raise
    return archive, header, members


def metadata(path: PathLike) -> dict[str, Any]:
    """The metadata dict stored in a checkpoint, read without loading the arrays."""
    archive, header, _ = _open(pathlib.Path(path))
    archive.close()
    return header["metadata"]


def _check_like(path: pathlib.Path, stored: list[dict[str, Any]], like: PyTree) -> list[str]:
    """The paths of `like`'s leaves; raises listing every missing, extra or mismatched leaf.

    A template key whose implementation is unknown (a `jax.ShapeDtypeStruct`) matches a
    stored key of any implementation.
    """
    paths, leaves = _leaf_paths(like)
    wanted = {p: _leaf_info(leaf, p) for p, leaf in zip(paths, leaves, strict=True)}
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


class _Layout(NamedTuple):
    """Where a leaf's data starts in its member, and the array it holds."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool


def _npy_layout(
    path: pathlib.Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo, info: dict[str, Any]
) -> _Layout:
    """Reads and checks a leaf's ``.npy`` header, without reading its data: a plain numeric
    dtype (never objects, so nothing is unpickled), the shape and dtype the checkpoint header
    lists, and exactly shape x itemsize bytes of data after it."""
    leaf = info["path"]
    try:
        with archive.open(member) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
            shape, fortran, dtype = read_header(stream)
            offset = stream.tell()
    except (zipfile.BadZipFile, zlib.error, ValueError, OSError, EOFError, SyntaxError) as err:
        raise CheckpointError(
            f"{path}: leaf {leaf} has an unreadable .npy header (corrupted?): {err}"
        ) from err
    if dtype.hasobject or dtype.names is not None or dtype.kind not in "biufc":
        raise _refuse(
            path,
            f"leaf {leaf} is stored with dtype {dtype}; checkpoints hold plain numeric arrays "
            "and never unpickle objects",
        )
    expected = _stored_dtype(info["dtype"])
    declared = tuple(info["shape"])
    if expected is None:  # a key's data: the key shape, then the implementation's own axes
        fits = dtype.kind == "u" and shape[: len(declared)] == declared
    else:
        fits = dtype == expected and shape == declared
    if not fits:
        raise _refuse(
            path,
            f"leaf {leaf} is stored as {dtype}{shape}, but the header lists it as "
            f"{_describe_leaf(info)}",
        )
    nbytes = math.prod(shape) * dtype.itemsize
    if member.file_size - offset != nbytes:
        raise _refuse(
            path,
            f"leaf {leaf} is {dtype}{shape}, {nbytes} bytes, but its member holds "
            f"{member.file_size - offset} bytes of data",
        )
    return _Layout(offset, shape, dtype, fortran)


def _read_leaf(
    path: pathlib.Path, archive: zipfile.ZipFile, member: zipfile.ZipInfo, layout: _Layout
) -> np.ndarray:
    """The leaf's array, read into memory sized by its checked layout."""
    array = np.empty(math.prod(layout.shape), layout.dtype)
    view = array.view(np.uint8)
    filled = 0
    try:
        with archive.open(member) as stream:
            stream.read(layout.offset)
            while filled < view.size:
                chunk = stream.read(min(_CHUNK, view.size - filled))
                if not chunk:
                    break
                view[filled : filled + len(chunk)] = np.frombuffer(chunk, np.uint8)
                filled += len(chunk)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as err:
        raise CheckpointError(
            f"{path}: leaf {member.filename[:-4]} is unreadable (corrupted?): {err}"
        ) from err
    if filled != view.size:
        raise CheckpointError(
            f"{path}: leaf {member.filename[:-4]} ends after {filled} of its {view.size} bytes "
            "(truncated or corrupted?)"
        )
    return array.reshape(layout.shape, order="F" if layout.fortran else "C")


def _restore(path: pathlib.Path, array: np.ndarray, info: dict[str, Any], writer: Any) -> Any:
    if info["dtype"] == "key":
        impl = info.get("key_impl")
        try:
            return jax.random.wrap_key_data(array, impl=impl)
        except (TypeError, ValueError) as err:
            if impl is not None and not _has_key_impl(impl):
                raise CheckpointError(
                    f"{path}: leaf {info['path']} is a PRNG key of the implementation {impl!r}, "
                    f"which this JAX ({jax.__version__}) lacks; the file was written with JAX "
                    f"{writer if isinstance(writer, str) else '(not recorded)'}"
                ) from None
            raise CheckpointError(
                f"{path}: leaf {info['path']} is not valid {_describe_leaf(info)} key data: {err}"
            ) from err
    dtype = jnp.dtype(info["dtype"])
    return array if array.dtype == dtype else array.view(dtype)


def _has_key_impl(name: str) -> bool:
    """Whether this JAX has a PRNG implementation of that name."""
    try:
        jax.eval_shape(lambda: jax.random.key(0, impl=name))
    except (TypeError, ValueError):
        return False
    return True


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

    The file is checked before any array memory is allocated (see the module doc and its
    limits `MAX_MEMBERS`, `MAX_HEADER_BYTES`, `MAX_TOTAL_BYTES`, `MAX_COMPRESSION_RATIO`);
    nothing is written to disk and nothing is unpickled.

    Raises:
      CheckpointError (a ValueError): the file is missing, a folder or unreadable (e.g. no
        permission), is not a readable funcnet checkpoint, is malformed or hostile (the
        message names the member and the limit), fails its checksum, or does not match
        `like` (the message lists every missing, extra and mismatched leaf by path).
    """
    path = pathlib.Path(path)
    archive, header, members = _open(path)
    with archive:
        stored = header["leaves"]
        order = _check_like(path, stored, like) if like is not None else None
        entries = [members[f"{info['path']}.npy"] for info in stored]
        layouts = [
            _npy_layout(path, archive, entry, info)
            for entry, info in zip(entries, stored, strict=True)
        ]
        raw = [
            _read_leaf(path, archive, entry, layout)
            for entry, layout in zip(entries, layouts, strict=True)
        ]
    digest = hashlib.sha256()
    for array in raw:
        digest.update(_raw_bytes(array))
    if digest.hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupted")
    writer = header.get("jax")
    arrays = [_restore(path, array, info, writer) for array, info in zip(raw, stored, strict=True)]
    if order is None:
        try:
            return _rebuild(header["structure"], arrays)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError, RecursionError) as err:
            raise _refuse(path, f"malformed tree structure in its header ({err!r:.200})") from err

    by_path = dict(zip((info["path"] for info in stored), arrays, strict=True))
    like_leaves, treedef = jax.tree.flatten(like)
    restored = []
    for p, template in zip(order, like_leaves, strict=True):
        array = by_path[p]
        if isinstance(template, jax.Array | jax.ShapeDtypeStruct) and not is_key(template):
            array = jnp.asarray(array, dtype=template.dtype)
        restored.append(array)
    return jax.tree.unflatten(treedef, restored)


# Imported last: the sharded format reuses this module's error and tree checks above.
from funcnet._sharded_checkpoint import (  # noqa: E402
    load_sharded,
    save_sharded,
    sharded_metadata,
    sharded_steps,
    wait_sharded,
)
