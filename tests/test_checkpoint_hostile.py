"""`funcnet.checkpoint.load` on hostile files: each is refused with its own reason, before
memory is allocated for what it claims, without writing to disk and without unpickling."""

import io
import json
import os
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest

from funcnet import checkpoint

PEAK_BYTES = 4 * 2**20  # far below what any hostile file below claims (64 MiB and up)

_writes: list | None = None  # while a list, every file opened for writing is recorded in it


def _record_writes(event, args):
    if _writes is None or event != "open":
        return
    _, mode, flags = args
    writing = any(c in (mode or "") for c in "wax+")
    if writing or (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _writes.append(args[0])


sys.addaudithook(_record_writes)


def refused(path, match, like=None):
    """Loads `path`, asserting CheckpointError matching `match`, a bounded peak allocation,
    and no file opened for writing or created."""
    global _writes
    before = sorted(os.listdir(path.parent))
    _writes = []
    tracemalloc.start()
    try:
        with pytest.raises(checkpoint.CheckpointError, match=match) as info:
            checkpoint.load(path, like=like)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writes, _writes = _writes, None
    assert peak < PEAK_BYTES, f"{peak} bytes allocated while refusing {path.name}"
    assert writes == [] and sorted(os.listdir(path.parent)) == before
    assert len(str(info.value).splitlines()) == 1
    return str(info.value)


def npy(array, allow_pickle=False):
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, allow_pickle=allow_pickle)
    return stream.getvalue()


def header(entries, **changes):
    structure = {"dict": {leaf["path"]: {"leaf": i} for i, leaf in enumerate(entries)}}
    return json.dumps(
        {
            "format": "funcnet.checkpoint",
            "version": 1,
            "leaves": entries,
            "structure": structure,
            "metadata": {},
            "sha256": "0" * 64,
            **changes,
        }
    ).encode()


def forge(path, members, compression=zipfile.ZIP_STORED):
    """Writes `members`, ``[(name, bytes)]``, as a zip archive, as they are."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, payload in members:
            archive.writestr(name, payload)
    return path


def one_leaf(path, array, entry=None, payload=None, compression=zipfile.ZIP_STORED):
    """A checkpoint of ``{"w": array}`` whose header entry and member bytes can be forged."""
    entry = entry or {"path": "w", "dtype": array.dtype.name, "shape": list(array.shape)}
    payload = npy(array) if payload is None else payload
    return forge(path, [("__header__.json", header([entry])), ("w.npy", payload)], compression)


def patch_central(path, name, *, file_size=None, header_offset=None):
    """Rewrites fields of `name`'s central-directory entry (a non-zip64 archive)."""
    with zipfile.ZipFile(path) as archive:
        at = archive.start_dir  # the first central-directory entry
    data = bytearray(path.read_bytes())
    while True:
        length = int.from_bytes(data[at + 28 : at + 30], "little")
        if data[at + 46 : at + 46 + length] == name.encode():
            break
        extra = int.from_bytes(data[at + 30 : at + 32], "little")
        comment = int.from_bytes(data[at + 32 : at + 34], "little")
        at += 46 + length + extra + comment
    if file_size is not None:
        data[at + 24 : at + 28] = file_size.to_bytes(4, "little")
    if header_offset is not None:
        data[at + 42 : at + 46] = header_offset.to_bytes(4, "little")
    path.write_bytes(bytes(data))


def central_offset(path, name):
    with zipfile.ZipFile(path) as archive:
        return archive.getinfo(name).header_offset


def test_a_gigantic_shape_fails_fast_without_allocating(tmp_path):
    giant = {"path": "w", "dtype": "float32", "shape": [10**12]}
    small = np.zeros(4, np.float32)
    path = one_leaf(tmp_path / "giant.npz", small, entry=giant)
    message = refused(path, r"leaf w is declared float32\(1000000000000,\), 4000000000000 bytes")
    assert message.endswith("but its member holds 144; refusing to load it")
    # The .npy header claims it too, the checkpoint header agrees with the member.
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": "<f4", "fortran_order": False, "shape": (10**12,)}
    )
    forged = stream.getvalue() + small.tobytes()
    entry = {"path": "w", "dtype": "float32", "shape": [4]}
    path = one_leaf(tmp_path / "giant_npy.npz", small, entry=entry, payload=forged)
    refused(path, r"leaf w is stored as float32\(1000000000000,\), but the header lists it as")


