"""A user's data file for `funcnet train --data`: formats, splits, standardisation, errors."""

import json

import numpy as np
import pytest

from funcnet.app.datafile import DataFileError, load_file, standardize


def _blobs(n=100, features=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, features)) * [1.0, 10.0, 0.1][:features] + 5.0 + y[:, None]
    return x, y


def _write_csv(path, header, rows):
    lines = [",".join(header)] + [",".join(str(c) for c in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _assert_standardised(x):
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=0), 1.0, atol=1e-5)


def _error(match, path, **kwargs):
    kwargs.setdefault("val_fraction", 0.0)
    with pytest.raises(DataFileError, match=match) as info:
        load_file(path, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# Formats.


def test_npz_splits_standardises_and_describes(tmp_path):
    x, y = _blobs(100)
    np.savez(tmp_path / "d.npz", x=x, y=y + 7)  # classes 7, 8, 9
    data, info = load_file(tmp_path / "d.npz", val_fraction=0.25)
    (xt, yt), (xv, yv), (xs, ys) = data.train, data.val, data.test
    assert xt.shape == (60, 3) and xv.shape == (20, 3) and xs.shape == (20, 3)
    assert xt.dtype == np.float32 and yt.dtype == np.int32
    assert (data.task, data.classes, data.features, data.outputs) == ("classification", 3, 3, 3)
    _assert_standardised(xt)
    assert set(np.unique(np.concatenate([yt, yv, ys]))) == {0, 1, 2}
    assert info["classes"] == [7, 8, 9]
    assert info["rows"] == {"train": 60, "val": 20, "test": 20}
    assert info["format"] == "npz" and info["label"] is None and info["feature_names"] is None
    assert info["split"] == {"test": "cut", "test_fraction": 0.2, "val_fraction": 0.25, "seed": 0}
    json.dumps(info)  # metrics.json takes it as it is
    # Every original row lands in exactly one split, with its own label.
    back = np.concatenate([xt, xv, xs]) * np.array(info["standardization"]["std"])
    back += np.array(info["standardization"]["mean"])
    labels = np.array(info["classes"])[np.concatenate([yt, yv, ys])]
    order, original = np.lexsort(back.T), np.lexsort(x.T)
    np.testing.assert_allclose(back[order], x[original], rtol=1e-5)
    np.testing.assert_array_equal(labels[order], (y + 7)[original])


def test_npz_given_test_split_is_used_as_is(tmp_path):
    x, y = _blobs(80)
    x_test, y_test = _blobs(30, seed=1)
    np.savez(tmp_path / "d.npz", x=x, y=y, x_test=x_test, y_test=y_test)
    data, info = load_file(tmp_path / "d.npz", val_fraction=0.0, test_fraction=0.5)
    assert data.val is None and data.train[0].shape == (80, 3)
    assert info["rows"] == {"train": 80, "val": 0, "test": 30}
    assert info["split"]["test"] == "given" and info["split"]["test_fraction"] is None
    mean, std = x.mean(0), x.std(0)  # the training rows' statistics, applied to the test rows
    np.testing.assert_allclose(data.test[0], (x_test - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(data.test[1], y_test)


def test_npy_pair_beside_and_comma_separated(tmp_path):
    x, y = _blobs(50)
    np.save(tmp_path / "feat.npy", x)
    np.save(tmp_path / "feat_y.npy", y)
    np.save(tmp_path / "labels.npy", y)
    a, info_a = load_file(tmp_path / "feat.npy", val_fraction=0.2)
    b, info_b = load_file(f"{tmp_path / 'feat.npy'},{tmp_path / 'labels.npy'}", val_fraction=0.2)
    for data in (a, b):
        assert data.train[0].shape == (32, 3) and data.val[0].shape == (8, 3)
        assert data.test[0].shape == (10, 3)
        _assert_standardised(data.train[0])
    np.testing.assert_array_equal(a.train[0], b.train[0])
    assert info_a["format"] == info_b["format"] == "npy"
    assert len(info_a["sha256"]) == 2
    # The recorded source loads the same data again, as `eval` must.
    again, _ = load_file(info_b["source"], val_fraction=0.2)
    np.testing.assert_array_equal(again.test[1], b.test[1])


def test_csv_with_default_and_named_label_columns(tmp_path):
    x, y = _blobs(40, features=2)
    rows = [[f"{a:.6f}", f"{b:.6f}", int(c)] for (a, b), c in zip(x, y, strict=True)]
    data, info = load_file(_write_csv(tmp_path / "d.csv", ["u", "v", "y"], rows), val_fraction=0)
    assert data.train[0].shape == (32, 2) and data.test[0].shape == (8, 2) and data.val is None
    assert info["label"] == "y" and info["feature_names"] == ["u", "v"]
    assert info["classes"] == [0, 1, 2] and data.task == "classification"
    _assert_standardised(data.train[0])
    named = [[c, f"{a:.6f}", f"{b:.6f}"] for (a, b), c in zip(x, y, strict=True)]
    path = _write_csv(tmp_path / "n.csv", ["species", "u", "v"], named)
    other, info = load_file(path, label="species", val_fraction=0)
    assert info["label"] == "species" and info["feature_names"] == ["u", "v"]
    np.testing.assert_allclose(other.train[0], data.train[0], rtol=1e-5)


def test_csv_word_labels_are_classes_in_sorted_order(tmp_path):
    rows = [[i, i % 3, ["setosa", "virginica", "versicolor"][i % 3]] for i in range(30)]
    data, info = load_file(
        _write_csv(tmp_path / "iris.csv", ["a", "b", "label"], rows), val_fraction=0
    )
    assert info["classes"] == ["setosa", "versicolor", "virginica"]
    names = np.array(info["classes"])[np.asarray(data.train[1])]
    b = np.asarray(data.train[0])[:, 1] * info["standardization"]["std"][1]
    b += info["standardization"]["mean"][1]
    expected = np.array(["setosa", "virginica", "versicolor"])[np.rint(b).astype(int)]
    np.testing.assert_array_equal(names, expected)


def test_one_dimensional_x_is_one_feature_and_constant_features_are_centred(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(20.0), y=np.arange(20) % 2)
    data, info = load_file(tmp_path / "d.npz", val_fraction=0)
    assert data.train[0].shape == (16, 1) and info["feature_shape"] == [1]
    x = np.stack([np.arange(20.0), np.full(20, 3.0)], axis=1)
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(20) % 2)
    data, info = load_file(tmp_path / "c.npz", val_fraction=0)
    np.testing.assert_array_equal(data.train[0][:, 1], 0.0)
    assert info["standardization"]["std"][1] == 1.0


def test_image_shaped_features_keep_their_shape(tmp_path):
    x = np.random.default_rng(0).uniform(size=(30, 4, 4, 1))
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(30) % 3)
    data, info = load_file(tmp_path / "d.npz", val_fraction=0)
    assert data.train[0].shape == (24, 4, 4, 1) and data.features == 16
    assert info["feature_shape"] == [4, 4, 1]
    assert np.asarray(info["standardization"]["mean"]).shape == (4, 4, 1)


# The task.


def test_float_labels_are_regression(tmp_path):
    x, _ = _blobs(50)
    np.savez(tmp_path / "r.npz", x=x, y=x @ [1.0, 2.0, 3.0])
    data, info = load_file(tmp_path / "r.npz", val_fraction=0)
    assert (data.task, data.classes, data.outputs) == ("regression", 0, 1)
    assert data.train[1].dtype == np.float32 and data.train[1].shape == (40,)
    assert info["classes"] == "regression" and info["task"] == "regression"
    np.savez(tmp_path / "k.npz", x=x, y=x[:, :2].astype(np.float32))
    data, info = load_file(tmp_path / "k.npz", val_fraction=0)
    assert data.train[1].shape == (40, 2) and data.outputs == 2 == info["outputs"]


def test_csv_task_follows_how_the_labels_are_written(tmp_path):
    rows = [[i, f"{i % 2}"] for i in range(10)]
    ints, info = load_file(_write_csv(tmp_path / "i.csv", ["a", "y"], rows), val_fraction=0)
    assert ints.task == "classification" and info["classes"] == [0, 1]
    rows = [[i, f"{i % 2}.0"] for i in range(10)]
    floats, info = load_file(_write_csv(tmp_path / "f.csv", ["a", "y"], rows), val_fraction=0)
    assert floats.task == "regression" and floats.train[1].dtype == np.float32


# Splits.


def test_splits_are_seeded(tmp_path):
    x, y = _blobs(60)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a, _ = load_file(tmp_path / "d.npz", val_fraction=0.2, seed=3)
    b, _ = load_file(tmp_path / "d.npz", val_fraction=0.2, seed=3)
    c, _ = load_file(tmp_path / "d.npz", val_fraction=0.2, seed=4)
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, split)[0], getattr(b, split)[0])
    assert not np.array_equal(np.asarray(a.test[0]), np.asarray(c.test[0]))


