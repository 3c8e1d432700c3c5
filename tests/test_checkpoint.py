"""`funcnet.checkpoint`: exact round trips, template validation, corruption, atomic writes."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import checkpoint, nn, optim, train


def leaves_as_numpy(tree):
    out = []
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append(np.asarray(leaf))
    return out


def assert_bit_exact(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(leaves_as_numpy(a), leaves_as_numpy(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def state():
    """A train state after two Adam steps: params, NamedTuple optimizer state, step, key."""
    model = nn.serial(nn.dense(5), nn.relu, nn.dense(2))
    opt = optim.adamw(1e-2, amsgrad=True)
    state = train.init_train_state(model, opt, jax.random.key(0), (4, 3))
    step = train.make_step(model, opt, loss_fn=lambda out, y: jnp.mean((out - y) ** 2))
    x = jnp.linspace(-1, 1, 12, dtype=jnp.float32).reshape(4, 3)
    for _ in range(2):
        state, _ = step(state, (x, jnp.ones((4, 2))))
    return state


def test_train_state_round_trips_bit_exactly_with_its_types(tmp_path, state):
    path = checkpoint.save(tmp_path / "state.npz", state, metadata={"model": "mlp", "width": 5})
    restored = checkpoint.load(path, like=state)
    assert_bit_exact(restored, state)
    assert type(restored) is train.TrainState
    assert type(restored.opt_state) is type(state.opt_state)
    assert [type(s) for s in restored.opt_state] == [type(s) for s in state.opt_state]
    assert isinstance(restored.params["dense_0"]["w"], jax.Array)
    assert checkpoint.metadata(path) == {"model": "mlp", "width": 5}
    assert sorted(os.listdir(tmp_path)) == ["state.npz"]  # no temporary file left behind


def test_loading_without_a_template_rebuilds_the_containers(tmp_path, state):
    path = checkpoint.save(tmp_path / "state.npz", state)
    restored = checkpoint.load(path)
    assert type(restored).__name__ == "TrainState" and restored._fields == state._fields
    assert isinstance(restored.params["dense_0"]["w"], np.ndarray)
    assert isinstance(restored.opt_state, tuple) and restored.opt_state[1] == ()
    assert type(restored.opt_state[0]).__name__ == "ScaleByAdamState"
    for x, y in zip(leaves_as_numpy(restored), leaves_as_numpy(state), strict=True):
        assert x.tobytes() == y.tobytes()


def test_file_is_a_documented_npz_archive(tmp_path, state):
    path = checkpoint.save(tmp_path / "state.npz", state, metadata={"note": "hi"})
    with np.load(path) as archive:
        np.testing.assert_array_equal(archive["params/dense_0/w"], state.params["dense_0"]["w"])
        np.testing.assert_array_equal(
            archive["opt_state/0/mu/dense_2/b"], state.opt_state[0].mu["dense_2"]["b"]
        )
        np.testing.assert_array_equal(archive["key"], jax.random.key_data(state.key))
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read("__header__.json"))
        assert all(info.compress_type == zipfile.ZIP_STORED for info in archive.infolist())
    assert header["format"] == "funcnet.checkpoint" and header["version"] == 1
    assert header["metadata"] == {"note": "hi"}
    paths = [leaf["path"] for leaf in header["leaves"]]
    assert paths[:2] == ["params/dense_0/b", "params/dense_0/w"]
    assert {"path": "step", "dtype": "int32", "shape": []} in header["leaves"]
    assert header["leaves"][-1] == {
        "path": "key",
        "dtype": "key",
        "shape": [],
        "key_impl": "threefry2x32",
    }
    assert len(header["sha256"]) == 64


def test_dtypes_survive_exactly(tmp_path, x64):
    tree = {
        "f64": jnp.asarray([1 / 3, np.pi], jnp.float64),
        "bf16": jnp.asarray([1.5, -2.25, 3e-3], jnp.bfloat16),
        "i8": np.array([-128, 127], np.int8),
        "u32": np.array([2**32 - 1], np.uint32),
        "bool": np.array([True, False]),
        "c64": np.array([1 + 2j], np.complex64),
        "rbg_keys": jax.random.split(jax.random.key(1, impl="rbg"), 3),
        "empty": np.zeros((0, 4), np.float32),
        "nested": [None, (np.float64(2.5),)],
    }
    path = checkpoint.save(tmp_path / "dtypes.npz", tree)
    assert_bit_exact(checkpoint.load(path, like=tree), tree)
    loose = checkpoint.load(path)
    assert loose["bf16"].dtype == jnp.bfloat16 and loose["nested"][0] is None
    assert str(jax.random.key_impl(loose["rbg_keys"])) == "rbg"


def test_mismatched_template_names_every_missing_extra_and_mismatched_leaf(tmp_path):
    saved = {
        "dense": {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)},
        "step": np.int32(0),
    }
    path = checkpoint.save(tmp_path / "a.npz", saved)
    like = {
        "dense": {"w": np.zeros((3, 5), np.float32), "b": np.zeros(4, np.float16)},
        "scale": np.ones(2, np.float32),
    }
    with pytest.raises(ValueError) as info:
        checkpoint.load(path, like=like)
    message = str(info.value)
    assert "missing (expected, not in the file): scale float32(2,)" in message
    assert "extra (in the file, not expected): step int32()" in message
    assert "mismatched: dense/w: the file has float32(3, 4), expected float32(3, 5)" in message
    assert "mismatched: dense/b: the file has float32(4,), expected float16(4,)" in message
    assert len(message.splitlines()) == 5


def test_optimizer_state_of_another_optimizer_is_refused(tmp_path, state):
    path = checkpoint.save(tmp_path / "state.npz", state)
    model = nn.serial(nn.dense(5), nn.relu, nn.dense(2))
    other = train.init_train_state(model, optim.sgd(0.1, momentum=0.9), jax.random.key(0), (4, 3))
    with pytest.raises(checkpoint.CheckpointError, match=r"opt_state/1/trace/dense_0/w"):
        checkpoint.load(path, like=other)


def test_changed_array_bytes_fail_the_checksum(tmp_path):
    path = checkpoint.save(tmp_path / "a.npz", {"w": np.arange(1000, dtype=np.float32)})
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["w.npy"] = members["w.npy"][:-4] + np.float32(-1).tobytes()
    with zipfile.ZipFile(path, "w") as archive:  # a well-formed zip, so only sha256 can tell
        for name, payload in members.items():
            archive.writestr(name, payload)
    with pytest.raises(checkpoint.CheckpointError, match="checksum mismatch"):
        checkpoint.load(path)


def test_a_flipped_byte_is_caught(tmp_path):
    path = checkpoint.save(tmp_path / "a.npz", {"w": np.arange(1000, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.load(path)


def test_a_truncated_file_is_refused_clearly(tmp_path):
    path = checkpoint.save(tmp_path / "a.npz", {"w": np.arange(1000, dtype=np.float32)})
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(checkpoint.CheckpointError, match="truncated or corrupted"):
        checkpoint.load(path)
    other = tmp_path / "plain.npz"
    np.savez(other, w=np.zeros(2))
    with pytest.raises(checkpoint.CheckpointError, match="not a funcnet checkpoint"):
        checkpoint.load(other)


def test_unsuitable_trees_and_metadata_are_refused(tmp_path):
    with pytest.raises(ValueError, match="contain no '/'"):
        checkpoint.save(tmp_path / "a.npz", {"a/b": np.zeros(1)})
    with pytest.raises(TypeError, match="JSON"):
        checkpoint.save(tmp_path / "a.npz", {"a": np.zeros(1)}, metadata={"f": object()})
    with pytest.raises(ValueError, match="bare array"):
        checkpoint.save(tmp_path / "a.npz", np.zeros(1))
    assert os.listdir(tmp_path) == []


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    checkpoint.save(tmp_path / "a.npz", {"w": np.zeros(1)})
    assert os.listdir(tmp_path) == []


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from funcnet import checkpoint

    write_leaf = checkpoint._write_leaf

    def slow_write_leaf(archive, path, array):
        write_leaf(archive, path, array)
        print("wrote", path, flush=True)
        time.sleep(60)

    checkpoint._write_leaf = slow_write_leaf
    checkpoint.save(sys.argv[1], {"a": np.full(1000, 2.0), "b": np.full(1000, 2.0)})
    """
)


