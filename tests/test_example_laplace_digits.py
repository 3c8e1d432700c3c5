"""examples/laplace_digits.py at quick settings: every Laplace variant fits and predicts on the
digits, the reliability diagram and the two-moons confidence maps are written, and far from
the two moons the Laplace predictive is less confident than the MAP network."""

import numpy as np
import pytest

from tests.figure_checks import checked_figures
from tests.helpers import load_module

example = load_module("examples/laplace_digits.py")
# The last layer's full matrix and K-FAC over all weights; the other two are the docs' runs.
QUICK = ["last layer, full", "all, kron"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("laplace_digits")
    with checked_figures() as saved:
        results = example.main(
            ["--out", str(out), "--steps", "300", "--grid", "24", "--quiet", "--variants", *QUICK]
        )
    assert [path.name for path in saved] == ["laplace_digits.png"]
    return results


def test_every_variant_predicts_and_is_timed(results):
    digits = results["digits"]
    assert len(digits) == 1 + 2 * len(QUICK)
    for name, r in digits.items():
        assert 0 <= r["ece"] < 1 and np.isfinite(r["nll"]), name
        assert r["accuracy"] > 0.85, name
    for name in QUICK:
        assert all(t > 0 for t in digits[name + ", marglik δ"]["seconds"])
        assert digits[name + ", marglik δ"]["prior_precision"] > 0


def test_laplace_is_less_confident_off_the_data(results):
    moons = results["moons"]
    assert moons["far_laplace"] < moons["far_map"] - 0.05
    assert np.all((moons["laplace"] >= 0.5 - 1e-6) & (moons["laplace"] <= 1 + 1e-6))
    assert results["figure"].stat().st_size > 10_000


def test_calibration_of_known_predictions():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    ece, conf, acc = example.calibration(probs, np.array([0, 1, 1]), bins=2)
    # One bin (0.5, 1]: confidences 0.9, 0.8, 0.7, mean 0.8; 2 of 3 right.
    np.testing.assert_allclose(conf, [0.8])
    np.testing.assert_allclose(acc, [2 / 3])
    assert ece == pytest.approx(0.8 - 2 / 3)
