"""The `funcnet` command, run in-process through `funcnet.app.cli.main`."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from funcnet import checkpoint, losses
from funcnet.app import cli
from tests.figure_checks import checked_figures

TRAIN = [
    "train",
    "--dataset",
    "moons",
    "--hidden",
    "12",
    "--batch-size",
    "64",
    "--lr",
    "0.02",
    "--schedule",
    "constant",
    "--quiet",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small run on moons: 2 epochs, then resumed to 3."""
    out = tmp_path_factory.mktemp("run")
    with checked_figures() as saved:
        assert cli.main([*TRAIN, "--epochs", "2", "--out", str(out)]) == 0
        first = json.loads((out / "metrics.json").read_text())
        resume = ["--resume", str(out / "checkpoint.npz"), "--out", str(out)]
        assert cli.main([*TRAIN, "--epochs", "3", *resume]) == 0
    assert saved == [out / "curves.png"] * 2
    return out, first


def written_out_logits(params, x):
    """The run's MLP, ``relu(x W₀ + b₀) W₂ + b₂``, written out."""
    h = jnp.maximum(x @ params["dense_0"]["w"] + params["dense_0"]["b"], 0)
    return h @ params["dense_2"]["w"] + params["dense_2"]["b"]


def test_train_writes_checkpoint_metrics_and_curves(run_dir):
    out, first = run_dir
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.npz",
        "curves.png",
        "metrics.json",
        "metrics.jsonl",
    ]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert first["history"]["epoch"] == [0, 1]
    assert metrics["history"]["epoch"] == [2]  # resumed: only the third epoch ran
    # metrics.jsonl has every epoch, the resumed run's appended as it ended.
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert lines[2]["loss"] == pytest.approx(metrics["history"]["loss"][0])
    assert metrics["config"]["dataset"] == "moons"
    assert metrics["model"] == {
        "name": "mlp",
        "hidden": [12],
        "classes": 2,
        "activation": "relu",
        "dropout": 0.0,
        "batch_norm": False,
    }
    states = checkpoint.load(out / "checkpoint.npz")
    assert int(states["last"].step) == 3 * 12  # 720 training examples in batches of 64
    assert checkpoint.metadata(out / "checkpoint.npz")["test"] == metrics["test"]


def test_eval_matches_a_written_out_forward_pass(run_dir, capsys):
    out, _ = run_dir
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(out / "checkpoint.npz"), "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    data = cli.load_data("moons", val_fraction=0.1)
    x, y = data.test
    params = checkpoint.load(out / "checkpoint.npz")["best"].params
    logits = np.asarray(written_out_logits(params, x))
    assert reported["examples"] == len(y) == 200
    np.testing.assert_allclose(reported["accuracy"], np.mean(np.argmax(logits, -1) == y), atol=1e-6)
    expected_loss = losses.softmax_cross_entropy(jnp.asarray(logits), y)
    np.testing.assert_allclose(reported["loss"], expected_loss, rtol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    np.testing.assert_allclose(reported["accuracy"], metrics["test"]["accuracy"])


def test_hessian_top_eigenvalues_match_the_dense_hessian(run_dir, capsys, tmp_path):
    out, _ = run_dir
    args = ["hessian", "--checkpoint", str(out / "checkpoint.npz"), "--top-k", "3"]
    args += ["--iters", "200", "--probes", "1", "--trace-samples", "8", "--examples", "100"]
    with checked_figures() as saved:
        assert cli.main([*args, "--out", str(tmp_path)]) == 0
    assert saved == [tmp_path / "hessian.png"]
    printed = capsys.readouterr().out
    assert "top 3 eigenvalues" in printed and "trace" in printed
    report = json.loads((tmp_path / "hessian.json").read_text())
    assert (tmp_path / "hessian.png").exists()

    params = checkpoint.load(out / "checkpoint.npz")["best"].params
    x, y = cli.load_data("moons", val_fraction=0.1).train
    flat, unravel = ravel_pytree(jax.tree.map(jnp.asarray, params))

    def loss(theta):
        return losses.softmax_cross_entropy(written_out_logits(unravel(theta), x[:100]), y[:100])

    dense = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(loss))(flat), np.float64))[::-1]
    assert report["params"] == flat.size == 2 * 12 + 12 + 12 * 2 + 2
    np.testing.assert_allclose(report["top_eigenvalues"], dense[:3], rtol=2e-3, atol=1e-5)
    np.testing.assert_allclose(report["trace"], dense.sum(), atol=6 * report["trace_stderr"] + 1e-4)


