"""The bad-value sweep (tests/sweep.py, run by ``make sweep``) on a few functions."""

from funcnet import nn
from tests import sweep


def test_the_sweep_of_a_layer_an_optimizer_a_curvature_tool_and_a_loss_finds_nothing_raw(capsys):
    assert sweep.main(["--only", "dense", "sgd", "hvp", "softmax_cross_entropy"]) == 0
    curvature, inputs, layers, loss, optimizers = capsys.readouterr().out.splitlines()
    # logits, labels and reduction, 8 bad values each, every one refused.
    assert loss == "losses: 1 functions, 24 calls: 0 accepted, 24 refused, 0 raw, known, 0 raw"
    # hvp's three arguments and its mode, 8 bad values each.
    assert (
        curvature == "curvature: 1 functions, 32 calls: 0 accepted, 32 refused, 0 raw, known, 0 raw"
    )
    assert layers.startswith("layers: 1 functions, ") and layers.endswith(", 0 raw")
    # dense's params, state and input, 8 bad values each (a state it does not read passes);
    # its params without w, then without b; w, then b, with an extra axis and one longer.
    assert inputs == "inputs: 1 functions, 30 calls: 8 accepted, 22 refused, 0 raw, known, 0 raw"
    assert optimizers.startswith("optimizers: 1 functions, ") and optimizers.endswith(", 0 raw")


def test_only_funcnet_s_own_value_and_type_errors_count_as_refused():
    def build(**args):
        return nn.dense(**args)

    def broken(**args):
        raise AttributeError("'int' object has no attribute 'init'")

    def strict(**args):
        raise ValueError("a check that is not funcnet's")

    layer = sweep.Case("dense", build, {"features": 3}, sweep._through_layer)
    assert sweep.outcome(layer, {"features": 3}) == ("accepted", "")
    kind, message = sweep.outcome(layer, {"features": 0})
    assert (kind, message) == ("refused", "dense: features must be a positive int, got 0")
    for fn in (broken, strict):
        kind, detail = sweep.outcome(sweep.Case("f", fn, {}, sweep._through_layer), {})
        assert kind == "raw" and "test_sweep.py" in detail
