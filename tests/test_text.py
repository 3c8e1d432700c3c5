"""The bundled text corpus and the character vocabulary."""

import jax.numpy as jnp
import numpy as np
import pytest

import funcnet as fn


def test_bundled_corpus_is_tens_of_kilobytes_of_ascii_text():
    corpus = fn.data.char_corpus()
    assert 20_000 <= len(corpus.text) <= 100_000
    assert corpus.text.isascii()
    assert corpus.text.startswith("THE FIRST BOOK OF MOSES")
    assert 'Quoth the Raven, "Nevermore."' in corpus.text
    assert corpus.vocab == "".join(sorted(set(corpus.text)))
    assert corpus.ids.dtype == jnp.int32 and corpus.ids.shape == (len(corpus.text),)
    assert fn.data.decode(corpus.ids, corpus.vocab) == corpus.text


def test_ids_index_the_vocabulary():
    vocab = fn.data.char_vocab("hello, world")
    assert vocab == " ,dehlorw"
    ids = fn.data.encode("hello", vocab)
    np.testing.assert_array_equal(ids, [vocab.index(c) for c in "hello"])
    assert fn.data.decode(ids, vocab) == "hello"
    assert fn.data.decode([], vocab) == ""
    assert fn.data.decode(np.array([8, 0, 3]), vocab) == "w e"


def test_errors_name_what_is_wrong():
    vocab = fn.data.char_vocab("abc")
    with pytest.raises(ValueError, match=r"characters \['d', 'z'\] are not in the vocabulary"):
        fn.data.encode("zebra dab", vocab.replace("e", "").replace("r", "") + "er ")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\), got values in \[0, 3\]"):
        fn.data.decode([0, 3], vocab)
    with pytest.raises(ValueError, match="rank-1 integer"):
        fn.data.decode(np.zeros((2, 2), np.int32), vocab)


def test_a_corpus_from_a_file(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("so long lives this\n", encoding="utf-8")
    corpus = fn.data.char_corpus(path)
    assert corpus.vocab == "\n eghilnostv"
    assert fn.data.decode(corpus.ids, corpus.vocab) == corpus.text
