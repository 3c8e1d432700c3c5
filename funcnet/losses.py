"""Losses, penalties and metrics.

Every loss reduces in the same two stages. First each example (a row along the leading,
batch axis) gets one value, the mean of the loss over the example's elements:

    ℓ_i = mean_j v_ij,

where ``v_ij`` is the loss of element ``j`` of example ``i``. For the elementwise losses
(`mse`, `mae`, `huber`, `binary_cross_entropy`, `logistic_loss`, `hinge`) an element is one
entry of the prediction, so targets of shape ``(batch, d)`` average over the ``d`` outputs (or
labels of a multi-label problem). For the class losses (`softmax_cross_entropy`, `nll`,
`multiclass_hinge`) an element is one class vector: logits of shape ``(batch, classes)`` give
one value per example, ``(batch, seq, classes)`` the mean over the ``seq`` positions. Then
``reduction`` combines the ``ℓ_i`` over the batch:

- ``"mean"`` (the default): ``mean_i ℓ_i``. Every example has as many elements, so this is the
  mean over all elements, which is what PyTorch's ``reduction="mean"`` gives.
- ``"sum"``: ``Σ_i ℓ_i``. With one element per example (inputs of shape ``(batch,)``, or logits
  of shape ``(batch, classes)``) this is PyTorch's ``reduction="sum"``; with ``d`` elements per
  example it is PyTorch's sum divided by ``d``.
- ``"none"``: the vector ``ℓ`` of shape ``(batch,)``.

An input without a batch axis (a scalar for an elementwise loss, logits of shape
``(classes,)``) is one example, and every reduction returns its value, of shape ``()``.
A batch of one example thus gives ``ℓ_1`` under every reduction, which is what
`funcnet.train` relies on to weight examples.

Classification losses take logits (unnormalised log-probabilities) and compute in log space,
so they stay finite for logits of any size. Half-precision (float16, bfloat16) inputs are
computed and reduced in float32, so the loss is float32 and does not overflow; gradients flow
back in the inputs' own dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import check_finite, check_flag, check_positive, is_real
from funcnet._precision import at_least_float32
from funcnet.nn.activations import log_softmax, softplus

Array = jax.Array

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(owner: str, values: Array, reduction: str) -> Array:
    """Reduces per-element losses `values` of the loss `owner`, shape ``(batch, ...)``, by the
    module's rule.

    ``ℓ_i = mean_j values[i, j…]``, then ``mean_i ℓ_i`` ("mean"), ``Σ_i ℓ_i`` ("sum") or ``ℓ``
    of shape ``(batch,)`` ("none"). A 0-d `values` is one unbatched example, returned as is.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"{owner}: reduction must be 'mean', 'sum' or 'none', got {reduction!r:.40}"
        )
    if values.ndim == 0:
        return values
    per_example = jnp.mean(values, axis=tuple(range(1, values.ndim)))
    if reduction == "mean":
        return jnp.mean(per_example)
    if reduction == "sum":
        return jnp.sum(per_example)
    return per_example


def _check_array(name: str, what: str, x: Any) -> None:
    """Refuses an input that is neither an array (JAX's or NumPy's) nor a real number: a
    string, None, a bool, a list or a tuple, in one line naming the loss and the argument."""
    if not (isinstance(x, jax.Array | np.ndarray) or is_real(x)):
        raise TypeError(f"{name}: {what} must be an array, got {type(x).__name__} {x!r:.40}")


def _check_not_empty(name: str, what: str, x: Array) -> None:
    """Refuses an input with no elements (an empty batch, or examples of size 0): its mean
    would be NaN, far from the cause. Shapes are static, so this runs at trace time."""
    shape = jnp.shape(x)
    if shape and 0 in shape:
        fault = "an empty batch" if shape[0] == 0 else "examples with no elements"
        raise ValueError(f"{name}: got {fault} ({what} of shape {shape})")


