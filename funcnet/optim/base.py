"""The gradient-transformation protocol, its combinators and the tree helpers shared by rules.

A gradient transformation is a pair of pure functions::

    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    params = apply_updates(params, updates)

This is the protocol of optax, so the pieces of either library compose with the other's.
An optimizer that needs more than the gradient is a `GradientTransformationExtraArgs`, whose
``update(grads, state, params, **extra_args)`` takes it as keyword arguments (optax's
extra-args convention); `chain` forwards them to the members that take them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp

from funcnet._trees import check_same_shapes

__all__ = [
    "EmptyState",
    "GradientTransformation",
    "GradientTransformationExtraArgs",
    "OptState",
    "Params",
    "ScalarOrSchedule",
    "Schedule",
    "TransformInitFn",
    "TransformUpdateExtraArgsFn",
    "TransformUpdateFn",
    "Updates",
    "accepts_extra_args",
    "apply_updates",
    "bias_correction",
    "chain",
    "global_norm",
    "identity",
    "stateless",
    "update_moment",
    "with_extra_args_support",
]

PyTree = Any
Params = PyTree
Updates = PyTree
OptState = PyTree
Schedule = Callable[[jax.Array], jax.Array]
ScalarOrSchedule = float | jax.Array | Schedule

_INT32_MAX = jnp.iinfo(jnp.int32).max


class TransformInitFn(Protocol):
    """Builds the state of a transformation from the params it will update."""

    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    """Maps incoming updates (gradients) and the state to outgoing updates and a new state."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None
    ) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions `(init, update)` that transforms a stream of gradients.

    - `init(params) -> state`: `state` is a pytree of arrays (NamedTuples of arrays).
    - `update(updates, state, params=None) -> (updates, state)`: `updates` has the tree
      structure, shapes and dtypes of `params`.

    Updates leave a transformation already signed: `apply_updates` adds them to the params.
    """

    init: TransformInitFn
    update: TransformUpdateFn


class TransformUpdateExtraArgsFn(Protocol):
    """An update that also takes keyword arguments beyond the gradient (optax's extra args)."""

    def __call__(
        self, updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]: ...


class GradientTransformationExtraArgs(GradientTransformation):
    """A gradient transformation whose `update` takes keyword arguments besides the gradient.

    `update(updates, state, params=None, **extra_args) -> (updates, state)`, the convention of
    optax's class of the same name. An optimizer that needs more than the gradient (the loss,
    the loss as a function of the params, a random key, curvature products) reads it from
    `extra_args` and ignores the names it does not use. The training step
    (`funcnet.train.train_step`) passes, to such an optimizer only:

    - `value`: the loss `L(θ)` of the batch, a scalar;
    - `grad`: `∇L(θ)`, shaped like the params (the raw gradient, before any transformation);
    - `value_fn`: `θ ↦ L(θ)` on the same batch, model state and dropout key, train mode;
    - `outputs_fn`: `θ ↦ z`, the model's outputs on the batch (same state and key);
    - `loss_of_outputs`: `z ↦ L`, so that `value_fn = loss_of_outputs ∘ outputs_fn` (the pair
      gives Gauss-Newton products, `funcnet.diff.gnvp`);
    - `key`: a typed key fresh at every step and distinct from the model's dropout key.
    """

    update: TransformUpdateExtraArgsFn


def accepts_extra_args(tx: Any) -> bool:
    """Whether `tx.update` takes extra keyword arguments: `tx` is a
    `GradientTransformationExtraArgs`, funcnet's or optax's (recognised by its class name, so
    optax is not imported)."""
    return any(cls.__name__ == "GradientTransformationExtraArgs" for cls in type(tx).__mro__)


def with_extra_args_support(tx: GradientTransformation) -> GradientTransformationExtraArgs:
    """`tx` as a `GradientTransformationExtraArgs`: one that takes extra args is returned with
    its own `update`; for any other, the new `update` drops the extra args and calls `tx`."""
    check_transformation("with_extra_args_support", "tx", tx)
    if accepts_extra_args(tx):
        return GradientTransformationExtraArgs(tx.init, tx.update)

    def update_fn(
        updates: Updates, state: OptState, params: Params | None = None, **extra_args: Any
    ) -> tuple[Updates, OptState]:
        del extra_args
        return tx.update(updates, state, params)

    return GradientTransformationExtraArgs(tx.init, update_fn)


class EmptyState(NamedTuple):
    """The state of a transformation that keeps none."""


def stateless(rule: Callable[[Updates, Params | None], Updates]) -> GradientTransformation:
    """A transformation that keeps no state: `u ← rule(g, x)` (`x` the params, or None)."""

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(
        updates: Updates, state: EmptyState, params: Params | None = None
    ) -> tuple[Updates, EmptyState]:
        return rule(updates, params), state

    return GradientTransformation(init_fn, update_fn)


def identity() -> GradientTransformation:
    """The transformation that returns its updates unchanged: `u ← g`."""
    return stateless(lambda updates, params: updates)


def is_transformation(value: Any) -> bool:
    """Whether `value` has callable ``init`` and ``update``: a gradient transformation,
    funcnet's or optax's."""
    return callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))