def test_a_zip_bomb_is_refused_before_inflating(tmp_path):
    path = tmp_path / "bomb.npz"
    count = 16 * 2**20  # 64 MiB of float32 zeros, about 64 KiB deflated
    entry = {"path": "w", "dtype": "float32", "shape": [count]}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("__header__.json", header([entry]))
        with archive.open("w.npy", "w") as member:
            np.lib.format.write_array_header_1_0(
                member, {"descr": "<f4", "fortran_order": False, "shape": (count,)}
            )
            zeros = bytes(2**20)
            for _ in range(count * 4 // len(zeros)):
                member.write(zeros)
    assert path.stat().st_size < 2**20
    refused(path, r"member 'w.npy' would expand \d+ bytes to 67108992, more than MAX_COMPRESS")


def test_sizes_the_central_directory_lies_about_are_refused(tmp_path):
    array = np.arange(8, dtype=np.float32)
    path = one_leaf(tmp_path / "stored.npz", array)
    patch_central(path, "w.npy", file_size=2**31)
    refused(path, r"stored member 'w.npy' declares 2147483648 bytes but occupies 160")

    path = one_leaf(tmp_path / "deflated.npz", array, compression=zipfile.ZIP_DEFLATED)
    patch_central(path, "w.npy", file_size=2**31)
    refused(path, r"member 'w.npy' would expand \d+ bytes to 2147483648")

    # Two entries sharing their data, the overlapping-member bomb.
    entries = [{"path": p, "dtype": "float32", "shape": [8]} for p in ("a", "b")]
    members = [("__header__.json", header(entries)), ("a.npy", npy(array)), ("b.npy", npy(array))]
    path = forge(tmp_path / "overlap.npz", members)
    patch_central(path, "b.npy", header_offset=central_offset(path, "a.npy"))
    refused(path, r"members 'a.npy' and 'b.npy' overlap")


def test_total_size_is_capped(tmp_path, monkeypatch):
    path = one_leaf(tmp_path / "big.npz", np.zeros(1000, np.float64))
    monkeypatch.setattr(checkpoint, "MAX_TOTAL_BYTES", 4096)
    refused(path, r"declare \d+ bytes in all, more than MAX_TOTAL_BYTES=4096 \(raise funcnet")
    monkeypatch.setattr(checkpoint, "MAX_HEADER_BYTES", 64)
    monkeypatch.setattr(checkpoint, "MAX_TOTAL_BYTES", 2**30)
    refused(path, r"its header declares \d+ bytes, more than MAX_HEADER_BYTES=64")


def test_an_absurd_number_of_members_is_refused(tmp_path, monkeypatch):
    assert checkpoint.MAX_MEMBERS == 100_000
    monkeypatch.setattr(checkpoint, "MAX_MEMBERS", 50)
    members = [("__header__.json", header([]))] + [(f"m{i}.npy", b"") for i in range(50)]
    path = forge(tmp_path / "many.npz", members)
    refused(path, r"the archive lists 51 members, more than MAX_MEMBERS=50; refusing to load")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("../w.npy", "has an empty, '.' or '..' component"),
        ("a/../../w.npy", "has an empty, '.' or '..' component"),
        ("a\\..\\w.npy", "has an empty, '.' or '..' component"),
        ("/etc/w.npy", "is an absolute path"),
        ("\\w.npy", "is an absolute path"),
    ],
)
def test_unsafe_member_names_are_refused(tmp_path, name, reason):
    entry = {"path": name[:-4], "dtype": "float32", "shape": [2]}
    members = [("__header__.json", header([entry])), (name, npy(np.zeros(2, np.float32)))]
    path = forge(tmp_path / "names.npz", members)
    message = refused(path, "member name")
    assert message.endswith(f"member name {name!r} {reason}; refusing to load it")


def test_names_with_nul_or_that_are_not_utf8_are_refused(tmp_path):
    entry = {"path": "w", "dtype": "float32", "shape": [2]}

    def forged(name, old, new):
        members = [("__header__.json", header([entry])), (name, npy(np.zeros(2, np.float32)))]
        path = forge(tmp_path / "names.npz", members)
        path.write_bytes(path.read_bytes().replace(old, new))
        return path

    refused(forged("aXb.npy", b"aXb", b"a\0b"), r"member name 'a\\x00b.npy' contains a NUL byte")
    refused(forged("wé.npy", "é".encode(), b"\xff\xfe"), "marked as UTF-8 is not valid UTF-8")
    refused(forged("wXY.npy", b"wXY", b"w\xff\xfe"), r"member name .* is not marked as UTF-8")


def test_duplicate_unlisted_and_missing_members_are_refused(tmp_path):
    array = np.zeros(2, np.float32)
    entry = {"path": "w", "dtype": "float32", "shape": [2]}
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = forge(
            tmp_path / "dup.npz",
            [("__header__.json", header([entry])), ("w.npy", npy(array)), ("w.npy", npy(array))],
        )
    refused(path, r"member 'w.npy' appears more than once")
    members = [("__header__.json", header([entry])), ("w.npy", npy(array)), ("x", b"")]
    refused(forge(tmp_path / "extra.npz", members), r"member 'x' is not a leaf listed")
    path = forge(tmp_path / "missing.npz", [("__header__.json", header([entry]))])
    refused(path, r"leaf w is listed but not stored")
    members = [("__header__.json", header([entry, entry])), ("w.npy", npy(array))]
    path = forge(tmp_path / "twice.npz", members)
    refused(path, r"the header lists leaf w more than once")


