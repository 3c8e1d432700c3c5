"""`funcnet train --fsdp --tensor-parallel M`: params sharded over 8 forced host devices,
checkpoints written by orbax, each process its shards, and `--resume` from them."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import funcnet as fn
from funcnet.app import cli
from tests.helpers import host_devices

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["train", "--dataset", "moons", "--hidden", "32,32", "--batch-size", "32"]
ARGS += ["--schedule", "constant", "--quiet"]


def test_sharded_run_resumed_equals_one_device_run(tmp_path):
    """2 epochs sharded (FSDP × TP over 4 × 2 devices) in two runs of the command, the
    second resuming the first's sharded checkpoint, against 2 epochs on one device."""
    script = textwrap.dedent(
        f"""
        import sys
        from funcnet.app import cli
        args = {ARGS!r} + ["--devices", "8", "--fsdp", "--tensor-parallel", "2"]
        out = sys.argv[1]
        assert cli.main(args + ["--epochs", "1", "--out", out]) == 0
        resume = ["--resume", out + "/checkpoint"]
        assert cli.main(args + ["--epochs", "2", "--out", out] + resume) == 0
        """
    )
    env = {
        **os.environ,
        "XLA_FLAGS": host_devices(8),
        "PYTHONPATH": str(ROOT),
    }
    sharded = tmp_path / "sharded"
    done = subprocess.run(
        [sys.executable, "-c", script, str(sharded)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert sorted(p.name for p in sharded.iterdir()) == [
        "checkpoint",
        "curves.png",
        "metrics.json",
        "metrics.jsonl",
    ]
    assert cli.main([*ARGS, "--epochs", "2", "--out", str(tmp_path / "one")]) == 0

    one = fn.checkpoint.load(tmp_path / "one" / "checkpoint.npz")
    like = jax.eval_shape(lambda: one)
    restored = fn.checkpoint.load_sharded(sharded / "checkpoint", like=like)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(restored), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    meta = fn.checkpoint.sharded_metadata(sharded / "checkpoint")
    assert meta["config"]["fsdp"] is True and meta["config"]["tensor_parallel"] == 2
    assert meta["data_parallel"] == {"devices": 8, "processes": 1}
    # The other subcommands read the folder as they read a checkpoint file.
    assert cli.main(["eval", "--checkpoint", str(sharded / "checkpoint")]) == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fsdp"], "--fsdp shards over devices; pass --devices N or --distributed too"),
        (["--tensor-parallel", "2"], "--tensor-parallel shards over devices; pass --devices"),
        (["--devices", "1", "--tensor-parallel", "2"], "model=2 does not divide the 1 devices"),
    ],
)
def test_sharding_without_the_devices_for_it_is_refused(tmp_path, capsys, extra, message):
    assert cli.main([*ARGS, "--epochs", "1", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
