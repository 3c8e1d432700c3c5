"""Activation-function gallery: every function in `funcnet.nn.ACTIVATIONS` and its
derivative, computed by `jax.grad`, on one page.

    python examples/activations.py [out.png]

Things to look for: relu's derivative jumps from 0 to 1 at the origin (funcnet takes 0 there);
gelu, silu and mish dip slightly below zero before rising; sigmoid's slope peaks at ¼; the
step function's derivative is 0 everywhere, which is why it cannot be trained by gradients;
softmax on two logits (x, 0) is the sigmoid.
"""

from __future__ import annotations

import pathlib
import sys

from funcnet.app.plots import plot_activations


def main(path: str | pathlib.Path = "activations.png") -> pathlib.Path:
    written = plot_activations(path)
    print(f"wrote {written}")
    return written


if __name__ == "__main__":
    main(*sys.argv[1:])
