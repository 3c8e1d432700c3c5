"""Losses, penalties and metrics.

Losses take a batch of predictions and targets and reduce over the batch: ``reduction`` is
``"mean"`` (the default), ``"sum"`` or ``"none"`` (one value per example). Classification
losses take logits (unnormalised log-probabilities) and compute in log space, so they stay
finite for logits of any size. Half-precision (float16, bfloat16) inputs are computed and
reduced in float32, so the loss is float32 and does not overflow; gradients flow back in
the inputs' own dtype.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._precision import at_least_float32
from funcnet.nn.activations import log_softmax, softplus

Array = jax.Array


def _reduce(values: Array, reduction: str) -> Array:
    if reduction == "mean":
        return jnp.mean(values)
    if reduction == "sum":
        return jnp.sum(values)
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _check_same_shape(name: str, predictions: Array, targets: Array) -> None:
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"{name}: predictions of shape {jnp.shape(predictions)} and targets of shape "
            f"{jnp.shape(targets)} differ; broadcasting them is refused"
        )


def _per_example(values: Array) -> Array:
    """Sums a per-element loss over all but the batch axis."""
    return jnp.sum(values, axis=tuple(range(1, values.ndim))) if values.ndim > 1 else values


def mse(predictions: Array, targets: Array, reduction: str = "mean") -> Array:
    """Mean squared error ``mean_i (ŷ_i − y_i)²`` over all elements (per example for "none")."""
    _check_same_shape("mse", predictions, targets)
    predictions, targets = at_least_float32(predictions), at_least_float32(targets)
    sq = jnp.square(predictions - targets)
    if reduction == "none":
        return jnp.mean(sq.reshape(sq.shape[0], -1), axis=1) if sq.ndim > 1 else sq
    return _reduce(sq, reduction)


def mae(predictions: Array, targets: Array, reduction: str = "mean") -> Array:
    """Mean absolute error ``mean_i |ŷ_i − y_i|`` over all elements (per example for "none")."""
    _check_same_shape("mae", predictions, targets)
    predictions, targets = at_least_float32(predictions), at_least_float32(targets)
    err = jnp.abs(predictions - targets)
    if reduction == "none":
        return jnp.mean(err.reshape(err.shape[0], -1), axis=1) if err.ndim > 1 else err
    return _reduce(err, reduction)


def huber(predictions: Array, targets: Array, delta: float = 1.0, reduction: str = "mean") -> Array:
    """Huber loss: ``½r²`` for ``|r| ≤ δ``, ``δ(|r| − ½δ)`` beyond, with ``r = ŷ − y``."""
    _check_same_shape("huber", predictions, targets)
    predictions, targets = at_least_float32(predictions), at_least_float32(targets)
    r = jnp.abs(predictions - targets)
    quadratic = jnp.minimum(r, delta)
    values = 0.5 * quadratic**2 + delta * (r - quadratic)
    if reduction == "none":
        return jnp.mean(values.reshape(values.shape[0], -1), axis=1) if values.ndim > 1 else values
    return _reduce(values, reduction)


def binary_cross_entropy(logits: Array, labels: Array, reduction: str = "mean") -> Array:
    """Binary cross-entropy from logits, ``−y log σ(z) − (1−y) log(1−σ(z))``.

    Computed as ``softplus(z) − y·z``, finite for any logit. `labels` are 0/1 (or
    probabilities) of the logits' shape; per-example values sum over non-batch axes.
    """
    _check_same_shape("binary_cross_entropy", logits, labels)
    logits, labels = at_least_float32(logits), at_least_float32(labels)
    labels = labels.astype(logits.dtype)
    return _reduce(_per_example(softplus(logits) - labels * logits), reduction)


def _check_labels(name: str, logits: Array, labels: Array) -> None:
    if labels.ndim == logits.ndim:
        if labels.shape != logits.shape:
            raise ValueError(
                f"{name}: one-hot labels of shape {labels.shape} do not match logits of shape "
                f"{logits.shape}"
            )
        return
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{name}: integer labels of shape {labels.shape} do not match logits of shape "
            f"{logits.shape} (expected labels of shape {logits.shape[:-1]})"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: class labels must be integers, got dtype {labels.dtype}")
    if not isinstance(labels, jax.core.Tracer):
        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= logits.shape[-1]):
            raise ValueError(
                f"{name}: labels must lie in [0, {logits.shape[-1]}) for logits with "
                f"{logits.shape[-1]} classes; got values in [{values.min()}, {values.max()}]"
            )


def _log_probs_of_labels(log_probs: Array, labels: Array) -> Array:
    if labels.ndim == log_probs.ndim:
        return jnp.sum(labels.astype(log_probs.dtype) * log_probs, axis=-1)
    return jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]


def softmax_cross_entropy(logits: Array, labels: Array, reduction: str = "mean") -> Array:
    """Cross-entropy of a softmax over the last axis: ``−Σ_c y_c log softmax(z)_c``.

    `logits`: shape ``(..., classes)``. `labels`: integer classes of shape ``(...)``, or one-hot
    (or probability) vectors of the logits' shape. ``log softmax`` is computed with the
    log-sum-exp shift, so any finite logits give a finite loss.
    """
    _check_labels("softmax_cross_entropy", logits, labels)
    logits, labels = at_least_float32(logits), at_least_float32(labels)
    return _reduce(-_log_probs_of_labels(log_softmax(logits), labels), reduction)


def nll(log_probs: Array, labels: Array, reduction: str = "mean") -> Array:
    """Negative log-likelihood ``−log p_y`` of log-probabilities (e.g. from `log_softmax`)."""
    _check_labels("nll", log_probs, labels)
    log_probs, labels = at_least_float32(log_probs), at_least_float32(labels)
    return _reduce(-_log_probs_of_labels(log_probs, labels), reduction)


def hinge(scores: Array, labels: Array, reduction: str = "mean") -> Array:
    """Binary hinge loss ``max(0, 1 − y·s)`` with labels ``y ∈ {−1, +1}``."""
    _check_same_shape("hinge", scores, labels)
    scores, labels = at_least_float32(scores), at_least_float32(labels)
    values = jnp.maximum(0.0, 1.0 - labels.astype(scores.dtype) * scores)
    return _reduce(_per_example(values), reduction)


def multiclass_hinge(
    scores: Array, labels: Array, margin: float = 1.0, reduction: str = "mean"
) -> Array:
    """Multi-class hinge ``(1/C) Σ_{c≠y} max(0, margin − s_y + s_c)`` (PyTorch's MultiMargin).

    `scores`: shape ``(batch, classes)``; `labels`: integer classes of shape ``(batch,)``.
    """
    _check_labels("multiclass_hinge", scores, labels)
    scores, labels = at_least_float32(scores), at_least_float32(labels)
    true = jnp.take_along_axis(scores, labels[..., None], axis=-1)
    margins = jnp.maximum(0.0, margin - true + scores)
    margins = jnp.where(jax.nn.one_hot(labels, scores.shape[-1], dtype=bool), 0.0, margins)
    return _reduce(jnp.mean(margins, axis=-1), reduction)


def l1_penalty(params: Any) -> Array:
    """``‖θ‖₁ = Σ |θ_i|`` over every leaf of a params pytree."""
    return sum(jnp.sum(jnp.abs(leaf)) for leaf in jax.tree.leaves(params))


def l2_penalty(params: Any) -> Array:
    """``½‖θ‖₂² = ½ Σ θ_i²`` over every leaf of a params pytree (its gradient is ``θ``)."""
    return 0.5 * sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(params))


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of examples whose arg-max class equals the label (integer or one-hot)."""
    if labels.ndim == logits.ndim:
        labels = jnp.argmax(labels, axis=-1)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"accuracy: labels of shape {labels.shape} do not match logits of shape {logits.shape}"
        )
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
