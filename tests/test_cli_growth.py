"""`funcnet train` with --precision, --accumulate and --ema: resumed runs bit-identical to
uninterrupted ones, the average deployed, refusals in one line."""

import json

import numpy as np
import pytest

from funcnet import checkpoint, train
from funcnet.app import cli, models
from tests.test_checkpoint import leaves_as_numpy as leaves
from tests.test_cli import TRAIN


@pytest.mark.parametrize(
    "growth",
    [
        ["--precision", "float16", "--ema", "0.9"],
        ["--precision", "bfloat16", "--accumulate", "4", "--ema", "0.95"],
    ],
    ids=["float16_ema", "bfloat16_accumulate_ema"],
)
def test_resumed_run_with_growth_options_is_bit_identical(tmp_path, growth):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert cli.main([*TRAIN, *growth, "--epochs", "3", "--out", str(whole)]) == 0
    assert cli.main([*TRAIN, *growth, "--epochs", "2", "--out", str(part)]) == 0
    resume = ["--resume", str(part / "checkpoint.npz")]
    assert cli.main([*TRAIN, *growth, "--epochs", "3", *resume, "--out", str(part)]) == 0
    a, b = (checkpoint.load(p / "checkpoint.npz") for p in (whole, part))
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    last = a["last"]
    assert last.ema is not None
    if "float16" in growth:
        assert last.loss_scale is not None and float(last.loss_scale.scale) > 0


def test_the_average_is_what_eval_and_predict_use(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main([*TRAIN, "--ema", "0.9", "--epochs", "2", "--out", str(out)]) == 0
    path = out / "checkpoint.npz"
    trained = models.load(path)
    best = checkpoint.load(path)["best"]
    for x, y in zip(leaves(trained.params), leaves(best.ema.params), strict=True):
        np.testing.assert_array_equal(x, y)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(path), "--split", "test", "--json"]) == 0
    reported = json.loads(capsys.readouterr().out)
    run, _ = cli.common.open_checkpoint(path)
    evaluate = train.make_evaluate(run.model, loss_fn=cli.common.loss_for("classification"))
    averaged = evaluate(best.ema.params, best.model_state, run.data.test)
    raw = evaluate(best.params, best.model_state, run.data.test)
    assert reported["loss"] == pytest.approx(float(averaged["loss"]), abs=1e-6)
    assert reported["loss"] != pytest.approx(float(raw["loss"]), abs=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--accumulate", "3"], "--accumulate 3 does not divide the batch of 64 rows"),
        (["--accumulate", "0"], "positive integer"),
        (["--ema", "1"], "a fraction in [0, 1)"),
        (["--precision", "int8"], "invalid choice"),
        (["--precision", "float16", "--skip-nonfinite"], "leave out --skip-nonfinite"),
    ],
)
def test_bad_growth_options_are_one_line(tmp_path, capsys, args, message):
    code = None
    try:
        code = cli.main([*TRAIN, *args, "--epochs", "1", "--out", str(tmp_path / "r")])
    except SystemExit as exit_:  # argparse refuses a value with status 2
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1]
    assert "Traceback" not in "".join(err)
