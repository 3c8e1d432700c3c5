"""One training step and the evaluation of a data set, as pure functions and their jits.

A batch is ``(x, y)`` or ``(x, y, w)``: inputs, labels and optionally per-example weights
``w`` of shape ``(batch,)``. Without weights the loss is ``loss_fn(outputs, y)``. With weights
the loss and metrics are the weighted means

    L = Σᵢ wᵢ ℓ(outputs_i, y_i) / Σᵢ wᵢ,

where ``ℓ(o, t) = loss_fn(o[None], t[None])`` is the loss of a batch of one example. This is
how a padded batch (filler rows with ``w = 0``) gives the mean over its real rows; it needs a
`loss_fn` that is a mean over examples, as every loss in `funcnet.losses` is by default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh

from funcnet._checks import check_flag, check_function, check_int
from funcnet._trees import is_shape
from funcnet.losses import accuracy, label_check
from funcnet.nn.core import Layer
from funcnet.optim import (
    ApplyIfFiniteState,
    GradientTransformation,
    accepts_extra_args,
    alias,
    apply_updates,
    global_norm,
)
from funcnet.optim.base import is_transformation
from funcnet.train.batching import batch_plan, check_data, data_size, take
from funcnet.train.ema import update_ema
from funcnet.train.loss_scale import adjust, all_finite, scale_loss, unscale_grads
from funcnet.train.partition import Rules, as_rules, constrain
from funcnet.train.sharding import batch_sharding, check_mesh
from funcnet.train.state import TrainState, check_model, check_opt_state, step_key

__all__ = [
    "eval_step",
    "make_evaluate",
    "make_step",
    "optimizer_key",
    "train_step",
]

Array = jax.Array
PyTree = Any
LossFn = Callable[[Array, Array], Array]
MetricFn = Callable[[Array, Array], Array]
Metrics = Mapping[str, MetricFn]
# The names a step reports besides the caller's metrics (`make_step`'s docstring).
_REPORTED = ("loss", "grad_norm", "finite", "fatal")
Batch = tuple[Any, Array] | tuple[Any, Array, Array]


def default_metrics(outputs: Array, labels: Array) -> dict[str, MetricFn]:
    """``{"accuracy": accuracy}`` for class logits with integer labels, ``{}`` otherwise."""
    classes = (
        jnp.ndim(outputs) == jnp.ndim(labels) + 1
        and jnp.ndim(outputs) >= 2
        and jnp.issubdtype(jnp.result_type(labels), jnp.integer)
    )
    return {"accuracy": accuracy} if classes else {}


def unpack(batch: Batch) -> tuple[Any, Array, Array | None]:
    """``(x, y, w)`` of a batch, ``w = None`` when the batch carries no weights."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError(
            "a batch must be (x, y) or (x, y, weights), got "
            + (f"a sequence of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + (type(batch).__name__ if not isinstance(batch, (tuple, list)) else "")
        )
    x, y, *rest = batch
    return x, y, (rest[0] if rest else None)


def check_not_empty(where: str, what: str, data: Any) -> None:
    """Refuses a batch or data set ``(x, y, ...)`` whose leaves have 0 rows, naming `where`
    and the shape: a mean over no examples is NaN (weighted, silently 0). Shapes are static, so
    this runs at trace time."""
    for name, part in zip(("x", "y", "weights"), data, strict=False):
        for leaf in jax.tree.leaves(part):
            shape = tuple(jnp.shape(leaf))
            if shape and shape[0] == 0:
                raise ValueError(
                    f"{where}: got {what} of 0 rows ({name} of shape {shape}); "
                    "pass at least one example"
                )


def batch_metrics(
    loss_fn: LossFn, metrics: Metrics | None, outputs: Array, labels: Array, weights: Array | None
) -> tuple[Array, dict[str, Array]]:
    """The loss and the metrics of one batch, weighted by `weights` when given (module doc)."""
    fns = default_metrics(outputs, labels) if metrics is None else dict(metrics)
    if weights is None:
        return loss_fn(outputs, labels), {name: fn(outputs, labels) for name, fn in fns.items()}

    def weighted_mean(fn: Callable[[Array, Array], Array]) -> Array:
        values = jax.vmap(lambda o, t: fn(o[None], t[None]))(outputs, labels)
        w = weights.astype(values.dtype)
        total = jnp.sum(w)
        return jnp.sum(w * values) / jnp.where(total > 0, total, 1)

    return weighted_mean(loss_fn), {name: weighted_mean(fn) for name, fn in fns.items()}


