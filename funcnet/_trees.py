"""Comparing two pytrees leaf by leaf, for errors that name every difference.

A tree from another model, or an optimizer state built for another params tree, would
otherwise fail deep inside `jax.tree.map` with a broadcasting error, or not fail at all.
"""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


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


def differences(expected: PyTree, found: PyTree, *, source: str) -> list[str]:
    """One line per leaf of `found` that `expected` lacks, leaf it has in excess, or leaf
    whose shape differs; empty when the two trees agree. `source` names `found`."""
    want, have = shapes_of(expected), shapes_of(found)
    lines = [
        f"missing (expected, not in {source}): {p} {s}" for p, s in want.items() if p not in have
    ]
    lines += [
        f"extra (in {source}, not expected): {p} {s}" for p, s in have.items() if p not in want
    ]
    lines += [
        f"mismatched: {p}: shape {have[p]} in {source}, expected {s}"
        for p, s in want.items()
        if p in have and have[p] != s
    ]
    if not lines:
        expected_def, found_def = jax.tree.structure(expected), jax.tree.structure(found)
        if expected_def != found_def:
            lines.append(f"the containers differ: {source} is {found_def}, expected {expected_def}")
    return lines


def check_same_shapes(expected: PyTree, found: PyTree, *, what: str, source: str) -> None:
    """Raises a ValueError starting with `what` and listing every `differences` line."""
    lines = differences(expected, found, source=source)
    if lines:
        raise ValueError("\n  ".join([what, *lines]))
