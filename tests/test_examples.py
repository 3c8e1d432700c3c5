"""The examples run and reach what their docstrings promise."""

import pytest

from tests.helpers import load_module


def load(name):
    return load_module(f"examples/{name}.py")


def test_xor_needs_a_hidden_layer_or_the_product_feature():
    results = load("xor").main()
    assert results["linear on (x1, x2)"] <= 0.75
    assert results["linear on (x1, x2, x1·x2)"] == 1.0
    assert results["2-layer tanh network"] == 1.0


def test_logistic_regression_gradient_and_accuracy(capsys):
    accuracy = load("logistic_regression").main(steps=300)
    out = capsys.readouterr().out
    difference = float(out.split("max relative difference ")[1].split()[0])
    assert difference < 1e-5
    assert accuracy >= 0.94


@pytest.fixture(autouse=True)
def _agg_backend(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
