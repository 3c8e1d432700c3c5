"""examples/remat_transformer.py: the gradient of a scanned transformer stack fits a memory
budget with remat and not without, and the rematerialised model trains below the unigram
baseline."""

import pytest

from tests.helpers import load_module


@pytest.fixture(scope="module")
def run():
    example = load_module("examples/remat_transformer.py")
    return example.main(
        steps=60, batch_size=16, window=48, features=32, num_blocks=2, num_heads=2, budget_mb=6.0
    )


def test_only_the_rematerialised_stack_fits_the_budget(run):
    assert run["remat_fits"] and not run["plain_fits"]
    assert run["temp_mb_remat"] <= run["budget_mb"] < run["temp_mb_plain"]


def test_the_loss_falls_below_the_unigram_baseline(run):
    assert run["test_loss"] < run["unigram_loss"] - 0.2
    assert run["train_loss"] < run["unigram_loss"] - 0.2
