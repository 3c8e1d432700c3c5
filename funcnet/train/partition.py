"""Parameters laid out over a device mesh: FSDP and tensor parallelism on XLA's partitioner.

A mesh has two named axes (`model_mesh`): ``"data"``, over which every minibatch's rows are
split, and ``"model"``. A *layout* gives each parameter a `PartitionSpec`: which of its
dimensions is cut over which mesh axis. It comes from *rules*, applied in order:

- `fsdp` (ZeRO-3): each param's largest dimension that the ``data`` axis divides is cut
  over it, so each device of that axis keeps ``1/|data|`` of the param and of the
  optimizer's moments;
- `tensor_parallel` (Megatron-LM): the dense layers of an MLP alternate column-parallel
  (``w: (in, out)`` cut on ``out``, the bias with it) and row-parallel (cut on ``in``), and
  attention's ``q``, ``k``, ``v`` projections are column-parallel (heads split over
  devices) with ``o`` row-parallel; each such pair needs one all-reduce of its output;
- `by_path`: glob patterns on parameter paths (``"*/dense_*/w": (None, "model")``), for
  anything else.

A rule only cuts dimensions that earlier rules left whole, over mesh axes the param does
not use yet, so ``(tensor_parallel(), fsdp())`` is FSDP × TP: TP's cut first, FSDP's on the
largest dimension left. The presets leave a dimension whole where the axis does not divide
it; `by_path` refuses that.

The train state follows the params: every leaf of the optimizer state, the params' moving
average and the model state whose path ends in a param's path and whose shape is that
param's (Adam's ``mu/dense_0/w``) is laid out as that param; every other leaf (counters,
the step, the key) is replicated. XLA's SPMD partitioner then partitions the compiled step
from those layouts, inserting the all-gathers, reduce-scatters and all-reduces itself. A
layout changes where values live and what is communicated, never the values computed: any
layout trains the same model up to the order of floating-point additions.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from funcnet._checks import check_int
from funcnet._keys import is_key
from funcnet._trees import path_name, shapes_of

__all__ = [
    "Rules",
    "by_path",
    "constrain",
    "fsdp",
    "model_mesh",
    "param_specs",
    "place",
    "shard_state",
    "state_shardings",
    "tensor_parallel",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"
PyTree = Any
Spec = tuple[str | None, ...]
# A rule maps ({path: shape}, mesh, {path: spec so far}) to the new {path: spec}.
Rule = Callable[[dict[str, tuple[int, ...]], Mesh, dict[str, Spec]], dict[str, Spec]]
Rules = Rule | Sequence[Rule]


def model_mesh(data: int | None = None, model: int = 1, *, devices: Any = None) -> Mesh:
    """A ``(data, model)`` mesh named ``("data", "model")``.

    `devices`: None for every device of every process, else a list. `data` defaults to the
    device count over `model`; ``data × model`` must be the device count.
    """
    chosen = list(jax.devices() if devices is None else devices)
    if isinstance(model, bool) or not isinstance(model, int) or model < 1:
        raise ValueError(f"model_mesh: model must be a positive int, got {model!r}")
    if data is None:
        if len(chosen) % model:
            raise ValueError(f"model_mesh: model={model} does not divide the {len(chosen)} devices")
        data = len(chosen) // model
    if isinstance(data, bool) or not isinstance(data, int) or data < 1:
        raise ValueError(f"model_mesh: data must be a positive int, got {data!r}")
    if data * model != len(chosen):
        raise ValueError(
            f"model_mesh: data={data} × model={model} is {data * model} devices, "
            f"{len(chosen)} are given"
        )
    return Mesh(np.array(chosen).reshape(data, model), (DATA_AXIS, MODEL_AXIS))


def _check_axis_name(rule: str, axis: Any) -> None:
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"{rule}: axis must be the name of a mesh axis, got {axis!r:.40}")


def _spec(rule: str, pattern: Any, spec: Any) -> tuple:
    """`spec` as a tuple of axis names and Nones; a pattern that is not a string, or a spec
    that is not a sequence of them, raises one TypeError line."""
    if not isinstance(pattern, str):
        raise TypeError(f"{rule}: a pattern must be a glob string, got {pattern!r:.40}")
    entries = (spec,) if isinstance(spec, str) else spec
    try:
        entries = tuple(entries)
    except TypeError:
        entries = None
    if entries is None or not all(e is None or isinstance(e, str) for e in entries):
        raise TypeError(
            f"{rule}: the spec of {pattern!r} must be a sequence of mesh axis names or None "
            f"per dimension (or a PartitionSpec), got {spec!r:.60}"
        )
    return entries


def _check_axis(rule: str, axis: str, mesh: Mesh) -> None:
    if axis not in mesh.axis_names:
        raise ValueError(
            f"{rule} names the mesh axis {axis!r}; the mesh has axes {mesh.axis_names}"
        )


def _free(spec: Spec, dim: int, axis: str) -> bool:
    return spec[dim] is None and axis not in spec


def fsdp(axis: str = DATA_AXIS, *, min_size: int = 0) -> Rule:
    """ZeRO-3 / FSDP: each param's largest dimension that `axis` divides, cut over `axis`.

    Params of fewer than `min_size` elements, and those no free dimension of which the axis
    divides, stay whole. Of equal dimensions the first is cut.
    """
    _check_axis_name("fsdp", axis)
    check_int("fsdp", "min_size", min_size, minimum=0)

    def rule(shapes, mesh, specs):
        _check_axis("fsdp", axis, mesh)
        size = mesh.shape[axis]
        out = dict(specs)
        for path, shape in shapes.items():
            spec = specs[path]
            if size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
                continue
            dims = [d for d in range(len(shape)) if _free(spec, d, axis) and shape[d] % size == 0]
            if dims:
                dim = max(dims, key=lambda d: (shape[d], -d))
                out[path] = (*spec[:dim], axis, *spec[dim + 1 :])
        return out

    return rule


_DENSE = re.compile(r"dense_(\d+)")
_ATTENTION = {"q": "column", "k": "column", "v": "column", "o": "row"}


def _megatron_roles(paths: Sequence[str]) -> dict[str, str]:
    """``{"mlp/dense_3": "row", …}``: the column/row role of each dense layer and projection."""
    layers = {path.rpartition("/")[0] for path in paths if path.rpartition("/")[2] in ("w", "b")}
    children: dict[str, set[str]] = {}
    for layer in layers:
        parent, _, name = layer.rpartition("/")
        children.setdefault(parent, set()).add(name)
    roles = {}
    for parent, names in children.items():
        prefix = f"{parent}/" if parent else ""
        if set(_ATTENTION) <= names:
            roles |= {prefix + name: role for name, role in _ATTENTION.items()}
        dense = sorted((int(m.group(1)), name) for name in names if (m := _DENSE.fullmatch(name)))
        for i, (_, name) in enumerate(dense):
            roles[prefix + name] = ("column", "row")[i % 2]
    return roles


def tensor_parallel(axis: str = MODEL_AXIS) -> Rule:
    """Megatron-LM tensor parallelism over `axis` for dense layers and attention.

    The dense layers of each container (``dense_0``, ``dense_2``, … in order) alternate
    column-parallel, ``w: (in, out)`` cut on ``out`` and ``b`` with it, and row-parallel,
    ``w`` cut on ``in`` and ``b`` whole; attention's ``q``, ``k``, ``v`` are column- and
    ``o`` row-parallel. A column/row pair computes ``relu(x W₁) W₂`` with each device
    holding its columns of ``W₁`` and rows of ``W₂``, and one all-reduce of the partial
    outputs. Leading stacked axes (`funcnet.nn.repeat`) stay whole; other params (norms,
    embeddings, convolutions) are left to later rules.
    """
    _check_axis_name("tensor_parallel", axis)

    def rule(shapes, mesh, specs):
        _check_axis("tensor_parallel", axis, mesh)
        size = mesh.shape[axis]
        roles = _megatron_roles(list(shapes))
        out = dict(specs)
        for path, shape in shapes.items():
            layer, _, leaf = path.rpartition("/")
            role = roles.get(layer)
            if role is None or size == 1:
                continue
            if leaf == "w" and len(shape) >= 2:
                dim = len(shape) - (1 if role == "column" else 2)
            elif leaf == "b" and len(shape) >= 1 and role == "column":
                dim = len(shape) - 1
            else:
                continue
            spec = specs[path]
            if _free(spec, dim, axis) and shape[dim] % size == 0:
                out[path] = (*spec[:dim], axis, *spec[dim + 1 :])
        return out

    return rule


def by_path(patterns: Mapping[str, Sequence[str | None] | P]) -> Rule:
    """Layouts by parameter path: ``{glob: spec}``, the first matching glob for each param.

    Paths join dict keys with ``/`` (``transformer_0/attention/q/w``); ``*`` matches across
    ``/``. A spec names a mesh axis or None per dimension, as a `PartitionSpec` or a tuple
    (fewer than the param's rank leaves the rest whole; a lone name is the first
    dimension's). A spec naming an axis the mesh lacks, an axis that does not divide its
    dimension, or a dimension an earlier rule has cut otherwise is refused.
    """
    if not isinstance(patterns, Mapping):
        raise TypeError(
            "by_path: patterns must be a dict {glob: spec}, e.g. {'*/w': (None, 'model')}, got "
            f"{type(patterns).__name__} {patterns!r:.40}"
        )
    items = [(pattern, _spec("by_path", pattern, spec)) for pattern, spec in patterns.items()]

    def rule(shapes, mesh, specs):
        out = dict(specs)
        for path, shape in shapes.items():
            for pattern, wanted in items:
                if fnmatch.fnmatchcase(path, pattern):
                    out[path] = _merge(path, shape, specs[path], wanted, mesh, pattern)
                    break
        return out

    return rule


def _merge(path: str, shape, spec: Spec, wanted: Spec, mesh: Mesh, pattern: str) -> Spec:
    where = f"by_path rule {pattern!r} for {path} of shape {tuple(shape)}"
    if len(wanted) > len(shape):
        raise ValueError(f"{where}: the spec {wanted} has more entries than the param has dims")
    merged = list(spec)
    for dim, axis in enumerate(wanted):
        if axis is None:
            continue
        if axis not in mesh.axis_names:
            raise ValueError(f"{where}: the mesh has no axis {axis!r} (axes {mesh.axis_names})")
        if shape[dim] % mesh.shape[axis]:
            raise ValueError(
                f"{where}: dimension {dim} of size {shape[dim]} does not divide by the "
                f"{mesh.shape[axis]} devices of mesh axis {axis!r}"
            )
        if merged[dim] not in (None, axis) or (merged[dim] is None and axis in merged):
            raise ValueError(f"{where}: an earlier rule already lays it out as {tuple(spec)}")
        merged[dim] = axis
    return tuple(merged)


def as_rules(rules: Rules) -> tuple[Rule, ...]:
    """`rules` as a tuple of rules (hashable, for caching what was compiled with them)."""
    if callable(rules):
        return (rules,)
    if isinstance(rules, str) or not isinstance(rules, Sequence):
        raise TypeError(
            "rules must be a rule (fsdp(), tensor_parallel(), by_path({...})) or a "
            f"sequence of them, got {type(rules).__name__}"
        )
    rules = tuple(rules)
    for rule in rules:
        if not callable(rule):
            raise TypeError(
                "rules must be a rule (fsdp(), tensor_parallel(), by_path({...})) or a "
                f"sequence of them, got {type(rule).__name__}"
            )
    return rules


def _flat_specs(params: PyTree, mesh: Mesh, rules: Rules) -> dict[str, Spec]:
    pairs = jax.tree_util.tree_flatten_with_path(params)[0]
    shapes = {path_name(path): tuple(np.shape(leaf)) for path, leaf in pairs}
    specs: dict[str, Spec] = {path: (None,) * len(shape) for path, shape in shapes.items()}
    for rule in as_rules(rules):
        specs = rule(shapes, mesh, specs)
    return specs


def _trim(spec: Spec) -> P:
    while spec and spec[-1] is None:
        spec = spec[:-1]
    return P(*spec)


def param_specs(params: PyTree, mesh: Mesh, rules: Rules) -> PyTree:
    """The `PartitionSpec` of each param that `rules` give on `mesh` (a tree like `params`;
    only the leaves' shapes are read, so `jax.ShapeDtypeStruct` leaves do)."""
    specs = _flat_specs(params, mesh, rules)
    return jax.tree_util.tree_map_with_path(lambda p, _: _trim(specs[path_name(p)]), params)


def state_shardings(state: PyTree, mesh: Mesh, rules: Rules | None, *, members: bool = False):
    """The `NamedSharding` of each leaf of a `TrainState` (or of any tree with a ``params``
    field): the params as `rules` say, leaves that mirror a param (module doc) as that
    param, everything else replicated; `rules` None replicates all. With `members`, every
    leaf has a leading ensemble axis, kept whole."""
    lead = 1 if members else 0
    params = getattr(state, "params", None)
    specs: dict[str, tuple[Spec, tuple[int, ...]]] = {}
    if rules is not None and params is not None:
        shapes = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf)[lead:], np.float32), params
        )
        flat = _flat_specs(shapes, mesh, rules)
        specs = {path: (flat[path], shape) for path, shape in shapes_of(shapes).items()}

    def layout(key_path, leaf):
        names = path_name(key_path).split("/")
        shape = tuple(np.shape(leaf))[lead:]
        for start in range(len(names)):
            found = specs.get("/".join(names[start:]))
            if found is not None and found[1] == shape:
                return NamedSharding(mesh, _trim((None,) * lead + found[0]))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(layout, state)


