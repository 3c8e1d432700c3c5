"""A small CNN with batch norm on the 8×8 handwritten digits, trained with Adam.

The images are ``(n, 8, 8, 1)``, channels last. The network::

    [conv 3×3 → batch_norm → relu] × 2 → max_pool 2×2      8×8×32 → 4×4×32
    conv 3×3 → batch_norm → relu → max_pool 2×2            4×4×64 → 2×2×64
    flatten → dropout(0.25) → dense(10)

Batch norm normalises with the statistics of each minibatch while training and keeps running
averages of them in the model's `state`; evaluation (``train=False``) uses those averages, so
a test prediction does not depend on the other test images. One compiled step per shuffled
minibatch (on CPU, XLA runs convolution gradients far slower inside a `lax.scan` body than in
a plain compiled step, so the epoch loop stays in Python). It reaches about 99% test accuracy.

    python examples/cnn_digits.py [--epochs 20]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import funcnet as fn
from funcnet import nn


def cnn() -> nn.Layer:
    def block(width):
        # No bias before batch norm: it subtracts the batch mean, and a bias with it.
        return [nn.conv(width, 3, w_init="he_normal", use_bias=False), nn.batch_norm(), nn.relu]

    return nn.serial(
        *block(32),
        *block(32),
        nn.max_pool(2),
        *block(64),
        nn.max_pool(2),
        nn.flatten(),
        nn.dropout(0.25),
        nn.dense(10),
    )


def main(
    epochs: int = 20, batch_size: int = 64, learning_rate: float = 3e-3, seed: int = 0
) -> dict[str, float]:
    split = fn.data.digits(images=True)
    model = cnn()
    _, params, state = model.init(jax.random.key(seed), (batch_size, 8, 8, 1))
    print(f"CNN with {nn.param_count(params):,} params; batch-norm state: {sorted(state)}")
    schedule = fn.optim.cosine_decay_schedule(
        learning_rate, epochs * (len(split.x_train) // batch_size)
    )
    opt = fn.optim.adam(schedule)
    opt_state = opt.init(params)

    def loss_fn(params, state, x, y, key):
        logits, state = model.apply(params, state, x, key=key, train=True)
        return fn.losses.softmax_cross_entropy(logits, y), state

    @jax.jit
    def step(params, state, opt_state, x, y, key):
        (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return fn.optim.apply_updates(params, updates), state, opt_state, loss

    @jax.jit
    def accuracy(params, state, x, y):
        logits, _ = model.apply(params, state, x)  # train=False: running statistics
        return fn.losses.accuracy(logits, y)

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        epoch_key = jax.random.fold_in(jax.random.key(seed + 1), epoch)
        batches = fn.data.minibatches(
            (split.x_train, split.y_train), batch_size, key=epoch_key, drop_last=True
        )
        losses = []
        for i, (x, y) in enumerate(batches):
            key = jax.random.fold_in(epoch_key, i)
            params, state, opt_state, loss = step(params, state, opt_state, x, y, key)
            losses.append(loss)
        if epoch % max(1, epochs // 6) == 0 or epoch == epochs:
            acc = accuracy(params, state, split.x_test, split.y_test)
            print(
                f"epoch {epoch:3d}  train loss {float(jnp.mean(jnp.stack(losses))):.4f}  "
                f"test accuracy {float(acc):.2%}"
            )
    results = {
        "train_accuracy": float(accuracy(params, state, split.x_train, split.y_train)),
        "test_accuracy": float(accuracy(params, state, split.x_test, split.y_test)),
        "seconds": time.perf_counter() - start,
    }
    print(
        f"after {epochs} epochs ({results['seconds']:.0f} s): train accuracy "
        f"{results['train_accuracy']:.2%}, test accuracy {results['test_accuracy']:.2%}"
    )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.epochs, args.batch_size, args.learning_rate, args.seed)
