"""Soak test: a thousand generated architectures, each checked end to end.

Run with ``make soak`` or ``python tests/soak.py --count 1000 --seed 0``. Architecture
``index`` of a ``seed`` is drawn from ``random.Random(f"{seed}/{index}")`` alone, so any
failure is rebuilt by ``make soak SOAK_SEED=S SOAK_COUNT=1 SOAK_START=I``, which keeps the XLA
flags of ``make soak`` (some failures appear only under them).

Families: ``dense`` (vectors), ``conv1d`` / ``conv2d`` (conv, conv_transpose, pooling),
``recurrent`` (gru / lstm, stacked, bidirectional, masked), ``attention`` (multi-head, cross,
transformer blocks), ``embedding`` (integer ids); every norm, dropout and combinator appears
among them, in float32 and in bfloat16 params and inputs. For each architecture:

- ``shapes``: the shapes `init` infers equal those `apply` gives, in training and evaluation;
- ``jit``: ``jax.jit(apply)`` equals eager ``apply`` (training with one key, and evaluation);
- ``vmap``: in evaluation, ``vmap`` over single examples equals a loop over them and the
  batch (skipped where evaluation uses batch statistics);
- ``grad``: the gradient of a training loss is finite;
- ``checkpoint``: `funcnet.checkpoint` save / load gives identical params and state (values
  and dtypes) and identical evaluation outputs.

Every failure is printed with the architecture and the check; the exit status is 1 if any
architecture failed. This file is not collected by pytest (its name does not start with
``test_``); ``tests/test_soak.py`` runs its generator and checks in CI on a few architectures.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import random
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet import checkpoint, nn

FAMILIES = ("dense", "conv1d", "conv2d", "recurrent", "attention", "embedding")
ACTIVATIONS = ("relu", "tanh", "gelu", "elu", "selu", "silu", "softplus", "sigmoid")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Relative / absolute tolerance of jit against eager and vmap against a loop, per dtype.
TOLERANCE = {"float32": (1e-4, 1e-5), "bfloat16": (5e-2, 5e-2)}


@dataclasses.dataclass
class Arch:
    """One generated architecture: the model, its input and a readable description."""

    index: int
    family: str
    dtype: str
    model: nn.Layer
    in_shape: Any
    make_input: Callable[[jax.Array], Any]
    description: str
    batch_stats_in_eval: bool = False


class _Builder:
    """Draws layers from `rng`, each with a readable description, tracking the data's shape."""

    def __init__(self, rng: random.Random, dtype: str):
        self.rng = rng
        self.dtype = dtype
        self.jdtype = DTYPES[dtype]
        self.batch_stats_in_eval = False

    def choice(self, options):
        return self.rng.choice(list(options))

    def activation(self):
        name = self.choice(ACTIVATIONS)
        return getattr(nn, name), name

    def dense(self, features, weight_norm=None):
        use_bias = self.rng.random() < 0.8
        layer = nn.dense(features, use_bias=use_bias, dtype=self.jdtype)
        desc = f"dense({features}{'' if use_bias else ', use_bias=False'})"
        if weight_norm if weight_norm is not None else self.rng.random() < 0.15:
            return nn.weight_norm(layer), f"weight_norm({desc})"
        return layer, desc

    def batch_norm(self):
        options = {
            "momentum": self.choice([0.1, 0.5]),
            "use_scale": self.rng.random() < 0.8,
            "use_bias": self.rng.random() < 0.8,
            "track_running_stats": self.rng.random() < 0.75,
        }
        if not options["track_running_stats"]:
            self.batch_stats_in_eval = True
        args = ", ".join(f"{k}={v}" for k, v in options.items())
        return nn.batch_norm(**options, dtype=self.jdtype), f"batch_norm({args})"

    def norm(self, rank: int, channels: int, kinds=None):
        """A norm for data of `rank` axes (batch included) with `channels` last."""
        kinds = kinds or ["layer_norm", "rms_norm", "batch_norm"] + (
            ["group_norm", "instance_norm"] if rank >= 3 else []
        )
        kind = self.choice(kinds)
        if kind == "batch_norm":
            return self.batch_norm()
        if kind == "group_norm":
            groups = self.choice([g for g in (1, 2, 3) if channels % g == 0])
            return nn.group_norm(groups, dtype=self.jdtype), f"group_norm({groups})"
        if kind == "instance_norm":
            return nn.instance_norm(dtype=self.jdtype), "instance_norm()"
        axes = self.choice([-1] + ([(-2, -1)] if rank >= 3 else []))
        use_bias = self.rng.random() < 0.5
        make = nn.layer_norm if kind == "layer_norm" else nn.rms_norm
        layer = make(axes=axes, use_bias=use_bias, dtype=self.jdtype)
        return layer, f"{kind}(axes={axes}, use_bias={use_bias})"

    def dropout(self):
        kind = self.choice(["dropout", "alpha_dropout"])
        rate = self.choice([0.0, 0.25, 0.5])
        return getattr(nn, kind)(rate), f"{kind}({rate})"


