"""A character transformer whose training step fits a memory budget only with remat.

Model: the causal character model of ``transformer_sampling.py`` (without dropout), with its
blocks built as one scanned stack, ``nn.repeat(transformer_block, L, remat=...)``::

    embedding + positional embedding → repeat(transformer_block, L) → layer_norm → dense

The gradient of the training loss keeps, for the backward pass, the activations of every
block: attention weights ``(batch, heads, T, T)``, the MLP's hidden ``(batch, T, 4·features)``
and more, L times over. With ``remat=True`` the scan keeps only each block's input and
recomputes the rest of the block in the backward pass. The script compiles the gradient both
ways and reads XLA's own count of its temporary buffers (``memory_analysis()``), against a
stated budget: the plain stack does not fit it, the rematerialised one does. It also compiles
the unrolled model with each block in ``nn.remat``, which on XLA:CPU keeps as much as the plain
model (see ``docs/bigger_models.md``).

Then it trains the rematerialised model (the data, unigram baseline and training loop of
``char_rnn.py``) and scores it on the held-out tenth of the text, below the unigram
baseline of about 3.0 nats per character.

    python examples/remat_transformer.py [--steps 300] [--num-blocks 6] [--budget-mb 128]
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

import funcnet as fn
from funcnet import nn

# The data, baseline and training loop are char_rnn.py's, the positional embedding
# transformer_sampling.py's, both next to this file.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from char_rnn import train, unigram_cross_entropy
from transformer_sampling import positional_embedding


def language_model(
    vocab_size: int,
    features: int,
    num_blocks: int,
    num_heads: int,
    window: int,
    *,
    remat=None,
    unrolled: bool = False,
) -> nn.Layer:
    """The character model with its blocks in ``nn.repeat(..., remat=remat)``; with
    ``unrolled=True``, in a `serial` instead, each block in ``nn.remat`` when `remat` is
    set."""
    block = nn.transformer_block(num_heads, 4 * features, causal=True)
    if unrolled:
        stack = nn.serial(*[nn.remat(block) if remat else block] * num_blocks)
    else:
        stack = nn.repeat(block, num_blocks, remat=remat)
    return nn.serial(
        nn.embedding(vocab_size, features),
        positional_embedding(window),
        stack,
        nn.layer_norm(),
        nn.dense(vocab_size),
    )


def gradient_temp_mb(model: nn.Layer, batch_size: int, window: int) -> float:
    """MB of temporary buffers of the compiled gradient of the training loss (XLA's count,
    without the params, inputs and outputs), compiled from shapes alone."""
    _, params, state = jax.eval_shape(lambda: model.init(jax.random.key(0), (batch_size, window)))
    ids = jax.ShapeDtypeStruct((batch_size, window), np.int32)

    def loss(params, inputs, targets):
        logits, _ = model.apply(params, state, inputs, train=True)
        return fn.losses.softmax_cross_entropy(logits, targets)

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, ids, ids).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 1e6


def main(
    steps: int = 300,
    batch_size: int = 32,
    window: int = 128,
    features: int = 64,
    num_blocks: int = 6,
    num_heads: int = 4,
    budget_mb: float = 128.0,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> dict[str, float | bool]:
    corpus = fn.data.char_corpus()
    vocab_size = len(corpus.vocab)
    cut = int(0.9 * len(corpus.ids))
    train_ids, test_ids = corpus.ids[:cut], corpus.ids[cut:]
    baseline = unigram_cross_entropy(np.asarray(train_ids), np.asarray(test_ids), vocab_size)

    def build(**options):
        return language_model(vocab_size, features, num_blocks, num_heads, window, **options)

    temp = {
        "plain": gradient_temp_mb(build(), batch_size, window),
        "remat": gradient_temp_mb(build(remat=True), batch_size, window),
        "unrolled_remat": gradient_temp_mb(build(remat=True, unrolled=True), batch_size, window),
    }
    print(
        f"{num_blocks} blocks of width {features}, batch {batch_size} × {window} characters; "
        f"temporary memory of the gradient, against a budget of {budget_mb:.1f} MB:"
    )
    for name, label in [
        ("plain", "repeat(block, L)"),
        ("remat", "repeat(block, L, remat=True)"),
        ("unrolled_remat", "serial(remat(block), ...)"),
    ]:
        verdict = "fits" if temp[name] <= budget_mb else "does not fit"
        print(f"  {label:30s} {temp[name]:7.1f} MB  {verdict}")

    model = build(remat=True)
    _, params, state = model.init(jax.random.key(seed), (batch_size, window))
    print(f"{nn.param_count(params):,} params; training repeat(block, L, remat=True)")
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
    return {
        "temp_mb_plain": temp["plain"],
        "temp_mb_remat": temp["remat"],
        "temp_mb_unrolled_remat": temp["unrolled_remat"],
        "budget_mb": budget_mb,
        "plain_fits": temp["plain"] <= budget_mb,
        "remat_fits": temp["remat"] <= budget_mb,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "unigram_loss": baseline,
        "seconds": seconds,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=6)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--budget-mb", type=float, default=128.0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(
        args.steps,
        args.batch_size,
        args.window,
        args.features,
        args.num_blocks,
        args.num_heads,
        args.budget_mb,
        args.learning_rate,
        args.seed,
    )