def check_transformation(owner: str, name: str, value: Any) -> None:
    """Refuses a `value` that is not a gradient transformation (`is_transformation`), in one
    TypeError line; a constructor not called (``adam`` for ``adam(1e-3)``) is told so."""
    if is_transformation(value):
        return
    wanted = f"{owner}: {name} must be a gradient transformation (with init and update)"
    if callable(value):
        function = getattr(value, "__name__", type(value).__name__)
        raise TypeError(f"{wanted}, got the function {function}; call it to make one")
    raise TypeError(f"{wanted}, got {type(value).__name__} {value!r:.40}")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Applies `transforms` one after another; the state is the tuple of their states.

    Any object with optax's `init` / `update` signature may appear in the chain, optax's own
    transformations included. When some of them take extra args (`accepts_extra_args`), the
    chain is a `GradientTransformationExtraArgs` whose `update(g, state, params, **extra_args)`
    hands the extra args to those and calls the others as `update(g, state, params)`; a chain
    of plain transformations is a plain one.
    """
    for i, tx in enumerate(transforms):
        check_transformation("chain", f"transforms[{i}]", tx)
    takes_extra = tuple(accepts_extra_args(tx) for tx in transforms)

    def init_fn(params: Params) -> tuple[OptState, ...]:
        return tuple(tx.init(params) for tx in transforms)

    def apply(
        updates: Updates,
        state: tuple[OptState, ...],
        params: Params | None,
        extra_args: dict[str, Any],
    ) -> tuple[Updates, tuple[OptState, ...]]:
        if len(state) != len(transforms):
            raise ValueError(
                f"chain of {len(transforms)} transformations got a state of {len(state)} "
                "entries; build the state with this chain's `init`."
            )
        new_state = []
        for tx, inner_state, extra in zip(transforms, state, takes_extra, strict=True):
            if extra:
                updates, inner_state = tx.update(updates, inner_state, params, **extra_args)
            else:
                updates, inner_state = tx.update(updates, inner_state, params)
            new_state.append(inner_state)
        return updates, tuple(new_state)

    if not any(takes_extra):

        def update_fn(
            updates: Updates, state: tuple[OptState, ...], params: Params | None = None
        ) -> tuple[Updates, tuple[OptState, ...]]:
            return apply(updates, state, params, {})

        return GradientTransformation(init_fn, update_fn)

    def update_extra_fn(
        updates: Updates,
        state: tuple[OptState, ...],
        params: Params | None = None,
        **extra_args: Any,
    ) -> tuple[Updates, tuple[OptState, ...]]:
        return apply(updates, state, params, extra_args)

    return GradientTransformationExtraArgs(init_fn, update_extra_fn)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Returns `params + updates`, leaf by leaf, each leaf keeping the dtype of its param.

    A bfloat16 param stays bfloat16 even when its update arrives in float32. `None` leaves
    in `params` stay `None`. Updates of another tree (other names or shapes) are refused with
    a ValueError naming each differing leaf.
    """
    if all(p is not None for p in jax.tree.leaves(params, is_leaf=lambda x: x is None)):
        check_same_shapes(
            params,
            updates,
            what="apply_updates: the updates do not fit the params",
            source="the update tree",
        )

    def add(p: jax.Array | None, u: jax.Array) -> jax.Array | None:
        if p is None:
            return None
        p = jnp.asarray(p)
        return (p + u).astype(p.dtype)

    return jax.tree.map(add, params, updates, is_leaf=lambda x: x is None)


