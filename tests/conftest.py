"""Shared fixtures."""

import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with 64-bit floats enabled, restoring the previous setting after."""
    previous = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def key():
    return jax.random.key(0)
