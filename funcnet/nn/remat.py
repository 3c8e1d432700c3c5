"""Rematerialisation: recompute a layer's activations in the backward pass instead of keeping
them, trading compute for memory (`jax.checkpoint`).

``remat(layer, policy=...)`` is a layer with the params, state and outputs of `layer`; only
what its gradient keeps from the forward pass changes. A policy decides which intermediate
values are saved (the rest are recomputed): one of the names in `REMAT_POLICIES`, or any of
JAX's policy functions (`jax.checkpoint_policies`).

Where it saves memory. Under a loop: a stack of identical blocks run by `funcnet.nn.repeat`
(one `lax.scan`) with ``remat=True`` keeps only each block's input and recomputes the rest,
which cuts the temporary memory of the gradient several-fold. Outside a loop XLA:CPU saves
nothing: it drops the optimization barriers that keep the recomputation apart and merges all
or most of it back into the forward pass, so ``serial(remat(block), remat(block), ...)`` or
a `remat` around a whole model compiles to the temporary memory of the plain model, within
a few percent (measured in ``docs/bigger_models.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax.ad_checkpoint import checkpoint_name as _checkpoint_name

from funcnet.nn.core import Layer, as_layer

__all__ = ["REMAT_POLICIES", "checkpoint_name", "remat", "remat_policy"]

Policy = Callable[..., Any]

REMAT_POLICIES: dict[str, Policy] = {
    "nothing": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
    "offload_dots_no_batch": jax.checkpoint_policies.offload_dot_with_no_batch_dims(
        "device", "pinned_host"
    ),
}
"""The policies a string names, each a `jax.checkpoint_policies` entry:

- ``"nothing"``: ``nothing_saveable``, save nothing but the layer's inputs and recompute the
  rest (`jax.checkpoint`'s default, and what ``policy=None`` means);
- ``"dots"``: ``dots_saveable``, save the result of every matrix product (``dot_general``),
  recompute the cheap elementwise work between them;
- ``"dots_no_batch"``: ``dots_with_no_batch_dims_saveable``, save the products without batch
  dimensions (the ``x @ W`` of dense layers and projections), recompute the batched ones
  (attention's ``Q Kᵀ`` and ``A V``);
- ``"everything"``: ``everything_saveable``, save everything: no recomputation, the memory
  of the plain layer (a reference point);
- ``"offload_dots_no_batch"``: ``offload_dot_with_no_batch_dims("device", "pinned_host")``,
  as ``"dots_no_batch"`` but the saved products go to host memory and come back for the
  backward pass; it needs a backend with a ``pinned_host`` memory space (GPU and TPU have
  one; so does XLA:CPU, where the move is a copy within host memory).

JAX's own names of the argument-free policies (``"dots_saveable"``, ``"nothing_saveable"``,
...) are accepted too. Policies that take arguments are passed as functions, e.g.
``jax.checkpoint_policies.save_only_these_names("attention_out")`` with values named by
`checkpoint_name`.
"""

_JAX_NAMES = {
    "nothing_saveable": "nothing",
    "everything_saveable": "everything",
    "dots_saveable": "dots",
    "checkpoint_dots": "dots",
    "dots_with_no_batch_dims_saveable": "dots_no_batch",
    "checkpoint_dots_with_no_batch_dims": "dots_no_batch",
}


def remat_policy(policy: str | Policy | None) -> Policy | None:
    """The `jax.checkpoint` policy that `policy` names: None as it is (save nothing), a name of
    `REMAT_POLICIES` or of an argument-free `jax.checkpoint_policies` entry, or a policy
    function as it is. An unknown name is a `ValueError` listing the known ones."""
    if policy is None or callable(policy):
        return policy
    if not isinstance(policy, str):
        raise TypeError(
            f"remat: policy must be None, a name or a jax.checkpoint_policies function, got "
            f"{type(policy).__name__}"
        )
    name = _JAX_NAMES.get(policy, policy)
    if name not in REMAT_POLICIES:
        raise ValueError(
            f"remat: unknown policy {policy!r}; the known names are "
            f"{', '.join(map(repr, REMAT_POLICIES))} (and JAX's "
            f"{', '.join(map(repr, _JAX_NAMES))}); a policy with arguments is passed as a "
            "function, e.g. jax.checkpoint_policies.save_only_these_names('name')"
        )
    return REMAT_POLICIES[name]


def remat(
    layer: Layer | Callable[[jax.Array], jax.Array],
    *,
    policy: str | Policy | None = None,
    prevent_cse: bool = True,
) -> Layer:
    """`layer` with its apply under `jax.checkpoint`: the same outputs and gradients, with the
    activations the policy does not save recomputed in the backward pass.

    Same `init` (the params and state trees of `layer`, nothing nested) and same `kind`, so
    wrapping the blocks of a model in `remat` keeps its params tree (``dense_0`` stays
    ``dense_0``). `key`, `state` and `train` pass through: `train` is static (closed over, not
    traced), `key` may be None, and the dropout masks are those of `layer` (the same key gives
    the same mask, in the forward pass and in the recomputation).

    `policy` chooses what is saved: None or ``"nothing"`` saves only the layer's inputs;
    ``"dots"``, ``"dots_no_batch"``, ``"everything"`` and ``"offload_dots_no_batch"`` are in
    `REMAT_POLICIES`; a function such as
    ``jax.checkpoint_policies.save_only_these_names("hidden")`` saves the values named with
    `checkpoint_name` (a layer here, or `jax.ad_checkpoint.checkpoint_name` inside a layer's
    apply). `prevent_cse` is `jax.checkpoint`'s: True puts optimization barriers around the
    recomputation so that XLA does not merge it into the forward pass (XLA:CPU drops them,
    see below); False is safe, and better, under `lax.scan`.

    On XLA:CPU this saves memory only under a loop. Wrapping each block of an unrolled chain,
    ``serial(remat(block), remat(block), ...)``, or a whole model saves nothing there: the
    compiled step keeps about as much temporary memory as without remat (XLA:CPU merges the
    recomputation back into the forward pass; measured in ``docs/bigger_models.md``). For a
    stack of identical blocks use ``repeat(block, n, remat=True)`` (or ``remat=policy``),
    which does save it: the recomputation then runs inside the backward loop, where it cannot
    be merged into the forward pass.
    """
    layer = as_layer(layer, owner="remat")
    resolved = remat_policy(policy)

    def apply(params, state, x, *, key=None, train=False):
        def run(params, state, x, key):
            return layer.apply(params, state, x, key=key, train=train)

        checkpointed = jax.checkpoint(run, policy=resolved, prevent_cse=prevent_cse)
        return checkpointed(params, state, x, key)

    return Layer(layer.init, apply, kind=layer.kind)


def checkpoint_name(name: str) -> Layer:
    """A parameter-free identity layer that names its input for a policy:
    ``y = jax.ad_checkpoint.checkpoint_name(x, name)``.

    In ``remat(serial(dense(256), relu, checkpoint_name("hidden"), dense(64)),
    policy=jax.checkpoint_policies.save_only_these_names("hidden"))`` the ReLU's output is
    saved and the rest recomputed. Any input (an array or a tuple of them); output the same.
    Its kind is ``"checkpoint_name"``.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"checkpoint_name: name must be a non-empty string, got {name!r}")

    def init(key, in_shape):
        del key
        return in_shape, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        return _checkpoint_name(x, name), state

    return Layer(init, apply, kind="checkpoint_name")
