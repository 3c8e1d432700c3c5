"""The examples run and reach what their docstrings promise."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
