"""Fixtures of the diff tests."""

import functools

import numpy as np
import pytest
from diff_problems import Problem, make_problem


@pytest.fixture
def mlp_problem(x64) -> Problem:
    """float64 MLP 4 → 6 → 3 (51 parameters) on 24 random examples.

    Built once: the same `loss` object in every test lets compiled code be reused.
    """
    return _mlp_problem()


@functools.cache
def _mlp_problem() -> Problem:
    return make_problem(np.random.default_rng(42), (4, 6, 3), 24)