def test_standardize_matches_the_training_statistics(tmp_path):
    x, y = _blobs(50)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    _, info = load_file(tmp_path / "d.npz", val_fraction=0.2)
    info = json.loads(json.dumps(info))
    rows = x[[3, 7]]
    mean, std = np.array(info["standardization"]["mean"]), np.array(info["standardization"]["std"])
    np.testing.assert_allclose(standardize(rows, info), (rows - mean) / std, rtol=1e-5)
    with pytest.raises(DataFileError, match=r"shape \[2\] do not match the data's \[3\]"):
        standardize(rows[:, :2], info)


# Errors.


def test_missing_file_and_unknown_extension(tmp_path):
    _error(r"^no such file: .*nope\.csv$", tmp_path / "nope.csv")
    (tmp_path / "d.txt").write_text("1,2\n")
    _error(
        r"d\.txt: unknown format '\.txt'; expected one of \.npz, \.npy, \.csv", tmp_path / "d.txt"
    )
    np.save(tmp_path / "x.npy", np.ones((4, 2)))
    message = _error(r"no labels for .*x\.npy: looked for .*x_y\.npy", tmp_path / "x.npy")
    assert "X.npy,Y.npy" in message
    _error(r"must be X\.npy,Y\.npy", f"{tmp_path / 'x.npy'},{tmp_path / 'y.csv'}")
    _error(r"^no such file: .*y\.npy$", f"{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}")


