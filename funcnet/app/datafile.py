"""A user's own data set read from a file, for ``funcnet train --data FILE``.

`load_file` reads ``.npz``, ``.npy`` and ``.csv`` files, splits them into train / validation
/ test, standardises the features with the training split's statistics, and tells
classification from regression. Its description of the data (a JSON-able dict) records what
predicting on new data needs: the standardisation and the original class values.
"""

from __future__ import annotations

import csv
import hashlib
import os
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["DataFileError", "FileData", "load_file", "read_features", "standardize"]

FORMATS = (".npz", ".npy", ".csv")


class DataFileError(ValueError):
    """A data file that cannot be used; the message is one line naming the file and the fault."""


class FileData(NamedTuple):
    """A data file's splits, laid out like the command's bundled data sets.

    ``train``, ``val`` (None without a validation split) and ``test`` are ``(x, y)`` pairs:
    ``x`` float32 of shape ``(n, *feature_shape)``, standardised; ``y`` int32 class indices
    ``(n,)`` for classification, float32 ``(n,)`` or ``(n, k)`` for regression. ``classes``:
    the class count (0 for regression). ``task``: ``"classification"`` or ``"regression"``.
    ``features``: the number of input values per example. ``outputs``: the width of the
    model's output (the class count, or the number of regression targets, 1 for ``(n,)``).
    """

    train: tuple[jax.Array, jax.Array]
    val: tuple[jax.Array, jax.Array] | None
    test: tuple[jax.Array, jax.Array]
    classes: int
    task: str
    features: int
    outputs: int