def test_a_write_killed_midway_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpt.npz"
    previous = {"a": np.full(1000, 1.0), "b": np.full(1000, 1.0)}
    checkpoint.save(path, previous)
    writer = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().startswith("wrote")
        assert len(list(tmp_path.glob(f"ckpt.npz.tmp-{writer.pid}-*"))) == 1
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert_bit_exact(checkpoint.load(path, like=previous), previous)
    # The stray temporary file stays; a later save is unaffected by it.
    checkpoint.save(path, {"a": np.zeros(3)})
    np.testing.assert_array_equal(checkpoint.load(path)["a"], np.zeros(3))


# One process imports funcnet once and forks a writer per request, so that each of the
# `KILLS` writers starts in milliseconds rather than the 2 s of a fresh interpreter's
# imports. It is single-threaded when it forks (importing funcnet starts no XLA backend),
# and a writer only saves numpy arrays. Each line it prints names its sender.
FORKING_WRITER = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from funcnet import checkpoint
    path = sys.argv[1]
    print("ready", flush=True)
    for request in sys.stdin:
        command, number = request.split()
        if command == "reap":
            os.waitpid(int(number), 0)
            print("reaped", number, flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            try:
                version = int(number)
                while True:
                    tree = {"a": np.full(300_000, float(version)), "version": np.int64(version)}
                    checkpoint.save(path, tree, metadata={"version": version})
                    # One write(2) of under PIPE_BUF bytes, which SIGKILL cannot cut in two: a
                    # print may write its parts one by one (unbuffered, as under pytest-xdist),
                    # and a kill between them left "saved" glued to the next line.
                    os.write(1, f"saved {version}\\n".encode())
                    version += 1
            finally:  # only on an error: the test must not wait for a save that never comes
                print("failed", flush=True)
                os._exit(1)
        print("writer", pid, flush=True)
    """
)
KILLS = 10


def test_saves_killed_at_random_points_never_leave_an_unreadable_checkpoint(tmp_path):
    """SIGKILL a process that saves in a loop, at a random moment, `KILLS` times over: the
    file at the path is always a whole checkpoint, one of the versions written."""
    path = tmp_path / "ckpt.npz"
    rng = np.random.default_rng(0)
    forker = subprocess.Popen(
        [sys.executable, "-c", FORKING_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )

    def read_until(start):
        while not (line := forker.stdout.readline()).startswith(start):
            assert line and line != "failed\n", "a writer failed or the forking process ended"
        return line

    def ask(command, number, until):
        forker.stdin.write(f"{command} {number}\n")
        forker.stdin.flush()
        return read_until(until)

    # A lost line would leave the test waiting on the pipe for ever: after two minutes the
    # forking process is killed, its pipe closes and `read_until` fails instead.
    watchdog = threading.Timer(120, forker.kill)
    watchdog.start()
    try:
        assert forker.stdout.readline() == "ready\n"
        version = 0
        for _ in range(KILLS):
            writer = int(ask("write", version, until="writer").split()[1])
            read_until("saved")  # one whole save done
            time.sleep(rng.uniform(0, 0.05))  # now kill it mid-stream
            os.kill(writer, signal.SIGKILL)
            ask("reap", writer, until=f"reaped {writer}")
            loaded = checkpoint.load(path)
            stored = int(loaded["version"])
            assert stored >= version
            assert checkpoint.metadata(path) == {"version": stored}
            np.testing.assert_array_equal(loaded["a"], np.full(300_000, float(stored)))
            version = stored + 1
    finally:
        watchdog.cancel()
        forker.kill()
        forker.wait()


@pytest.mark.parametrize(
    ("leaf", "fragments"),
    [
        ("relu", ["params/act", "str", "'relu'"]),
        (object(), ["params/act", "object"]),
        (np.array(["a", "b"]), ["params/act", "ndarray", "<U1"]),
        (b"raw", ["params/act", "bytes"]),
    ],
)
def test_a_leaf_that_is_not_an_array_of_numbers_is_refused_by_path_and_type(
    tmp_path, leaf, fragments
):
    tree = {"params": {"w": np.zeros(2), "act": leaf}}
    with pytest.raises(TypeError) as info:
        checkpoint.save(tmp_path / "a.npz", tree)
    message = str(info.value)
    assert "\n" not in message and all(f in message for f in fragments), message
    assert os.listdir(tmp_path) == []  # refused before anything is written


def test_every_load_failure_is_a_checkpoint_error(tmp_path, monkeypatch):
    with pytest.raises(checkpoint.CheckpointError, match="no such checkpoint file"):
        checkpoint.load(tmp_path / "missing.npz")
    with pytest.raises(checkpoint.CheckpointError, match="is a folder"):
        checkpoint.load(tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="is a folder"):
        checkpoint.metadata(tmp_path)
    path = checkpoint.save(tmp_path / "a.npz", {"w": np.zeros(2)})

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(zipfile, "ZipFile", denied)
    with pytest.raises(checkpoint.CheckpointError, match="permission denied"):
        checkpoint.load(path)


def test_a_save_to_a_folder_or_into_a_missing_folder_is_refused_leaving_nothing(tmp_path):
    tree = {"w": np.zeros(2)}
    (tmp_path / "run").mkdir()
    (tmp_path / "notes.txt").write_text("kept")
    refused = {
        tmp_path / "run": "run: is a folder, not a checkpoint file",
        tmp_path / "missing" / "a.npz": "its folder .*missing does not exist",
        tmp_path / "notes.txt" / "a.npz": "its folder .*notes.txt is a file",
    }
    for path, message in refused.items():
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.save(path, tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "run"]
    assert not list((tmp_path / "run").iterdir())
    assert (tmp_path / "notes.txt").read_text() == "kept"


THREADS, SAVES = 8, 20


def test_threads_saving_one_path_never_leave_a_broken_file(tmp_path):
    """8 threads × 20 saves to one path, each of its own tree: every save succeeds, the file
    read after each is a whole checkpoint equal to one of the trees written, and no temporary
    file is left behind."""
    path = tmp_path / "shared.npz"
    trees = {
        (t, i): {"a": np.full(20_000, t * SAVES + i, np.float64), "n": np.int64(t * SAVES + i)}
        for t in range(THREADS)
        for i in range(SAVES)
    }
    errors, seen = [], []
    start = threading.Barrier(THREADS)

    def writer(t):
        start.wait()
        for i in range(SAVES):
            try:
                checkpoint.save(path, trees[t, i], metadata={"version": t * SAVES + i})
                loaded = checkpoint.load(path)
                seen.append(int(loaded["n"]))
                assert_bit_exact(loaded, trees[divmod(int(loaded["n"]), SAVES)])
            except Exception as err:  # gathered, and reported by the assertion below
                errors.append(repr(err))

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(seen) == THREADS * SAVES
    final = checkpoint.load(path)
    version = int(final["n"])
    assert_bit_exact(final, trees[divmod(version, SAVES)])
    assert checkpoint.metadata(path) == {"version": version}
    assert sorted(os.listdir(tmp_path)) == ["shared.npz"]