def test_csv_label_column_missing(tmp_path):
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "target"], [[1, 2, 0], [3, 4, 1]])
    _error(r"no column named 'label' or 'y'.*columns: 'a', 'b', 'target'", path)
    _error(r"no column 'kind'; columns: 'a', 'b', 'target'", path, label="kind")
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2)), y=np.arange(4))
    _error(r"only applies to \.csv files", tmp_path / "d.npz", label="y")


def test_csv_non_numeric_and_non_finite_cells(tmp_path):
    rows = [[1, 2, 0], [3, 4, 1], [5, "abc", 0], [7, 8, 1]]
    path = _write_csv(tmp_path / "d.csv", ["a", "b", "y"], rows)
    _error(r"d\.csv line 4, column 'b': 'abc' is not a number", path)
    rows[2][1] = ""
    _error(
        r"line 4, column 'b': an empty cell is not a number",
        _write_csv(path, ["a", "b", "y"], rows),
    )
    rows[2][1] = "inf"
    _error(r"line 4, column 'b': 'inf' is not finite", _write_csv(path, ["a", "b", "y"], rows))
    rows[2][1] = 6
    rows[1][2] = "nan"
    _error(r"line 3, column 'y': 'nan' is not finite", _write_csv(path, ["a", "b", "y"], rows))
    rows[1][2] = "one"
    _error(
        r"line 3, column 'y': 'one' is not a number, but other labels are",
        _write_csv(path, ["a", "b", "y"], rows),
    )
    rows[1] = [3, 4]
    _error(
        r"line 3: 2 cells, but the header has 3 columns", _write_csv(path, ["a", "b", "y"], rows)
    )


def test_non_finite_arrays(tmp_path):
    x, y = _blobs(20)
    x[5, 2] = np.nan
    np.savez(tmp_path / "x.npz", x=x, y=y)
    _error(r"x\.npz: x\[5, 2\] is nan; the data must be finite", tmp_path / "x.npz")
    x, _ = _blobs(20)
    target = x[:, 0].copy()
    target[7] = -np.inf
    np.savez(tmp_path / "y.npz", x=x, y=target)
    _error(r"y\.npz: y\[7\] is -inf", tmp_path / "y.npz")


def test_one_class_and_length_mismatch(tmp_path):
    np.savez(tmp_path / "one.npz", x=np.ones((10, 2)), y=np.full(10, 4))
    _error(r"one\.npz: the labels hold one class only \(4\)", tmp_path / "one.npz")
    np.savez(tmp_path / "len.npz", x=np.ones((10, 2)), y=np.arange(9) % 2)
    _error(r"len\.npz: x has 10 rows but y has 9", tmp_path / "len.npz")
    np.save(tmp_path / "a.npy", np.ones((10, 2)))
    np.save(tmp_path / "a_y.npy", np.arange(8) % 2)
    _error(r"a\.npy has 10 rows but a_y\.npy has 8", tmp_path / "a.npy")


def test_npz_without_x_or_y_and_half_a_test_split(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.ones((4, 2)), y=np.arange(4))
    _error(r"d\.npz has no array 'x'; it holds 'features', 'y'", tmp_path / "d.npz")
    np.savez(tmp_path / "t.npz", x=np.ones((4, 2)), y=np.arange(4) % 2, x_test=np.ones((2, 2)))
    _error(r"t\.npz has x_test but no y_test", tmp_path / "t.npz")


def test_too_few_rows_for_the_splits(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(4.0), y=np.arange(4) % 2)
    _error(
        r"4 rows are too few for a test split of 0\.1 \(0 rows",
        tmp_path / "d.npz",
        test_fraction=0.1,
    )
    _error(
        r"3 rows are too few for a validation split of 0\.1", tmp_path / "d.npz", val_fraction=0.1
    )
    path = _write_csv(tmp_path / "e.csv", ["a", "y"], [])
    _error(r"e\.csv has a header but no rows", path)
    (tmp_path / "empty.csv").write_text("")
    _error(r"empty\.csv is empty", tmp_path / "empty.csv")
    _error(r"val_fraction must lie in \[0, 1\)", tmp_path / "d.npz", val_fraction=1.0)
