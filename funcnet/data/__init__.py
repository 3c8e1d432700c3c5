"""Small real data sets and batching."""

from funcnet.data.batching import minibatches
from funcnet.data.datasets import Split, digits, moons, spirals, standardize, xor
from funcnet.data.text import CharCorpus, char_corpus, char_vocab, decode, encode

__all__ = [
    "CharCorpus",
    "Split",
    "char_corpus",
    "char_vocab",
    "decode",
    "digits",
    "encode",
    "minibatches",
    "moons",
    "spirals",
    "standardize",
    "xor",
]
