"""`funcnet landscape` on a tiny run, against the loss written out in NumPy at each point."""

import json

import jax
import numpy as np
import pytest

from funcnet import checkpoint
from funcnet.app import cli
from funcnet.diff.landscape import random_direction
from tests.figure_checks import checked_figures

TRAIN = ["train", "--dataset", "moons", "--hidden", "8", "--batch-size", "64", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert cli.main([*TRAIN, "--epochs", "1", "--out", str(out)]) == 0
    return out


def numpy_loss_and_accuracy(params, x, y):
    """The run's MLP, ``relu(x W₀ + b₀) W₂ + b₂``, and softmax cross-entropy, in NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    h = np.maximum(x @ p["dense_0"]["w"] + p["dense_0"]["b"], 0)
    logits = h @ p["dense_2"]["w"] + p["dense_2"]["b"]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -np.mean(log_p[np.arange(len(y)), y]), np.mean(np.argmax(logits, 1) == y)


def test_contour_matches_the_loss_at_each_grid_point(run_dir, tmp_path, capsys):
    figure = tmp_path / "surface.png"
    args = ["landscape", "--checkpoint", str(run_dir / "checkpoint.npz"), "--dims", "2"]
    args += ["--steps", "5", "--span", "0.5", "--examples", "100", "--batch-size", "64"]
    with checked_figures() as saved:
        assert cli.main([*args, "--seed", "3", "--out", str(figure)]) == 0
    assert saved == [figure]
    printed = capsys.readouterr().out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(figure.with_suffix(".json").read_text())
    assert report["split"] == "train" and report["examples"] == 100
    assert "train loss, 100 examples" in printed

    params = checkpoint.load(run_dir / "checkpoint.npz")["best"].params
    x, y = (np.asarray(a) for a in cli.load_data("moons", val_fraction=0.1).train)
    x, y = x[:100].astype(np.float64), y[:100]
    keys = jax.random.split(jax.random.key(3), 2)
    d1, d2 = (random_direction(k, params) for k in keys)
    grid = np.linspace(-0.5, 0.5, 5)

    def point(a, b):
        return jax.tree.map(lambda t, u, v: t + a * u + b * v, params, d1, d2)

    expected = np.array([[numpy_loss_and_accuracy(point(a, b), x, y) for b in grid] for a in grid])
    np.testing.assert_allclose(report["grid"], grid)
    np.testing.assert_allclose(report["losses"], expected[..., 0], rtol=2e-5)
    np.testing.assert_allclose(report["accuracy"], expected[..., 1], atol=1e-6)
    centre = numpy_loss_and_accuracy(params, x, y)[0]
    assert report["centre_loss"] == pytest.approx(centre, rel=2e-5)
    assert f"loss at the centre: {centre:.4g}" in printed
    assert report["min_loss"] == pytest.approx(expected[..., 0].min(), rel=2e-5)
    assert f"minimum on the grid: {expected[..., 0].min():.4g}" in printed


def test_line_on_the_test_split_with_the_centre_off_the_grid(run_dir, tmp_path, capsys):
    figure = tmp_path / "line.png"
    args = ["landscape", "--checkpoint", str(run_dir / "checkpoint.npz"), "--dims", "1"]
    args += ["--steps", "4", "--split", "test", "--out", str(figure)]
    with checked_figures() as saved:
        assert cli.main(args) == 0
    assert saved == [figure]
    printed = capsys.readouterr().out
    assert figure.exists()
    report = json.loads(figure.with_suffix(".json").read_text())
    params = checkpoint.load(run_dir / "checkpoint.npz")["best"].params
    x, y = (np.asarray(a) for a in cli.load_data("moons", val_fraction=0.1).test)
    assert report["split"] == "test" and report["examples"] == len(y) == 200
    assert len(report["losses"]) == 4 and 0.0 not in report["grid"]
    centre = numpy_loss_and_accuracy(params, x.astype(np.float64), y)[0]
    assert report["centre_loss"] == pytest.approx(centre, rel=2e-5)
    assert "test loss, 200 examples" in printed


def test_landscape_errors_and_help(tmp_path, capsys):
    assert cli.main(["landscape", "--checkpoint", str(tmp_path / "none.npz")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        cli.main(["landscape", "--checkpoint", "x.npz", "--dims", "3"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["landscape", "--help"])
    assert info.value.code == 0
    assert "usage: funcnet landscape" in capsys.readouterr().out
