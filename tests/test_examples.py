"""The examples run and reach what their docstrings promise."""

import math

import pytest

from tests.helpers import load_module


def load(name):
    return load_module(f"examples/{name}.py")


def test_xor_needs_a_hidden_layer_or_the_product_feature():
    results = load("xor").main()
    # From zero the gradient vanishes: the linear model stays at p = ½, loss log 2, and
    # calls every point 0 (right on 2 of 4), as the docstring derives.
    accuracy, loss = results["linear on (x1, x2)"]
    assert accuracy == 0.5
    assert loss == pytest.approx(math.log(2), abs=1e-6)
    assert results["linear on (x1, x2, x1·x2)"][0] == 1.0
    assert results["2-layer tanh network"][0] == 1.0
    assert results["2-layer tanh network"][1] < 0.05


def test_logistic_regression_gradient_and_accuracy(capsys):
    accuracy = load("logistic_regression").main(steps=300)
    out = capsys.readouterr().out
    difference = float(out.split("max relative difference ")[1].split()[0])
    assert difference < 1e-5
    assert accuracy >= 0.94


@pytest.fixture(autouse=True)
def _agg_backend(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
