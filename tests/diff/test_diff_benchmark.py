"""Smoke runs of the second-order benchmark and the forward-vs-reverse example."""

import numpy as np
import pytest

from tests.figure_checks import checked_figures
from tests.helpers import load_module as load


def test_second_order_benchmark_rows():
    bench = load("benchmarks/bench_second_order.py")
    assert [bench.hidden_width(n) for n in (100, 1_000, 10_000)] == [3, 20, 87]
    rows = bench.run([20], 1, min_time=0.0)
    assert [r["params"] for r in rows] == [39]
    for mode in bench.HVP_MODES:
        assert rows[0][f"hvp_{mode}_us"] > 0
        assert rows[0][f"hvp_{mode}_ratio"] > 0
    assert rows[0]["hessian_ratio"] > 0
    loss, params, batch = bench.problem(100)
    assert "hessian" not in bench.contenders(loss, params, batch, dense=False)
    table = bench.markdown(rows).splitlines()
    assert len(table) == 3 and table[0].startswith("| params")


def test_forward_vs_reverse_example(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    example = load("examples/forward_vs_reverse.py")
    with checked_figures() as saved:  # the figure is checked as it is saved
        rows = example.main(["--out", str(tmp_path), "--sizes", "2", "32", "--repeats", "1"])
    assert saved == [tmp_path / "forward_vs_reverse.png"]
    assert len(rows) == 4
    assert (tmp_path / "forward_vs_reverse.png").stat().st_size > 0
    by = {(r["n"], r["m"]): r for r in rows}
    # 2 inputs and 32 outputs: forward mode needs 2 products, reverse mode 32.
    assert by[(2, 32)]["auto"] == "fwd"
    assert by[(32, 2)]["auto"] == "rev"


@pytest.fixture(autouse=True)
def _quiet_matplotlib(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")


def test_hessian_spectrum_example_agrees_with_the_dense_hessian(tmp_path, capsys):
    """At 8 hidden units (610 parameters) the dense Hessian and its eigh are quick; the
    matrix-free code is the same at any width. Its figure is checked here as it is saved."""
    example = load("examples/hessian_spectrum.py")
    with checked_figures() as saved:
        spectra = example.main(["--out", str(tmp_path), "--steps", "30", "--hidden", "8"])
    assert saved == [tmp_path / "hessian_spectrum.png"]
    assert (tmp_path / "hessian_spectrum.png").stat().st_size > 0
    for s in spectra.values():
        # Lanczos' top eigenvalues and Hutchinson's trace against eigh of the dense Hessian.
        assert s["exact"].shape == (610,)
        np.testing.assert_allclose(s["top"], s["exact_top"], rtol=1e-3)
        assert abs(s["trace"] - s["exact_trace"]) < 4 * s["trace_stderr"]
    assert "after 30 Adam steps" in capsys.readouterr().out
