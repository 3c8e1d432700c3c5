"""A model's layers in a table: output shapes, params and state, like Keras' ``summary``.

``print(nn.summary(model, (32, 64)))`` prints one row per layer, its path in the model
(``serial_1/dense_0``, the keys of `params`), kind, output shape, params (count, leaf shapes
and bytes) and state, and the totals. Nothing runs on data and no params are allocated:
`model.init` is traced with `jax.eval_shape`, and every child that a combinator initialises
through `funcnet.nn.core.init_child` is recorded on the way, with `observe_inits`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from funcnet.nn.core import Layer, LayerError, observe_inits

__all__ = ["Row", "Summary", "summary"]

Shape = tuple[int, ...]

# The param shapes of a row wrap onto more lines past this width.
_SHAPES_WIDTH = 40


@dataclasses.dataclass(frozen=True)
class Row:
    """One layer of a `Summary`.

    `path` is the layer's place in the model, the keys of `params` joined by ``/``
    (``"serial_1/dense_0"``), and ``""`` for the whole model. `in_shape` and `out_shape`
    include the batch axis (a tuple of shapes for several inputs or outputs). `params` and
    `state` map each leaf path, relative to the layer (``"w"``, ``"norm_1/scale"``), to its
    shape; they hold the layer's own leaves, those no deeper row lists, so the counts and bytes
    of all rows add up to the model's.
    """

    path: str
    kind: str
    in_shape: Any
    out_shape: Any
    params: Mapping[str, Shape]
    param_count: int
    param_bytes: int
    state: Mapping[str, Shape]
    state_count: int
    state_bytes: int


@dataclasses.dataclass(frozen=True)
class Summary:
    """The rows of a model, the whole model first and then its layers depth-first, and the
    model's totals. ``str(summary)`` is the table."""

    rows: tuple[Row, ...]
    param_count: int
    param_bytes: int
    state_count: int
    state_bytes: int

    def __str__(self) -> str:
        return _render(self)


class _Call(NamedTuple):
    """One recorded init: the layer's path, kind, shapes, and its params and state specs."""

    path: tuple[str, ...]
    kind: str
    in_shape: Any
    out_shape: Any
    params: dict[tuple[str, ...], jax.ShapeDtypeStruct]
    state: dict[tuple[str, ...], jax.ShapeDtypeStruct]


def summary(model: Layer, in_shape: Any, *, key: jax.Array | None = None) -> Summary:
    """The layers of `model` on inputs of shape `in_shape`: output shapes, params and state.

    `in_shape` includes the batch axis, ``(batch, features)``; a model of several inputs takes
    a tuple of shapes, as its `init` does. `key` is the key `model.init` is traced with (only
    its type matters, the shapes do not depend on it; ``jax.random.key(0)`` when None).
    Nothing is computed on data and no params are allocated (`jax.eval_shape`). Layers that a
    combinator initialises with `funcnet.nn.core.init_child`, as the built-in ones do, get rows
    of their own; the params of other sub-layers are listed on their parent's row.

    Raises a `ValueError` when `in_shape` does not fit the model (a `LayerError`, naming the
    layer's path, where a layer checks its input), and a `TypeError` when `in_shape` is not a
    shape or a tuple of shapes.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"summary: expected a Layer, got {type(model).__name__}")
    in_shape = _as_shapes(in_shape)
    key = jax.random.key(0) if key is None else key
    calls: list[_Call] = []

    def record(path, layer, child_in, child_out, params, state):
        calls.append(_Call(path, layer.kind, child_in, child_out, _specs(params), _specs(state)))

    def init(k):
        with observe_inits(record):
            out_shape, params, state = model.init(k, in_shape)
        calls.append(_Call((), model.kind, in_shape, out_shape, _specs(params), _specs(state)))

    try:
        # A fresh function each time, so that no cached trace skips the recording.
        jax.eval_shape(lambda k: init(k), key)
    except LayerError:
        raise
    except (TypeError, ValueError, IndexError) as err:
        # Shape mismatches that JAX or a layer reports as something else than a LayerError.
        raise ValueError(
            f"summary: {model.kind} does not take inputs of shape {in_shape}: "
            f"{type(err).__name__}: {err}"
        ) from err
    rows = _rows(calls)
    return Summary(
        rows=rows,
        param_count=sum(row.param_count for row in rows),
        param_bytes=sum(row.param_bytes for row in rows),
        state_count=sum(row.state_count for row in rows),
        state_bytes=sum(row.state_bytes for row in rows),
    )


def _as_shapes(in_shape: Any) -> Any:
    """`in_shape` with every shape a tuple of ints; a list is read as a tuple."""
    if isinstance(in_shape, Mapping):
        return {k: _as_shapes(v) for k, v in in_shape.items()}
    if not isinstance(in_shape, (tuple, list)):
        raise TypeError(
            "summary: in_shape must be a shape (a tuple of ints, batch axis first) or a tuple "
            f"of shapes, got {in_shape!r}"
        )
    if all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in in_shape):
        if any(d < 0 for d in in_shape):
            raise ValueError(f"summary: a shape has a negative size: {tuple(in_shape)}")
        return tuple(int(d) for d in in_shape)
    return tuple(_as_shapes(s) for s in in_shape)


def _specs(tree: Any) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """The shape and dtype of each array in `tree` by its path of keys, so that no tracer
    outlives the trace. Dicts keep their order (`jax.tree` would sort their keys)."""
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (tuple, list)):
        items = enumerate(tree)
    elif tree is None:
        return {}
    else:
        dtype = tree.dtype if hasattr(tree, "dtype") else np.result_type(tree)
        return {(): jax.ShapeDtypeStruct(np.shape(tree), dtype)}
    return {(str(k), *path): leaf for k, sub in items for path, leaf in _specs(sub).items()}


def _rows(calls: list[_Call]) -> tuple[Row, ...]:
    """One row per recorded layer, depth-first, each with the leaves no deeper row holds."""
    layers: dict[tuple[str, ...], _Call] = {}
    first_seen: dict[tuple[str, ...], int] = {}
    for i, call in enumerate(calls):
        layers.setdefault(call.path, call)
        for depth in range(len(call.path) + 1):
            first_seen.setdefault(call.path[:depth], i)

    # Calls arrive as each init returns (children before parents, siblings in order);
    # ordering by when each ancestor was first seen puts parents before their children.
    def order(path):
        return tuple(first_seen[path[:d]] for d in range(1, len(path) + 1))

    def own(field):
        """The model's params (or state) leaves, by the deepest layer whose own tree holds each."""
        owned = {path: {} for path in layers}
        for leaf_path, leaf in getattr(layers[()], field).items():
            depth = next(
                d
                for d in range(len(leaf_path), -1, -1)
                if leaf_path[:d] in layers
                and leaf_path[d:] in getattr(layers[leaf_path[:d]], field)
            )
            owned[leaf_path[:depth]]["/".join(leaf_path[depth:])] = leaf
        return owned

    own_params, own_state = own("params"), own("state")
    rows = []
    for path in sorted(layers, key=order):
        call, params, state = layers[path], own_params[path], own_state[path]
        rows.append(
            Row(
                path="/".join(path),
                kind=call.kind,
                in_shape=call.in_shape,
                out_shape=call.out_shape,
                params={k: tuple(v.shape) for k, v in params.items()},
                param_count=_count(params),
                param_bytes=_bytes(params),
                state={k: tuple(v.shape) for k, v in state.items()},
                state_count=_count(state),
                state_bytes=_bytes(state),
            )
        )
    return tuple(rows)


