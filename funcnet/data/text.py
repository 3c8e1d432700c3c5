"""A small bundled text corpus and a character-level vocabulary for language models.

The corpus, ``tiny_text.txt`` (about 30 KB of ASCII), gathers public-domain texts: Genesis 1–3
(King James Version), Poe's "The Raven", eight of Shakespeare's sonnets and two soliloquies, and
short poems by Blake, Shelley, Wordsworth, Carroll and Frost, Lincoln's Gettysburg Address,
Psalm 23 and Ecclesiastes 3:1–8.
"""

from __future__ import annotations

import os
import pathlib
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


class CharCorpus(NamedTuple):
    """A text with its character vocabulary: ``vocab[ids[i]] == text[i]``."""

    text: str
    vocab: str  # the distinct characters of `text`, sorted; character vocab[i] has id i
    ids: Array  # int32, shape (len(text),)


def char_vocab(text: str) -> str:
    """The distinct characters of `text` in sorted order; character ``vocab[i]`` has id ``i``."""
    return "".join(sorted(set(text)))


def encode(text: str, vocab: str) -> Array:
    """Character ids of `text`: an int32 array of shape ``(len(text),)``."""
    index = {ch: i for i, ch in enumerate(vocab)}
    missing = sorted(set(text) - index.keys())
    if missing:
        raise ValueError(f"encode: characters {missing!r} are not in the vocabulary")
    return jnp.asarray(np.fromiter((index[ch] for ch in text), np.int32, len(text)))


def decode(ids, vocab: str) -> str:
    """The text spelled by character ids (any integer array of rank 1, or a list)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(f"decode: expected a rank-1 integer array, got {ids.dtype}{ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocab)):
        raise ValueError(
            f"decode: ids must lie in [0, {len(vocab)}), got values in [{ids.min()}, {ids.max()}]"
        )
    return "".join(vocab[i] for i in ids.tolist())


def char_corpus(path: str | pathlib.Path | None = None) -> CharCorpus:
    """The bundled corpus (or the UTF-8 text file at `path`), its vocabulary and its ids."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise TypeError(f"char_corpus: path must be a file path or None, got {path!r:.40}")
    if path is None:
        text = resources.files("funcnet.data").joinpath("tiny_text.txt").read_text("utf-8")
    else:
        text = pathlib.Path(path).read_text("utf-8")
    vocab = char_vocab(text)
    return CharCorpus(text, vocab, encode(text, vocab))