def _serial(parts):
    layers, descs = zip(*parts, strict=True)
    return nn.serial(*layers), "serial(" + ", ".join(descs) + ")"


def _branches(b: _Builder, make_branch, n: int):
    """fanout -> parallel -> concat or sum: ``make_branch(i) -> [(layer, desc)]``."""
    fan_in = b.choice(["concat", "sum"])
    branches = [_serial(make_branch(i)) for i in range(n)]
    layer = nn.serial(
        nn.fanout(n),
        nn.parallel(*[layer for layer, _ in branches]),
        nn.concat() if fan_in == "concat" else nn.sum(),
    )
    return layer, f"fanout({n}) -> parallel({', '.join(d for _, d in branches)}) -> {fan_in}()"


# Vector (dense) models on (batch, features).


def _vector_block(b: _Builder, width: int, depth: int) -> tuple[list, int]:
    options = ["dense", "activation", "norm", "dropout"] + (
        ["residual", "branches"] if depth < 2 else []
    )
    kind = b.choice(options)
    if kind == "dense":
        w = b.rng.randint(1, 6)
        return [b.dense(w)], w
    if kind == "activation":
        return [b.activation()], width
    if kind == "norm":
        return [b.norm(2, width)], width
    if kind == "dropout":
        return [b.dropout()], width
    if kind == "residual":
        body, w = [], width
        for _ in range(b.rng.randint(1, 2)):
            parts, w = _vector_block(b, w, depth + 1)
            body += parts
        body.append(b.dense(width))
        layer, desc = _serial(body)
        return [(nn.residual(layer), f"residual({desc})")], width
    n = b.rng.randint(2, 3)
    k = b.rng.randint(1, 4)

    def branch(i):
        parts, _ = _vector_block(b, width, depth + 1)
        return [*parts, b.dense(k)]

    layer, desc = _branches(b, branch, n)
    return [(layer, desc)], k * n if desc.endswith("concat()") else k


def _dense_arch(b: _Builder):
    width = b.rng.randint(1, 5)
    in_shape = (b.rng.randint(2, 3), width)
    parts, w = [], width
    for _ in range(b.rng.randint(1, 4)):
        block, w = _vector_block(b, w, 0)
        parts += block
    parts.append(b.dense(b.rng.randint(1, 4)))
    return parts, in_shape, _normal(in_shape, b.jdtype)


# Convolutional models on (batch, *spatial, channels).