# Tree helpers shared by the rules.


def increment(count: jax.Array) -> jax.Array:
    """`count + 1` for an int32 step counter, saturating at the largest int32."""
    return jnp.where(count < _INT32_MAX, count + 1, _INT32_MAX).astype(jnp.int32)


def zeros_like(tree: PyTree, dtype: jnp.dtype | None = None) -> PyTree:
    """A tree of zeros shaped like `tree`, in each leaf's dtype or in `dtype` if given."""
    return jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), dtype or jnp.result_type(x)), tree)


def check_fits(updates: Updates, tree: PyTree) -> None:
    """Refuses a per-parameter state tree (moments, traces) shaped unlike the gradients."""
    check_same_shapes(
        updates,
        tree,
        what="the optimizer state does not fit the gradients (was it built by `init` for "
        "another params tree?)",
        source="the state",
    )


def update_moment(updates: Updates, moments: PyTree, decay: float, order: int) -> PyTree:
    """Exponential moving average of `g ** order`: `m ← decay·m + (1 − decay)·g^order`.

    `order` is 1 (mean) or 2 (mean square); the result keeps the dtype of `moments`.
    """

    if order not in (1, 2):
        raise ValueError(f"update_moment tracks moments of order 1 or 2, got {order}.")
    check_fits(updates, moments)

    def ema(g: jax.Array, m: jax.Array) -> jax.Array:
        g = g.astype(m.dtype)
        power = g if order == 1 else jnp.square(g)
        return (decay * m + (1 - decay) * power).astype(m.dtype)

    return jax.tree.map(ema, updates, moments)


def one_minus_power(decay: float | jax.Array, count: jax.Array) -> jax.Array:
    """`1 − decay^count`, computed as `−expm1(count·log(decay))` to keep its digits.

    With `decay` a Python float the logarithm is taken in double precision; the direct
    form in float32 loses five digits for `decay = 0.999`.
    """
    if isinstance(decay, int | float):
        if decay == 0:
            return jnp.ones_like(count, dtype=jnp.result_type(float))
        log_decay = math.log(decay)
    else:
        log_decay = jnp.log(decay)
    return -jnp.expm1(count * log_decay)


def bias_correction(moments: PyTree, decay: float | jax.Array, count: jax.Array) -> PyTree:
    """Debiases a zero-initialised moving average after `count` updates: `m / (1 − decay^t)`."""
    correction = one_minus_power(decay, count)
    return jax.tree.map(lambda m: (m / correction.astype(m.dtype)).astype(m.dtype), moments)


def global_norm(tree: PyTree) -> jax.Array:
    """The Euclidean norm of all leaves taken together: `√(Σ_leaves Σ x²)`.

    Half-precision leaves are summed in float32. Returns a scalar.
    """
    squares = [
        jnp.sum(jnp.square(x.astype(jnp.promote_types(x.dtype, jnp.float32))))
        for x in jax.tree.leaves(tree)
    ]
    if not squares:
        return jnp.zeros([], jnp.result_type(float))
    return jnp.sqrt(sum(squares))


def is_zero(value: Any) -> bool:
    """Whether `value` is a Python number equal to zero (traced values never are)."""
    return isinstance(value, int | float) and value == 0