def _check_same_shape(
    name: str, predictions: Array, targets: Array, what: str = "predictions"
) -> None:
    _check_array(name, what, predictions)
    _check_array(name, "targets" if what == "predictions" else "labels", targets)
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"{name}: predictions of shape {jnp.shape(predictions)} and targets of shape "
            f"{jnp.shape(targets)} differ; broadcasting them is refused"
        )
    _check_not_empty(name, what, predictions)


def _positive_part(v: Array) -> Array:
    """``max(v, 0)`` that keeps NaN (`jnp.maximum` may give 0 for it), with gradient 0 at 0."""
    return jnp.where(v > 0, v, jnp.where(jnp.isnan(v), v, jnp.zeros_like(v)))


def mse(predictions: Array, targets: Array, *, reduction: str = "mean") -> Array:
    """Mean squared error, per element ``v = (ŷ − y)²``.

    `predictions`, `targets`: the same shape ``(batch, ...)``. Returns a scalar, or shape
    ``(batch,)`` for "none" (module doc: per example the mean over its elements).
    """
    _check_same_shape("mse", predictions, targets)
    predictions, targets = at_least_float32(predictions), at_least_float32(targets)
    return _reduce("mse", jnp.square(predictions - targets), reduction)


def mae(predictions: Array, targets: Array, *, reduction: str = "mean") -> Array:
    """Mean absolute error, per element ``v = |ŷ − y|``.

    `predictions`, `targets`: the same shape ``(batch, ...)``. Returns a scalar, or shape
    ``(batch,)`` for "none".
    """
    _check_same_shape("mae", predictions, targets)
    predictions, targets = at_least_float32(predictions), at_least_float32(targets)
    return _reduce("mae", jnp.abs(predictions - targets), reduction)


def huber(
    predictions: Array, targets: Array, *, delta: float = 1.0, reduction: str = "mean"
) -> Array:
    """Huber loss, per element ``v = ½r²`` for ``|r| ≤ δ``, ``δ(|r| − ½δ)`` beyond; ``r = ŷ − y``.

    `predictions`, `targets`: the same shape ``(batch, ...)``. Returns a scalar, or shape
    ``(batch,)`` for "none". (PyTorch's ``huber_loss``.)
    """
    check_positive("huber", "delta", delta)
    _check_same_shape("huber", predictions, targets)
    predictions, targets = at_least_float32(predictions), at_least_float32(targets)
    r = jnp.abs(predictions - targets)
    quadratic = jnp.minimum(r, delta)
    return _reduce("huber", 0.5 * quadratic**2 + delta * (r - quadratic), reduction)


