"""examples/transformer_sampling.py: a small causal transformer beats the unigram baseline, and
sampling with the key/value cache writes the same characters as recomputing the whole prefix."""

import pytest

from tests.helpers import load_module


@pytest.fixture(scope="module")
def run():
    example = load_module("examples/transformer_sampling.py")
    return example.main(steps=60, batch_size=16, window=48, features=32, num_blocks=1, num_heads=2)


def test_the_loss_falls_below_the_unigram_baseline(run):
    assert run["test_loss"] < run["unigram_loss"] - 0.2
    assert run["train_loss"] < run["unigram_loss"] - 0.2


def test_cached_generation_writes_the_same_characters_as_full_recomputation(run):
    assert run["cached_equals_uncached"]
    assert run["sample"].startswith("And the Raven") and len(run["sample"]) == 48
    assert run["ms_per_char_cached"] > 0 and run["ms_per_char_uncached"] > 0