def test_data_shorter_or_longer_than_its_shape_is_refused(tmp_path):
    array = np.arange(10, dtype=np.float32)
    path = one_leaf(tmp_path / "short.npz", array, payload=npy(array)[:-4])
    refused(path, r"leaf w is float32\(10,\), 40 bytes, but its member holds 36 bytes of data")
    path = one_leaf(tmp_path / "long.npz", array, payload=npy(array) + bytes(4))
    refused(path, r"leaf w is float32\(10,\), 40 bytes, but its member holds 44 bytes of data")
    path = one_leaf(tmp_path / "dtype.npz", array, payload=npy(array.astype(np.int32)))
    refused(path, r"leaf w is stored as int32\(10,\), but the header lists it as float32\(10,\)")


unpickled = []


class Tripwire:
    def __reduce__(self):
        return unpickled.append, ("unpickled",)


def test_pickled_objects_are_never_unpickled(tmp_path):
    pickled = npy(np.array([Tripwire()], dtype=object), allow_pickle=True)
    entry = {"path": "w", "dtype": "float64", "shape": [1]}
    path = one_leaf(tmp_path / "pickle.npz", np.zeros(1), entry=entry, payload=pickled)
    refused(path, r"leaf w is stored with dtype object; checkpoints hold plain numeric arrays")
    entry = {"path": "w", "dtype": "object", "shape": [1]}
    path = one_leaf(tmp_path / "object.npz", np.zeros(1), entry=entry, payload=pickled)
    refused(path, r"malformed checkpoint header: leaf entry 0 is")
    assert unpickled == []


def test_truncated_files_are_refused_at_every_length(tmp_path):
    whole = checkpoint.save(tmp_path / "a.npz", {"w": np.arange(500, dtype=np.float32)})
    data = whole.read_bytes()
    path = tmp_path / "cut.npz"
    for length in range(0, len(data), len(data) // 16):
        path.write_bytes(data[:length])
        refused(path, "truncated or corrupted")


@pytest.mark.parametrize(
    "text, match",
    [
        (b"[1, 2]", r"not a funcnet checkpoint \(format None\)"),
        (b"\xff\xfe{", "unreadable checkpoint header"),
        (b"[" * 100_000 + b"]" * 100_000, "unreadable checkpoint header"),
        (header([], leaves={"w": 1}), r"malformed checkpoint header \(no leaf list"),
        (header([], metadata=[]), r"malformed checkpoint header \(metadata is not"),
        (header([{"path": "w", "dtype": "float32", "shape": [-1]}]), "leaf entry 0 is"),
        (header([{"path": "w", "dtype": "V8", "shape": [1]}]), "leaf entry 0 is"),
        (header([{"path": "w", "shape": [1]}]), "leaf entry 0 is"),
    ],
)
def test_malformed_headers_are_refused(tmp_path, text, match):
    refused(forge(tmp_path / "header.npz", [("__header__.json", text)]), match)


@pytest.mark.parametrize("structure", [{"leaf": 5}, {"list": 3}, json.loads("[" * 900 + "]" * 900)])
def test_a_malformed_tree_structure_is_refused(tmp_path, structure):
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b""
    text = header([], structure=structure, sha256=empty)
    path = forge(tmp_path / "header.npz", [("__header__.json", text)])
    refused(path, r"malformed tree structure in its header \(")


def test_a_deflated_copy_of_a_checkpoint_still_loads(tmp_path):
    tree = {"w": np.random.default_rng(0).normal(size=(30, 20)), "b": np.zeros(20)}
    path = checkpoint.save(tmp_path / "a.npz", tree)
    with zipfile.ZipFile(path) as archive:
        members = [(info.filename, archive.read(info)) for info in archive.infolist()]
    copy = forge(tmp_path / "deflated.npz", members, zipfile.ZIP_DEFLATED)
    loaded = checkpoint.load(copy, like=tree)
    np.testing.assert_array_equal(loaded["w"], tree["w"])
    assert loaded["b"].flags.writeable
    with zipfile.ZipFile(copy) as archive:
        info = archive.getinfo("w.npy")
    data = bytearray(copy.read_bytes())
    data[info.header_offset + 100 : info.header_offset + 400] = bytes(300)  # a damaged stream
    copy.write_bytes(bytes(data))
    refused(copy, "corrupted")


@pytest.mark.parametrize("key", ["..", ".", "a\\b", "a\0b"])
def test_save_refuses_keys_that_would_make_unsafe_member_names(tmp_path, key):
    with pytest.raises(ValueError, match=r"not '\.' or '\.\.', and contain no '/'"):
        checkpoint.save(tmp_path / "a.npz", {"x": {key: np.zeros(1)}})
    assert os.listdir(tmp_path) == []