def test_an_ensemble_trains_and_draws_every_member(tmp_path, capsys):
    out = tmp_path / "ensemble"
    with checked_figures() as saved:
        assert cli.main([*TRAIN, "--epochs", "2", "--members", "2", "--out", str(out)]) == 0
    assert saved == [out / "curves.png"]
    assert "(mean of 2 members), ensemble" in capsys.readouterr().out
    metadata = checkpoint.metadata(out / "checkpoint.npz")
    assert metadata["members"] == 2 and len(metadata["best_epoch"]) == 2


def test_the_issue_29_commands_are_refused_in_one_line_before_any_work(run_dir, tmp_path, capsys):
    out, _ = run_dir
    ckpt = str(out / "checkpoint.npz")
    (tmp_path / "file").write_text("a file\n")
    file = str(tmp_path / "file")
    x3d = tmp_path / "x3d.npz"
    np.savez(x3d, x=np.zeros((80, 3, 2)), y=np.arange(80) % 2)
    cases = [
        (["train", "--out", file], f"--out {file} is a file; expected a folder"),
        (["train", "--out", f"{file}/sub"], f"--out {file}/sub: {file} is a file, not a folder"),
        (["plot", str(out), "--out", f"{file}/x.png"], f"{file} is a file, not a folder"),
        (["plot", str(out), "--out", "x.txt"], "--out x.txt has an extension .txt; a figure"),
        (
            ["eval", "--checkpoint", str(out)],
            "is a folder, not a checkpoint file; pass the checkpoint in it",
        ),
        (
            ["hessian", "--checkpoint", ckpt, "--top-k", "100000"],
            "more than the model's 62 parameters",
        ),
        (["landscape", "--checkpoint", ckpt, "--steps", "1"], "expected at least 2 grid points"),
        (
            [*TRAIN, "--resume", ckpt, "--optimizer", "sgd", "--out", str(tmp_path / "r")],
            "was trained with --optimizer adam (asked: --optimizer sgd)",
        ),
        (["train", "--dataset", "moons", "--hidden", "10000000000"], "at most 2147483647"),
        (["train", "--dataset", "moons", "--hidden", "2000000000"], "of memory, more than the"),
    ]
    for argv, message in cases:
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code
        err = capsys.readouterr().err
        assert code == 2, (argv, err)
        assert err.count("\n") == 1 and err.startswith(f"funcnet {argv[0]}: error: "), err
        assert message in err, (argv, err)
    assert not (tmp_path / "r").exists()
    # x of shape (80, 3, 2) trains as 6 features per example, and predicts the same way.
    run = tmp_path / "x3d"
    assert cli.main([*TRAIN, "--data", str(x3d), "--epochs", "1", "--out", str(run)]) == 0
    assert checkpoint.metadata(run / "checkpoint.npz")["in_shape"][1:] == [6]
    np.save(tmp_path / "new.npy", np.zeros((5, 3, 2)))
    predict = ["predict", "--checkpoint", str(run / "checkpoint.npz")]
    assert cli.main([*predict, "--data", str(tmp_path / "new.npy"), "--out", file + ".csv"]) == 0
    assert len(pathlib.Path(file + ".csv").read_text().splitlines()) == 6


def test_user_errors_are_reported_without_a_traceback(tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "nothing.npz")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert cli.main(["train", "--dataset", "moons", "--model", "cnn", "--out", str(tmp_path)]) == 2
    assert "needs images" in capsys.readouterr().err
    assert cli.main([*TRAIN, "--optimizer", "lion", "--momentum", "0.9"]) == 2
    assert "takes no momentum" in capsys.readouterr().err


def test_bench_forwards_its_arguments_or_explains_its_absence(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli.bench, "_benchmark_main", lambda: lambda argv: calls.append(argv) or 0)
    assert cli.main(["bench", "--smoke", "--repeats", "1"]) == 0
    assert cli.main(["bench", "--", "--help"]) == 0
    assert calls == [["--smoke", "--repeats", "1"], ["--help"]]
    monkeypatch.setattr(cli.bench, "_benchmark_main", lambda: None)
    assert cli.main(["bench"]) == 2
    assert "benchmarks/run.py" in capsys.readouterr().err


@pytest.mark.parametrize("command", [m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    assert f"usage: funcnet {command}" in capsys.readouterr().out


def test_console_script_help_runs_in_a_fresh_process():
    script = pathlib.Path(sys.executable).with_name("funcnet")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "funcnet.app.cli"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0
    for command in ("train", "eval", "predict", "plot", "hessian", "bench"):
        assert command in done.stdout
