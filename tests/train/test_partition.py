"""Params laid out over a mesh (`funcnet.train.partition`): the layouts the rules give, and
training under FSDP, tensor parallelism and both against the replicated run.

The layouts are checked on abstract meshes in this process; training runs on 8 forced host
devices in one subprocess (the device count is fixed when JAX starts), and on two processes
of 4 devices each through `funcnet.launch`.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

import funcnet as fn
from funcnet import nn, train
from funcnet.launch import launch
from tests.helpers import host_devices

ROOT = Path(__file__).resolve().parents[2]
MESH = AbstractMesh((4, 2), ("data", "model"))


def specs(params, rules, mesh=MESH):
    flat = jax.tree_util.tree_flatten_with_path(train.param_specs(params, mesh, rules))[0]
    return {"/".join(str(k.key) for k in path): spec for path, spec in flat}


def shapes(model, in_shape):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), in_shape)[1])


MLP = nn.serial(nn.dense(64), nn.relu, nn.dense(48), nn.relu, nn.dense(10))
MLP_PARAMS = shapes(MLP, (8, 32))


def test_fsdp_cuts_the_largest_dimension_the_axis_divides():
    got = specs(MLP_PARAMS, train.fsdp())
    # w (32, 64): 64 is larger; w (64, 48): 64; w (48, 10): 48; b (10,): 10 % 4 ≠ 0.
    assert got == {
        "dense_0/w": P(None, "data"),
        "dense_0/b": P("data"),
        "dense_2/w": P("data"),
        "dense_2/b": P("data"),
        "dense_4/w": P("data"),
        "dense_4/b": P(),
    }
    assert specs(MLP_PARAMS, train.fsdp(min_size=1000))["dense_0/b"] == P()


def test_tensor_parallel_alternates_column_and_row_and_splits_attention_heads():
    got = specs(MLP_PARAMS, train.tensor_parallel())
    assert got["dense_0/w"] == P(None, "model") and got["dense_0/b"] == P("model")
    assert got["dense_2/w"] == P("model") and got["dense_2/b"] == P()
    assert got["dense_4/w"] == P(None, "model") and got["dense_4/b"] == P("model")

    block = shapes(nn.transformer_block(4, 64), (2, 5, 32))
    got = specs(block, train.tensor_parallel())
    for name in "qkv":
        assert got[f"attention/{name}/w"] == P(None, "model")
        assert got[f"attention/{name}/b"] == P("model")
    assert got["attention/o/w"] == P("model") and got["attention/o/b"] == P()
    assert got["mlp/dense_0/w"] == P(None, "model") and got["mlp/dense_3/w"] == P("model")
    assert got["norm_1/scale"] == P()


def test_tensor_parallel_leaves_the_stacked_axis_of_repeat_whole():
    stack = shapes(nn.repeat(nn.transformer_block(4, 64), 3), (2, 5, 32))
    got = specs(stack, train.tensor_parallel())
    assert got["attention/q/w"] == P(None, None, "model")
    assert got["mlp/dense_3/w"] == P(None, "model")


def test_fsdp_after_tensor_parallel_takes_the_largest_dimension_left():
    got = specs(MLP_PARAMS, (train.tensor_parallel(), train.fsdp()))
    assert got["dense_0/w"] == P("data", "model")  # TP took 64; FSDP takes 32
    assert got["dense_2/w"] == P("model", "data")  # TP took 64 (rows); FSDP takes 48
    assert got["dense_4/b"] == P("model")  # FSDP: 10 does not divide by 4


def test_by_path_first_matching_pattern_wins_and_other_rules_fill_the_rest():
    rules = (train.by_path({"dense_4/*": (), "*/w": ("model",)}), train.fsdp())
    got = specs(MLP_PARAMS, rules)
    assert got["dense_4/w"] == P("data") and got["dense_4/b"] == P()
    assert got["dense_0/w"] == P("model", "data")


def test_by_path_reads_one_axis_name_as_the_spec_of_the_first_dimension():
    # A bare name was read as a sequence of one-letter axes ('m', 'o', ...) and refused.
    by_name = specs(MLP_PARAMS, train.by_path({"*/w": "model"}))
    by_spec = specs(MLP_PARAMS, train.by_path({"*/w": P("model")}))
    assert by_name == by_spec
    assert by_name["dense_0/w"] == P("model") and by_name["dense_0/b"] == P()


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            train.by_path({"dense_0/w": (None, "tp")}),
            r"dense_0/w of shape \(32, 64\).*no axis 'tp'",
        ),
        (
            train.by_path({"dense_4/w": (None, "data")}),
            r"dense_4/w of shape \(48, 10\).*dimension 1 of size 10 does not divide by the 4 "
            r"devices of mesh axis 'data'",
        ),
        (
            train.by_path({"dense_0/w": (None, None, "data")}),
            r"dense_0/w of shape \(32, 64\).*more entries than the param has dims",
        ),
        (train.fsdp("fsdp"), r"fsdp names the mesh axis 'fsdp'; the mesh has axes \('data', "),
        (train.tensor_parallel("tp"), r"tensor_parallel names the mesh axis 'tp'"),
    ],
)
def test_bad_rules_name_the_param_its_shape_and_the_axis(rule, message):
    with pytest.raises(ValueError, match=message):
        train.param_specs(MLP_PARAMS, MESH, rule)


def test_a_rule_cannot_recut_what_an_earlier_one_laid_out():
    rules = (train.tensor_parallel(), train.by_path({"dense_0/w": (None, "data")}))
    with pytest.raises(ValueError, match=r"dense_0/w.*already lays it out as \(None, 'model'\)"):
        train.param_specs(MLP_PARAMS, MESH, rules)


def test_rules_that_are_not_rules_are_refused():
    with pytest.raises(TypeError, match="rules must be a rule"):
        train.param_specs(MLP_PARAMS, MESH, "fsdp")


def test_optimizer_state_and_average_follow_the_params():
    def init():
        state = train.init_train_state(MLP, fn.optim.adam(1e-3), jax.random.key(0), (8, 32))
        return state._replace(ema=train.params_ema(state.params, 0.99))

    state = jax.eval_shape(init)
    layout = train.state_shardings(state, MESH, train.fsdp())
    adam = layout.opt_state[1]
    assert adam.mu["dense_0"]["w"].spec == P(None, "data") == adam.nu["dense_0"]["w"].spec
    assert layout.ema.params["dense_2"]["w"].spec == P("data")
    assert adam.count.spec == P() and layout.step.spec == P() and layout.key.spec == P()
    members = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((3, *leaf.shape), leaf.dtype), state)
    stacked = train.state_shardings(members, MESH, train.fsdp(), members=True)
    assert stacked.opt_state[1].mu["dense_0"]["w"].spec == P(None, None, "data")


def test_model_mesh_sizes_are_checked():
    with pytest.raises(ValueError, match=r"data=2 × model=2 is 4 devices, 1 are given"):
        train.model_mesh(2, 2)
    assert train.model_mesh().axis_names == ("data", "model")


def test_rules_without_a_mesh_are_refused():
    x, y = np.zeros((8, 32), np.float32), np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="pass mesh= too"):
        train.fit(
            MLP,
            fn.optim.sgd(0.1),
            (x, y),
            loss_fn=fn.losses.softmax_cross_entropy,
            epochs=1,
            batch_size=8,
            key=jax.random.key(0),
            rules=train.fsdp(),
        )


def run_forced(script: str, devices: int = 8) -> None:
    env = {
        **os.environ,
        "XLA_FLAGS": host_devices(devices),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "train" / script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_fsdp_tp_and_both_train_what_the_replicated_run_trains_on_eight_devices():
    """`sharded_checks.py`: fit (MLP), make_step (transformer LM) and fit_ensemble under
    FSDP, TP and FSDP × TP against the replicated run, and FSDP's bytes per device."""
    run_forced("sharded_checks.py")


