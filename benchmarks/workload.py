"""The work every library is timed on: MLP shapes, data and initial weights, made once.

All contenders get the very same float32 data and start from the very same weights (drawn
by funcnet's ``lecun_normal`` kernels and zero biases, then copied into each library's own
layout), so they do identical arithmetic and differ only in how they run it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

import funcnet

LEARNING_RATE = 1e-3


class MLP(NamedTuple):
    """A ReLU MLP ``sizes[0] -> ... -> sizes[-1]`` trained on batches of `batch` examples.

    The last size is the number of classes of a softmax cross-entropy loss.
    """

    name: str
    sizes: tuple[int, ...]
    batch: int

    @property
    def label(self) -> str:
        return f"{self.name} ({'-'.join(map(str, self.sizes))}, batch {self.batch})"

    @property
    def layers(self) -> list[tuple[int, int]]:
        """``(in, out)`` of each dense layer."""
        return list(zip(self.sizes[:-1], self.sizes[1:], strict=True))

    @property
    def param_count(self) -> int:
        return sum(i * o + o for i, o in self.layers)

    @property
    def step_flops(self) -> int:
        """Matmul FLOPs of one training step: ``6 · batch · Σ in·out``.

        Forward 2·batch·in·out per layer; backward twice that (the gradient with respect to
        the input and to the kernel). Elementwise work, the loss and Adam are left out.
        """
        return 6 * self.batch * sum(i * o for i, o in self.layers)


SMALL = MLP("small", (64, 128, 128, 10), 32)
MEDIUM = MLP("medium", (64, 1024, 1024, 1024, 10), 256)
TINY = MLP("tiny", (8, 16, 16, 4), 4)

Weights = list[tuple[np.ndarray, np.ndarray]]


def funcnet_model(mlp: MLP) -> funcnet.nn.Layer:
    """The MLP as a funcnet layer: ``dense, relu, ..., dense`` (logits out)."""
    layers: list = []
    for _, out in mlp.layers[:-1]:
        layers += [funcnet.nn.dense(out), funcnet.nn.relu]
    layers.append(funcnet.nn.dense(mlp.sizes[-1]))
    return funcnet.nn.serial(*layers)


def initial_weights(mlp: MLP, seed: int = 0) -> Weights:
    """``[(w, b), ...]`` per dense layer, ``w`` of shape ``(in, out)``, as float32 numpy."""
    _, params, _ = funcnet_model(mlp).init(jax.random.key(seed), (mlp.batch, mlp.sizes[0]))
    return weights_of(params)


def weights_of(params: dict) -> Weights:
    """The ``(w, b)`` pairs of a funcnet MLP's params, in layer order."""
    names = sorted((k for k in params if k.startswith("dense_")), key=lambda k: int(k[6:]))
    return [(np.asarray(params[k]["w"]), np.asarray(params[k]["b"])) for k in names]


def funcnet_params(mlp: MLP, weights: Weights) -> dict:
    """`weights` in the layout of `funcnet_model(mlp)`'s params."""
    _, params, _ = jax.eval_shape(
        lambda: funcnet_model(mlp).init(jax.random.key(0), (mlp.batch, mlp.sizes[0]))
    )
    names = sorted((k for k in params if k.startswith("dense_")), key=lambda k: int(k[6:]))
    out = {k: {} for k in params}
    for name, (w, b) in zip(names, weights, strict=True):
        out[name] = {"w": jax.numpy.asarray(w), "b": jax.numpy.asarray(b)}
    return out


class Batches(NamedTuple):
    """A pool of batches: inputs ``(count, batch, in)`` float32, labels ``(count, batch)`` int32."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return self.x.shape[0]

    def tiled(self, steps: int) -> Batches:
        """`steps` batches, cycling through the pool (the data of one epoch of `steps` steps)."""
        index = np.arange(steps) % len(self)
        return Batches(self.x[index], self.y[index])


def batches(mlp: MLP, count: int = 8, seed: int = 0) -> Batches:
    """`count` batches of standard-normal inputs and uniformly drawn class labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((count, mlp.batch, mlp.sizes[0]), dtype=np.float32)
    y = rng.integers(0, mlp.sizes[-1], size=(count, mlp.batch), dtype=np.int32)
    return Batches(x, y)