def _count(leaves: dict) -> int:
    return sum(math.prod(leaf.shape) for leaf in leaves.values())


def _bytes(leaves: dict) -> int:
    return sum(math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize for leaf in leaves.values())


def _format_bytes(n: int) -> str:
    """`n` bytes in decimal units: ``"520 B"``, ``"33.3 KB"``, ``"1.2 MB"``."""
    if n < 1000:
        return f"{n} B"
    for unit in ("KB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.95 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _format_shape(shape: Any) -> str:
    if isinstance(shape, Mapping):
        return "{" + ", ".join(f"{k}: {_format_shape(v)}" for k, v in shape.items()) + "}"
    if isinstance(shape, (tuple, list)):
        parts = [
            str(int(d)) if isinstance(d, (int, np.integer)) else _format_shape(d) for d in shape
        ]
        return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"
    return str(shape)


def _wrap(items: list[str], width: int) -> list[str]:
    """`items` joined by commas, onto lines of at most `width` characters where they fit."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += ", " + item
        else:
            if lines:
                lines[-1] += ","
            lines.append(item)
    return lines or [""]


def _render(s: Summary) -> str:
    has_state = s.state_count > 0
    header = ["path", "kind", "output shape", "params", "param shapes", "bytes"]
    right = {3, 5, 6, 7}
    if has_state:
        header += ["state", "state bytes"]
    table: list[list[str]] = [header]
    for row in s.rows:
        shapes = _wrap([f"{k} {_format_shape(v)}" for k, v in row.params.items()], _SHAPES_WIDTH)
        cells = [
            row.path or "(model)",
            row.kind,
            _format_shape(row.out_shape),
            f"{row.param_count:,}",
            shapes[0],
            _format_bytes(row.param_bytes) if row.param_count else "",
        ]
        if has_state:
            cells += [
                f"{row.state_count:,}" if row.state_count else "",
                _format_bytes(row.state_bytes) if row.state_count else "",
            ]
        table.append(cells)
        for more in shapes[1:]:
            table.append(["", "", "", "", more, ""] + ["", ""] * has_state)
    total = ["total", "", "", f"{s.param_count:,}", "", _format_bytes(s.param_bytes)]
    if has_state:
        total += [f"{s.state_count:,}", _format_bytes(s.state_bytes)]
    table.append(total)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]

    def line(cells):
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join(line(r) for r in table)
