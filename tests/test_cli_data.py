"""`funcnet train --data`, `predict` and `plot`, and the command line's refusals."""

import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import checkpoint
from funcnet.app import cli, models
from funcnet.app.datafile import read_features
from tests.figure_checks import checked_figures

SMALL = ["--hidden", "16", "--batch-size", "32", "--lr", "0.02", "--schedule", "constant"]
NAMES = ["setosa", "versicolor", "virginica"]


def _classes_csv(path, rows=240, seed=0):
    """Three word-labelled classes, separable by the sign pattern of two features."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    y = np.where(x[:, 0] > 0, 2, (x[:, 1] > 0).astype(int))
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["a", "b", "c", "species"])
        rows_out = ([*(f"{v:.5f}" for v in row), NAMES[t]] for row, t in zip(x, y, strict=True))
        writer.writerows(rows_out)
    return x, y


@pytest.fixture(scope="module")
def classes_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("classes")
    x, y = _classes_csv(folder / "iris.csv")
    out = folder / "run"
    args = ["train", "--data", str(folder / "iris.csv"), "--label", "species", *SMALL]
    assert cli.main([*args, "--epochs", "25", "--quiet", "--out", str(out)]) == 0
    return folder, out, x, y


def test_a_csv_of_word_labels_trains_a_classifier(classes_run):
    _, out, _, _ = classes_run
    metrics = json.loads((out / "metrics.json").read_text())
    info = metrics["data_info"]
    assert info["classes"] == NAMES and info["task"] == "classification"
    assert info["rows"] == {"train": 173, "val": 19, "test": 48}
    assert metrics["model"]["classes"] == 3
    assert metrics["test"]["accuracy"] > 0.85
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 25


def test_predict_rebuilds_the_model_from_the_checkpoint_alone(classes_run, tmp_path):
    _, out, x, y = classes_run
    # New examples with the columns in another order and no label column.
    new = tmp_path / "new.csv"
    with open(new, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["c", "b", "a"])
        writer.writerows([f"{r[2]:.5f}", f"{r[1]:.5f}", f"{r[0]:.5f}"] for r in x[:40])
    preds = tmp_path / "preds.csv"
    assert cli.main(["predict", "--checkpoint", str(out / "checkpoint.npz"), "--data", str(new),
                     "--out", str(preds)]) == 0  # fmt: skip
    rows = list(csv.reader(preds.open()))
    assert rows[0] == ["class", "p_setosa", "p_versicolor", "p_virginica"]
    probs = np.array([[float(p) for p in row[1:]] for row in rows[1:]])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.mean([row[0] == NAMES[t] for row, t in zip(rows[1:], y[:40], strict=True)]) > 0.8

    # The same numbers by hand: the loaded params on the standardised features.
    trained = models.load(out / "checkpoint.npz")
    info = trained.metadata["data_info"]
    z = (x[:40] - np.asarray(info["standardization"]["mean"])) / np.asarray(
        info["standardization"]["std"]
    )
    h = jnp.maximum(z @ trained.params["dense_0"]["w"] + trained.params["dense_0"]["b"], 0)
    logits = h @ trained.params["dense_2"]["w"] + trained.params["dense_2"]["b"]
    expected = np.array(jnp.exp(logits - jnp.max(logits, 1, keepdims=True)))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=2e-5)


def test_models_load_refuses_params_of_another_model(classes_run, tmp_path):
    _, out, _, _ = classes_run
    meta = checkpoint.metadata(out / "checkpoint.npz")
    meta["model"]["hidden"] = [17]
    states = checkpoint.load(out / "checkpoint.npz")
    checkpoint.save(tmp_path / "other.npz", states, metadata=meta)
    with pytest.raises(ValueError, match="dense_0/w"):
        models.load(tmp_path / "other.npz")


def test_float_targets_train_a_regression_with_mse(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.normal(size=200)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "reg.npz"), *SMALL, "--epochs", "40", "--quiet"]
    with checked_figures() as saved:
        assert cli.main([*args, "--out", str(out)]) == 0
    assert saved == [out / "curves.png"]
    assert "test mean squared error" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["task"] == "regression" and metrics["model"]["classes"] == 1
    assert "accuracy" not in metrics["history"]
    assert metrics["test"]["loss"] < 0.2 * np.var(y)  # far below predicting the mean
    preds = tmp_path / "preds.csv"
    ckpt = str(out / "checkpoint.npz")
    assert cli.main(["predict", "--checkpoint", ckpt, "--data", str(tmp_path / "reg.npz"),
                     "--out", str(preds)]) == 0  # fmt: skip
    capsys.readouterr()
    rows = list(csv.reader(preds.open()))
    assert rows[0] == ["y_0"] and len(rows) == 201
    assert np.mean((np.array([float(r[0]) for r in rows[1:]]) - y) ** 2) < 0.2 * np.var(y)
    assert cli.main(["eval", "--checkpoint", ckpt, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(metrics["test"]["loss"])


def test_plot_compares_runs_and_reads_a_history_cut_short(classes_run, tmp_path, capsys):
    _, out, _, _ = classes_run
    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (out / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text("\n".join(lines[:5]) + '\n{"epoch": 5, "lo')
    history = cli.plot.read_history(killed)
    assert history["epoch"] == [0, 1, 2, 3, 4]
    figure = tmp_path / "compare.png"
    with checked_figures() as saved:
        assert cli.main(["plot", str(out), str(killed), "--out", str(figure)]) == 0
    assert saved == [figure]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty").mkdir()
    assert cli.main(["plot", str(tmp_path / "empty"), "--out", str(figure)]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err
    assert cli.main(["plot", str(tmp_path / "gone"), "--out", str(figure)]) == 2
    assert "gone is missing; expected the folder" in capsys.readouterr().err


def test_train_prints_the_model_summary_unless_quiet(tmp_path, capsys):
    _classes_csv(tmp_path / "d.csv", rows=60)
    args = ["train", "--data", str(tmp_path / "d.csv"), "--label", "species", *SMALL]
    args += ["--epochs", "1"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    shown = capsys.readouterr().out
    assert "dense_0" in shown and "total" in shown and "115" in shown  # 3·16+16 + 16·3+3
    assert cli.main([*args, "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert "dense_0" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "-3"], "--epochs: expected a non-negative integer, got '-3'"),
        (["--batch-size", "0"], "--batch-size: expected a positive integer, got '0'"),
        (["--lr", "abc"], "--lr: expected a positive number, got 'abc'"),
        (["--lr=-1e-3"], "--lr: expected a positive number"),
        (["--hidden", "0"], "--hidden: widths must be positive, got '0'"),
        (["--hidden", "64,x"], "--hidden: expected widths like 128,128"),
        (["--dropout", "1.5"], "--dropout: expected a fraction in [0, 1)"),
        (["--val-fraction", "1"], "--val-fraction: expected a fraction in [0, 1)"),
        (["--members", "0"], "--members: expected a positive integer"),
    ],
)
def test_bad_values_are_refused_by_the_parser_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("funcnet train: error: argument ")
    assert message in err


def test_an_out_folder_holding_a_run_is_refused_unless_overwritten(tmp_path, capsys):
    _classes_csv(tmp_path / "d.csv", rows=60)
    args = ["train", "--data", str(tmp_path / "d.csv"), "--label", "species", *SMALL]
    args += ["--epochs", "1", "--quiet"]
    out = ["--out", str(tmp_path / "run")]
    assert cli.main([*args, *out]) == 0
    assert cli.main([*args, *out]) == 2
    assert "already holds a run (checkpoint.npz" in capsys.readouterr().err
    assert cli.main([*args, *out, "--overwrite"]) == 0


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n1,2\n", "no column named 'label' or 'y'"),
        ("a,label\n1,0\nx,1\n", "'x' is not a number"),
        ("a,label\n1,0\nnan,1\n", "is not finite"),
        ("a,label\n1,0\n2,0\n3,0\n", "one class only"),
    ],
)
def test_bad_data_files_are_reported_in_one_line(tmp_path, capsys, content, message):
    (tmp_path / "bad.csv").write_text(content)
    argv = ["train", "--data", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "run")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("funcnet train: error: ") and message in err


def test_predict_refuses_a_run_of_a_bundled_data_set_and_missing_columns(
    classes_run, tmp_path, capsys
):
    _, out, _, _ = classes_run
    info = models.load(out / "checkpoint.npz").metadata["data_info"]
    (tmp_path / "few.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"lacks the feature columns \['c'\]"):
        read_features(tmp_path / "few.csv", info)
    bundled = tmp_path / "moons"
    assert cli.main(["train", "--dataset", "xor", "--epochs", "1", "--quiet",
                     "--out", str(bundled)]) == 0  # fmt: skip
    argv = ["predict", "--checkpoint", str(bundled / "checkpoint.npz"), "--data", "x.csv"]
    assert cli.main(argv) == 2
    assert "trained on a bundled data set" in capsys.readouterr().err
