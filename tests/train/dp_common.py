"""The model, data and settings shared by the data-parallel tests and their worker."""

import jax
import numpy as np

import funcnet as fn
from funcnet import nn

SETTINGS = {
    "loss_fn": fn.losses.softmax_cross_entropy,
    "epochs": 2,
    "batch_size": 32,
    "key": jax.random.key(0),
}


def model():
    return nn.serial(nn.dense(16), nn.relu, nn.dense(10))


def global_data(n=512):
    """The first `n` digits: the global training set every configuration sees."""
    split = fn.data.digits()
    return np.asarray(split.x_train[:n]), np.asarray(split.y_train[:n])
