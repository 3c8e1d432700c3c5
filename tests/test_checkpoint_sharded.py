"""Sharded checkpoints on orbax: `save_sharded`, `load_sharded`, `sharded_steps`,
`sharded_metadata`.

Several devices: 8 forced host devices in a subprocess (the device count is fixed when JAX
starts), as in tests/train/test_train_data_parallel.py; this process restores what the
subprocess wrote onto its own single device.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from funcnet import checkpoint, nn, optim, train
from tests.helpers import host_devices
from tests.test_checkpoint import assert_bit_exact

ROOT = Path(__file__).resolve().parents[1]


def small_state():
    """A train state whose every optimizer leaf holds distinct values, not zeros."""
    model = nn.serial(nn.dense(16), nn.relu, nn.dense(8))
    state = train.init_train_state(model, optim.adam(1e-3), jax.random.key(0), (4, 8))
    leaves, treedef = jax.tree.flatten(state.opt_state)
    filled = [jnp.arange(x.size, dtype=x.dtype).reshape(x.shape) + i for i, x in enumerate(leaves)]
    return state._replace(opt_state=jax.tree.unflatten(treedef, filled), step=jnp.int32(7))


def tree_of(size):
    """A tree of one float32 array of `size` elements and a key."""
    return {"params": {"w": jnp.arange(size, dtype=jnp.float32)}, "key": jax.random.key(size)}


def run(script, *args):
    """Runs `script` in a fresh Python with 8 host devices; returns its exit status."""
    env = {
        **os.environ,
        "XLA_FLAGS": host_devices(8),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], cwd=ROOT, env=env, timeout=120
    )
    return done.returncode


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A directory holding steps 1 and 2 of `small_state()`, and the state."""
    directory = tmp_path_factory.mktemp("sharded") / "run"
    state = small_state()
    checkpoint.save_sharded(directory, state, step=1, metadata={"step": 1})
    checkpoint.save_sharded(directory, state, step=2, metadata={"step": 2})
    return directory, state


def test_train_state_round_trips_with_its_key_and_types(saved):
    directory, state = saved
    for like in (state, jax.eval_shape(lambda: state)):
        restored = checkpoint.load_sharded(directory, like=like)
        assert type(restored) is train.TrainState and restored.ema is None
        assert_bit_exact(restored, state)
        assert jax.random.key_impl(restored.key) == jax.random.key_impl(state.key)
        for leaf in jax.tree.leaves(restored):
            assert leaf.sharding == jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


