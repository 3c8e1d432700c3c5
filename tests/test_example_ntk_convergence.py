"""examples/ntk_convergence.py: the empirical NTK of a wide ReLU net approaches the arc-cosine
NTK, and the three kernel methods are timed."""

import numpy as np
import pytest

from tests.figure_checks import checked_figures
from tests.helpers import load_module

example = load_module("examples/ntk_convergence.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ntk_convergence")
    argv = ["--out", str(out), "--widths", "64", "4096", "--seeds", "4", "--angles", "7"]
    with checked_figures() as saved:
        results = example.main([*argv, "--shapes", "4x8x2x1", "conv:2x2x2x1", "--repeats", "1"])
    assert [path.name for path in saved] == ["ntk_convergence.png"]
    return results


def test_closed_form_at_known_angles():
    # ρ = 1: κ₀ = κ₁ = 1, Θ = |x|²/d; ρ = 0: κ₀ = ½, κ₁ = 1/π; ρ = −1: Θ = 0.
    x = np.array([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    k = example.arccos_ntk(x, x)
    np.testing.assert_allclose(np.diag(k), [4 / 2, 9 / 2, 1 / 2], rtol=1e-12)
    np.testing.assert_allclose(k[0, 1], 2 * 3 / (2 * 2 * np.pi), rtol=1e-12)
    np.testing.assert_allclose(k[0, 2], 0.0, atol=1e-12)


def test_error_falls_like_one_over_sqrt_width_and_the_figure_is_written(results):
    rms = results["rms"]
    assert rms[1] < 0.06 < rms[0]
    assert -0.7 < results["slope"] < -0.3  # theory −0.5
    wide = results["curves"][4096]
    np.testing.assert_allclose(wide, results["exact_curve"], atol=0.05 * results["exact_curve"][0])
    assert results["figure"].stat().st_size > 10_000


def test_every_method_is_timed(results):
    for t in results["timings"].values():
        assert set(t["times"]) == set(example.METHODS)
        assert all(v > 0 for v in t["times"].values())
