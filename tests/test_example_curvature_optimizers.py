"""examples/curvature_optimizers.py at test size: every optimizer runs on both problems through
the extra-args protocol, Hessian-free solves Rosenbrock in a few Newton steps, and the figure
is written."""

import math

import pytest

from tests.figure_checks import checked_figures
from tests.helpers import load_module

SMALL = ["--steps", "40", "--digits-steps", "12", "--hidden", "16"]
SMALL += ["--train-size", "256", "--batch-size", "64"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    example = load_module("examples/curvature_optimizers.py")
    with checked_figures() as saved:
        results = example.main(["--out", str(tmp_path_factory.mktemp("curvature")), *SMALL])
    assert [path.name for path in saved] == ["curvature_optimizers.png"]
    return results


def test_every_optimizer_ran_on_both_problems_and_the_figure_is_written(results):
    assert set(results["rosenbrock"]) == {"adam", "sophia_h", "adahessian", "hessian_free"}
    assert set(results["digits"]) == {"adam", "sophia_g", "sophia_h", "adahessian", "hessian_free"}
    for problem in ("rosenbrock", "digits"):
        for row in results[problem].values():
            assert math.isfinite(row["final_loss"]) and row["ms_per_step"] > 0
    assert results["figure"].stat().st_size > 10_000


def test_hessian_free_solves_rosenbrock_in_a_few_newton_steps(results):
    # Levenberg–Marquardt on the residuals: the target 1e-6 in under 20 steps, where the
    # first-order and diagonal methods are still in the valley after 40.
    assert results["rosenbrock"]["hessian_free"]["steps_to_target"] <= 20
    assert results["rosenbrock"]["adam"]["final_loss"] > 1e-3


def test_every_optimizer_lowers_the_digits_loss_below_chance(results):
    for name, row in results["digits"].items():
        assert row["final_loss"] < math.log(10), name  # the loss of uniform guessing
        assert row["test_accuracy"] > 0.3, name  # chance is 0.1
