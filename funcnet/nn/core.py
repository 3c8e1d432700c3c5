"""The layer protocol and the combinators that compose layers.

A layer is a pair of pure functions::

    out_shape, params, state = layer.init(key, in_shape)
    y, state = layer.apply(params, state, x, key=None, train=False)

`params` (trained) and `state` (not trained, e.g. running statistics) are nested dicts of
arrays. Combinators name their children ``{kind}_{index}``, from each layer's `Layer.kind`, so
a model's params read like ``{"dense_0": {"w": ..., "b": ...}, "relu_1": {}, "dense_2": {...}}``.

`check_shape`, `check_floating`, `scope` and `init_child` are for writing layers and
combinators: the input checks every built-in layer makes, the scope that puts a child's name in
error paths, and the call that initialises a child under it (seen by `observe_inits`, which
`funcnet.nn.summary` uses).
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import functools
import inspect
import operator
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from funcnet._checks import check_int

__all__ = [
    "ApplyFn",
    "InitFn",
    "Layer",
    "LayerError",
    "as_layer",
    "check_floating",
    "check_param_shapes",
    "check_params",
    "check_shape",
    "concat",
    "fanout",
    "from_function",
    "init_child",
    "input_shape",
    "layer_name",
    "observe_inits",
    "parallel",
    "param_count",
    "residual",
    "scope",
    "serial",
    "sum",
]

Array = jax.Array
Shape = tuple[int, ...]
Params = dict[str, Any]
State = dict[str, Any]


class InitFn(Protocol):
    def __call__(self, key: Array, in_shape: Any) -> tuple[Any, Params, State]: ...


class ApplyFn(Protocol):
    def __call__(
        self, params: Params, state: State, x: Any, *, key: Array | None = None, train: bool = False
    ) -> tuple[Any, State]: ...


class Layer(NamedTuple):
    """A layer: ``init(key, in_shape) -> (out_shape, params, state)`` and
    ``apply(params, state, x, *, key=None, train=False) -> (y, state)``, and its `kind`.

    Shapes include the batch dimension. Both functions are pure, so a layer composes with
    `jax.jit`, `jax.vmap`, `jax.grad` and `lax.scan` as it is.

    `kind` names the layer's slot in a combinator, ``{kind}_{index}`` (``"dense_0"``), in
    params, state and the path of a `LayerError`. A hand-built layer is named by passing it:
    ``Layer(init, apply, kind="my_block")``; ``Layer(init, apply)`` is named ``"layer"``.
    Read it as ``layer.init, layer.apply, layer.kind`` (unpacking takes all three fields).
    """

    init: InitFn
    apply: ApplyFn
    kind: str = "layer"


class LayerError(ValueError):
    """Bad input to a layer. The message starts with the layer's path in the model."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.path: tuple[str, ...] = ()

    def __str__(self) -> str:
        where = "/".join(self.path) if self.path else self.kind
        return f"{where}: {self.message}"


# The callback of `observe_inits`, and the names of the scopes around the current call.
_observer: contextvars.ContextVar[Callable[..., None] | None] = contextvars.ContextVar(
    "funcnet_nn_init_observer", default=None
)
_path: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "funcnet_nn_scope_path", default=()
)


@contextlib.contextmanager
def scope(name: str) -> Iterator[None]:
    """Runs a child layer under `name`: a `jax.named_scope`, and a `LayerError` path entry."""
    token = _path.set((*_path.get(), name))
    try:
        with jax.named_scope(name):
            yield
    except LayerError as err:
        err.path = (name, *err.path)
        raise
    finally:
        _path.reset(token)


def init_child(name: str, child: Layer, key: Array, in_shape: Any) -> tuple[Any, Params, State]:
    """``child.init(key, in_shape)`` under `scope(name)`: how a combinator initialises a child.

    The call is reported to the callback of `observe_inits`, when one is active.
    """
    with scope(name):
        out_shape, params, state = child.init(key, in_shape)
        observer = _observer.get()
        if observer is not None:
            observer(_path.get(), child, in_shape, out_shape, params, state)
    return out_shape, params, state


