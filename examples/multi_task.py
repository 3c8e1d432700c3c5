"""The network as a language: two inputs, two heads, two losses; then a frozen trunk reused.

Layers and combinators are words and grammar. `parallel(f, g)` maps a tuple `(x, z)` to
`(f(x), g(z))`, a fan-in (`concat`) joins a tuple into one array, `fanout(n)` copies one array
into an n-tuple, and `serial` chains it all, so a model with several inputs and outputs is a
sentence in the same language as an MLP.

(a) Multi-task learning on the 8×8 digits. Input 1 is the image, x ∈ [0, 1]⁶⁴. Input 2 is its
ink profile, the 8 row sums and 8 column sums of x (what a cheap line-scan sensor would read):
16 numbers with another scale and meaning, so it gets a branch of its own. The model is

    (x, p) ─ parallel(dense 64 + relu, dense 16 + relu) ─ concat ─ dense 64 + relu   (trunk)
           ─ fanout(2) ─ parallel(dense 10, dense 1) ─ (logits, ink)

with two heads: the digit class (softmax cross-entropy L₁) and the stroke thickness, the mean
ink of the image, standardized (mean squared error L₂). One Adam step descends

    L(θ) = L₁(θ) + λ·L₂(θ),    ∇L = ∇L₁ + λ·∇L₂,

so the shared trunk gets the sum of both heads' gradients; λ sets the exchange rate.

(b) Transfer learning. A trunk (dense 64 + relu + dense 32 + relu) and a 10-way head learn the
digit classes from all 1,437 training labels. A new task, odd or even, has only a few labels
(2 per digit, 20 in all). A new linear head learns it over the trunk, frozen: the optimizer is

    chain(masked(adam, {trunk: False, head: True}), freeze({trunk: True, head: False}))

`masked` passes the leaves it leaves out through *unchanged*, so `masked(adam, head_only)` alone
would add the raw gradient to the trunk; `freeze` turns the trunk's updates into zeros, and
θ + 0 = θ keeps the trunk bit for bit. The same head trained on a frozen random trunk and
on the raw pixels shows what the pretrained features add: they were shaped to separate the ten
classes, so "odd", a union of five classes, is close to linear in them, while in pixel space it
is five scattered clusters that 20 labels place a hyperplane between poorly.

    python examples/multi_task.py [--steps 300] [--transfer-steps 300] [--shots 2] [--ink-weight 1]
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn


def ink_profile(x: jax.Array) -> jax.Array:
    """The 8 row sums and 8 column sums of flattened 8×8 images: ``(n, 64) -> (n, 16)``."""
    images = x.reshape(-1, 8, 8)
    return jnp.concatenate([images.sum(axis=2), images.sum(axis=1)], axis=1) / 8.0


def multi_task_model() -> fn.nn.Layer:
    """``(pixels (n, 64), profile (n, 16)) -> (logits (n, 10), ink (n, 1))``."""
    return fn.nn.serial(
        fn.nn.parallel(  # one branch per input
            fn.nn.serial(fn.nn.dense(64, w_init="he_normal"), fn.nn.relu),
            fn.nn.serial(fn.nn.dense(16, w_init="he_normal"), fn.nn.relu),
        ),
        fn.nn.concat(),
        fn.nn.dense(64, w_init="he_normal"),  # the shared trunk
        fn.nn.relu,
        fn.nn.fanout(2),
        fn.nn.parallel(fn.nn.dense(10), fn.nn.dense(1)),  # digit head, ink head
    )


def multi_task_data(x: jax.Array, y: jax.Array, ink_mean: float, ink_std: float):
    """Inputs ``(x, profile)`` and targets ``(y, standardized mean ink)`` for `multi_task_model`."""
    ink = (x.mean(axis=1, keepdims=True) - ink_mean) / ink_std
    return (x, ink_profile(x)), (y, ink)


def task_losses(model, params, state, inputs, targets) -> tuple[jax.Array, jax.Array]:
    """The two losses ``(L₁, L₂)``: cross-entropy of the digit head, squared error of the ink."""
    (logits, ink), _ = model.apply(params, state, inputs)
    labels, ink_target = targets
    return fn.losses.softmax_cross_entropy(logits, labels), fn.losses.mse(ink, ink_target)


@functools.partial(jax.jit, static_argnames=("loss_fn", "optimizer", "steps"))
def train(params, data, *, loss_fn, optimizer, steps: int):
    """`steps` full-batch steps of `optimizer` on ``loss_fn(params, data) -> scalar``, fused
    into one `lax.scan`; returns the final params and the loss before each step."""

    def step(carry, _):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(loss_fn)(params, data)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (fn.optim.apply_updates(params, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), length=steps)
    return params, losses


def run_multi_task(split, steps: int, ink_weight: float, seed: int) -> dict[str, float]:
    """Part (a): trains both heads on ``L₁ + λ·L₂``; returns test metrics at start and end."""
    ink_train = split.x_train.mean(axis=1)
    stats = float(ink_train.mean()), float(ink_train.std())
    train_data = multi_task_data(split.x_train, split.y_train, *stats)
    test_inputs, test_targets = multi_task_data(split.x_test, split.y_test, *stats)
    model = multi_task_model()
    in_shape = tuple(x.shape for x in train_data[0])
    _, params, state = model.init(jax.random.key(seed), in_shape)

    def loss_fn(params, data):
        l1, l2 = task_losses(model, params, state, *data)
        return l1 + ink_weight * l2

    def evaluate(params) -> dict[str, float]:
        (logits, ink), _ = model.apply(params, state, test_inputs)
        labels, ink_target = test_targets
        return {
            "cross_entropy": float(fn.losses.softmax_cross_entropy(logits, labels)),
            "accuracy": float(fn.losses.accuracy(logits, labels)),
            "ink_mse": float(fn.losses.mse(ink, ink_target)),
        }

    before = evaluate(params)
    optimizer = fn.optim.adam(3e-3)
    params, _ = train(params, train_data, loss_fn=loss_fn, optimizer=optimizer, steps=steps)
    after = evaluate(params)
    print(f"(a) two inputs, two heads, L = L1 + {ink_weight:g}·L2, {steps} Adam steps; test set:")
    for name, m in (("start", before), ("end", after)):
        print(
            f"    {name:<5}  digit cross-entropy L1 {m['cross_entropy']:.4f}  "
            f"accuracy {m['accuracy']:6.1%}   ink MSE L2 {m['ink_mse']:.4f}"
        )
    return {f"{k}_{when}": m[k] for when, m in (("start", before), ("end", after)) for k in m}


def trunk() -> fn.nn.Layer:
    """The feature extractor of part (b): ``(n, 64) -> (n, 32)``."""
    return fn.nn.serial(
        fn.nn.dense(64, w_init="he_normal"),
        fn.nn.relu,
        fn.nn.dense(32, w_init="he_normal"),
        fn.nn.relu,
    )


def classifier_loss(model: fn.nn.Layer):
    """``(params, (x, labels)) -> softmax cross-entropy`` of a stateless `model`."""

    def loss_fn(params, data):
        x, labels = data
        logits, _ = model.apply(params, {}, x)
        return fn.losses.softmax_cross_entropy(logits, labels)

    return loss_fn


def accuracy(model: fn.nn.Layer, params, x, labels) -> float:
    logits, _ = model.apply(params, {}, x)
    return float(fn.losses.accuracy(logits, labels))


def freeze(frozen: dict[str, bool], optimizer) -> fn.optim.GradientTransformation:
    """`optimizer` on the params `frozen` marks False, zero updates on those it marks True.

    `frozen` is a prefix of the params tree (one bool per top-level entry).
    """
    trainable = {name: not is_frozen for name, is_frozen in frozen.items()}
    return fn.optim.chain(fn.optim.masked(optimizer, trainable), fn.optim.freeze(frozen))


def run_transfer(split, steps: int, shots: int, seed: int) -> dict[str, float]:
    """Part (b): a trunk learns the digit classes; a new parity head learns from a few labels
    over the frozen trunk, over a frozen random trunk, and on the raw pixels."""
    # `shots` parity labels per digit class, drawn from the training images.
    y_all = np.asarray(split.y_train)
    rng = np.random.default_rng(seed)
    few = np.concatenate(
        [rng.choice(np.flatnonzero(y_all == c), shots, replace=False) for c in range(10)]
    )
    parity_data = (split.x_train[few], split.y_train[few] % 2)
    x_test, parity_test = split.x_test, split.y_test % 2

    digit_model = fn.nn.serial(trunk(), fn.nn.dense(10))  # {"serial_0": trunk, "dense_1": head}
    _, params, _ = digit_model.init(jax.random.key(seed), split.x_train.shape)
    params, _ = train(
        params,
        (split.x_train, split.y_train),
        loss_fn=classifier_loss(digit_model),
        optimizer=fn.optim.adam(3e-3),
        steps=steps,
    )
    pretrained = params["serial_0"]
    digit_accuracy = accuracy(digit_model, params, split.x_test, split.y_test)

    parity_model = fn.nn.serial(trunk(), fn.nn.dense(2))
    _, fresh, _ = parity_model.init(jax.random.key(seed + 1), split.x_train.shape)
    fit_head = functools.partial(
        train,
        data=parity_data,
        loss_fn=classifier_loss(parity_model),
        optimizer=freeze({"serial_0": True, "dense_1": False}, fn.optim.adam(1e-2)),
        steps=steps,
    )
    transferred, _ = fit_head({"serial_0": pretrained, "dense_1": fresh["dense_1"]})
    trunk_unchanged = all(
        np.array_equal(before, after)
        for before, after in zip(
            jax.tree.leaves(pretrained), jax.tree.leaves(transferred["serial_0"]), strict=True
        )
    )
    random_trunk, _ = fit_head(fresh)  # the trunk keeps its random initial weights

    raw_model = fn.nn.dense(2)
    _, raw_params, _ = raw_model.init(jax.random.key(seed + 1), split.x_train.shape)
    raw_params, _ = train(
        raw_params,
        parity_data,
        loss_fn=classifier_loss(raw_model),
        optimizer=fn.optim.adam(1e-2),
        steps=steps,
    )

    results = {
        "digit_accuracy": digit_accuracy,
        "trunk_unchanged": float(trunk_unchanged),
        "parity_pretrained_trunk": accuracy(parity_model, transferred, x_test, parity_test),
        "parity_random_trunk": accuracy(parity_model, random_trunk, x_test, parity_test),
        "parity_raw_pixels": accuracy(raw_model, raw_params, x_test, parity_test),
    }
    print(f"(b) trunk + 10-way head on all digit labels: test accuracy {digit_accuracy:.1%}")
    print(f"    linear parity head from {10 * shots} labels, {steps} steps; test accuracy on")
    print(f"      the frozen pretrained trunk  {results['parity_pretrained_trunk']:6.1%}")
    print(f"      a frozen random trunk        {results['parity_random_trunk']:6.1%}")
    print(f"      the raw pixels               {results['parity_raw_pixels']:6.1%}")
    print(f"    pretrained trunk bit-identical after training the parity head: {trunk_unchanged}")
    return results


def main(
    steps: int = 300,
    transfer_steps: int = 300,
    shots: int = 2,
    ink_weight: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Runs both parts and returns their numbers in one dict."""
    started = time.perf_counter()
    split = fn.data.digits()
    results = run_multi_task(split, steps, ink_weight, seed)
    results |= run_transfer(split, transfer_steps, shots, seed)
    print(f"{time.perf_counter() - started:.1f} s in all")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--transfer-steps", type=int, default=300)
    parser.add_argument("--shots", type=int, default=2, help="parity labels per digit class")
    parser.add_argument("--ink-weight", type=float, default=1.0, help="λ in L1 + λ·L2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(args.steps, args.transfer_steps, args.shots, args.ink_weight, args.seed)
