"""An MLP on the 8×8 handwritten digits with `funcnet.train.fit`: about 98% test accuracy.

The 1,797 digits of scikit-learn split into 1,437 training and 360 test images (stratified);
a tenth of the training images is held out to pick the best epoch. The model is

    logits = W₂ relu(W₁ x + b₁) + b₂,    x ∈ [0, 1]⁶⁴,  1,024 hidden units,

trained by Adam on the softmax cross-entropy with a cosine learning-rate decay from 10⁻³ to 0.
Every epoch is one compiled `lax.scan` over shuffled batches of 64, so the whole run,
compilation included, takes seconds on a laptop CPU.

    python examples/mlp_digits.py [--epochs 40] [--plot curves.png]

`funcnet train --dataset digits` runs the same recipe from the command line and writes a
checkpoint, the metrics and the learning curves.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import funcnet as fn


def main(epochs: int = 40, seed: int = 0, quiet: bool = False, plot: str | None = None) -> float:
    """Trains the MLP and returns its test accuracy (of the epoch with the best held-out loss)."""
    started = time.perf_counter()
    split = fn.data.digits()
    order = np.random.default_rng(1).permutation(len(split.y_train))
    held_out, kept = order[: round(0.1 * len(order))], order[round(0.1 * len(order)) :]
    train_data = (split.x_train[kept], split.y_train[kept])
    val_data = (split.x_train[held_out], split.y_train[held_out])
    model = fn.nn.serial(fn.nn.dense(1024, w_init="he_normal"), fn.nn.relu, fn.nn.dense(10))
    batch_size = 64
    steps = fn.train.steps_per_epoch(train_data, batch_size)
    optimizer = fn.optim.adam(fn.optim.cosine_decay_schedule(1e-3, epochs * steps))
    loss_fn = fn.losses.softmax_cross_entropy

    result = fn.train.fit(
        model,
        optimizer,
        train_data,
        loss_fn=loss_fn,
        epochs=epochs,
        batch_size=batch_size,
        key=jax.random.key(seed),
        eval_data=val_data,
        progress=not quiet,
    )
    evaluate = fn.train.make_evaluate(model, loss_fn=loss_fn)
    test = evaluate(result.best.params, result.best.model_state, (split.x_test, split.y_test))
    accuracy = float(test["accuracy"])
    print(
        f"test accuracy {accuracy:.4f} (loss {float(test['loss']):.4f}) with the params of "
        f"epoch {result.best_epoch + 1} of {epochs}; {time.perf_counter() - started:.1f} s in all"
    )
    if plot:
        from funcnet.app.plots import plot_history

        print(f"wrote {plot_history(result.history, plot, title='MLP on digits')}")
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", default=None, help="write the learning curves to this PNG")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    main(args.epochs, args.seed, args.quiet, args.plot)