def test_two_processes_of_four_devices_train_fsdp_as_one_and_save_their_shards(tmp_path):
    env = {
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": host_devices(4),
    }
    worker = [sys.executable, str(ROOT / "tests" / "train" / "sharded_worker.py"), str(tmp_path)]
    assert launch(worker, 2, timeout_s=300, env=env) == 0
    p0, p1 = np.load(tmp_path / "params_0.npz"), np.load(tmp_path / "params_1.npz")
    from tests.train.sharded_worker import SETTINGS, data, model

    expected = train.fit(
        model(), fn.optim.adam(1e-2), data(), progress=False, key=jax.random.key(0), **SETTINGS
    )
    flat = jax.tree_util.tree_flatten_with_path(expected.state.params)[0]
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        np.testing.assert_array_equal(p0[name], p1[name])
        np.testing.assert_allclose(p0[name], np.asarray(leaf), rtol=1e-5, atol=1e-5)
    # The checkpoint both processes wrote, restored whole onto this process's one device.
    like = jax.eval_shape(lambda: expected.state)
    restored = fn.checkpoint.load_sharded(tmp_path / "sharded", like=like)
    for got, want in zip(
        jax.tree.leaves(restored.opt_state), jax.tree.leaves(expected.state.opt_state), strict=True
    ):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    assert int(restored.step) == 5
