"""funcnet: a functional neural-network library on JAX.

Everything is a pure function over pytrees: layers, losses, optimizers, training steps.
"""

from funcnet import bayes, checkpoint, data, diff, losses, nn, optim, train

__version__ = "0.1.0"

__all__ = ["__version__", "bayes", "checkpoint", "data", "diff", "losses", "nn", "optim", "train"]
