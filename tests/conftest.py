"""Shared fixtures, and the XLA flags every test process compiles with."""

import os

import jax
import pytest

# The suite's programs are tiny, so compiling them is most of its time. XLA's cheaper
# compile passes (LLVM at -O0 without its expensive passes, as `make soak` and the docs run
# use) make that about a third cheaper; the HLO XLA runs is the same, the machine code less
# optimised, so results may differ from a default build in the last bits, within every
# tolerance here. Set here, before JAX starts its backend, so the processes tests start
# inherit them too. FUNCNET_TEST_XLA=default keeps XLA's defaults (what users run).
FAST_XLA = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
if os.environ.get("FUNCNET_TEST_XLA") != "default":
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _named = {flag.split("=")[0] for flag in _flags}
    _flags += [flag for flag in FAST_XLA if flag.split("=")[0] not in _named]
    os.environ["XLA_FLAGS"] = " ".join(_flags)


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
