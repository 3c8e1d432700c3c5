"""examples/universal_approximation.py: steep sigmoids are steps, pairs of steps are bumps,
sums of bumps (or a trained sigmoid layer) approximate a function, better with more units."""

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest

from tests.figure_checks import checked_figures
from tests.helpers import load_module

KS = (1, 10, 100, 1000)
BUMPS = (4, 32)
WIDTHS = (2, 16)


@pytest.fixture(scope="module")
def example():
    return load_module("examples/universal_approximation.py")


@pytest.fixture(scope="module")
def run(example, tmp_path_factory):
    out = tmp_path_factory.mktemp("universal_approximation")
    argv = ["--out", str(out), "--ks", *map(str, KS), "--bumps", *map(str, BUMPS)]
    argv += ["--widths", *map(str, WIDTHS), "--steps", "1000", "--seeds", "2"]
    with checked_figures() as saved:
        results = example.main(argv)
    assert [path.name for path in saved] == ["universal_approximation.png"]
    return results, out


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


def test_a_steep_sigmoid_is_within_sigma_of_minus_k_delta_of_the_step(example, run):
    results, _ = run
    errors = [results["step_error"][k] for k in KS]
    for k, error in zip(KS, errors, strict=True):
        bound = sigmoid(-k * example.DELTA)
        assert error <= bound * (1 + 1e-5) + 1e-7
        assert error >= bound * (1 - 1e-4)  # reached at |x − a| = δ
    assert all(a > b for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-20


def test_a_pair_of_steps_is_a_bump(example, run):
    results, _ = run
    errors = [results["bump_error"][k] for k in KS]
    for k, error in zip(KS, errors, strict=True):
        assert error <= 2 * sigmoid(-k * example.DELTA) + 1e-7
    assert all(a > b for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-20


@pytest.mark.parametrize("n", BUMPS)
def test_the_staircase_network_is_the_sum_of_bumps(example, n):
    x = np.linspace(-2, 2, 1001)
    h = 4 / n
    edges = -2 + h * np.arange(n + 1)
    edges[0], edges[-1] = -2 - h, 2 + h
    centres = -2 + h * (np.arange(n) + 0.5)
    k = example.SHARPNESS / h
    s = lambda z: 0.5 * (1 + np.tanh(z / 2))  # σ, without overflow
    expected = sum(
        (np.sin(3 * c) + 0.3 * c**2) * (s(k * (x - a)) - s(k * (x - b)))
        for c, a, b in zip(centres, edges[:-1], edges[1:], strict=True)
    )
    got = example.staircase(n, jnp.asarray(x, jnp.float32)[:, None])[:, 0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_the_staircase_error_is_within_lipschitz_times_half_a_cell(run):
    results, _ = run
    x = np.linspace(-2, 2, 100001)
    lipschitz = np.max(np.abs(3 * np.cos(3 * x) + 0.6 * x))
    errors = results["staircase_error"]
    for n in BUMPS:
        assert errors[n] <= lipschitz * (4 / n) / 2 + 1e-4
    assert errors[BUMPS[-1]] < errors[BUMPS[0]] / 4  # about 1/n


def test_a_wider_network_fits_better(run):
    results, _ = run
    rms = results["network_rms"]
    assert rms[WIDTHS[0]] > 0.2  # two sigmoids cannot follow sin(3x) + 0.3x² on [−2, 2]
    assert rms[WIDTHS[-1]] < rms[WIDTHS[0]] / 2
    assert results["network_max"][WIDTHS[-1]] < results["network_max"][WIDTHS[0]]


def test_the_figure_is_written(run):
    _, out = run
    path = out / "universal_approximation.png"
    assert path.exists() and path.stat().st_size > 10_000
