"""Data-parallel `fit` against single-device `fit` on the same global batches.

Over devices: 8 forced host devices in a subprocess (the device count is fixed when JAX
starts). Over processes: two local processes joined through `funcnet.launch` on 127.0.0.1.
"""

import functools
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
from funcnet.launch import launch
from tests.helpers import host_devices
from tests.train.dp_common import SETTINGS, global_data, model

ROOT = Path(__file__).resolve().parents[2]


@functools.cache
def single_device_params():
    """One device's params after `fit`, trained once for both comparisons."""
    result = fn.train.fit(model(), fn.optim.adam(1e-2), global_data(), progress=False, **SETTINGS)
    return jax.tree.map(np.asarray, result.state.params)


def assert_close_trees(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=2e-5, atol=2e-6)


def test_eight_devices_match_one_with_and_without_accumulation():
    script = textwrap.dedent(
        """
        import jax, numpy as np, funcnet as fn
        from tests.train.dp_common import SETTINGS, global_data, model
        mesh = fn.train.data_mesh()
        assert mesh.shape["data"] == 8, mesh
        result = fn.train.fit(
            model(), fn.optim.adam(1e-2), global_data(), mesh=mesh, progress=False, **SETTINGS
        )
        w = result.state.params["dense_0"]["w"]
        assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 8
        # Two micro-batches of 16 rows, each laid out over the 8 devices.
        micro = fn.train.fit(
            model(), fn.optim.adam(1e-2), global_data(), mesh=mesh, progress=False,
            accumulate=2, **SETTINGS
        )
        flat = {jax.tree_util.keystr(p): np.asarray(v)
                for p, v in jax.tree_util.tree_leaves_with_path(result.state.params)}
        flat |= {"accumulate" + jax.tree_util.keystr(p): np.asarray(v)
                 for p, v in jax.tree_util.tree_leaves_with_path(micro.state.params)}
        np.savez(sys.argv[1], **flat)
        """
    )
    env = {**os.environ, "XLA_FLAGS": host_devices(8)}
    out = ROOT / ".pytest_dp8.npz"
    try:
        subprocess.run(
            [sys.executable, "-c", "import sys\n" + script, str(out)],
            cwd=ROOT,
            env={**env, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=300,
        )
        got = dict(np.load(out))
    finally:
        out.unlink(missing_ok=True)
    expected = single_device_params()
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    flat |= {"accumulate" + name: v for name, v in flat.items()}  # the same update
    assert got.keys() == flat.keys()
    assert_close_trees(got, flat)


def test_two_processes_match_one_and_only_process_zero_writes(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    code = launch(
        [sys.executable, str(ROOT / "tests" / "train" / "dp_worker.py"), str(tmp_path)],
        2,
        timeout_s=300,
        env=env,
    )
    assert code == 0
    p0, p1 = dict(np.load(tmp_path / "params_0.npz")), dict(np.load(tmp_path / "params_1.npz"))
    for name in p0:
        np.testing.assert_array_equal(p0[name], p1[name])
    expected = single_device_params()
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(expected)}
    assert_close_trees(p0, flat)
    assert (tmp_path / "checkpoint_0.npz").exists()
    assert not (tmp_path / "checkpoint_1.npz").exists()
    restored = fn.checkpoint.load(tmp_path / "checkpoint_0.npz")
    assert_close_trees(restored, expected)


def test_batch_that_does_not_divide_by_the_devices_is_refused():
    mesh = jax.sharding.Mesh(np.array(jax.devices() * 3), ("data",))
    with pytest.raises(ValueError, match=r"global batch size 32 does not divide by the 3"):
        fn.train.fit(model(), fn.optim.adam(1e-2), global_data(), mesh=mesh, **SETTINGS)


def test_mesh_without_a_data_axis_is_refused():
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("model",))
    with pytest.raises(ValueError, match="axis named 'data'"):
        fn.train.fit(model(), fn.optim.adam(1e-2), global_data(), mesh=mesh, **SETTINGS)


def test_launcher_reports_a_failing_process():
    assert launch([sys.executable, "-c", "import sys; sys.exit(3)"], 2, timeout_s=60) == 3


def test_funcnet_train_distributed_matches_one_process(tmp_path):
    """`funcnet train --distributed` in two processes trains what one process trains."""
    args = ["train", "--dataset", "moons", "--hidden", "16", "--epochs", "2"]
    args += ["--batch-size", "32", "--quiet"]
    command = [sys.executable, "-m", "funcnet.app.cli", *args, "--distributed"]
    env = {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    assert launch([*command, "--out", str(tmp_path / "two")], 2, timeout_s=300, env=env) == 0
    assert cli.main([*args, "--out", str(tmp_path / "one")]) == 0

    two = fn.checkpoint.load(tmp_path / "two" / "checkpoint.npz")
    one = fn.checkpoint.load(tmp_path / "one" / "checkpoint.npz")
    assert_close_trees(two["last"].params, one["last"].params)
    assert fn.checkpoint.metadata(tmp_path / "two" / "checkpoint.npz")["data_parallel"] == {
        "devices": 2,
        "processes": 2,
    }
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [
        "checkpoint.npz",
        "curves.png",
        "metrics.json",
        "metrics.jsonl",
    ]


def test_funcnet_train_refuses_more_devices_than_exist(tmp_path, capsys):
    too_many = str(len(jax.devices()) + 1)
    args = ["train", "--dataset", "xor", "--devices", too_many, "--out", str(tmp_path)]
    assert cli.main(args) == 2
    assert f"asked for {too_many} devices" in capsys.readouterr().err