def check_metrics(where: str, metrics: Any) -> None:
    """Refuses `metrics` that are neither None nor a mapping of names to functions
    ``fn(outputs, labels)``, and a name the step reports itself (``loss``, ``grad_norm``,
    ``finite``, ``fatal``), in one line naming `where`."""
    if metrics is None:
        return
    if not isinstance(metrics, Mapping):
        raise TypeError(
            f"{where}: metrics must be a dict {{name: fn(outputs, labels) -> scalar}} or None, "
            f"got {type(metrics).__name__} {metrics!r:.40}"
        )
    for name, fn in metrics.items():
        if not isinstance(name, str) or name in _REPORTED:
            raise ValueError(
                f"{where}: metrics names must be strings other than {', '.join(_REPORTED)}, "
                f"got {name!r:.40}"
            )
        check_function(where, f"metrics[{name!r}]", fn)


def check_optimizer(where: str, optimizer: Any, *, factory: bool = False) -> None:
    """Refuses an `optimizer` that is not a gradient transformation (anything with callable
    `init` and `update`, optax's included), or with `factory` a function returning one, in
    one line naming `where`; a name (``"adam"``) or a constructor not called is told how to
    make one."""
    if is_transformation(optimizer) or (factory and callable(optimizer)):
        return
    wanted = "a gradient transformation (with init and update)"
    if isinstance(optimizer, str):
        name = optimizer.strip().lower()
        name = name if name in alias.__all__ else "adam"
        raise TypeError(
            f"{where}: optimizer must be {wanted}, got the string {optimizer!r:.40}; "
            f"make one, e.g. funcnet.optim.{name}(1e-3)"
        )
    if callable(optimizer):
        name = getattr(optimizer, "__name__", type(optimizer).__name__)
        package = getattr(optimizer, "__module__", None) or ""
        if package.startswith(("funcnet.optim", "optax")):
            name = f"{'funcnet.optim' if package.startswith('funcnet') else 'optax'}.{name}"
        raise TypeError(
            f"{where}: optimizer must be {wanted}, got the function {name}; call it to make "
            f"one, e.g. {name}(1e-3)"
        )
    raise TypeError(f"{where}: optimizer must be {wanted}, got {type(optimizer).__name__}")


