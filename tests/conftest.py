"""Shared fixtures, the XLA flags every test process compiles with, the order the test
files are handed to the workers, and how a worker ends."""

import atexit
import gc
import os
import sys

import jax
import pytest

# The suite's programs are tiny, so compiling them is most of its time. XLA's cheaper
# compile passes (LLVM at -O0 without its expensive passes, as `make soak` uses) make that
# about a third cheaper, and XLA:CPU's older elemental emitters for fused loops (the newer
# MLIR fusion emitters off) halve what is left: on tests/nn/test_core.py and
# tests/test_losses.py, backend compilation took 36 s with the fusion emitters and 17 s
# without, and the whole suite 21 min and 13 min on a quiet 2-core machine. The HLO XLA runs
# is the same, the machine code less optimised, so results may differ from a default build
# in the last bits, within every tolerance here. Set here, before JAX starts its backend, so
# the processes tests start inherit them too. FUNCNET_TEST_XLA=default keeps XLA's defaults
# (what users run).
FAST_XLA = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)
if os.environ.get("FUNCNET_TEST_XLA") != "default":
    _flags = os.environ.get("XLA_FLAGS", "").split()
    _named = {flag.split("=")[0] for flag in _flags}
    _flags += [flag for flag in FAST_XLA if flag.split("=")[0] not in _named]
    os.environ["XLA_FLAGS"] = " ".join(_flags)

# The slowest files, slowest first (seconds alone on a quiet 2-core machine, roughly). The
# two xdist workers take whole files from one queue; xdist orders it by the number of tests
# per file, which leaves slow files of few tests (the benchmarks' smoke run, the docs, the
# determinism check) to the end, where one worker runs them while the other waits. These go
# first instead (longest first), the rest after them in collection order.
SLOWEST_FIRST = [
    "tests/test_benchmarks.py",  # 100
    "tests/diff/test_diff_per_example.py",  # 80
    "tests/nn/test_precision.py",  # 70
    "tests/test_properties.py",  # 60
    "tests/train/test_train_data_parallel.py",  # 60
    "tests/train/test_train_nonfinite.py",  # 55
    "tests/test_edge_cases.py",  # 55
    "tests/test_docs.py",  # 50, in two processes
    "tests/train/test_partition.py",  # 50
    "tests/test_losses.py",  # 45
    "tests/diff/test_diff_matrix_calculus.py",  # 40
    "tests/test_cli_interrupt.py",  # 35
    "tests/test_cli.py",  # 35
    "tests/test_launch_failures.py",  # 35
    "tests/test_cli_growth.py",  # 35
    "tests/train/test_train_loop.py",  # 35
    "tests/train/test_train_growth.py",  # 35
    "tests/test_examples_layers.py",  # 30
    "tests/nn/test_activations.py",  # 30
    "tests/train/test_train_precision_digits.py",  # 30
]


def pytest_configure(config):
    if hasattr(config.option, "loadscopereorder"):  # xdist's reordering by test count
        config.option.loadscopereorder = False
    if os.environ.get("PYTEST_XDIST_WORKER"):
        atexit.register(_end_worker, os.getpid())


def _end_worker(pid: int) -> None:
    """Ends an xdist worker at once when its interpreter exits.

    By then the worker has sent its results over its channel and been told to exit (xdist
    reads a worker's outcome from the channel, not from its exit status). What would remain
    is JAX's own exit handler clearing its caches, which frees every program the worker
    compiled, about 6,500: 8 s at the end of each worker, faulthandler's stack dumps showed
    (`jax._src.api.clean_up` → `clear_all_caches`), while the run waits for both workers. The
    operating system frees that memory at once. Registered after JAX's handler, so it runs
    before it; a process forked by a test inherits it and is left alone.
    """
    if os.getpid() != pid:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """After a test file's last test: a full collection, then `gc.freeze` of what survives.

    What outlives a file is mostly JAX's caches of traced and compiled programs, kept until
    the worker ends (2 million objects by the end of a run). Python's full collections walked
    them again and again. Timed with `gc.callbacks` over a full run's two workers: 43 s of
    collection, 28 s with this (the full collections here included); the run took 540 s
    before and 506 s after, back to back, with the same peak memory (5.4–5.5 GB a worker).
    Frozen objects are never examined again; those that die later are still freed by
    reference counting, and only a cycle among them waits for the exit.
    """
    if nextitem is None or nextitem.path != item.path:
        gc.collect()
        gc.freeze()


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


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