@contextlib.contextmanager
def observe_inits(callback: Callable[..., None]) -> Iterator[None]:
    """Calls ``callback(path, layer, in_shape, out_shape, params, state)`` as each `init_child`
    in this context returns; `path` is the tuple of `scope` names down to the child.

    Context-local (a `contextvars` variable): other threads and contexts are not observed.
    """
    token = _observer.set(callback)
    try:
        yield
    finally:
        _observer.reset(token)


def layer_name(layer: Layer | Callable) -> str:
    """The kind of a layer (``"dense"``, ``"relu"``): what combinators name its slot after.

    A `Layer`'s `kind` field; for a plain function, its ``__name__`` (through
    `functools.partial`).
    """
    if isinstance(layer, Layer):
        return layer.kind
    while isinstance(layer, functools.partial):
        layer = layer.func
    return getattr(layer, "__name__", "function")


def check_shape(
    kind: str,
    shape: Sequence[int],
    expected: str,
    *,
    min_rank: int = 0,
    max_rank: int | None = None,
    last: int | None = None,
) -> Shape:
    """`shape` as a tuple, once it is checked to be the input a layer of `kind` takes.

    The rank must lie in ``[min_rank, max_rank]`` (no upper bound when `max_rank` is None) and,
    when `last` is given, the last axis must have that size. Otherwise raises
    ``LayerError(kind, "expected {expected}, got shape {shape}")``, where `expected` describes
    the input (``"an input (batch, time, features)"``). An empty batch (a leading axis of size
    0) is refused too: whatever reduces over it later (a loss, batch statistics) would be NaN.
    So is anything but one shape, e.g. the tuple of shapes of a layer that takes one input.
    """
    if not _is_dims(shape):
        raise LayerError(
            kind,
            f"expected {expected}, got {shape!r}, which is not one shape (a tuple of ints); "
            "a layer of one input takes the shape of one array",
        )
    shape = tuple(shape)
    too_many = max_rank is not None and len(shape) > max_rank
    if len(shape) < min_rank or too_many or (last is not None and shape[-1:] != (last,)):
        raise LayerError(kind, f"expected {expected}, got shape {shape}")
    if shape and shape[0] == 0:
        raise LayerError(
            kind, f"got an empty batch (input of shape {shape}); pass at least one example"
        )
    return shape


def input_shape(kind: str, x: Any, what: str = "the input") -> Shape:
    """The shape of `x`, an input of a layer of `kind`, once `x` is an array (JAX's, a tracer,
    or NumPy's). Anything else (None, a string, a Python number, a list) raises a `LayerError`
    naming the layer: its apply reads the shape before anything else."""
    if isinstance(x, jax.Array | np.ndarray):
        return tuple(x.shape)
    hint = "; convert it first, e.g. jnp.asarray(x)" if isinstance(x, list | tuple) else ""
    raise LayerError(kind, f"{what} must be an array, got {type(x).__name__} {x!r:.40}{hint}")


def check_params(kind: str, params: Any, *names: str, what: str = "params") -> None:
    """Refuses `params` (or, with `what`, the state) of a layer of `kind` that are not the dict
    its init returns, holding at least the entries `names`, in one `LayerError` line."""
    if not isinstance(params, dict):
        wanted = "the dict init returns" + (f", with {', '.join(names)}" if names else "")
        raise LayerError(
            kind,
            f"{what} must be {wanted}; got {type(params).__name__} {params!r:.40} (were they "
            "made by another model's init?)",
        )
    for name in names:
        if name not in params:
            raise LayerError(
                kind,
                f"{what} has no entry {name!r} (it has {sorted(params)}); were they made by "
                "another model's init?",
            )


