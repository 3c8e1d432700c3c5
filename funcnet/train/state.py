"""The train state: everything a training run carries from one step to the next."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet._keys import typed_key
from funcnet._trees import check_same_shapes
from funcnet.nn.core import Layer
from funcnet.optim import GradientTransformation
from funcnet.optim.base import check_transformation
from funcnet.train.ema import ParamsEma, params_ema
from funcnet.train.loss_scale import DynamicLossScale

__all__ = [
    "TrainState",
    "init_train_state",
    "shuffle_key",
    "step_key",
]

PyTree = Any


class TrainState(NamedTuple):
    """A pytree holding a model in training.

    Attributes:
      params: the trained parameters, a nested dict of arrays (see `funcnet.nn`).
      model_state: the model's non-trained state (batch-norm running statistics), `{}` if none.
      opt_state: the optimizer's state, a pytree of arrays.
      step: int32 scalar, the number of optimizer steps taken so far.
      key: a typed `jax.random.key`, the run's root key. It never changes: every random
        draw is derived from it and `step` (`step_key`, `shuffle_key`), so the state alone
        fixes every draw (dropout masks, shuffles) that follows, and a step whose model
        draws nothing costs no random numbers at all.
      ema: a moving average of the params (`funcnet.train.ParamsEma`), updated after every
        applied step; None (the default) keeps none.
      loss_scale: a dynamic loss scale (`funcnet.train.DynamicLossScale`) for float16
        training: the step scales the loss, unscales the gradient and skips a step whose
        gradient is not finite. None (the default) scales nothing.

    The optional fields are None unless asked for, and a None field adds nothing to the
    compiled step. Under an ensemble every leaf carries a leading member axis.
    """

    params: PyTree
    model_state: PyTree
    opt_state: PyTree
    step: jax.Array
    key: jax.Array
    ema: ParamsEma | None = None
    loss_scale: DynamicLossScale | None = None


def step_key(state: TrainState) -> jax.Array:
    """The key of the model in the step `state.step` takes: ``fold_in(key, 2·step)``.

    A pure function of the state, so XLA drops it from a compiled step whose model draws
    no random numbers.
    """
    return jax.random.fold_in(state.key, 2 * state.step.astype(jnp.uint32))


def shuffle_key(state: TrainState) -> jax.Array:
    """The key of the shuffle of an epoch starting at `state.step`: ``fold_in(key, 2·step + 1)``.

    Odd where `step_key` is even, so no shuffle shares a key with a step.
    """
    return jax.random.fold_in(state.key, 2 * state.step.astype(jnp.uint32) + 1)


def check_model(where: str, model: Any) -> None:
    """Refuses a `model` that is not a `funcnet.nn.Layer`, in one line naming `where`."""
    if isinstance(model, Layer):
        return
    wanted = f"{where}: model must be a funcnet.nn.Layer (init, apply)"
    if callable(model):
        name = getattr(model, "__name__", type(model).__name__)
        raise TypeError(
            f"{wanted}, got the function {name}; a plain function x -> y becomes one with "
            "funcnet.nn.from_function(fn)"
        )
    raise TypeError(f"{wanted}, got {type(model).__name__} {model!r:.40}")


def init_train_state(
    model: Layer,
    optimizer: GradientTransformation,
    key: jax.Array,
    in_shape: tuple[int, ...],
    *,
    ema: float | None = None,
    ema_warmup: bool = True,
    loss_scale: DynamicLossScale | None = None,
) -> TrainState:
    """Initialises a model and its optimizer into a `TrainState` at step 0.

    `key` is split in two: one half initialises the params, the other becomes the state's
    key. `in_shape` is the input shape including the batch dimension, e.g. ``(128, 64)``.
    `ema` (a decay in [0, 1)) starts a moving average of the params (`params_ema`, with
    `ema_warmup`); `loss_scale` (e.g. `dynamic_loss_scale()`) turns on loss scaling.
    """
    check_model("init_train_state", model)
    check_transformation("init_train_state", "optimizer", optimizer)
    if not isinstance(in_shape, tuple | list):
        raise TypeError(
            "init_train_state: in_shape must be the input's shape, batch axis first (e.g. "
            f"(128, 64)), got {in_shape!r:.40}"
        )
    init_key, state_key = jax.random.split(typed_key(key, caller="init_train_state"))
    _, params, model_state = model.init(init_key, tuple(in_shape))
    return TrainState(
        params=params,
        model_state=model_state,
        opt_state=optimizer.init(params),
        step=jnp.zeros([], jnp.int32),
        key=state_key,
        ema=None if ema is None else params_ema(params, ema, warmup=ema_warmup),
        loss_scale=loss_scale,
    )


def _shape_structs(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(jnp.shape(leaf), leaf.dtype), tree)


def check_opt_state(optimizer: GradientTransformation, params: PyTree, opt_state: PyTree) -> None:
    """Refuses an optimizer state that `optimizer.init(params)` would not have built: one made
    for another params tree or by another optimizer. Costs nothing at run time under jit."""
    expected = jax.eval_shape(optimizer.init, _shape_structs(params))
    check_same_shapes(
        expected,
        opt_state,
        what="the optimizer state does not fit the params (was it built for another params "
        "tree, or by another optimizer?)",
        source="the state",
    )


def check_train_state(template: TrainState, state: TrainState, *, where: str) -> None:
    """Refuses a train state whose leaves differ from `template`'s (a `jax.eval_shape` of the
    state `init_train_state` builds for this model, optimizer and input shape)."""
    check_same_shapes(
        template,
        state,
        what=f"{where}: the given state does not fit this model and optimizer (was it made "
        "for another model, or by another optimizer?)",
        source="the state",
    )