def _conv_arch(b: _Builder, ndim: int):
    size = b.rng.randint(4, 7)
    channels = b.rng.randint(1, 3)
    in_shape = (b.rng.randint(2, 3), *(size,) * ndim, channels)
    parts, spatial = [], size
    for _ in range(b.rng.randint(1, 3)):
        kind = b.choice(["conv", "conv", "conv_transpose", "pool", "adaptive_pool", "branches"])
        if kind == "conv":
            k, s, d = b.rng.randint(1, 3), b.rng.randint(1, 2), b.rng.randint(1, 2)
            groups = b.choice([1, channels])
            features = groups * b.rng.randint(1, 2)
            padding = b.choice(["SAME", "VALID"] if spatial >= d * (k - 1) + 1 else ["SAME"])
            mode = (
                b.choice(["zeros", "zeros", "reflect", "circular"])
                if padding == "SAME"
                else "zeros"
            )
            if mode != "zeros" and (d * (k - 1)) // 2 + 1 >= spatial:
                mode = "zeros"
            layer = nn.conv(
                features, k, strides=s, padding=padding, dilation=d, groups=groups,
                padding_mode=mode, dtype=b.jdtype,
            )  # fmt: skip
            desc = (
                f"conv({features}, {k}, strides={s}, padding={padding!r}, dilation={d}, "
                f"groups={groups}, padding_mode={mode!r})"
            )
            if b.rng.random() < 0.15:
                layer, desc = nn.weight_norm(layer), f"weight_norm({desc})"
            parts.append((layer, desc))
            spatial = (
                -(-spatial // s) if padding == "SAME" else (spatial - d * (k - 1) - 1) // s + 1
            )
            channels = features
        elif kind == "conv_transpose":
            k, s = b.rng.randint(1, 3), b.rng.randint(1, 2)
            features = b.rng.randint(1, 3)
            padding = b.choice(["SAME", "VALID"])
            parts.append(
                (
                    nn.conv_transpose(features, k, strides=s, padding=padding, dtype=b.jdtype),
                    f"conv_transpose({features}, {k}, strides={s}, padding={padding!r})",
                )
            )
            spatial = spatial * s if padding == "SAME" else (spatial - 1) * s + k
            channels = features
        elif kind == "pool":
            pool = b.choice(["max_pool", "avg_pool"])
            window = b.rng.randint(1, 2)
            padding = b.choice(["SAME", "VALID"])
            ceil = b.rng.random() < 0.3 and padding == "VALID"
            parts.append(
                (
                    getattr(nn, pool)(window, strides=1, padding=padding, ceil_mode=ceil),
                    f"{pool}({window}, strides=1, padding={padding!r}, ceil_mode={ceil})",
                )
            )
            spatial = spatial if padding == "SAME" else spatial - window + 1
        elif kind == "adaptive_pool":
            pool = b.choice(["adaptive_avg_pool", "adaptive_max_pool"])
            out = b.rng.randint(1, 4)
            parts.append((getattr(nn, pool)(out), f"{pool}({out})"))
            spatial = out
        else:
            features = b.rng.randint(1, 2)

            def branch(i, features=features):
                return [
                    (
                        nn.conv(features, b.rng.randint(1, 3), dtype=b.jdtype),
                        f"conv({features}, SAME)",
                    ),
                    b.activation(),
                ]

            layer, desc = _branches(b, branch, 2)
            parts.append((layer, desc))
            channels = 2 * features if desc.endswith("concat()") else features
        if b.rng.random() < 0.6:
            parts.append(b.norm(ndim + 2, channels))
        parts.append(b.activation())
        if b.rng.random() < 0.2:
            parts.append(b.dropout())
        if b.rng.random() < 0.2:
            parts.append((nn.residual(nn.layer_norm(dtype=b.jdtype)), "residual(layer_norm())"))
    head = b.choice(["flatten", "global_avg_pool", "global_max_pool"])
    parts.append((getattr(nn, head)(), f"{head}()"))
    parts.append(b.dense(b.rng.randint(1, 4)))
    return parts, in_shape, _normal(in_shape, b.jdtype)


# Sequence models on (batch, time, features), possibly with a mask.


def _mask(batch: int, time: int, lengths_key: int):
    lengths = np.random.default_rng(lengths_key).integers(1, time + 1, size=batch)
    return jnp.asarray(np.arange(time)[None, :] < lengths[:, None])


def _recurrent_arch(b: _Builder):
    batch, time_, features = b.rng.randint(2, 3), b.rng.randint(2, 5), b.rng.randint(2, 4)
    masked = b.rng.random() < 0.5
    parts, width = [b.dense(features)], features
    for _ in range(b.rng.randint(1, 2)):
        cell = b.choice(["gru", "lstm"])
        hidden, layers = b.rng.randint(1, 3), b.rng.randint(1, 2)
        bidirectional = b.rng.random() < 0.5
        rate = b.choice([0.0, 0.3]) if layers > 1 else 0.0
        parts.append(
            (
                getattr(nn, cell)(
                    hidden, num_layers=layers, bidirectional=bidirectional, dropout=rate,
                    dtype=b.jdtype,
                ),
                f"{cell}({hidden}, num_layers={layers}, bidirectional={bidirectional}, "
                f"dropout={rate})",
            )
        )  # fmt: skip
        width = hidden * (2 if bidirectional else 1)
    last = b.choice(["sequence", "pooled"])
    if last == "pooled":
        cell = b.choice(["gru", "lstm"])
        parts.append(
            (
                getattr(nn, cell)(2, return_sequences=False, dtype=b.jdtype),
                f"{cell}(2, return_sequences=False)",
            )
        )
    elif not masked:
        parts.append(b.norm(3, width, ["layer_norm", "rms_norm"]))
    if not masked:
        parts.append(b.dense(b.rng.randint(1, 3)))
    in_x = (batch, time_, 3)
    seed = b.rng.randrange(2**31)
    if masked:

        def make(key):
            return (_normal(in_x, b.jdtype)(key), _mask(batch, time_, seed))

        x_layer, x_desc = _serial(parts[:1])
        rest, rest_desc = _serial(parts[1:])
        model = nn.serial(nn.parallel(x_layer, lambda m: m), rest)
        desc = f"parallel({x_desc}, identity) on (x, mask) -> {rest_desc}"
        return [(model, desc)], (in_x, (batch, time_)), make
    return parts, in_x, _normal(in_x, b.jdtype)


def _attention_arch(b: _Builder):
    batch, time_ = b.rng.randint(2, 3), b.rng.randint(2, 5)
    heads = b.choice([1, 2])
    features = heads * b.rng.randint(1, 3)
    kind = b.choice(["self", "transformer", "cross"])
    in_x = (batch, time_, 3)
    parts = [b.dense(features, weight_norm=False)]
    if kind == "cross":
        c_time = b.rng.randint(1, 4)
        in_c = (batch, c_time, 2)
        masked = b.rng.random() < 0.5
        rate = b.choice([0.0, 0.2])
        layer = nn.cross_attention(heads, dropout_rate=rate, dtype=b.jdtype)
        desc = f"cross_attention({heads}, dropout_rate={rate})"
        head = [b.norm(3, features, ["layer_norm", "rms_norm"]), b.dense(b.rng.randint(1, 3))]
        body, body_desc = _serial(head)
        x_layer, x_desc = _serial(parts)
        inputs = ["x", "context"] + (["context_mask"] if masked else [])
        # cross_attention returns its input tuple with y in the place of x: keep y.
        first = nn.from_function(lambda t: t[0], name="first")
        model = nn.serial(
            nn.parallel(x_layer, *([lambda c: c] * (len(inputs) - 1))), layer, first, body
        )
        full = (
            f"parallel({x_desc}, identity...) on ({', '.join(inputs)}) -> {desc} -> first -> "
            f"{body_desc}"
        )
        seed = b.rng.randrange(2**31)

        def make(key):
            kx, kc = jax.random.split(key)
            out = (_normal(in_x, b.jdtype)(kx), _normal(in_c, b.jdtype)(kc))
            return (*out, _mask(batch, c_time, seed)) if masked else out

        shape = (in_x, in_c, (batch, c_time)) if masked else (in_x, in_c)
        return [(model, full)], shape, make
    masked = b.rng.random() < 0.4
    for _ in range(b.rng.randint(1, 2)):
        causal = b.rng.random() < 0.5
        if kind == "self":
            rate = b.choice([0.0, 0.2])
            parts.append(
                (
                    nn.multi_head_attention(
                        heads, causal=causal, dropout_rate=rate, dtype=b.jdtype
                    ),
                    f"multi_head_attention({heads}, causal={causal}, dropout_rate={rate})",
                )
            )
        else:
            mlp, rate = b.rng.randint(2, 6), b.choice([0.0, 0.2])
            parts.append(
                (
                    nn.transformer_block(heads, mlp, causal=causal, dropout_rate=rate),
                    f"transformer_block({heads}, {mlp}, causal={causal}, dropout_rate={rate})",
                )
            )
    if not masked:
        parts.append(b.norm(3, features, ["layer_norm", "rms_norm"]))
        parts.append(b.dense(b.rng.randint(1, 3)))
        return parts, in_x, _normal(in_x, b.jdtype)
    seed = b.rng.randrange(2**31)
    x_layer, x_desc = _serial(parts[:1])
    rest, rest_desc = _serial(parts[1:])
    model = nn.serial(nn.parallel(x_layer, lambda m: m), rest)
    desc = f"parallel({x_desc}, identity) on (x, mask) -> {rest_desc}"

    def make(key):
        return (_normal(in_x, b.jdtype)(key), _mask(batch, time_, seed))

    return [(model, desc)], (in_x, (batch, time_)), make


def _embedding_arch(b: _Builder):
    batch, time_, vocab = b.rng.randint(2, 3), b.rng.randint(1, 4), b.rng.randint(2, 9)
    features = b.choice([2, 4])
    padding_idx = b.choice([None, 0, -1])
    parts = [
        (
            nn.embedding(vocab, features, padding_idx=padding_idx, dtype=b.jdtype),
            f"embedding({vocab}, {features}, padding_idx={padding_idx})",
        )
    ]
    tail = b.choice(["gru", "attention", "dense"])
    if tail == "gru":
        parts.append((nn.gru(2, dtype=b.jdtype), "gru(2)"))
    elif tail == "attention":
        parts.append(
            (
                nn.multi_head_attention(2, causal=True, dtype=b.jdtype),
                "multi_head_attention(2, causal=True)",
            )
        )
    parts.append(b.norm(3, features, ["layer_norm", "rms_norm", "batch_norm"]))
    parts.append((nn.flatten(), "flatten()"))
    parts.append(b.dense(b.rng.randint(1, 3)))
    in_shape = (batch, time_)

    def make(key):
        return jax.random.randint(key, in_shape, 0, vocab)

    return parts, in_shape, make


def _normal(shape, dtype):
    return lambda key: jax.random.normal(key, shape).astype(dtype)


def generate(seed: int, index: int) -> Arch:
    """Architecture `index` of `seed`: the same for the same pair, on every run."""
    rng = random.Random(f"{seed}/{index}")
    family = FAMILIES[index % len(FAMILIES)] if index < len(FAMILIES) else rng.choice(FAMILIES)
    dtype = "bfloat16" if rng.random() < 0.25 else "float32"
    b = _Builder(rng, dtype)
    build = {
        "dense": _dense_arch,
        "conv1d": functools.partial(_conv_arch, ndim=1),
        "conv2d": functools.partial(_conv_arch, ndim=2),
        "recurrent": _recurrent_arch,
        "attention": _attention_arch,
        "embedding": _embedding_arch,
    }[family]
    parts, in_shape, make_input = build(b)
    model, desc = parts[0] if len(parts) == 1 else _serial(parts)
    return Arch(
        index=index,
        family=family,
        dtype=dtype,
        model=model,
        in_shape=in_shape,
        make_input=make_input,
        description=f"[{dtype}] input {in_shape}: {desc}",
        batch_stats_in_eval=b.batch_stats_in_eval,
    )


# The checks.


class CheckFailed(Exception):
    """A check that did not hold: the check's name and what was seen."""

    def __init__(self, check: str, detail: str):
        super().__init__(f"{check}: {detail}")
        self.check = check


def _shapes(tree):
    return jax.tree.map(lambda a: tuple(a.shape), tree)


def _as_shape_tree(out_shape):
    """init's output shape as a tree whose leaves are tuples of ints."""

    def is_shape(node):
        return isinstance(node, (tuple, list)) and all(isinstance(d, int) for d in node)

    return jax.tree.map(tuple, out_shape, is_leaf=is_shape)


def _compare(check: str, got, want, dtype: str, *, exact: bool = False):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    if jax.tree.structure(got) != jax.tree.structure(want):
        raise CheckFailed(
            check, f"structure {jax.tree.structure(got)} != {jax.tree.structure(want)}"
        )
    rtol, atol = TOLERANCE[dtype]
    for i, (g, w) in enumerate(zip(got_leaves, want_leaves, strict=True)):
        g, w = np.asarray(g), np.asarray(w)
        if g.dtype != w.dtype or g.shape != w.shape:
            raise CheckFailed(check, f"leaf {i}: {g.dtype}{g.shape} != {w.dtype}{w.shape}")
        if exact:
            if not np.array_equal(g, w, equal_nan=True):
                raise CheckFailed(check, f"leaf {i} differs (max |diff| {_max_diff(g, w)})")
        elif np.issubdtype(g.dtype, np.inexact) or g.dtype.name == "bfloat16":
            g32, w32 = g.astype(np.float32), w.astype(np.float32)
            if not np.allclose(g32, w32, rtol=rtol, atol=atol, equal_nan=True):
                raise CheckFailed(check, f"leaf {i}: max |diff| {_max_diff(g32, w32)}")
        elif not np.array_equal(g, w):
            raise CheckFailed(check, f"leaf {i} differs")


def _max_diff(g, w):
    return float(np.max(np.abs(g.astype(np.float32) - w.astype(np.float32)), initial=0.0))


def _float_loss(y):
    leaves = [
        jnp.mean(jnp.square(leaf.astype(jnp.float32)))
        for leaf in jax.tree.leaves(y)
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    return functools.reduce(jnp.add, leaves, jnp.float32(0.0))


def check(arch: Arch, workdir: Path) -> None:
    """Runs every check on `arch`; raises `CheckFailed` naming the first that fails."""
    model, dtype = arch.model, arch.dtype
    shapes = []

    def init(k):  # jitted so that init compiles once, not once per random draw
        out_shape, params, state = model.init(k, arch.in_shape)
        shapes.append(out_shape)
        return params, state

    try:
        params, state = jax.jit(init)(jax.random.key(0))
        out_shape = shapes[0]
    except Exception as e:
        raise CheckFailed("init", f"{type(e).__name__}: {e}") from e
    x = arch.make_input(jax.random.key(1))
    want_shapes = _as_shape_tree(out_shape)
    key = jax.random.key(2)

    def train(p, s, xx, k):
        return model.apply(p, s, xx, key=k, train=True)

    def evaluate(p, s, xx):
        return model.apply(p, s, xx)

    try:
        y_train, state_train = train(params, state, x, key)
        y_eval, state_eval = evaluate(params, state, x)
    except Exception as e:
        raise CheckFailed("apply", f"{type(e).__name__}: {e}") from e
    for mode, y, s in (("train", y_train, state_train), ("eval", y_eval, state_eval)):
        if _shapes(y) != want_shapes:
            raise CheckFailed("shapes", f"{mode}: apply gave {_shapes(y)}, init said {want_shapes}")
        if jax.tree.structure(s) != jax.tree.structure(state) or _shapes(s) != _shapes(state):
            raise CheckFailed("shapes", f"{mode}: the state changed structure or shapes")
    if not all(np.all(np.isfinite(np.asarray(a, np.float32))) for a in jax.tree.leaves(y_eval)):
        raise CheckFailed("finite", "evaluation output is not finite on finite input")

    jit_train, jit_eval = jax.jit(train), jax.jit(evaluate)
    _compare("jit (train)", jit_train(params, state, x, key), (y_train, state_train), dtype)
    _compare("jit (eval)", jit_eval(params, state, x), (y_eval, state_eval), dtype)

    if not arch.batch_stats_in_eval:
        batch = jax.tree.leaves(x)[0].shape[0]

        def one(xi):
            return evaluate(params, state, jax.tree.map(lambda a: a[None], xi))[0]

        mapped = jax.jit(jax.vmap(one))(x)
        looped = [
            jit_eval(params, state, jax.tree.map(lambda a, i=i: a[i : i + 1], x))[0]
            for i in range(batch)
        ]
        looped = jax.tree.map(lambda *ys: jnp.concatenate(ys), *looped)
        squeezed = jax.tree.map(lambda a: a[:, 0], mapped)
        _compare("vmap = loop", squeezed, looped, dtype)
        _compare("vmap = batch", looped, y_eval, dtype)

    def loss(p):
        return _float_loss(train(p, state, x, key)[0])

    grads = jax.jit(jax.grad(loss))(params)
    bad = [
        jax.tree_util.keystr(path)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
        if not np.all(np.isfinite(np.asarray(g, np.float32)))
    ]
    if bad:
        raise CheckFailed("grad", f"non-finite gradient at {', '.join(bad)}")

    path = workdir / f"arch_{arch.index}.ckpt"
    checkpoint.save(path, {"params": params, "state": state}, metadata={"arch": arch.description})
    loaded = checkpoint.load(path)
    _compare("checkpoint (params)", loaded, {"params": params, "state": state}, dtype, exact=True)
    y_loaded = jit_eval(loaded["params"], loaded["state"], x)
    _compare("checkpoint (outputs)", y_loaded, jit_eval(params, state, x), dtype, exact=True)
    path.unlink()


def _summary(arch: Arch) -> str:
    try:
        return str(nn.summary(arch.model, arch.in_shape))
    except Exception as e:  # the description above already names the architecture
        return f"(no summary: {type(e).__name__}: {e})"


def run(seed: int, start: int, count: int, budget: float | None = None, out=sys.stdout) -> dict:
    """Checks architectures ``start .. start + count - 1`` of `seed`; returns the report."""
    began = time.monotonic()
    per_family = collections.Counter()
    failures = []
    done = 0
    with tempfile.TemporaryDirectory(prefix="funcnet-soak-") as tmp:
        for index in range(start, start + count):
            if budget is not None and time.monotonic() - began > budget:
                print(f"time budget of {budget:.0f} s spent after {done} architectures", file=out)
                break
            if done and done % 50 == 0:
                print(
                    f"  {done} architectures, {len(failures)} failed, "
                    f"{time.monotonic() - began:.0f} s",
                    file=out,
                    flush=True,
                )
            arch = generate(seed, index)
            per_family[arch.family] += 1
            done += 1
            try:
                check(arch, Path(tmp))
                continue
            except CheckFailed as e:
                name, detail = e.check, str(e)
            except Exception as e:
                trace = traceback.format_exc(limit=-3)
                name, detail = "unexpected error", f"{type(e).__name__}: {e}\n{trace}"
            failures.append((arch, name, detail))
            print(
                f"FAIL #{index} ({arch.family}) {name}\n  {arch.description}\n  {detail}\n"
                f"  rebuild: make soak SOAK_SEED={seed} SOAK_COUNT=1 SOAK_START={index}\n"
                + "\n".join("    " + line for line in _summary(arch).splitlines()),
                file=out,
                flush=True,
            )
    elapsed = time.monotonic() - began
    families = ", ".join(f"{f} {per_family[f]}" for f in FAMILIES)
    by_check = collections.Counter(name for _, name, _ in failures)
    print(
        f"soak: seed {seed}, architectures {start}..{start + done - 1}: {done} checked "
        f"({families}) in {elapsed:.0f} s; {len(failures)} failed"
        + (f" ({', '.join(f'{c} {n}' for c, n in sorted(by_check.items()))})" if failures else ""),
        file=out,
        flush=True,
    )
    return {"count": done, "per_family": dict(per_family), "failures": failures, "seconds": elapsed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first architecture index")
    parser.add_argument("--count", type=int, default=1000, help="number of architectures")
    parser.add_argument(
        "--budget", type=float, default=None, help="stop after this many seconds (default: none)"
    )
    args = parser.parse_args(argv)
    report = run(args.seed, args.start, args.count, args.budget)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
