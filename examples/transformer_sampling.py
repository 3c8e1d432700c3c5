"""A small causal transformer on the bundled text, sampled with a key/value cache.

Model: ``embedding + positional embedding → transformer_block × L (causal) → layer_norm →
dense``, giving logits for the next character at every position::

    h_0[t] = E[c_t] + P[t],    h_l = Block_l(h_{l−1}),
    p(c_{t+1} | c_1 … c_t) = softmax(W LN(h_L[t]) + b)

Trained by teacher forcing on random windows of the first 90% of the text and scored by
cross-entropy on the last 10%, against the unigram baseline (every character predicted by its
frequency, about 2.9 nats per character), as in ``char_rnn.py``.

Then the model writes text two ways, with the same random draws:

- without a cache: each new character runs the model over the whole fixed-size buffer (the
  prompt, what has been written, and the unwritten tail, which causal attention never lets
  the earlier positions see) and reads the logits at the last written position;
- with a cache: the same params in a model built with ``cache_length``, whose attention
  layers keep the keys and values of past positions in their ``state``. The prompt goes in
  once, then each step feeds only the newest character, and attention reads the past from
  the cache. The positional embedding keeps its own position counter in ``state`` too.

Both give the same characters; the cached step does work for one position instead of the
whole buffer, and the script measures the time per character of each.

    python examples/transformer_sampling.py [--steps 600] [--temperature 0.7]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from funcnet import nn

# The data, the baseline and the training loop are char_rnn.py's, next to this file.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from char_rnn import train, unigram_cross_entropy

PROMPT = "And the Raven"


def positional_embedding(max_length: int, *, cache_length: int | None = None) -> nn.Layer:
    """Adds a learned vector per position: ``y[:, t] = x[:, t] + P[start + t]``.

    ``start = 0`` for a whole sequence. With `cache_length` (step-by-step decoding) the layer
    counts the positions it has seen in ``state["index"]`` and continues from there, as the
    cached attention layers do. Params ``table`` ``(max_length, features)``, ``N(0, 0.02²)``.
    """

    def init(key, in_shape):
        table = 0.02 * jax.random.normal(key, (max_length, in_shape[-1]))
        state = {} if cache_length is None else {"index": jnp.zeros((), jnp.int32)}
        return in_shape, {"table": table}, state

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        start = state["index"] if cache_length is not None else 0
        positions = jax.lax.dynamic_slice_in_dim(params["table"], start, x.shape[1])
        if cache_length is not None:
            state = {"index": start + x.shape[1]}
        return x + positions, state

    return nn.Layer(init, apply, kind="positional_embedding")


def language_model(
    vocab_size: int,
    features: int,
    num_blocks: int,
    num_heads: int,
    max_length: int,
    *,
    dropout_rate: float = 0.0,
    cache_length: int | None = None,
) -> nn.Layer:
    """The character model; with `cache_length`, the decoding form of the same params."""
    blocks = [
        nn.transformer_block(
            num_heads,
            4 * features,
            dropout_rate=dropout_rate,
            causal=True,
            cache_length=cache_length,
        )
        for _ in range(num_blocks)
    ]
    return nn.serial(
        nn.embedding(vocab_size, features),
        positional_embedding(max_length, cache_length=cache_length),
        *blocks,
        nn.layer_norm(),
        nn.dense(vocab_size),
    )


def _draw(key, t, logits, temperature):
    """The character at position `t`: the same draw for both samplers."""
    return jax.random.categorical(jax.random.fold_in(key, t), logits / temperature)


def sample_uncached(model, params, prompt_ids, length, temperature, key) -> jax.Array:
    """`length` characters after `prompt_ids`, each from a full pass over the buffer."""
    start = len(prompt_ids)
    buffer = jnp.zeros(start + length, jnp.int32).at[:start].set(prompt_ids)

    def write_next(t, buffer):
        logits, _ = model.apply(params, {}, buffer[None])
        return buffer.at[t].set(_draw(key, t, logits[0, t - 1], temperature))

    return jax.lax.fori_loop(start, start + length, write_next, buffer)[start:]


def sample_cached(decoder, params, state, prompt_ids, length, temperature, key) -> jax.Array:
    """The same characters from the decoding model: the prompt in one pass, then one
    character per step with the keys and values of the past read from the cache in `state`
    (as made by ``decoder.init``, for a batch of one)."""
    start = len(prompt_ids)
    logits, state = decoder.apply(params, state, prompt_ids[None])
    first = _draw(key, start, logits[0, -1], temperature)

    def write_next(carry, t):
        last, state = carry
        logits, state = decoder.apply(params, state, last[None, None])
        return (_draw(key, t, logits[0, -1], temperature), state), last

    (last, _), written = jax.lax.scan(
        write_next, (first, state), jnp.arange(start + 1, start + length)
    )
    return jnp.append(written, last)


def _timed(f, *args) -> tuple[jax.Array, float]:
    """``f(*args)`` and the seconds of a second, compiled, call."""
    jax.block_until_ready(f(*args))
    begin = time.perf_counter()
    out = jax.block_until_ready(f(*args))
    return out, time.perf_counter() - begin


def main(
    steps: int = 600,
    batch_size: int = 32,
    window: int = 128,
    features: int = 64,
    num_blocks: int = 2,
    num_heads: int = 4,
    learning_rate: float = 3e-3,
    temperature: float = 0.7,
    seed: int = 0,
) -> dict[str, float | str | bool]:
    corpus = fn.data.char_corpus()
    vocab_size = len(corpus.vocab)
    cut = int(0.9 * len(corpus.ids))
    train_ids, test_ids = corpus.ids[:cut], corpus.ids[cut:]
    baseline = unigram_cross_entropy(np.asarray(train_ids), np.asarray(test_ids), vocab_size)
    print(f"{len(corpus.text):,} characters, vocabulary of {vocab_size}")

    def build(**options):
        return language_model(vocab_size, features, num_blocks, num_heads, window, **options)

    model = build(dropout_rate=0.1)
    _, params, state = model.init(jax.random.key(seed), (batch_size, window))
    print(f"{nn.param_count(params):,} params")
    params, train_loss, test_loss, seconds = train(
        model,
        params,
        state,
        train_ids,
        test_ids,
        baseline=baseline,
        steps=steps,
        batch_size=batch_size,
        window=window,
        learning_rate=learning_rate,
        seed=seed,
        reports=4,
    )

    # Generation fills the positions the model was trained on: the prompt and the rest of a
    # window. The training model (train=False: no dropout) and the decoding model share
    # `params`.
    prompt = fn.data.encode(PROMPT, corpus.vocab)
    length = window - len(PROMPT)
    decoder = build(cache_length=window)
    _, _, cache = decoder.init(jax.random.key(0), (1, 1))
    draws = jax.random.key(seed + 2)
    uncached, uncached_seconds = _timed(
        jax.jit(sample_uncached, static_argnums=(0, 3)),
        model,
        params,
        prompt,
        length,
        temperature,
        draws,
    )
    cached, cached_seconds = _timed(
        jax.jit(sample_cached, static_argnums=(0, 4)),
        decoder,
        params,
        cache,
        prompt,
        length,
        temperature,
        draws,
    )
    same = bool(np.array_equal(cached, uncached))
    per_char = [1e3 * s / length for s in (uncached_seconds, cached_seconds)]
    print(
        f"{length} characters: {per_char[0]:.3f} ms each recomputing the whole buffer, "
        f"{per_char[1]:.3f} ms with the cache ({uncached_seconds / cached_seconds:.1f}× "
        f"faster); the same characters: {same}"
    )
    text = PROMPT + fn.data.decode(cached, corpus.vocab)
    print(f"--- sample (temperature {temperature}) ---\n{text}\n---")
    return {
        "train_loss": train_loss,
        "test_loss": test_loss,
        "unigram_loss": baseline,
        "sample": text,
        "cached_equals_uncached": same,
        "ms_per_char_uncached": per_char[0],
        "ms_per_char_cached": per_char[1],
        "seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=2)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        args.steps,
        args.batch_size,
        args.window,
        args.features,
        args.num_blocks,
        args.num_heads,
        args.learning_rate,
        args.temperature,
        args.seed,
    )