def binary_cross_entropy(logits: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Binary cross-entropy from logits, per element ``v = −y log σ(z) − (1−y) log(1−σ(z))``.

    Computed as ``softplus(z) − y·z``, finite for any logit. `logits`: shape ``(batch, ...)``;
    `labels`: 0/1 (or probabilities) of the same shape. A multi-label example of shape
    ``(batch, labels)`` counts the mean over its labels, as PyTorch's
    ``binary_cross_entropy_with_logits``. Returns a scalar, or shape ``(batch,)`` for "none".

    Labels outside ``[0, 1]`` are refused when they are concrete (outside `jit`): with the
    ±1 labels of the margin form the formula goes negative; use `logistic_loss` for those.
    """
    _check_probability_labels("binary_cross_entropy", logits, labels)
    logits, labels = at_least_float32(logits), at_least_float32(labels)
    labels = labels.astype(logits.dtype)
    return _reduce("binary_cross_entropy", softplus(logits) - labels * logits, reduction)


def logistic_loss(logits: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Logistic loss for labels ``y ∈ {−1, +1}``, per element ``v = log(1 + e^(−y·z))``.

    The margin form of logistic regression: ``σ(y·z)`` is the probability of the label, and
    ``v = softplus(−y·z)`` is finite for any logit (``≈ −y·z`` for large negative margins). It
    equals `binary_cross_entropy` with labels ``(y + 1)/2``. `logits`, `labels`: the same shape
    ``(batch, ...)``; concrete labels other than −1 and +1 are refused. Returns a scalar, or
    shape ``(batch,)`` for "none".
    """
    _check_margin_labels("logistic_loss", logits, labels, "logits")
    logits, labels = at_least_float32(logits), at_least_float32(labels)
    return _reduce("logistic_loss", softplus(-labels.astype(logits.dtype) * logits), reduction)


def _check_label_range(name: str, labels: Array, bounds: tuple[float, float], hint: str) -> None:
    """Refuses concrete `labels` outside the closed interval `bounds`; traced labels pass."""
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    low, high = bounds
    if values.size and (values.min() < low or values.max() > high):
        raise ValueError(
            f"{name}: labels must lie in [{low}, {high}]; got values in "
            f"[{values.min()}, {values.max()}] ({hint})"
        )


def _check_sign_labels(name: str, labels: Array) -> None:
    """Refuses concrete `labels` other than −1 and +1; traced labels pass."""
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    if values.size and not np.all(np.abs(values) == 1):
        raise ValueError(
            f"{name}: labels must be −1 or +1; got values in [{values.min()}, {values.max()}] "
            f"(use binary_cross_entropy for 0/1 labels)"
        )


def _check_probability_labels(name: str, logits: Array, labels: Array) -> None:
    _check_same_shape(name, logits, labels, "logits")
    _check_label_range(name, labels, (0, 1), "use logistic_loss for ±1 labels")


def _check_margin_labels(name: str, scores: Array, labels: Array, what: str) -> None:
    _check_same_shape(name, scores, labels, what)
    _check_sign_labels(name, labels)


def _check_labels(
    name: str, logits: Array, labels: Array, *, one_hot: bool = True, what: str = "logits"
) -> None:
    """Refuses labels that are neither integer classes of shape ``logits.shape[:-1]`` nor (where
    `one_hot`) vectors of the logits' shape."""
    _check_array(name, what, logits)
    _check_array(name, "labels", labels)
    logits, labels = _with_shape(logits), _with_shape(labels)
    if logits.ndim == 0:
        raise ValueError(f"{name}: {what} need a class axis, got a scalar")
    _check_not_empty(name, what, logits)
    if labels.ndim == logits.ndim:
        if not one_hot:
            raise ValueError(
                f"{name}: labels must be integer classes of shape {logits.shape[:-1]} for logits "
                f"of shape {logits.shape}; got labels of shape {labels.shape} and dtype "
                f"{labels.dtype}, one-hot or probability labels are not accepted (pass "
                f"argmax(labels, axis=-1))"
            )
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


def _with_shape(x: Any) -> Any:
    """`x`, or a Python number as a NumPy array (which has a shape and a dtype)."""
    return x if isinstance(x, jax.Array | np.ndarray) else np.asarray(x)


def _pick(values: Array, labels: Array) -> Array:
    """``values[..., labels]`` for integer labels, NaN where a label lies outside
    ``[0, classes)`` (a traced label cannot be refused, and a negative one would otherwise
    wrap around to a class from the end)."""
    classes = values.shape[-1]
    inside = (labels >= 0) & (labels < classes)
    index = jnp.where(inside, labels, 0)[..., None].astype(jnp.int32)
    picked = jnp.take_along_axis(values, index, axis=-1)[..., 0]
    return jnp.where(inside, picked, jnp.nan)


def _log_probs_of_labels(log_probs: Array, labels: Array) -> Array:
    if labels.ndim == log_probs.ndim:
        return jnp.sum(labels.astype(log_probs.dtype) * log_probs, axis=-1)
    return _pick(log_probs, labels)


def softmax_cross_entropy(logits: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Cross-entropy of a softmax over the last axis, per class vector
    ``v = −Σ_c y_c log softmax(z)_c``.

    `logits`: shape ``(batch, ..., classes)``. `labels`: integer classes of shape
    ``(batch, ...)``, or one-hot (or probability) vectors of the logits' shape. ``log softmax``
    is computed with the log-sum-exp shift, so any finite logits give a finite loss. Returns a
    scalar, or shape ``(batch,)`` for "none" (positions in ``...`` are averaged per example).

    Concrete integer labels outside ``[0, classes)`` (outside `jit`) are refused with a
    ValueError, and labels that are not integers nor one-hot with a TypeError. Under `jit` the
    labels are traced: their values cannot be read without a round trip to the host, so they
    are not checked there, and an example whose label lies outside ``[0, classes)``, a negative
    one included, gets a NaN loss (never another class's), which makes the mean NaN.
    `funcnet.train.fit`, `make_evaluate` and `make_step` check concrete data on the host before
    their compiled code runs (see `label_check`); to raise inside your own jitted code, wrap it
    in ``jax.experimental.checkify.checkify(f, errors=checkify.float_checks)``.
    """
    _check_labels("softmax_cross_entropy", logits, labels)
    logits, labels = at_least_float32(logits), at_least_float32(labels)
    return _reduce(
        "softmax_cross_entropy", -_log_probs_of_labels(log_softmax(logits), labels), reduction
    )


def nll(log_probs: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Negative log-likelihood of log-probabilities, per class vector ``v = −Σ_c y_c log p_c``
    (``−log p_y`` for an integer label `y`).

    `log_probs`: shape ``(batch, ..., classes)``, e.g. from `log_softmax`; `labels` as for
    `softmax_cross_entropy`, checked the same way (a NaN loss for a label out of range under
    `jit`). Returns a scalar, or shape ``(batch,)`` for "none".
    """
    _check_labels("nll", log_probs, labels, what="log_probs")
    log_probs, labels = at_least_float32(log_probs), at_least_float32(labels)
    return _reduce("nll", -_log_probs_of_labels(log_probs, labels), reduction)


def hinge(scores: Array, labels: Array, *, reduction: str = "mean") -> Array:
    """Binary hinge loss, per element ``v = max(0, 1 − y·s)`` with labels ``y ∈ {−1, +1}``.

    `scores`, `labels`: the same shape ``(batch, ...)``; concrete labels other than −1 and +1
    are refused. Returns a scalar, or shape ``(batch,)`` for "none".
    """
    _check_margin_labels("hinge", scores, labels, "scores")
    scores, labels = at_least_float32(scores), at_least_float32(labels)
    return _reduce("hinge", _positive_part(1.0 - labels.astype(scores.dtype) * scores), reduction)


def multiclass_hinge(
    scores: Array, labels: Array, *, margin: float = 1.0, reduction: str = "mean"
) -> Array:
    """Multi-class hinge, per class vector ``v = (1/C) Σ_{c≠y} max(0, margin − s_y + s_c)``
    (PyTorch's ``multi_margin_loss``).

    `scores`: shape ``(batch, ..., classes)``; `labels`: integer classes of shape
    ``(batch, ...)`` (one-hot labels are refused), checked as in `softmax_cross_entropy` (a
    NaN loss for a label out of range under `jit`). Returns a scalar, or shape ``(batch,)`` for
    "none".
    """
    check_finite("multiclass_hinge", "margin", margin)
    if np.ndim(margin) != 0:
        raise ValueError(f"multiclass_hinge: margin must be one number, got {margin!r:.40}")
    _check_labels("multiclass_hinge", scores, labels, one_hot=False, what="scores")
    scores = at_least_float32(scores)
    true = _pick(scores, labels)[..., None]
    margins = _positive_part(margin - true + scores)
    margins = jnp.where(jax.nn.one_hot(labels, scores.shape[-1], dtype=bool), 0.0, margins)
    return _reduce("multiclass_hinge", jnp.mean(margins, axis=-1), reduction)


def l1_penalty(params: Any, *, biases: bool = True) -> Array:
    """``‖θ‖₁ = Σ |θ_i|`` over the leaves of a params pytree; ``biases=False`` leaves out
    the leaves with fewer than two dimensions, as `l2_penalty`."""
    return sum(
        (jnp.sum(jnp.abs(leaf)) for leaf in _penalised("l1_penalty", params, biases)), jnp.zeros(())
    )


def l2_penalty(params: Any, *, biases: bool = True) -> Array:
    """``½‖θ‖₂² = ½ Σ θ_i²`` over the leaves of a params pytree.

    The ½ makes the gradient ``θ`` itself, so adding ``λ·l2_penalty`` to a loss is the weight
    decay ``θ ← θ − αλθ`` of SGD (`funcnet.optim.sgd(weight_decay=λ)` adds the same ``λθ``).
    With ``biases=False`` the leaves with fewer than two dimensions (biases, and the scales
    and offsets of norm layers) are left out, as the lecture's ``½λ Σ_l ‖W_l‖²`` does: they
    do not multiply the input, so shrinking them does not make the function smoother.
    """
    return 0.5 * sum(
        (jnp.sum(jnp.square(leaf)) for leaf in _penalised("l2_penalty", params, biases)),
        jnp.zeros(()),
    )


def _penalised(owner: str, params: Any, biases: bool) -> list[Array]:
    """The leaves the penalty `owner` counts: all, or (``biases=False``) those of two
    dimensions or more; half precision in float32, where the sum of squares does not
    overflow."""
    biases = check_flag(owner, "biases", biases)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        _check_array(owner, f"params{jax.tree_util.keystr(path)}", leaf)
    return [
        at_least_float32(leaf) for leaf in jax.tree.leaves(params) if biases or jnp.ndim(leaf) >= 2
    ]


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of examples whose arg-max class equals the label (integer or one-hot)."""
    _check_array("accuracy", "logits", logits)
    _check_array("accuracy", "labels", labels)
    logits, labels = _with_shape(logits), _with_shape(labels)
    _check_not_empty("accuracy", "logits", logits)
    if labels.ndim == logits.ndim:
        labels = jnp.argmax(labels, axis=-1)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"accuracy: labels of shape {labels.shape} do not match logits of shape {logits.shape}"
        )
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


_LABEL_CHECKS: dict[Callable[..., Array], Callable[[Any, Any], None]] = {
    softmax_cross_entropy: functools.partial(_check_labels, "softmax_cross_entropy"),
    nll: functools.partial(_check_labels, "nll", what="log_probs"),
    multiclass_hinge: functools.partial(
        _check_labels, "multiclass_hinge", one_hot=False, what="scores"
    ),
    binary_cross_entropy: functools.partial(_check_probability_labels, "binary_cross_entropy"),
    logistic_loss: functools.partial(_check_margin_labels, "logistic_loss", what="logits"),
    hinge: functools.partial(_check_margin_labels, "hinge", what="scores"),
}


def label_check(loss_fn: Callable[..., Array]) -> Callable[[Any, Any], None] | None:
    """The checks `loss_fn` makes of its labels, as ``check(outputs, labels)``, or None.

    For the losses of this module that constrain their labels (`softmax_cross_entropy`,
    `nll`, `multiclass_hinge`: integer classes in ``[0, classes)`` or one-hot vectors;
    `binary_cross_entropy`: values in [0, 1]; `logistic_loss`, `hinge`: ±1), also wrapped in
    `functools.partial` or `jax.jit`, the check raises what the loss itself raises on concrete
    labels; any other function gives None. `outputs` only needs the outputs' shape: a
    zero-strided ``np.broadcast_to(np.float32(0), shape)`` will do, so a whole data set's labels
    are checked without computing a loss. `funcnet.train` calls it on the host before
    compiling, where the labels inside the compiled code are traced and cannot be checked.
    """
    while True:
        if isinstance(loss_fn, functools.partial):
            loss_fn = loss_fn.func
        elif hasattr(loss_fn, "__wrapped__"):
            loss_fn = loss_fn.__wrapped__
        else:
            break
    try:
        return _LABEL_CHECKS.get(loss_fn)
    except TypeError:  # an unhashable callable is none of these losses
        return None