def check_param_shapes(
    kind: str, params: Any, expected: dict[str, Any], *, why: str, what: str = "params"
) -> None:
    """Refuses `params` of a layer of `kind` unless they hold the entries of `expected` (a dict
    of the same nesting, with shapes as leaves), each of its shape, in one `LayerError` line
    that names the first entry wrong and says `why` that shape (``"for hidden=16"``)."""
    check_params(kind, params, *expected, what=what)
    for name, shape in expected.items():
        where = f"{what}[{name!r}]"
        if isinstance(shape, dict):
            check_param_shapes(kind, params[name], shape, why=why, what=where)
        elif (got := tuple(jnp.shape(params[name]))) != tuple(shape):
            raise LayerError(
                kind,
                f"{where} has shape {got}, expected {tuple(shape)} {why}; were they made by "
                "another model's init?",
            )


def check_floating(kind: str, x: Array) -> None:
    """Raises a `LayerError` naming `kind`, the dtype and the shape unless `x` is a floating
    point array.

    Integer, bool and complex inputs are refused rather than silently promoted.
    """
    input_shape(kind, x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise LayerError(
            kind,
            f"expected a floating-point input (e.g. float32), got dtype {x.dtype} of shape "
            f"{tuple(x.shape)}; convert it first, e.g. x.astype(jnp.float32) (and / 255 for "
            "8-bit images)",
        )


def as_layer(layer: Layer | Callable[[Array], Array], *, owner: str | None = None) -> Layer:
    """A `Layer` as it is; a plain function ``x -> y`` as a parameter-free layer. Anything
    else raises one TypeError line, starting with `owner` (the combinator it was given to)."""
    if isinstance(layer, Layer):
        return layer
    prefix = f"{owner}: " if owner else ""
    if not callable(layer):
        raise TypeError(
            f"{prefix}expected a Layer or a function, got {type(layer).__name__} {layer!r:.40}"
        )
    if _makes_a_layer(layer):
        name = layer_name(layer)
        raise TypeError(
            f"{prefix}{name} makes a layer; pass the layer it returns, {name}(...), not the "
            "function itself"
        )
    return from_function(layer)


def _makes_a_layer(fn: Callable) -> bool:
    """Whether `fn` is a layer constructor (``nn.flatten``, ``nn.dense``): its return
    annotation is `Layer`. Given where a layer belongs, its call was forgotten."""
    try:
        annotation = inspect.signature(fn).return_annotation
    except (TypeError, ValueError):
        return False
    return annotation is Layer or annotation == "Layer"


def from_function(fn: Callable[[Array], Array], *, name: str | None = None) -> Layer:
    """A parameter-free layer computing ``y = fn(x)``; its output shape is traced abstractly."""
    kind = name or layer_name(fn)

    def init(key, in_shape):
        del key
        shapes = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(tuple(s), jnp.result_type(float)),
            in_shape,
            is_leaf=_is_shape,
        )
        out = jax.eval_shape(fn, shapes)
        return jax.tree.map(lambda s: tuple(s.shape), out), {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        return fn(x), state

    return Layer(init, apply, kind=kind)


def _is_shape(node: Any) -> bool:
    return isinstance(node, tuple) and all(isinstance(d, int) for d in node)


def _is_dims(shape: Any) -> bool:
    """Whether `shape` reads as one shape: a sequence of integers (NumPy's included)."""
    if not isinstance(shape, Sequence) or isinstance(shape, str):
        return False
    try:
        [operator.index(d) for d in shape]
    except TypeError:
        return False
    return True


def _child_names(layers: Sequence[Layer]) -> list[str]:
    return [f"{layer_name(layer)}_{i}" for i, layer in enumerate(layers)]


def _child_key(key: Array | None, i: int) -> Array | None:
    return None if key is None else jax.random.fold_in(key, i)


def _lookup(tree: dict, name: str, what: str, kind: str) -> Any:
    check_params(kind, tree, name, what=what)
    return tree[name]


def _check_not_numbers(kind: str, x: Any) -> None:
    """Refuses an input that is a (nested) list or tuple of Python numbers: JAX does not turn
    lists into arrays implicitly, and read as a tree of inputs it would fail far from here."""
    if not isinstance(x, (list, tuple)) or not x:
        return
    leaves = jax.tree.leaves(x)
    if leaves and all(isinstance(leaf, int | float | complex) for leaf in leaves):
        try:
            shape = f" (shape {np.shape(x)})"
        except ValueError:
            shape = " (ragged: its rows differ in length)"
        raise TypeError(
            f"{kind}: the input is a {type(x).__name__} of Python numbers{shape}, not an array; "
            "convert it first, e.g. jnp.asarray(x)"
        )


def _prune(state: State) -> State:
    """Drops the empty entries, so a model without state has ``state == {}``."""
    return {k: v for k, v in state.items() if not (isinstance(v, dict) and not v)}


def serial(*layers: Layer | Callable[[Array], Array]) -> Layer:
    """Composes layers in sequence: ``y = f_n(... f_1(f_0(x)))``.

    Plain functions (``jax.nn.relu``, ``funcnet.nn.relu``) are accepted as parameter-free
    layers. Children are named ``{kind}_{index}`` in `params` and `state`.
    """
    children = [as_layer(layer, owner="serial") for layer in layers]
    names = _child_names(children)

    def init(key, in_shape):
        params, state, shape = {}, {}, in_shape
        for i, (name, child) in enumerate(zip(names, children, strict=True)):
            k = jax.random.fold_in(key, i)
            shape, params[name], state[name] = init_child(name, child, k, shape)
        return shape, params, _prune(state)

    def apply(params, state, x, *, key=None, train=False):
        _check_not_numbers("serial", x)
        check_params("serial", state, what="state")
        new_state = {}
        for i, (name, child) in enumerate(zip(names, children, strict=True)):
            with scope(name):
                child_params = _lookup(params, name, "params", "serial")
                x, new_state[name] = child.apply(
                    child_params, state.get(name, {}), x, key=_child_key(key, i), train=train
                )
        return x, _prune(new_state)

    return Layer(init, apply, kind="serial")


def parallel(*layers: Layer | Callable[[Array], Array]) -> Layer:
    """Applies layer ``i`` to input ``i``: ``(x_0, ..., x_n) -> (f_0(x_0), ..., f_n(x_n))``.

    The input is a tuple (or list) with one entry per layer, and so is `in_shape`.
    """
    children = [as_layer(layer, owner="parallel") for layer in layers]
    names = _child_names(children)

    def check(xs, what):
        if not isinstance(xs, (tuple, list)) or len(xs) != len(children):
            got = len(xs) if isinstance(xs, (tuple, list)) else type(xs).__name__
            raise LayerError(
                "parallel",
                f"expected {what} with {len(children)} entries, one per layer; got {got}",
            )

    def init(key, in_shape):
        if _is_dims(in_shape):
            raise LayerError(
                "parallel",
                f"expected a tuple of input shapes, one per layer; got one shape {tuple(in_shape)}",
            )
        check(in_shape, "a tuple of input shapes")
        params, state, shapes = {}, {}, []
        for i, (name, child, shape) in enumerate(zip(names, children, in_shape, strict=True)):
            k = jax.random.fold_in(key, i)
            shape, params[name], state[name] = init_child(name, child, k, shape)
            shapes.append(shape)
        return tuple(shapes), params, _prune(state)

    def apply(params, state, xs, *, key=None, train=False):
        check(xs, "a tuple of inputs")
        check_params("parallel", state, what="state")
        ys, new_state = [], {}
        for i, (name, child, x) in enumerate(zip(names, children, xs, strict=True)):
            with scope(name):
                child_params = _lookup(params, name, "params", "parallel")
                y, new_state[name] = child.apply(
                    child_params, state.get(name, {}), x, key=_child_key(key, i), train=train
                )
            ys.append(y)
        return tuple(ys), _prune(new_state)

    return Layer(init, apply, kind="parallel")


def fanout(num: int) -> Layer:
    """Copies its input `num` times: ``x -> (x, ..., x)``. Pair it with `parallel` and a fan-in."""
    num = check_int("fanout", "num", num)

    def init(key, in_shape):
        del key
        return (in_shape,) * num, {}, {}

    def apply(params, state, x, *, key=None, train=False):
        del params, key, train
        return (x,) * num, state

    return Layer(init, apply, kind="fanout")


def residual(*layers: Layer | Callable[[Array], Array]) -> Layer:
    """A skip connection around `serial(*layers)`: ``y = x + f(x)``.

    The branch must keep the shape of its input.
    """
    body = serial(*layers)

    def init(key, in_shape):
        out_shape, params, state = body.init(key, in_shape)
        if tuple(out_shape) != tuple(in_shape):
            raise LayerError(
                "residual",
                f"the branch maps shape {tuple(in_shape)} to {tuple(out_shape)}; "
                "a residual branch must keep the shape",
            )
        return out_shape, params, state

    def apply(params, state, x, *, key=None, train=False):
        y, state = body.apply(params, state, x, key=key, train=train)
        if y.shape != x.shape:
            raise LayerError(
                "residual", f"the branch maps shape {x.shape} to {y.shape}; it must keep the shape"
            )
        return x + y, state

    return Layer(init, apply, kind="residual")


def _check_fan_in(kind: str, shapes: Any) -> None:
    if not isinstance(shapes, (tuple, list)) or not shapes or _is_shape(shapes):
        raise LayerError(kind, f"expected a tuple of inputs, got {shapes!r}")


def concat(*, axis: int = -1) -> Layer:
    """Fan-in by concatenation along `axis`: ``(x_0, ..., x_n) -> [x_0, ..., x_n]``."""

    def init(key, in_shape):
        del key
        _check_fan_in("concat", in_shape)
        ranks = {len(s) for s in in_shape}
        if len(ranks) != 1:
            raise LayerError("concat", f"inputs must have one rank, got shapes {list(in_shape)}")
        ax = axis % ranks.pop()
        rest = {tuple(d for i, d in enumerate(s) if i != ax) for s in in_shape}
        if len(rest) != 1:
            raise LayerError(
                "concat",
                f"shapes {list(in_shape)} differ outside the concatenation axis {axis}",
            )
        out = list(in_shape[0])
        out[ax] = builtins.sum(s[ax] for s in in_shape)
        return tuple(out), {}, {}

    def apply(params, state, xs, *, key=None, train=False):
        del params, key, train
        _check_fan_in("concat", xs)
        for i, x in enumerate(xs):
            input_shape("concat", x, f"input {i}")
        return jnp.concatenate(xs, axis=axis), state

    return Layer(init, apply, kind="concat")


def sum() -> Layer:
    """Fan-in by elementwise sum: ``(x_0, ..., x_n) -> x_0 + ... + x_n``; shapes must match."""

    def check(shapes):
        _check_fan_in("sum", shapes)
        if len({tuple(s) for s in shapes}) != 1:
            raise LayerError("sum", f"inputs must have one shape, got {list(shapes)}")

    def init(key, in_shape):
        del key
        check(in_shape)
        return tuple(in_shape[0]), {}, {}

    def apply(params, state, xs, *, key=None, train=False):
        del params, key, train
        _check_fan_in("sum", xs)
        check([input_shape("sum", x, f"input {i}") for i, x in enumerate(xs)])
        return functools.reduce(jnp.add, xs), state

    return Layer(init, apply, kind="sum")


def param_count(params: Params) -> int:
    """The number of scalars in a params pytree."""
    return builtins.sum(leaf.size for leaf in jax.tree.leaves(params))
