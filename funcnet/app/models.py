"""Named architectures built from `funcnet.nn`, and their JSON-friendly configurations.

A configuration is a dict such as ``{"name": "mlp", "hidden": [128, 128], "classes": 10}``;
`build` turns it into a layer. The command line stores it in a checkpoint's metadata, so a
checkpoint names the model its params belong to.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from funcnet import nn
from funcnet.nn import ACTIVATIONS
from funcnet.nn.core import Layer


def _activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def mlp(
    hidden: Sequence[int] = (128, 128),
    classes: int = 10,
    *,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> Layer:
    """A multi-layer perceptron: ``[dense → (batch_norm) → activation → (dropout)] × L → dense``.

    Input ``(batch, features)``; output logits ``(batch, classes)``. `hidden` lists the widths
    of the hidden layers; `dropout` is the probability of dropping a hidden unit. With
    `batch_norm` the dense layers before it have no bias: batch norm subtracts the batch mean,
    so a bias ``b`` cancels, ``(xW + b) − mean(xW + b) = xW − mean(xW)``, and would get a zero
    gradient; the norm's own offset takes its place.
    """
    act = _activation(activation)
    init = (
        "he_normal"
        if activation in ("relu", "leaky_relu", "elu", "gelu", "silu")
        else "lecun_normal"
    )
    layers: list[Any] = []
    for width in hidden:
        layers.append(nn.dense(width, w_init=init, use_bias=not batch_norm))
        if batch_norm:
            layers.append(nn.batch_norm())
        layers.append(act)
        if dropout:
            layers.append(nn.dropout(dropout))
    layers.append(nn.dense(classes))
    return nn.serial(*layers)


def cnn(
    channels: Sequence[int] = (16, 32),
    hidden: Sequence[int] = (64,),
    classes: int = 10,
    *,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> Layer:
    """A small convolutional network for images, channels last.

    ``[conv 3×3 → (batch_norm) → activation → max_pool 2×2]`` per entry of `channels`, each
    block halving the height and width, then ``flatten`` and an `mlp` head with `hidden`
    widths. Input ``(batch, height, width, channels)``; output ``(batch, classes)``. Two blocks
    take 8×8 digits to 2×2. With `batch_norm` the convolutions have no bias, as in `mlp`.
    """
    act = _activation(activation)
    layers: list[Any] = []
    for width in channels:
        layers.append(nn.conv(width, 3, w_init="he_normal", use_bias=not batch_norm))
        if batch_norm:
            layers.append(nn.batch_norm())
        layers += [act, nn.max_pool(2)]
    layers.append(nn.flatten())
    head = mlp(hidden, classes, activation=activation, dropout=dropout, batch_norm=batch_norm)
    return nn.serial(*layers, head)


MODELS = {"mlp": mlp, "cnn": cnn}


def build(config: dict[str, Any]) -> Layer:
    """The layer a configuration names: ``MODELS[config["name"]](**other entries)``, under
    ``nn.mixed_precision(·, config["precision"])`` when the configuration has a precision."""
    config = dict(config)
    name = config.pop("name", None)
    precision = config.pop("precision", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    model = MODELS[name](**config)
    return model if precision is None else nn.mixed_precision(model, precision)


def deployed(state: Any) -> Any:
    """`state` with the params a run deploys: its moving average of the params when it kept
    one (``funcnet train --ema``), else its params. A checkpoint that predates the average
    has none."""
    ema = getattr(state, "ema", None)
    return state if ema is None else state._replace(params=ema.params)


class Trained(NamedTuple):
    """A trained model rebuilt from a checkpoint of `funcnet train`, ready for inference.

    Attributes:
      model: the layer its metadata names.
      params: the best state's params (for an ensemble, every leaf with a member axis).
      model_state: the best state's model state (batch-norm statistics), `{}` if none.
      metadata: the checkpoint's metadata (configuration, data description, test metrics).
    """

    model: Layer
    params: Any
    model_state: Any
    metadata: dict[str, Any]

    @property
    def members(self) -> int:
        return int(self.metadata.get("members", 1))

    def outputs(self, x: Any) -> jax.Array:
        """The model's outputs for inputs `x` (``train=False``); an ensemble's mean output
        for a regression and mean class probabilities' log for classes."""

        def one(params, model_state):
            return self.model.apply(params, model_state, x)[0]

        if self.members == 1:
            return one(self.params, self.model_state)
        outputs = jax.vmap(one)(self.params, self.model_state)
        if self.metadata.get("config", {}).get("task") == "regression":
            return jnp.mean(outputs, axis=0)
        return jnp.log(jnp.mean(jax.nn.softmax(outputs, axis=-1), axis=0))


def load(path: str | pathlib.Path) -> Trained:
    """The model and the best params of a `funcnet train` checkpoint, from the file alone.

    The architecture comes from the checkpoint's metadata (``model``, a configuration for
    `build`); the params are checked against the shapes that architecture gives for the
    stored input shape, so a file whose params do not fit its model is refused.
    """
    from funcnet import checkpoint
    from funcnet._trees import check_same_shapes

    path = pathlib.Path(path)
    metadata = checkpoint.metadata(path)
    if "model" not in metadata or "in_shape" not in metadata:
        raise ValueError(f"{path} has no model configuration; was it written by `funcnet train`?")
    model = build(metadata["model"])
    stored = checkpoint.load(path)
    best = deployed(stored["best"])
    params, model_state = best.params, best.model_state
    _, expected_params, expected_state = jax.eval_shape(
        lambda key: model.init(key, tuple(metadata["in_shape"])), jax.random.key(0)
    )
    members = int(metadata.get("members", 1))
    if members > 1:
        params, model_state = (
            jax.tree.map(lambda leaf: leaf[0], tree) for tree in (params, model_state)
        )
    check_same_shapes(expected_params, params, what=f"{path}: params", source="the file")
    check_same_shapes(expected_state, model_state, what=f"{path}: model state", source="the file")
    return Trained(
        model,
        jax.tree.map(jnp.asarray, best.params),
        jax.tree.map(jnp.asarray, best.model_state),
        metadata,
    )
