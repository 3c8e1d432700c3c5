"""Checking pytrees leaf by leaf, for errors that name every leaf at fault.

A tree from another model, or an optimizer state built for another params tree, would
otherwise fail deep inside `jax.tree.map` with a broadcasting error, or not fail at all; a
data set whose leaves differ in length would be cut to the shortest, or fail in a gather.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

PyTree = Any


def is_shape(node: Any) -> bool:
    """Whether `node` is one shape, a leaf of a tree of shapes: a tuple or list of ints."""
    return isinstance(node, tuple | list) and all(isinstance(d, int) for d in node)


def entry_name(entry: Any) -> str:
    """One step of a key path as text: a dict key, an attribute name or a sequence index."""
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_name(key_path: tuple[Any, ...]) -> str:
    """A leaf's path as ``dense_0/w`` or ``opt_state/1/mu/dense_0/w``."""
    return "/".join(entry_name(entry) for entry in key_path) or "(the root)"


def shapes_of(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of every leaf (arrays, tracers or `jax.ShapeDtypeStruct`)."""
    pairs, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(path): tuple(getattr(leaf, "shape", ())) for path, leaf in pairs}


def leaf_differences(
    expected: Mapping[str, Any], found: Mapping[str, Any], *, source: str
) -> list[str]:
    """One line per path that `expected` has and `found` lacks, that `found` has in excess,
    or whose description (a shape, a dtype and shape) differs; empty when they agree.

    `expected` and `found` map leaf paths to descriptions; `source` names `found` (``"the
    state"``, ``"the file"``).
    """
    lines = [
        f"missing (expected, not in {source}): {p} {d}"
        for p, d in expected.items()
        if p not in found
    ]
    lines += [
        f"extra (in {source}, not expected): {p} {d}" for p, d in found.items() if p not in expected
    ]
    lines += [
        f"mismatched: {p}: {source} has {found[p]}, expected {d}"
        for p, d in expected.items()
        if p in found and found[p] != d
    ]
    return lines


def differences(expected: PyTree, found: PyTree, *, source: str) -> list[str]:
    """The `leaf_differences` of the two trees' leaf shapes, and a line saying the containers
    differ when the leaves agree but the trees do not. `source` names `found`."""
    lines = leaf_differences(shapes_of(expected), shapes_of(found), source=source)
    if not lines:
        expected_def, found_def = jax.tree.structure(expected), jax.tree.structure(found)
        if expected_def != found_def:
            lines.append(f"the containers differ: {source} is {found_def}, expected {expected_def}")
    return lines


def check_same_shapes(
    expected: PyTree, found: PyTree, *, what: str, source: str, one_line: bool = False
) -> None:
    """Raises a ValueError starting with `what` and listing every `differences` line, each
    on a line of its own, or with `one_line` after a colon, separated by semicolons."""
    lines = differences(expected, found, source=source)
    if lines and one_line:
        raise ValueError(f"{what}: {'; '.join(lines)}")
    if lines:
        raise ValueError("\n  ".join([what, *lines]))


def leading_size(tree: PyTree, *, what: str) -> int:
    """The size of the leading axis that every leaf of `tree` shares.

    Raises a ValueError starting with `what` (``"x and y"``) and listing every leaf's shape
    when the sizes differ, a leaf is a scalar, or `tree` has no array leaves.
    """
    shapes = [tuple(np.shape(leaf)) for leaf in jax.tree.leaves(tree)]
    sizes = {shape[0] if shape else None for shape in shapes}
    if not shapes:
        raise ValueError(f"{what} must share one leading axis, but there are no arrays")
    if len(sizes) != 1 or None in sizes:
        fault = "a scalar has none" if None in sizes else "differ in length"
        raise ValueError(f"{what} must share one leading axis, but {fault}: shapes {shapes}")
    return sizes.pop()