def constrain(state: PyTree, mesh: Mesh, rules: Rules | None, *, members: bool = False):
    """`state` inside a traced function, laid out as `state_shardings` says
    (`jax.lax.with_sharding_constraint`)."""
    return lax.with_sharding_constraint(state, state_shardings(state, mesh, rules, members=members))


def shard_state(state: PyTree, mesh: Mesh, rules: Rules | None = None) -> PyTree:
    """`state` (a `TrainState`, the same values in every process) put on `mesh` in the
    layout `state_shardings` gives: what `fit` does before training, for `make_step`."""
    if not isinstance(mesh, Mesh):
        raise TypeError(f"shard_state: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    return place(state, state_shardings(state, mesh, rules))


def place(tree: PyTree, shardings: PyTree) -> PyTree:
    """A copy of `tree`'s leaves (host or device arrays, the same values in every process)
    on the devices as `shardings` says; each process writes only its own devices' pieces.
    Typed PRNG keys stay keys."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = [is_key(leaf) for leaf in leaves]
    data = [jax.random.key_data(a) if key else a for a, key in zip(leaves, keys, strict=True)]
    targets = [
        _key_data_sharding(s) if key else s
        for s, key in zip(treedef.flatten_up_to(shardings), keys, strict=True)
    ]
    if jax.process_count() == 1:
        # Copies, so that the caller's arrays stay theirs when a step donates the placed
        # state (device_put keeps a one-device array's buffer as one replica, may_alias=False
        # or not); then one transfer of them all, which on 2 devices took a third of the
        # time of a transfer per leaf.
        placed = jax.device_put([jnp.copy(a) for a in data], targets)
    else:
        placed = [_from_host(np.asarray(a), s) for a, s in zip(data, targets, strict=True)]
    placed = [
        jax.random.wrap_key_data(a, impl=jax.random.key_impl(leaf)) if key else a
        for a, leaf, key in zip(placed, leaves, keys, strict=True)
    ]
    return jax.tree.unflatten(treedef, placed)


def _from_host(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """`host`'s values on `sharding`'s devices, each process writing its own pieces."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _key_data_sharding(sharding: NamedSharding) -> NamedSharding:
    # A key's data has one trailing dimension more than the key; it stays whole.
    return NamedSharding(sharding.mesh, P(*sharding.spec, None))