EIGHT_DEVICES = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from funcnet import checkpoint
    from tests.test_checkpoint import assert_bit_exact
    from tests.test_checkpoint_sharded import small_state

    assert len(jax.devices()) == 8
    state = small_state()
    mesh = Mesh(np.array(jax.devices()), ("data",))

    def on_eight(x):
        spec = P("data") if x.ndim and x.shape[0] % 8 == 0 else P()
        return jax.device_put(x, NamedSharding(mesh, spec))

    sharded = jax.tree.map(on_eight, state)
    w = sharded.params["dense_0"]["w"]
    assert w.shape == (8, 16) and len(w.addressable_shards) == 8
    assert w.addressable_shards[0].data.shape == (1, 16)
    checkpoint.save_sharded(sys.argv[1], sharded, step=3)

    # Onto 4 of the devices, as a 2 x 2 mesh sharding every axis.
    square = Mesh(np.array(jax.devices()[:4]).reshape(2, 2), ("a", "b"))
    def on_four(x):
        sharding = NamedSharding(square, P(*("a", "b")[-x.ndim:]) if x.ndim else P())
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    like = jax.tree.map(on_four, state)
    restored = checkpoint.load_sharded(sys.argv[1], like=like)
    assert_bit_exact(restored, state)
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(like), strict=True):
        assert got.sharding == want.sharding, (got.sharding, want.sharding)
    assert restored.params["dense_0"]["w"].addressable_shards[0].data.shape == (4, 8)
    """
)


def test_eight_device_state_restores_onto_four_devices_and_onto_one(tmp_path):
    directory = tmp_path / "run"
    assert run(EIGHT_DEVICES, directory) == 0
    state = small_state()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), state)
    restored = checkpoint.load_sharded(directory, like=like)
    assert_bit_exact(restored, state)
    assert all(leaf.sharding == one for leaf in jax.tree.leaves(restored))


KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys, time
    from funcnet import checkpoint
    from tests.test_checkpoint_sharded import tree_of

    checkpoint.save_sharded(sys.argv[1], tree_of(16), step=1)
    checkpoint.save_sharded(sys.argv[1], tree_of(10_000_000), step=2, wait=False)  # 40 MB
    # Orbax creates step 2's temporary folder in the background too: kill once it is there.
    deadline = time.monotonic() + 5
    while len(os.listdir(sys.argv[1])) < 2 and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_save_killed_midway_leaves_the_previous_step_restorable(tmp_path):
    directory = tmp_path / "run"
    assert run(KILLED_SAVE, directory) == -signal.SIGKILL
    # Step 2's unfinished temporary folder stays, unseen.
    assert [p.name for p in directory.iterdir() if p.name != "1"]
    assert checkpoint.sharded_steps(directory) == [1]
    assert_bit_exact(checkpoint.load_sharded(directory, like=tree_of(16)), tree_of(16))
    # A later save of step 2 replaces the leftover.
    checkpoint.save_sharded(directory, tree_of(3), step=2)
    assert checkpoint.sharded_steps(directory) == [1, 2]
    assert_bit_exact(checkpoint.load_sharded(directory, like=tree_of(3)), tree_of(3))


EXITING_SAVE = textwrap.dedent(
    """
    import sys
    from funcnet import checkpoint
    from tests.test_checkpoint_sharded import tree_of

    checkpoint.save_sharded(sys.argv[1], tree_of(5_000_000), step=1, wait=False)  # 20 MB
    """
)


def test_python_exiting_during_a_background_save_completes_it(tmp_path):
    directory = tmp_path / "run"
    assert run(EXITING_SAVE, directory) == 0
    assert checkpoint.sharded_steps(directory) == [1]
    assert_bit_exact(
        checkpoint.load_sharded(directory, like=tree_of(5_000_000)), tree_of(5_000_000)
    )


def test_metadata_round_trips_and_keep_two_keeps_the_newest_two(tmp_path):
    directory = tmp_path / "run"
    for step in (1, 2, 3):
        metadata = {"step": step, "model": {"hidden": [16, 8]}}
        checkpoint.save_sharded(
            directory, tree_of(step), step=step, metadata=metadata, keep=2, wait=step == 1
        )
    # Reading waits for the background saves of this process.
    assert checkpoint.sharded_steps(directory) == [2, 3]
    assert checkpoint.sharded_metadata(directory) == {"step": 3, "model": {"hidden": [16, 8]}}
    assert checkpoint.sharded_metadata(directory, step=2)["step"] == 2
    assert_bit_exact(checkpoint.load_sharded(directory, like=tree_of(2), step=2), tree_of(2))
    checkpoint.save_sharded(directory, tree_of(4), step=4, wait=False)
    checkpoint.wait_sharded(directory)
    assert checkpoint.sharded_metadata(directory) == {}
    assert checkpoint.sharded_steps(directory) == [2, 3, 4]
    assert checkpoint.sharded_steps(tmp_path / "none") == []


MISMATCHES = {
    "shape": (
        lambda s: s._replace(
            params={**s.params, "dense_0": {**s.params["dense_0"], "w": jnp.zeros((9, 16))}}
        ),
        ["leaf params/dense_0/w", "float32(8, 16)", "float32(9, 16)"],
    ),
    "dtype": (lambda s: s._replace(step=jnp.float32(0)), ["leaf step", "int32()", "float32()"]),
    "key shape": (
        lambda s: s._replace(key=jax.random.split(s.key)),
        ["leaf key", "uint32(2,)", "uint32(2, 2)", "key<fry>(2,)"],
    ),
    "missing leaf": (lambda s: s._replace(ema=s.params), ["no leaf ema/dense_0/b", "float32(16,)"]),
    "extra leaf": (
        lambda s: s._replace(params={"dense_0": s.params["dense_0"]}),
        ["leaf params/dense_2/b", "float32(8,)", "not in the expected tree"],
    ),
    "None where a leaf is stored": (
        lambda s: s._replace(key=None),
        ["leaf key", "not in the expected tree"],
    ),
}


@pytest.mark.parametrize("case", MISMATCHES)
def test_a_target_that_does_not_match_is_refused_in_one_line_naming_the_leaf(saved, case):
    directory, state = saved
    change, parts = MISMATCHES[case]
    with pytest.raises(checkpoint.CheckpointError) as err:
        checkpoint.load_sharded(directory, like=change(state))
    message = str(err.value)
    assert "\n" not in message and f"{directory} step 2" in message
    for part in parts:
        assert part in message


def test_directories_without_the_step_are_refused_naming_the_steps_saved(saved, tmp_path):
    directory, state = saved
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a checkpoint")
    cases = {
        tmp_path / "none": "no such checkpoint directory",
        tmp_path / "file": "is a file, not a checkpoint directory",
        tmp_path / "empty": "holds no saved steps",
    }
    for path, message in cases.items():
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.load_sharded(path, like=state)
        with pytest.raises(checkpoint.CheckpointError, match=message):
            checkpoint.sharded_metadata(path)
    for read in (
        lambda: checkpoint.load_sharded(directory, like=state, step=7),
        lambda: checkpoint.sharded_metadata(directory, step=7),
    ):
        with pytest.raises(
            checkpoint.CheckpointError, match=r"has no step 7; the saved steps are \[1, 2\]$"
        ):
            read()


# Orbax leaves an "Event loop is closed" error behind on the failed read, plain orbax too.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_damaged_array_data_is_a_checkpoint_error(saved, tmp_path):
    directory, state = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    for data in (copy / "2" / "tree").rglob("*"):
        if data.is_file() and data.parent.name == "d":
            data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(checkpoint.CheckpointError, match=f"{copy} step 2") as err:
        checkpoint.load_sharded(copy, like=state)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600
    assert_bit_exact(checkpoint.load_sharded(copy, like=state, step=1), state)


def test_the_target_says_which_leaves_are_keys(tmp_path):
    key = jax.random.key(3)
    checkpoint.save_sharded(tmp_path / "data", {"k": jax.random.key_data(key)}, step=0)
    checkpoint.save_sharded(tmp_path / "key", {"k": key}, step=0)
    as_key = checkpoint.load_sharded(tmp_path / "data", like={"k": key})
    as_data = checkpoint.load_sharded(tmp_path / "key", like={"k": jax.random.key_data(key)})
    assert jax.dtypes.issubdtype(as_key["k"].dtype, jax.dtypes.prng_key)
    assert as_data["k"].dtype == jnp.uint32
    assert_bit_exact(as_key, {"k": key})
    assert_bit_exact(as_data, {"k": jax.random.key_data(key)})


def test_unsuitable_saves_are_refused_before_writing(tmp_path):
    directory = tmp_path / "run"
    checkpoint.save_sharded(directory, tree_of(2), step=5)
    refused = [
        (ValueError, "newest step saved there is 5", dict(tree=tree_of(2), step=5)),
        (ValueError, "newest step saved there is 5", dict(tree=tree_of(2), step=4)),
        (
            ValueError,
            "orbax names both 'a.b'",
            dict(tree={"a.b": jnp.ones(2), "a": {"b": jnp.ones(2)}}, step=6),
        ),
        (TypeError, "leaf params/name, of type str", dict(tree={"params": {"name": "x"}}, step=6)),
        (TypeError, "JSON-serialisable", dict(tree=tree_of(2), step=6, metadata={"f": object()})),
    ]
    for kind, message, kwargs in refused:
        with pytest.raises(kind, match=message):
            checkpoint.save_sharded(directory, **kwargs)
    assert checkpoint.sharded_steps(directory) == [5]
    assert_bit_exact(checkpoint.load_sharded(directory, like=tree_of(2)), tree_of(2))


BAD_DIRECTORIES = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from funcnet import checkpoint
    from tests.test_checkpoint_sharded import tree_of

    file = Path(sys.argv[1]) / "notes.txt"
    file.parent.mkdir()
    file.write_text("not a checkpoint")
    for where in (file, file / "run"):
        try:
            checkpoint.save_sharded(where, tree_of(2), step=1)
        except checkpoint.CheckpointError as err:
            print("refused:", err)
    checkpoint.save_sharded(Path(sys.argv[1]) / "run", tree_of(2), step=1)
    print("saved")
    """
)


def test_a_directory_that_is_or_lies_under_a_file_is_refused_and_python_exits(tmp_path):
    # Orbax's writer threads failed there with three printed tracebacks each, and left threads
    # waiting that held Python's exit for minutes; the path is now checked before orbax starts.
    folder = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-c", BAD_DIRECTORIES, str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [
        f"refused: {folder / 'notes.txt'}: is a file, not a checkpoint directory",
        f"refused: {folder / 'notes.txt' / 'run'}: cannot create the checkpoint directory "
        f"(Not a directory: {folder / 'notes.txt' / 'run'})",
        "saved",
    ]
    assert (folder / "notes.txt").read_text() == "not a checkpoint"
    assert checkpoint.sharded_steps(folder / "run") == [1]
