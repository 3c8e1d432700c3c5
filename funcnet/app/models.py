"""Named architectures built from `funcnet.nn`, and their JSON-friendly configurations.

A configuration is a dict such as ``{"name": "mlp", "hidden": [128, 128], "classes": 10}``;
`build` turns it into a layer. The command line stores it in a checkpoint's metadata, so a
checkpoint names the model its params belong to.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
    of the hidden layers; `dropout` is the probability of dropping a hidden unit.
    """
    act = _activation(activation)
    init = (
        "he_normal"
        if activation in ("relu", "leaky_relu", "elu", "gelu", "silu")
        else "lecun_normal"
    )
    layers: list[Any] = []
    for width in hidden:
        layers.append(nn.dense(width, w_init=init))
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
    take 8×8 digits to 2×2.
    """
    act = _activation(activation)
    layers: list[Any] = []
    for width in channels:
        layers.append(nn.conv(width, 3, w_init="he_normal"))
        if batch_norm:
            layers.append(nn.batch_norm())
        layers += [act, nn.max_pool(2)]
    layers.append(nn.flatten())
    head = mlp(hidden, classes, activation=activation, dropout=dropout, batch_norm=batch_norm)
    return nn.serial(*layers, head)


MODELS = {"mlp": mlp, "cnn": cnn}


def build(config: dict[str, Any]) -> Layer:
    """The layer a configuration names: ``MODELS[config["name"]](**other entries)``."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](**config)
