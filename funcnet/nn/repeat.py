"""A stack of identical blocks run by one `lax.scan`, with its params stacked on a leading axis.

``repeat(block, n)`` computes what ``serial(block, ..., block)`` (n copies) computes, with
the n blocks' params (and state) stacked into one tree shaped like the block's, each leaf
with a leading axis of length n. The block is traced once, whatever n, so the compile time
and the size of the program stay flat in depth; with ``remat=`` each block's activations are
recomputed in the backward pass, and only the carry between blocks is kept.

`serial_to_repeat` and `repeat_to_serial` convert params and state between the two forms,
exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from funcnet._trees import is_shape
from funcnet.nn.core import Layer, LayerError, as_layer, layer_name
from funcnet.nn.remat import Policy, remat_policy

__all__ = ["repeat", "repeat_to_serial", "serial_to_repeat"]

Array = jax.Array


def _describe(tree: Any) -> Any:
    """`tree` with each array written as its dtype and shape (``float32[8, 64]``), for
    messages and comparisons."""
    return jax.tree.map(lambda a: f"{jnp.result_type(a)}{list(jnp.shape(a))}", tree)


def repeat(
    block: Layer | Callable[[Array], Array],
    n: int,
    *,
    remat: bool | str | Policy | None = None,
    unroll: int | bool = 1,
) -> Layer:
    """`n` copies of `block` in sequence, ``y = f_{n−1}(... f_1(f_0(x)))``, each with its own
    params, run as one `lax.scan` over the stacked params.

    Params and state: the block's trees with a leading axis of length n on every leaf (a dense
    block's ``{"w": (in, out), "b": (out,)}`` becomes ``{"w": (n, in, out), "b": (n, out)}``).
    Block ``i`` is initialised with ``jax.random.fold_in(key, i)`` and applied with
    ``jax.random.fold_in(key, i)`` (when a key is given): the keys `serial` gives its i-th
    child. So ``repeat(block, n)`` and ``serial(*[block] * n)`` have the same params once
    converted (`serial_to_repeat`, `repeat_to_serial`), and the same outputs, gradients and
    dropout masks.

    The block must map its input to an input of the same shape and dtype (the carry of the
    scan); `init` and `apply` raise a `LayerError` naming the shapes otherwise. Inputs that are
    tuples (``(x, mask)`` for `transformer_block`) are carried whole. A block with state (batch
    norm's statistics, an attention cache) has its state stacked too and returned updated.
    Decoding with a ``cache_length`` block gives the outputs of a serial of such blocks, but
    writing past the end of the cache is not caught: inside the scan the cache index is
    traced, as under `jit`.

    `remat`: None or False runs the blocks as they are; True, a policy name or a policy
    function (as in `funcnet.nn.remat`) puts each block under `jax.checkpoint`, so that the
    gradient keeps only the carries between blocks (and what the policy saves) and recomputes
    the rest, block by block, in the backward pass. `unroll` is `lax.scan`'s: the number of
    blocks per scan iteration (True: all of them).

    Its kind is ``"repeat"``.
    """
    block = as_layer(block, owner="repeat")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"repeat: n must be a positive int, got {n!r}")
    if remat is None or remat is False:
        policy, checkpointed = None, False
    else:
        policy, checkpointed = remat_policy(None if remat is True else remat), True

    def check_keeps(y, x):
        same = jax.tree.structure(y) == jax.tree.structure(x) and all(
            a.shape == b.shape and a.dtype == b.dtype
            for a, b in zip(jax.tree.leaves(y), jax.tree.leaves(x), strict=True)
        )
        if not same:
            raise LayerError(
                "repeat",
                f"the block ({block.kind}) maps its input {_describe(x)} to {_describe(y)}; "
                "repeat needs a block that keeps the shape and dtype of its input",
            )

    def init(key, in_shape):
        params, states = [], []
        for i in range(n):
            out_shape, p, s = block.init(jax.random.fold_in(key, i), in_shape)
            if i == 0:
                shape_tree = jax.tree.map(tuple, in_shape, is_leaf=is_shape)
                out_tree = jax.tree.map(tuple, out_shape, is_leaf=is_shape)
                if out_tree != shape_tree:
                    raise LayerError(
                        "repeat",
                        f"the block ({block.kind}) maps shape {in_shape} to {out_shape}; "
                        "repeat needs a block that keeps the shape of its input",
                    )
            params.append(p)
            states.append(s)
        return out_shape, _stack(params), _stack(states)

    def scanned(params, state, x, key, train):
        def run(params, state, x, i, key):
            k = None if key is None else jax.random.fold_in(key, i)
            return block.apply(params, state, x, key=k, train=train)

        if checkpointed:
            run = jax.checkpoint(run, policy=policy, prevent_cse=False)

        def body(carry, layer):
            p, s, i = layer
            y, s = run(p, s, carry, i, key)
            check_keeps(y, carry)
            return y, s

        indices = jnp.arange(n, dtype=jnp.uint32)
        return lax.scan(body, x, (params, state, indices), unroll=unroll)

    # Compiled once per layer, shapes and `train`: called eagerly, the scan (its body a new
    # closure at each call) was traced and compiled at every call; inside a jit it is inlined.
    scanned = jax.jit(scanned, static_argnums=4)

    def apply(params, state, x, *, key=None, train=False):
        _check_stacked(block.kind, n, params, "params")
        _check_stacked(block.kind, n, state, "state")
        return scanned(params, state, x, key, train)

    return Layer(init, apply, kind="repeat")


def _stack(trees: list[Any]) -> Any:
    """One tree with the leaves of `trees` stacked on a new leading axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _check_stacked(kind: str, n: int, tree: Any, what: str) -> None:
    """Every leaf of `tree` has a leading axis of length `n`."""
    wrong = {
        jax.tree_util.keystr(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
        if not jnp.ndim(leaf) or jnp.shape(leaf)[0] != n
    }
    if wrong:
        raise LayerError(
            "repeat",
            f"{what} of a repeat of {n} {kind} blocks have a leading axis of length {n} on "
            f"every leaf; these do not: {wrong}. Params of serial(block, ..., block) convert "
            "with serial_to_repeat",
        )


_SLOT = re.compile(r"^(?P<kind>.+)_(?P<index>0|[1-9][0-9]*)$")


def serial_to_repeat(tree: dict[str, Any]) -> Any:
    """The params (or state) of ``serial(block, ..., block)`` in the form of
    ``repeat(block, n)``: ``{"<kind>_0": t_0, ..., "<kind>_{n−1}": t_{n−1}}`` becomes the
    block's tree with each leaf ``stack([t_0, ..., t_{n−1}])``.

    The keys must be one kind's slots numbered 0 to n − 1, and the n trees must have one
    structure and one shape per leaf; a `ValueError` says what differs otherwise. The state of
    a serial of blocks without state, ``{}``, converts to ``{}``.
    """
    if not isinstance(tree, dict):
        raise TypeError(f"serial_to_repeat: expected a dict, got {type(tree).__name__}")
    if not tree:
        return {}
    slots = {}
    for name in tree:
        match = _SLOT.match(name)
        if match is None:
            raise ValueError(
                f"serial_to_repeat: key {name!r} is not a serial slot '<kind>_<index>'; "
                f"expected the params or state of serial(block, ..., block), got keys {list(tree)}"
            )
        slots[name] = (match["kind"], int(match["index"]))
    kinds = {kind for kind, _ in slots.values()}
    n = len(tree)
    if len(kinds) != 1 or sorted(i for _, i in slots.values()) != list(range(n)):
        raise ValueError(
            f"serial_to_repeat: expected the slots of one kind numbered 0 to {n - 1} "
            f"('<kind>_0', ...), got keys {list(tree)}"
        )
    (kind,) = kinds
    trees = [tree[f"{kind}_{i}"] for i in range(n)]
    shapes = [_describe(t) for t in trees]
    for i, s in enumerate(shapes[1:], start=1):
        if jax.tree.structure(trees[i]) != jax.tree.structure(trees[0]) or s != shapes[0]:
            raise ValueError(
                f"serial_to_repeat: {kind}_{i} differs from {kind}_0 ({s} against "
                f"{shapes[0]}); only identical blocks stack"
            )
    return _stack(trees)


def repeat_to_serial(tree: Any, block: Layer | str) -> dict[str, Any]:
    """The params (or state) of ``repeat(block, n)`` in the form of ``serial(block, ...,
    block)``: ``{"<kind>_0": t_0, ..., "<kind>_{n−1}": t_{n−1}}``, ``t_i`` the tree with each
    leaf's ``[i]``, and `kind` the block's kind (`block` may be the block or its kind).

    n is the leading axis of the leaves, which must agree. A tree without arrays, the state of
    a stack of blocks without state, converts to ``{}`` (as `serial` prunes empty state).
    """
    if not (isinstance(block, str | Layer) or callable(block)):
        raise TypeError(
            f"repeat_to_serial: block must be the repeated Layer or its kind, got "
            f"{type(block).__name__} {block!r:.40}"
        )
    kind = block if isinstance(block, str) else layer_name(block)
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return {}
    lengths = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            "repeat_to_serial: every leaf needs one leading axis, the number of blocks; got "
            f"shapes {_describe(tree)}"
        )
    (n,) = lengths
    return {f"{kind}_{i}": jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(n)}
