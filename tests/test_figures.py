"""Every figure the examples and the `funcnet` command write, checked as it is saved
(`tests/figure_checks.py`: a title, labelled axes, legends that cover no data, entries that
can be told apart).

The figures of examples whose test already runs them are checked there, in that test's
fixture; the command's figures in tests/test_cli*.py. This file renders the others at quick
settings, and checks that no figure is left out.
"""

import pathlib
import re

import pytest

from tests.figure_checks import checked_figures
from tests.helpers import load_module

ROOT = pathlib.Path(__file__).resolve().parents[1]

QUICK = {
    "optimizer_paths": ["--steps", "60"],
}
WRITTEN = {
    "optimizer_paths": ["optimizer_paths_rosenbrock.png", "optimizer_paths_beale.png"],
}
# Where the rest are checked: the test module whose fixture renders them.
ELSEWHERE = {
    "vanishing_gradients": "tests/test_example_vanishing_gradients.py",
    "ntk_convergence": "tests/test_example_ntk_convergence.py",
    "curvature_optimizers": "tests/test_example_curvature_optimizers.py",
    "edge_of_stability": "tests/test_example_edge_of_stability.py",
    "loss_landscape": "tests/test_example_loss_landscape.py",
    "universal_approximation": "tests/test_example_universal_approximation.py",
    "laplace_digits": "tests/test_example_laplace_digits.py",
    "hessian_spectrum": "tests/diff/test_diff_benchmark.py",
    "forward_vs_reverse": "tests/diff/test_diff_benchmark.py",
    "mislabelled_digits": "tests/test_example_mislabelled_digits.py",
}
COMMAND = {
    "plot_history": "tests/test_cli.py",  # curves.png of a run, and of a regression in _data
    "plot_ensemble": "tests/test_cli.py",
    "plot_runs": "tests/test_cli_data.py",
    "plot_density": "tests/test_cli.py",  # hessian.png
    "plot_landscape": "tests/test_cli_landscape.py",  # both a line and a contour
}


@pytest.mark.parametrize("name", sorted(QUICK))
def test_example_figures_read(name, tmp_path):
    with checked_figures() as saved:
        load_module(f"examples/{name}.py").main(["--out", str(tmp_path), *QUICK[name]])
    assert [path.name for path in saved] == WRITTEN[name]


def test_the_activation_gallery_reads(tmp_path):
    with checked_figures() as saved:
        load_module("examples/activations.py").main(tmp_path / "activations.png")
    assert saved == [tmp_path / "activations.png"]


def test_the_digits_mlp_curves_read(tmp_path):
    with checked_figures() as saved:
        load_module("examples/mlp_digits.py").main(epochs=2, quiet=True, plot=tmp_path / "c.png")
    assert saved == [tmp_path / "c.png"]


def test_every_figure_is_checked_somewhere():
    drawing = {
        path.stem
        for path in (ROOT / "examples").glob("*.py")
        if re.search(r"savefig\(|\bplot_\w+\(", path.read_text())
    }
    assert drawing == set(QUICK) | set(ELSEWHERE) | {"activations", "mlp_digits"}
    for name, test in ELSEWHERE.items():
        assert "checked_figures()" in (ROOT / test).read_text(), (name, test)
    plots = (ROOT / "funcnet/app/plots.py").read_text()
    plots += (ROOT / "funcnet/app/cli/landscape.py").read_text()
    assert set(re.findall(r"^def (plot_\w+)", plots, re.M)) == set(COMMAND) | {"plot_activations"}
    for name, test in COMMAND.items():
        assert "checked_figures()" in (ROOT / test).read_text(), (name, test)