def load_file(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    val_fraction: float,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[FileData, dict[str, Any]]:
    """The splits of the data set in `path` and a JSON-able description of it.

    Formats, chosen by the extension:

    - ``.npz``: arrays ``x`` (features) and ``y`` (labels), and optionally ``x_test`` and
      ``y_test``, which are then the test split (`test_fraction` is not used).
    - ``.npy``: ``"X.npy,Y.npy"`` names the feature and label files; a single ``NAME.npy``
      takes its labels from ``NAME_y.npy`` beside it.
    - ``.csv``: a header row, then one example per line, all columns numbers except perhaps
      the label column: `label`, or by default the column named ``label`` or ``y``.

    A 1-D ``x`` is one feature, shape ``(n, 1)``. The test split is `test_fraction` of the
    rows (drawn with `seed`), the validation split `val_fraction` of the rest (drawn with
    ``seed + 1``; None when `val_fraction` is 0). Features are standardised with the training
    split's mean and standard deviation (a feature constant there is only centred).

    The task: labels of an integer, bool or string dtype, or a csv label column written all
    as integers (``3``, ``-1``) or all as words, are classes, remapped to ``0..C-1`` in
    sorted order; float labels (a csv column with any ``2.5``, ``1.0`` or ``1e3``) are
    regression targets. Write integer regression targets as floats (``3.0``).

    Description keys: ``source``, ``format``, ``sha256`` (per file read), ``label`` (the csv
    label column, else None), ``task``, ``classes`` (the original class values, index ``i``
    being class ``i``, or ``"regression"``), ``outputs``, ``rows`` (``train``/``val``/
    ``test``), ``features``, ``feature_shape``, ``feature_names`` (csv, else None),
    ``standardization`` (``mean``, ``std``, each of `feature_shape`; see `standardize`) and
    ``split`` (``test`` ``"cut"`` or ``"given"``, ``test_fraction``, ``val_fraction``,
    ``seed``). Every fault raises a one-line `DataFileError`.
    """
    if not 0 <= val_fraction < 1:
        raise DataFileError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    files = _files(path)
    fmt = files[0].suffix.lower()
    if label is not None and fmt != ".csv":
        raise DataFileError(
            f"a label column ({label!r}) only applies to .csv files, not {files[0].name}"
        )
    names, given_test = None, None
    if fmt == ".csv":
        x, y, label, names = _read_csv(files[0], label)
        source = str(files[0])
    elif fmt == ".npz":
        x, y, given_test = _read_npz(files[0])
        source = str(files[0])
    else:
        x = _checked_array(_load_npy(files[0]), files[0].name, features=True)
        y = _checked_array(_load_npy(files[1]), files[1].name, features=False)
        _same_length(x, y, f"{files[0].name} has {len(x)} rows but {files[1].name} has")
        source = (
            ",".join(str(f) for f in files)
            if isinstance(path, str) and "," in path
            else str(files[0])
        )

    task = _task(y)
    classes: list[Any] | str = "regression"
    if task == "classification":
        every = y if given_test is None else np.concatenate([y, given_test[1]])
        values, indices = np.unique(every, return_inverse=True)
        if len(values) < 2:
            raise DataFileError(
                f"{files[-1].name}: the labels hold one class only ({values.tolist()[0]!r}); "
                "classification needs two or more"
            )
        classes = values.tolist()
        y = indices[: len(y)].astype(np.int32)
        if given_test is not None:
            given_test = (given_test[0], indices[len(y) :].astype(np.int32))
    else:
        y = y.astype(np.float32)
        if given_test is not None:
            given_test = (given_test[0], given_test[1].astype(np.float32))

    if given_test is None:
        if not 0 < test_fraction < 1:
            raise DataFileError(f"test_fraction must lie in (0, 1), got {test_fraction}")
        (x, y), test = _split_off(x, y, test_fraction, seed, "test", source)
    else:
        test = given_test
    (x, y), val = _split_off(x, y, val_fraction, seed + 1, "validation", source)

    mean = x.mean(axis=0)
    constant = np.all(x == x[:1], axis=0)
    std = np.where(constant, 1.0, x.std(axis=0))

    def prepare(pair: tuple[np.ndarray, np.ndarray] | None):
        if pair is None:
            return None
        features = ((pair[0] - mean) / std).astype(np.float32)
        return jnp.asarray(features), jnp.asarray(pair[1])

    outputs = len(classes) if task == "classification" else (1 if y.ndim == 1 else y.shape[1])
    feature_shape = list(x.shape[1:])
    data = FileData(
        train=prepare((x, y)),
        val=prepare(val),
        test=prepare(test),
        classes=len(classes) if task == "classification" else 0,
        task=task,
        features=int(np.prod(feature_shape)),
        outputs=int(outputs),
    )
    description = {
        "source": source,
        "format": fmt[1:],
        "sha256": {str(f): _sha256(f) for f in files},
        "label": label,
        "task": task,
        "classes": classes,
        "outputs": data.outputs,
        "rows": {"train": len(y), "val": 0 if val is None else len(val[1]), "test": len(test[1])},
        "features": data.features,
        "feature_shape": feature_shape,
        "feature_names": names,
        "standardization": {"mean": mean.tolist(), "std": std.tolist()},
        "split": {
            "test": "cut" if given_test is None else "given",
            "test_fraction": test_fraction if given_test is None else None,
            "val_fraction": val_fraction,
            "seed": seed,
        },
    }
    return data, description


def read_features(path: str | os.PathLike[str], description: dict[str, Any]) -> jax.Array:
    """The features of new examples in `path`, standardised as the described data was.

    ``.npz``: its array ``x``; ``.npy``: the array itself (no labels needed); ``.csv``: a
    header row naming at least the described ``feature_names`` (other columns, such as the
    label, are ignored).
    """
    file = pathlib.Path(path)
    suffix = file.suffix.lower()
    if suffix not in FORMATS:
        raise DataFileError(
            f"{file}: unknown format {suffix or '(no extension)'!r}; expected one of "
            f"{', '.join(FORMATS)}"
        )
    if not file.is_file():
        raise DataFileError(f"no such file: {file}")
    if suffix == ".npy":
        x = _load_npy(file)
    elif suffix == ".npz":
        try:
            with np.load(file, allow_pickle=False) as archive:
                names = archive.files
                x = archive["x"] if "x" in names else None
        except (ValueError, OSError, EOFError) as err:
            raise DataFileError(f"{file}: cannot read it as a .npz archive ({err})") from err
        if x is None:
            raise DataFileError(f"{file} has no array 'x'; it holds {sorted(names)}")
    else:
        names = description.get("feature_names")
        if not names:
            raise DataFileError(f"{file}: the model was not trained on csv columns")
        try:
            with open(file, newline="", encoding="utf-8-sig") as stream:
                rows = [row for row in csv.reader(stream) if any(cell.strip() for cell in row)]
        except (UnicodeDecodeError, csv.Error) as err:
            raise DataFileError(f"{file}: cannot read it as csv text ({err})") from err
        short = [i for i, row in enumerate(rows) if len(row) != len(rows[0])]
        if short:
            raise DataFileError(
                f"{file} has a row of {len(rows[short[0]])} cells where the header has "
                f"{len(rows[0])}"
            )
        if not rows:
            raise DataFileError(f"{file} is empty; expected a header row, then the data")
        header = [name.strip() for name in rows[0]]
        missing = [name for name in names if name not in header]
        if missing:
            raise DataFileError(f"{file} lacks the feature columns {missing}")
        if len(rows) == 1:
            raise DataFileError(f"{file} has a header but no rows")
        cells = np.array([[cell.strip() for cell in row] for row in rows[1:]], dtype=str)
        cells = cells[:, [header.index(name) for name in names]]
        x = _numbers(cells, file, list(range(2, len(rows) + 1)), list(names))
    x = _checked_array(np.asarray(x), file.name, features=True)
    return standardize(x, description)


def standardize(x: Any, description: dict[str, Any]) -> jax.Array:
    """New features `x` standardised as `load_file` standardised the ones described."""
    stats = description["standardization"]
    x = np.asarray(x, np.float64)
    if x.ndim == 1 and description["feature_shape"] == [1]:
        x = x[:, None]
    if list(x.shape[1:]) != description["feature_shape"]:
        raise DataFileError(
            f"features of shape {list(x.shape[1:])} do not match the data's "
            f"{description['feature_shape']}"
        )
    return jnp.asarray(((x - np.asarray(stats["mean"])) / np.asarray(stats["std"])), jnp.float32)


# Reading.


def _files(path: str | os.PathLike[str]) -> list[pathlib.Path]:
    """The files `path` names: one, or for ``.npy`` the feature file and the label file."""
    if isinstance(path, str) and "," in path:
        parts = [pathlib.Path(p.strip()) for p in path.split(",")]
        if len(parts) != 2 or any(p.suffix.lower() != ".npy" for p in parts):
            raise DataFileError(f"two comma-separated files must be X.npy,Y.npy, got {path!r}")
    else:
        parts = [pathlib.Path(path)]
        suffix = parts[0].suffix.lower()
        if suffix not in FORMATS:
            raise DataFileError(
                f"{parts[0]}: unknown format {suffix or '(no extension)'!r}; "
                f"expected one of {', '.join(FORMATS)}"
            )
        if suffix == ".npy":
            labels = parts[0].with_name(parts[0].stem + "_y.npy")
            if parts[0].is_file() and not labels.exists():
                raise DataFileError(
                    f"no labels for {parts[0]}: looked for {labels} "
                    "(or name both files as X.npy,Y.npy)"
                )
            parts.append(labels)
    for part in parts:
        if not part.exists():
            raise DataFileError(f"no such file: {part}")
        if not part.is_file():
            raise DataFileError(f"{part} is not a file")
    return parts


def _load_npy(file: pathlib.Path) -> np.ndarray:
    try:
        return np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataFileError(f"{file}: cannot read it as a .npy array ({err})") from err


def _read_npz(file: pathlib.Path):
    """``(x, y, (x_test, y_test) or None)`` from an ``.npz`` archive, checked."""
    try:
        with np.load(file, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError) as err:
        raise DataFileError(f"{file}: cannot read it as a .npz archive ({err})") from err
    missing = [name for name in ("x", "y") if name not in arrays]
    if missing:
        raise DataFileError(
            f"{file} has no array {' or '.join(map(repr, missing))}; it holds "
            f"{', '.join(map(repr, sorted(arrays))) or 'nothing'} (expected x, y and "
            "optionally x_test, y_test)"
        )
    x = _checked_array(arrays["x"], f"{file.name}: x", features=True)
    y = _checked_array(arrays["y"], f"{file.name}: y", features=False)
    _same_length(x, y, f"{file.name}: x has {len(x)} rows but y has")
    if ("x_test" in arrays) != ("y_test" in arrays):
        have, lack = ("x_test", "y_test") if "x_test" in arrays else ("y_test", "x_test")
        raise DataFileError(f"{file.name} has {have} but no {lack}")
    if "x_test" not in arrays:
        return x, y, None
    x_test = _checked_array(arrays["x_test"], f"{file.name}: x_test", features=True)
    y_test = _checked_array(arrays["y_test"], f"{file.name}: y_test", features=False)
    _same_length(x_test, y_test, f"{file.name}: x_test has {len(x_test)} rows but y_test has")
    if x_test.shape[1:] != x.shape[1:]:
        raise DataFileError(
            f"{file.name}: x_test has features of shape {list(x_test.shape[1:])}, "
            f"x of shape {list(x.shape[1:])}"
        )
    if _task(y_test) != _task(y) or y_test.shape[1:] != y.shape[1:]:
        raise DataFileError(
            f"{file.name}: y_test ({y_test.dtype}, {list(y_test.shape)}) does not match "
            f"y ({y.dtype}, {list(y.shape)})"
        )
    return x, y, (x_test, y_test)


def _checked_array(a: np.ndarray, what: str, *, features: bool) -> np.ndarray:
    """`a` as features (float64, at least 2-D) or labels, refusing other dtypes and NaN/inf."""
    if a.ndim == 0:
        raise DataFileError(f"{what} is a scalar, not one row per example")
    if features:
        if a.dtype.kind not in "biuf":
            raise DataFileError(f"{what} has dtype {a.dtype}; features must be numbers")
        a = a.astype(np.float64)
        if a.ndim == 1:
            a = a[:, None]
    elif a.dtype.kind in "biuUS":
        if a.ndim == 2 and a.shape[1] == 1:
            a = a[:, 0]
        if a.ndim != 1:
            raise DataFileError(
                f"{what}: class labels ({a.dtype}) must be one per row, got shape {list(a.shape)}"
            )
        return a
    elif a.dtype.kind == "f":
        if a.ndim > 2:
            raise DataFileError(
                f"{what}: regression targets must have shape (n,) or (n, k), got {list(a.shape)}"
            )
        a = a.astype(np.float64)
    else:
        raise DataFileError(f"{what} has dtype {a.dtype}; labels must be numbers or strings")
    bad = np.argwhere(~np.isfinite(a))
    if len(bad):
        where = ", ".join(str(int(i)) for i in bad[0])
        raise DataFileError(f"{what}[{where}] is {a[tuple(bad[0])]}; the data must be finite")
    return a


def _same_length(x: np.ndarray, y: np.ndarray, message: str) -> None:
    if len(x) != len(y):
        raise DataFileError(f"{message} {len(y)}; they must have one label per row")


def _read_csv(file: pathlib.Path, label: str | None):
    """``(x, y, label, feature_names)`` from a csv file with a header row."""
    try:
        with open(file, newline="", encoding="utf-8-sig") as stream:
            reader = csv.reader(stream)
            header = next(reader, None)
            if header is None:
                raise DataFileError(f"{file} is empty; expected a header row, then the data")
            header = [name.strip() for name in header]
            lines, rows = [], []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise DataFileError(
                        f"{file} line {reader.line_num}: {len(row)} cells, but the header has "
                        f"{len(header)} columns"
                    )
                lines.append(reader.line_num)
                rows.append([cell.strip() for cell in row])
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataFileError(f"{file}: cannot read it as csv text ({err})") from err
    columns = ", ".join(map(repr, header))
    if label is None:
        found = [name for name in ("label", "y") if name in header]
        if not found:
            raise DataFileError(
                f"{file} has no column named 'label' or 'y'; name the label column "
                f"(columns: {columns})"
            )
        label = found[0]
    elif label not in header:
        raise DataFileError(f"{file} has no column {label!r}; columns: {columns}")
    if header.count(label) > 1:
        raise DataFileError(f"{file} has {header.count(label)} columns named {label!r}")
    at = header.index(label)
    names = [name for j, name in enumerate(header) if j != at]
    if not names:
        raise DataFileError(f"{file} has no feature columns besides the label {label!r}")
    if not rows:
        raise DataFileError(f"{file} has a header but no rows")
    cells = np.array(rows, dtype=str).reshape(len(rows), len(header))
    feature_cells = np.delete(cells, at, axis=1)
    x = _numbers(feature_cells, file, lines, names)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        i, j = bad[0]
        cell = str(feature_cells[i, j])
        raise DataFileError(f"{file} line {lines[i]}, column {names[j]!r}: {cell!r} is not finite")
    y = _csv_labels(cells[:, at], file, lines, label)
    return x, y, label, names


def _numbers(cells: np.ndarray, file: pathlib.Path, lines: list[int], names: list[str]):
    """The float64 values of a 2-D array of cells, naming the first cell that is no number."""
    try:
        return cells.astype(np.float64)
    except ValueError:
        pass
    values = np.empty(cells.shape, np.float64)
    for i, row in enumerate(cells):
        for j, cell in enumerate(row):
            try:
                values[i, j] = float(cell)
            except ValueError:
                shown = repr(str(cell)) if cell else "an empty cell"
                raise DataFileError(
                    f"{file} line {lines[i]}, column {names[j]!r}: {shown} is not a number"
                ) from None
    return values


def _csv_labels(cells: np.ndarray, file: pathlib.Path, lines: list[int], label: str):
    """A csv label column: int64 (all integers), str (all words), else float64 (checked)."""
    for i, cell in enumerate(cells):
        if not cell:
            raise DataFileError(f"{file} line {lines[i]}, column {label!r}: the label is empty")
    try:
        return np.array([int(cell) for cell in cells], dtype=np.int64)
    except (ValueError, OverflowError):
        pass
    numeric = []
    for cell in cells:
        try:
            float(cell)
            numeric.append(True)
        except ValueError:
            numeric.append(False)
    if not any(numeric):
        return cells.astype(str)
    if not all(numeric):
        i = numeric.index(False)
        raise DataFileError(
            f"{file} line {lines[i]}, column {label!r}: {str(cells[i])!r} is not a number, "
            "but other labels are"
        )
    y = cells.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        i = bad[0]
        raise DataFileError(
            f"{file} line {lines[i]}, column {label!r}: {str(cells[i])!r} is not finite"
        )
    return y


# Splitting and the task.


def _task(y: np.ndarray) -> str:
    return "regression" if y.dtype.kind == "f" else "classification"


def _split_off(x: np.ndarray, y: np.ndarray, fraction: float, seed: int, name: str, source: str):
    """``(rest, part)``: a seeded random `fraction` of the rows, None when `fraction` is 0."""
    if fraction == 0:
        return (x, y), None
    n_part = round(fraction * len(y))
    if n_part == 0 or n_part >= len(y):
        raise DataFileError(
            f"{source}: {len(y)} rows are too few for a {name} split of {fraction:g} "
            f"({n_part} rows, leaving {len(y) - n_part} to train on)"
        )
    order = np.random.default_rng(seed).permutation(len(y))
    rest, part = order[n_part:], order[:n_part]
    return (x[rest], y[rest]), (x[part], y[part])


def _sha256(file: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