def per_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(model, *args)` remembered for the last 64 hashable ``(model, *args)``, as the
    compiled epoch is: a layer's functions are pure, so what a trace of them gives depends
    on nothing else. An unhashable model or argument is traced every time."""
    remembered = functools.lru_cache(maxsize=64)(fn)

    @functools.wraps(fn)
    def call(model: Layer, *args: Any) -> Any:
        try:
            hash((model, args))
        except TypeError:
            return fn(model, *args)
        return remembered(model, *args)

    return call


def frozen_shape(in_shape: Any) -> tuple:
    """`in_shape`, a shape or a pytree of shapes, as a hashable ``(treedef, shapes)``."""
    leaves, treedef = jax.tree.flatten(in_shape, is_leaf=is_shape)
    return treedef, tuple(tuple(leaf) for leaf in leaves)


def output_shape_of_init(model: Layer, in_shape: Any) -> Any:
    """The output shape ``model.init(key, in_shape)`` gives, traced abstractly (no params
    are made) once per model and input shape."""
    return _output_shape_of_init(model, *frozen_shape(in_shape))


@per_model
def _output_shape_of_init(model: Layer, treedef: Any, shapes: tuple) -> Any:
    shapes_out = []

    def init(key):
        out_shape, params, state = model.init(key, jax.tree.unflatten(treedef, shapes))
        shapes_out.append(out_shape)
        return params, state

    jax.eval_shape(init, jax.random.key(0))
    return shapes_out[0]


def output_shape_of_apply(model: Layer, params: PyTree, model_state: PyTree, x: Any) -> Any:
    """The shape of ``model.apply(params, model_state, x, train=False)``'s output (a tree of
    shapes for several outputs), traced abstractly."""
    out = jax.eval_shape(
        lambda p, s, x: model.apply(p, s, x, train=False)[0], params, model_state, x
    )
    return jax.tree.map(lambda leaf: tuple(leaf.shape), out)


def _signature(tree: PyTree) -> tuple:
    """What an output shape depends on besides the params: the tree, shapes and dtypes."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((jnp.shape(leaf), jnp.result_type(leaf)) for leaf in leaves)


def check_labels(
    where: str,
    loss_fn: LossFn,
    labelled: Mapping[str, Any],
    output_shape: Callable[[], Any],
) -> None:
    """Refuses labels `loss_fn` would refuse (`funcnet.losses.label_check`), on the host.

    `labelled` maps names (``"train_data"``) to label arrays; traced ones are skipped, since
    their values cannot be read. `output_shape()` gives the model's output shape for a batch,
    and is called only when there is something to check. The error is the loss's own, one
    line prefixed with `where` and the name.
    """
    check = label_check(loss_fn)
    if check is None:
        return
    concrete = {
        name: np.asarray(labels)
        for name, labels in labelled.items()
        if isinstance(labels, np.ndarray | jax.Array) and not isinstance(labels, jax.core.Tracer)
    }
    if not concrete:
        return
    shape = output_shape()
    if not (isinstance(shape, tuple) and shape and all(isinstance(d, int) for d in shape)):
        return  # a model of several outputs: not a loss of this kind's input
    for name, labels in concrete.items():
        rows = labels.shape[:1] if labels.ndim else ()
        outputs = np.broadcast_to(np.zeros((), np.float32), (*rows, *shape[1:]))
        try:
            check(outputs, labels)
        except (TypeError, ValueError) as err:
            kind = TypeError if isinstance(err, TypeError) else ValueError
            raise kind(f"{where}: {name} y: {err}") from None


_OPTIMIZER_STREAM = 2**32 - 1


def optimizer_key(state: TrainState) -> jax.Array:
    """The key handed to the optimizer (extra arg `key`) in the step `state.step` takes:
    ``fold_in(step_key(state), 2³² − 1)``.

    Derived from the model's key of the same step, with a number no combinator folds in (they
    fold in small layer indices), so it is fresh at every step and shared with no layer, and
    it differs from every `shuffle_key`.
    """
    return jax.random.fold_in(step_key(state), _OPTIMIZER_STREAM)


def _micro_batches(batch: tuple[Any, Array, Array | None], count: int) -> tuple:
    """The batch ``(x, y, w)`` as `count` micro-batches on a new leading axis: micro-batch
    ``m`` holds rows ``m, m + count, m + 2·count, …``.

    Strided rather than contiguous, so that when the rows are laid out over devices every
    micro-batch keeps the same share of rows on each device.
    """

    def split(leaf: Array) -> Array:
        rows = leaf.shape[0]
        parts = leaf.reshape(rows // count, count, *leaf.shape[1:])
        return jnp.swapaxes(parts, 0, 1)

    return jax.tree.map(split, batch)


def check_accumulate(accumulate: Any, batch_size: int | None = None) -> int:
    """`accumulate` as an int once checked to be a positive integer dividing `batch_size`."""
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(
            f"accumulate must be a positive integer (micro-batches per step), got {accumulate!r}"
        )
    if batch_size is not None and batch_size % accumulate:
        raise ValueError(
            f"accumulate={accumulate} does not divide the batch of {batch_size} rows into "
            "equal micro-batches; choose a batch size that is a multiple of it"
        )
    return accumulate


def train_step(
    model: Layer,
    optimizer: GradientTransformation,
    *,
    loss_fn: LossFn,
    metrics: Metrics | None = None,
    grad_norm: bool = False,
    skip_nonfinite: int | None = None,
    accumulate: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """The pure (unjitted) training step that `make_step` jits and `fit` scans; see there.

    With `skip_nonfinite` set to ``m`` the optimizer must be ``apply_if_finite(·, m)``
    outermost (as `build_optimizer` makes it): the optimizer decides whether a step's update
    is applied, and the step makes the model state follow it. With a loss scale in the state
    the step itself skips a step whose gradient is not finite (`loss_scale` module). Either
    way the step also reports ``finite`` (the loss and the update were finite; when not, the
    step was skipped) and ``fatal`` (a non-finite step that cannot be skipped: after ``m``
    skipped in a row, or, with loss scaling, a non-finite loss or a non-finite gradient at
    the smallest scale), which are flags for the epoch, not metrics.

    With `accumulate` = k > 1 the batch is cut into k micro-batches (rows ``m, m + k, …``),
    each one's gradient taken in turn in a `lax.scan` (so only one micro-batch's activations
    are alive at a time) and combined into the gradient of the whole batch, weighted by rows;
    the optimizer then takes one step. Batch-norm statistics are those of each micro-batch,
    the running statistics updated once per micro-batch, as in PyTorch; micro-batch ``m``
    draws its random numbers from ``fold_in(step_key(state), m)``.

    An optimizer that takes extra args (`funcnet.optim.accepts_extra_args`) gets them as
    keywords of its `update`: `value`, `grad`, `value_fn`, `outputs_fn`, `loss_of_outputs`
    (see `funcnet.optim.GradientTransformationExtraArgs`) and `key` (`optimizer_key`). Any
    other optimizer is called as ``update(g, opt_state, θ)``, and its step is the same program
    as without this feature.
    """
    check_optimizer("train_step", optimizer)
    check_function("train_step", "loss_fn", loss_fn)
    check_metrics("train_step", metrics)
    extra_args = accepts_extra_args(optimizer)
    accumulate = check_accumulate(accumulate)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        check_opt_state(optimizer, state.params, state.opt_state)  # at trace time only
        if skip_nonfinite is not None and not isinstance(state.opt_state, ApplyIfFiniteState):
            raise TypeError(
                "skipping non-finite steps needs the optimizer wrapped in "
                "funcnet.optim.apply_if_finite outermost (see funcnet.train.build_optimizer), "
                f"got an optimizer state of type {type(state.opt_state).__name__}"
            )
        scale = state.loss_scale
        if scale is not None and skip_nonfinite is not None:
            raise ValueError(
                "loss scaling skips the steps whose gradient is not finite itself; use it with "
                "on_nonfinite='raise', not 'skip'"
            )
        x, y, w = unpack(batch)
        check_not_empty("make_step", "a batch", batch)
        if accumulate > 1:
            check_accumulate(accumulate, jax.tree.leaves(x)[0].shape[0])

        def objective(params, model_state, x, y, w, key):
            outputs, model_state = model.apply(params, model_state, x, key=key, train=True)
            loss, values = batch_metrics(loss_fn, metrics, outputs, y, w)
            scaled = loss if scale is None else scale_loss(scale, loss)
            return scaled, (model_state, values, loss)

        gradient = jax.value_and_grad(objective, has_aux=True)
        if accumulate == 1:
            (_, (model_state, values, loss)), grads = gradient(
                state.params, state.model_state, x, y, w, step_key(state)
            )
        else:
            grads, model_state, values, loss = _accumulated_gradient(
                gradient, state, (x, y, w), accumulate
            )
        if scale is not None:
            grads = unscale_grads(scale, grads)
            grads_finite = all_finite(grads)
        if extra_args:

            def outputs_fn(params):
                return model.apply(params, state.model_state, x, key=step_key(state), train=True)[0]

            def loss_of_outputs(outputs):
                return batch_metrics(loss_fn, {}, outputs, y, w)[0]

            updates, opt_state = optimizer.update(
                grads,
                state.opt_state,
                state.params,
                value=loss,
                grad=grads,
                value_fn=lambda params: loss_of_outputs(outputs_fn(params)),
                outputs_fn=outputs_fn,
                loss_of_outputs=loss_of_outputs,
                key=optimizer_key(state),
            )
        else:
            updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        values = {"loss": loss, **values}
        params = apply_updates(state.params, updates)
        if skip_nonfinite is not None:
            finite = opt_state.last_finite & jnp.isfinite(loss)
            model_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), model_state, state.model_state
            )
            values["finite"] = finite
            values["fatal"] = ~finite & (opt_state.notfinite_count > skip_nonfinite)
        if scale is not None:
            finite = grads_finite & jnp.isfinite(loss)
            params, opt_state, model_state = _keep_if(
                finite,
                (params, opt_state, model_state),
                (state.params, state.opt_state, state.model_state),
            )
            values["finite"] = finite
            values["fatal"] = ~jnp.isfinite(loss) | (
                ~grads_finite & (scale.scale <= scale.min_scale)
            )
            scale = adjust(scale, grads_finite)
        ema = state.ema
        if ema is not None:
            moved = update_ema(ema, params)
            ema = moved if "finite" not in values else _keep_if(values["finite"], moved, ema)
        new_state = TrainState(
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            step=(state.step + 1).astype(jnp.int32),
            key=state.key,
            ema=ema,
            loss_scale=scale,
        )
        if grad_norm:
            values["grad_norm"] = global_norm(grads)
        return new_state, values

    return step


def _keep_if(keep: Array, new: PyTree, old: PyTree) -> PyTree:
    """`new` where the bool scalar `keep` holds, else `old`, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, old)


def _accumulated_gradient(
    gradient: Callable[..., Any], state: TrainState, batch: tuple, count: int
) -> tuple[PyTree, PyTree, dict[str, Array], Array]:
    """The gradient, model state, metrics and loss of a batch taken over `count` micro-batches
    (see `train_step`): each micro-batch's contribution weighted by its share of the rows
    (of the weights, for a weighted batch), which makes the result the whole batch's."""
    x, y, w = batch
    micro = _micro_batches((x, y, w), count)
    wide = jnp.result_type(float)  # float64 under jax_enable_x64, else float32
    if w is None:
        shares = jnp.full((count,), 1.0 / count, wide)
    else:
        per_micro = jnp.sum(micro[2].astype(jnp.promote_types(micro[2].dtype, wide)), axis=1)
        total = jnp.sum(per_micro)
        shares = per_micro / jnp.where(total > 0, total, 1.0)
    key = step_key(state)

    def body(carry, inputs):
        grads, model_state, values, loss = carry
        m, (xm, ym, wm), share = inputs
        (_, (model_state, values_m, loss_m)), grads_m = gradient(
            state.params, model_state, xm, ym, wm, jax.random.fold_in(key, m)
        )

        def add(total, part):
            return total + share.astype(part.dtype) * part

        return (
            jax.tree.map(add, grads, grads_m),
            model_state,
            jax.tree.map(add, values, values_m),
            add(loss, loss_m),
        ), None

    first = jax.tree.map(lambda leaf: leaf[0], micro)
    _, (_, values_0, loss_0) = jax.eval_shape(
        lambda: gradient(state.params, state.model_state, *first, key)[0]
    )
    zeros = functools.partial(jax.tree.map, lambda s: jnp.zeros(s.shape, s.dtype))
    carry = (
        jax.tree.map(jnp.zeros_like, state.params),
        state.model_state,
        zeros(values_0),
        zeros(loss_0),
    )
    steps = (jnp.arange(count, dtype=jnp.uint32), micro, shares)
    (grads, model_state, values, loss), _ = lax.scan(body, carry, steps)
    return grads, model_state, values, loss


def make_step(
    model: Layer,
    optimizer: GradientTransformation,
    *,
    loss_fn: LossFn,
    metrics: Metrics | None = None,
    grad_norm: bool = False,
    accumulate: int = 1,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, Array]]]:
    """A jitted training step ``step(train_state, batch) -> (train_state, metrics)``.

    One step of gradient descent on ``L(θ) = loss_fn(model(θ, x), y)``::

        k       ← fold_in(key, 2·step)                    (`step_key`; the key itself is kept)
        outputs ← model.apply(θ, model_state, x, key=k, train=True)
        g       ← ∇_θ L
        u, s    ← optimizer.update(g, opt_state, θ);   θ ← θ + u;   step ← step + 1

    An optimizer that needs more than `g` (`funcnet.optim.sophia`, `adahessian`,
    `hessian_free`, any `GradientTransformationExtraArgs`) also gets the loss, `θ ↦ L(θ)` on
    this batch, the model's outputs and a fresh key as keyword arguments (see `train_step`).

    What the state carries switches the rest on, with no option here: a ``loss_scale``
    (`dynamic_loss_scale`) scales the loss by ``S``, divides the gradient by ``S`` and skips
    the step (params, optimizer and model state kept, ``S`` halved) when that gradient is not
    finite; an ``ema`` (`params_ema`) moves the params' average after every applied step.

    The train state is donated: its buffers are reused for the new state, so the state
    passed in is consumed (reading it afterwards raises), as with any donated `jax.jit`.
    Keep ``state = step(state, batch)[0]``; to keep the old state too, pass a copy
    (``jax.tree.map(jnp.copy, state)``).

    Args:
      model: a `funcnet.nn.Layer`.
      optimizer: a gradient transformation (`funcnet.optim` or optax).
      loss_fn: ``loss_fn(outputs, labels) -> scalar``, a mean over the batch, e.g.
        `funcnet.losses.softmax_cross_entropy`.
      metrics: ``{name: fn(outputs, labels) -> scalar}`` reported besides the loss, computed
        from the outputs of the forward pass the gradient uses; by default ``accuracy`` for
        class logits with integer labels, nothing otherwise.
      grad_norm: also report ``grad_norm = ‖g‖₂`` over all leaves (a reduction over every
        gradient leaf, so off by default).
      accumulate: take the gradient over this many micro-batches of the batch in turn (see
        `train_step`), so that only one micro-batch's activations are held at a time; the
        update equals the whole batch's. The batch size must divide by it.
      mesh: split each batch's rows over this mesh's ``data`` axis (data parallel), the
        state replicated, or with `rules` laid out as they say (`funcnet.train.partition`);
        place the state first with ``shard_state(state, mesh, rules)``. XLA partitions the
        step and inserts the communication.
      rules: how the params (and the optimizer state with them) lie on `mesh`.

    The batch is ``(x, y)`` or ``(x, y, w)`` with per-example weights ``w`` (module doc).
    The metrics returned are ``{"loss", **metrics}`` (and ``"grad_norm"`` if asked for),
    scalars computed at the params before the update; with a loss scale also ``finite``
    (False for a skipped step) and ``fatal``.

    Before the compiled step runs, a batch of nested lists of numbers becomes NumPy arrays
    and anything else that is not arrays of numbers is refused; labels held in NumPy arrays
    are checked on the host against `loss_fn` (`funcnet.losses.label_check`: classes in
    range, one-hot of the outputs' shape). Labels already on the device are not read back,
    which would make every step wait for the device; the jitted step itself is
    ``step.__wrapped__``.
    """
    check_model("make_step", model)
    check_optimizer("make_step", optimizer)
    check_function("make_step", "loss_fn", loss_fn)
    check_metrics("make_step", metrics)
    grad_norm = check_flag("make_step", "grad_norm", grad_norm)
    pure = train_step(
        model,
        optimizer,
        loss_fn=loss_fn,
        metrics=metrics,
        grad_norm=grad_norm,
        accumulate=accumulate,
    )
    if mesh is not None:
        pure = _on_mesh(pure, mesh, rules)
    elif rules is not None:
        raise ValueError("make_step: rules lay the params out over a mesh; pass mesh= too")
    jitted = jax.jit(pure, donate_argnums=0)
    shapes: dict[tuple, Any] = {}

    @functools.wraps(jitted)
    def step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Array]]:
        # Arrays already on the device need no check here (their labels are not read back):
        # this path costs the compiled step a few isinstance calls, not a tree traversal.
        if type(batch) is tuple and 2 <= len(batch) <= 3 and all(map(_is_device_array, batch)):
            if mesh is not None:
                check_mesh(mesh, batch[1].shape[0])
            return jitted(state, batch)
        batch = check_data("make_step", "the batch", batch, weights=True)
        if mesh is not None:
            check_mesh(mesh, np.shape(batch[1])[0])
        x, y = batch[0], batch[1]
        if isinstance(y, np.ndarray):
            check_not_empty("make_step", "a batch", batch)

            def output_shape():
                signature = _signature(x)
                if signature not in shapes:
                    shapes[signature] = output_shape_of_apply(
                        model, state.params, state.model_state, x
                    )
                return shapes[signature]

            check_labels("make_step", loss_fn, {"the batch": y}, output_shape)
        return jitted(state, batch)

    return step


def _on_mesh(step: Callable, mesh: Mesh, rules: Rules | None) -> Callable:
    """`step` with its batch's rows over the mesh's ``data`` axis and its state, in and out,
    in the layout of `rules` (replicated without)."""
    check_mesh(mesh, None)
    rules = None if rules is None else as_rules(rules)

    def sharded(state: TrainState, batch: Batch):
        batch = lax.with_sharding_constraint(batch, batch_sharding(mesh))
        new, values = step(constrain(state, mesh, rules), batch)
        return constrain(new, mesh, rules), values

    return sharded


def _is_device_array(part: Any) -> bool:
    return isinstance(part, jax.Array) and not isinstance(part, jax.core.Tracer)


def eval_step(
    model: Layer, *, loss_fn: LossFn, metrics: Metrics | None = None
) -> Callable[[PyTree, PyTree, Batch], dict[str, Array]]:
    """The pure evaluation of one batch, ``(params, model_state, batch) -> metrics``.

    The model runs with ``train=False`` (deterministic); metrics are ``{"loss", **metrics}``.
    """
    check_function("eval_step", "loss_fn", loss_fn)
    check_metrics("eval_step", metrics)

    def evaluate(params: PyTree, model_state: PyTree, batch: Batch) -> dict[str, Array]:
        x, y, w = unpack(batch)
        outputs, _ = model.apply(params, model_state, x, train=False)
        loss, values = batch_metrics(loss_fn, metrics, outputs, y, w)
        return {"loss": loss, **values}

    return evaluate


def evaluate_batches(
    evaluate: Callable[[PyTree, PyTree, Batch], dict[str, Array]],
    params: PyTree,
    model_state: PyTree,
    data: tuple[Any, Array],
    batch_size: int | None,
) -> dict[str, Array]:
    """Means of `evaluate`'s metrics over a whole data set, scanned in fixed-shape batches.

    Batch ``b`` holding ``n_b`` real rows counts with weight ``n_b / n``, so every metric is
    the mean over the ``n`` examples.
    """
    n = data_size(data)
    indices, weights = batch_plan(n, min(batch_size or n, n))

    def body(total, plan):
        idx, w = plan
        values = evaluate(params, model_state, take(data, idx, w))
        return jax.tree.map(lambda t, v: t + jnp.sum(w) * v, total, values), None

    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(evaluate, params, model_state, take(data, indices[0], weights[0])),
    )
    total, _ = lax.scan(body, zeros, (indices, weights))
    return jax.tree.map(lambda t: t / n, total)


def make_evaluate(
    model: Layer,
    *,
    loss_fn: LossFn,
    metrics: Metrics | None = None,
    batch_size: int | None = None,
) -> Callable[[PyTree, PyTree, tuple[Any, Array]], dict[str, Array]]:
    """A jitted ``evaluate(params, model_state, (x, y)) -> metrics`` over a whole data set.

    The model runs with ``train=False``. The data set is cut into batches of `batch_size`
    rows (all rows at once when None), the last one padded (see `funcnet.train.batch_plan`),
    and scanned; each metric is the mean over all examples, ``{"loss", **metrics}``.

    Before the compiled code runs, concrete data is checked on the host: nested lists of
    numbers become NumPy arrays, anything else that is not arrays of numbers is refused, and
    the labels are checked against `loss_fn` (`funcnet.losses.label_check`); traced data
    (a call inside `jit`) passes unchecked. The jitted function is ``evaluate.__wrapped__``.
    """
    check_model("make_evaluate", model)
    check_function("make_evaluate", "loss_fn", loss_fn)
    check_metrics("make_evaluate", metrics)
    if batch_size is not None:
        check_int("make_evaluate", "batch_size", batch_size)
    evaluate = eval_step(model, loss_fn=loss_fn, metrics=metrics)

    @jax.jit
    def evaluate_data(params, model_state, data):
        check_not_empty("make_evaluate", "a data set", tuple(data))
        return evaluate_batches(evaluate, params, model_state, tuple(data), batch_size)

    shapes: dict[tuple, Any] = {}

    @functools.wraps(evaluate_data)
    def evaluate_checked(params, model_state, data):
        data = check_data("make_evaluate", "the data", data)
        check_not_empty("make_evaluate", "a data set", data)
        x = data[0]

        def output_shape():
            signature = _signature(x)
            if signature not in shapes:
                shapes[signature] = output_shape_of_apply(model, params, model_state, x)
            return shapes[signature]

        check_labels("make_evaluate", loss_fn, {"the data": data[1]}, output_shape)
        return evaluate_data(params, model_state, data)

    return evaluate_checked
