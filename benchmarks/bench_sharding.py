"""Sharded parameters: funcnet's training step under FSDP and tensor parallelism against a
hand-written sharded JAX step, and the largest model whose Adam step fits a per-device memory
budget, replicated against FSDP.

**Devices.** The mesh has 8 devices. On a CPU this module forces 8 host devices itself: it
adds ``--xla_force_host_platform_device_count=8`` to ``XLA_FLAGS`` before JAX is imported,
unless ``XLA_FLAGS`` already names a host device count (which is then kept). So run it as its
own process (``python -m benchmarks.bench_sharding``); imported after JAX, it finds the
devices JAX started with and refuses fewer than 8 CPU devices. The 8 forced devices share
the machine's cores, so on a CPU the figures are the cost of partitioning the step and of
its collectives, not a speed-up. On a machine with accelerators (a GPU backend) it uses the
devices present, all of them, on the same meshes with 8 replaced by their count; the host
flag only adds CPU devices there, which the run does not use.

**1. Step time.** Two models, each trained by Adam (1e-3) on the mean softmax
cross-entropy, with funcnet's initial params:

- an MLP ``64 → 1024 → 1024 → 1024 → 10`` (ReLU), batch 256;
- a causal transformer LM ``embedding(1024, 256) → 2 × transformer_block(8 heads, MLP
  1024) → dense(1024)``, token ids ``(16, 64)``, next-token labels at every position.

Two layouts of each: FSDP, ``train.fsdp()`` on a ``data × model = 8 × 1`` mesh, and tensor
parallelism, ``train.tensor_parallel()`` on a ``1 × 8`` mesh (every device holds every row
of the batch and 1/8 of each column/row-parallel weight). Contenders, in one process:

- ``funcnet``: ``train.make_step(model, adam, loss_fn=softmax_cross_entropy, mesh=mesh,
  rules=rules)`` on the state placed by ``train.shard_state``, called through its public
  wrapper once per step (loss and accuracy returned);
- ``raw JAX``: the forward pass written with ``jnp`` on the same params dict, the same loss
  and accuracy, ``jax.value_and_grad`` and Adam written out, one ``jax.jit`` with
  ``in_shardings``/``out_shardings`` equal to the layout ``train.state_shardings`` gives
  (the moments as their params, the counter replicated), the batch as
  ``NamedSharding(mesh, P("data"))``, and its carry donated.

Before any timing, one step of each from the same state must give the same loss (relative
1e-5), the same first moment ``(1 − β₁)·g`` (to 1e-5 of the largest entry of all) and the
same params (1e-6 absolute, at the entries whose gradient is above 1e-6, where Adam's first
step ``−α·g/(|g| + ε)`` is decided by the gradient rather than by its round-off). The
contenders' repeats are then interleaved (`benchmarks.timing.measure_interleaved`); each
figure is the median. For each compiled step the report counts the collectives in its HLO
(``all-gather``, ``all-reduce``, ``reduce-scatter``, ``collective-permute``,
``all-to-all``, the elements they produce) and gives XLA's ``cost_analysis()`` FLOPs.
Target: funcnet / raw ≤ 1.10× in every row.

**2. Memory.** For the MLP (3 hidden layers of width W, batch 256) and the transformer (2
blocks of width D, 8 heads, MLP 4·D, vocabulary 1024, ids ``(16, 64)``), the largest W and
D (multiples of 64) whose training step fits a per-device budget (``--budget-mib``, 64 MiB
by default), on an ``8 × 1`` mesh, replicated (``make_step(..., mesh=mesh)``: data
parallel, the state on every device) and FSDP (``rules=train.fsdp()``). A step's bytes per
device come from its compiled program, never run: ``make_step(...).__wrapped__`` lowered
with abstract inputs (``jax.ShapeDtypeStruct`` carrying their shardings) and compiled, then
``memory_analysis()``'s ``argument + output + temp − alias``. That these are per-device
figures is checked first on a real state: the argument bytes equal the bytes of the state's
and the batch's shards on one device. Target: FSDP's largest model ≥ 6× the replicated
one's parameters.

Most of a run is XLA compiling about 30 programs over 8 devices (2–7 s each on a 2-core
CPU), so ``--quick``, whose models are tiny, still takes about a minute there.

    python -m benchmarks.bench_sharding            # 2–3 minutes on a 2-core CPU
    python -m benchmarks.bench_sharding --quick    # tiny sizes, one repeat: checks the code
    python -m benchmarks.bench_sharding --budget-mib 128 --json out.json
"""

from __future__ import annotations

import os

_HOST_DEVICES = "--xla_force_host_platform_device_count"
if _HOST_DEVICES not in os.environ.get("XLA_FLAGS", ""):
    # Before JAX is imported: the host device count is fixed when its CPU backend starts.
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_HOST_DEVICES}=8".strip()

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import funcnet  # noqa: E402
from benchmarks import timing  # noqa: E402
from benchmarks.family_models import adam_update  # noqa: E402
from benchmarks.trainers import B1, B2, EPS  # noqa: E402
from benchmarks.workload import LEARNING_RATE  # noqa: E402
from funcnet import nn, train  # noqa: E402

DEVICES = 8
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
STEP_TARGET = 1.10
MEMORY_TARGET = 6.0
MIB = 2**20


class Sizes(NamedTuple):
    """The models, search ranges and repeat counts of one run."""

    name: str
    mlp_in: int
    mlp_width: int
    mlp_depth: int
    classes: int
    mlp_batch: int
    vocab: int
    width: int
    heads: int
    mlp_dim: int
    blocks: int
    seq: int
    lm_batch: int
    repeats: int
    min_time: float
    budget_mib: float
    unit: int  # the searched widths are multiples of it


FULL = Sizes("full", 64, 1024, 3, 10, 256, 1024, 256, 8, 1024, 2, 64, 16, 9, 0.3, 64.0, 64)
QUICK = Sizes("quick", 16, 64, 2, 10, 32, 64, 64, 8, 128, 1, 8, 16, 1, 0.0, 2.0, 64)


# --- the models ---------------------------------------------------------------------------


def mlp(width: int, depth: int, classes: int) -> nn.Layer:
    layers = []
    for _ in range(depth):
        layers += [nn.dense(width), nn.relu]
    return nn.serial(*layers, nn.dense(classes))


def lm(vocab: int, width: int, heads: int, mlp_dim: int, blocks: int) -> nn.Layer:
    block = nn.transformer_block(heads, mlp_dim, causal=True)
    return nn.serial(nn.embedding(vocab, width), *[block] * blocks, nn.dense(vocab))


class Workload(NamedTuple):
    """A model, its hand-written forward pass and one batch's shapes.

    `x_high` is the bound of integer inputs (token ids in ``[0, x_high)``), None for float
    inputs; the labels are classes in ``[0, classes)``.
    """

    name: str
    title: str
    model: nn.Layer
    forward: Callable[[dict, jax.Array], jax.Array]
    x: jax.ShapeDtypeStruct
    y: jax.ShapeDtypeStruct
    x_high: int | None
    classes: int


def _ordered(params: dict, kind: str) -> list[dict]:
    """The children of `kind` (``dense_0``, ``dense_2``, …) in the order `serial` runs them."""
    names = [k for k in params if k.rsplit("_", 1)[0] == kind]
    return [params[k] for k in sorted(names, key=lambda k: int(k.rsplit("_", 1)[1]))]


def mlp_forward(params: dict, x: jax.Array) -> jax.Array:
    *hidden, head = _ordered(params, "dense")
    for p in hidden:
        x = jax.nn.relu(x @ p["w"] + p["b"])
    return x @ head["w"] + head["b"]


def _layer_norm(p: dict, x: jax.Array, eps: float = 1e-5) -> jax.Array:
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _causal_attention(p: dict, x: jax.Array, heads: int) -> jax.Array:
    batch, t, width = x.shape

    def split(name):
        h = x @ p[name]["w"] + p[name]["b"]
        return h.reshape(batch, t, heads, -1).transpose(0, 2, 1, 3)

    q, k, v = split("q"), split("k"), split("v")
    scores = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("bhij,bhjd->bhid", jax.nn.softmax(scores), v)
    return out.transpose(0, 2, 1, 3).reshape(batch, t, width) @ p["o"]["w"] + p["o"]["b"]


def lm_forward(heads: int) -> Callable[[dict, jax.Array], jax.Array]:
    """The LM by hand; each block is `nn.transformer_block`'s pre-norm block,
    ``h = x + MHA(LN₁(x))``, ``y = h + W₂ GELU(W₁ LN₂(h))``."""

    def forward(params, ids):
        x = jnp.take(_ordered(params, "embedding")[0]["table"], ids, axis=0)
        for p in _ordered(params, "transformer_block"):
            x = x + _causal_attention(p["attention"], _layer_norm(p["norm_1"], x), heads)
            up, down = p["mlp"]["dense_0"], p["mlp"]["dense_3"]
            h = jax.nn.gelu(_layer_norm(p["norm_2"], x) @ up["w"] + up["b"], approximate=False)
            x = x + h @ down["w"] + down["b"]
        (head,) = _ordered(params, "dense")
        return x @ head["w"] + head["b"]

    return forward


def mlp_workload(size: Sizes, width: int | None = None) -> Workload:
    width = size.mlp_width if width is None else width
    dims = "-".join(str(d) for d in (size.mlp_in, *[width] * size.mlp_depth, size.classes))
    return Workload(
        "mlp",
        f"MLP {dims} (ReLU), batch {size.mlp_batch}",
        mlp(width, size.mlp_depth, size.classes),
        mlp_forward,
        jax.ShapeDtypeStruct((size.mlp_batch, size.mlp_in), jnp.float32),
        jax.ShapeDtypeStruct((size.mlp_batch,), jnp.int32),
        None,
        size.classes,
    )


def lm_workload(size: Sizes, width: int | None = None) -> Workload:
    """The LM; a `width` other than the step section's has an MLP of 4 × width."""
    width = size.width if width is None else width
    mlp_dim = size.mlp_dim if width == size.width else 4 * width
    return Workload(
        "transformer",
        f"causal LM embedding({size.vocab}, {width}) → {size.blocks} × transformer_block("
        f"{size.heads} heads, MLP {mlp_dim}) → dense({size.vocab}), ids ({size.lm_batch}, "
        f"{size.seq})",
        lm(size.vocab, width, size.heads, mlp_dim, size.blocks),
        lm_forward(size.heads),
        jax.ShapeDtypeStruct((size.lm_batch, size.seq), jnp.int32),
        jax.ShapeDtypeStruct((size.lm_batch, size.seq), jnp.int32),
        size.vocab,
        size.vocab,
    )


def layouts(devices: int) -> dict[str, tuple[tuple[int, int], Any]]:
    """``{name: ((data, model), rules)}`` of the step-time section."""
    return {
        "fsdp": ((devices, 1), train.fsdp()),
        "tp": ((1, devices), train.tensor_parallel()),
    }


def make_batch(workload: Workload, mesh, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """One batch, its rows over the mesh's ``data`` axis."""
    rng = np.random.default_rng(seed)
    if workload.x_high is None:
        x = rng.standard_normal(workload.x.shape).astype(np.float32)
    else:
        x = rng.integers(0, workload.x_high, workload.x.shape).astype(np.int32)
    y = rng.integers(0, workload.classes, workload.y.shape).astype(np.int32)
    rows = NamedSharding(mesh, P("data"))
    return jax.device_put(x, rows), jax.device_put(y, rows)


# --- the two steps --------------------------------------------------------------------------


def optimizer():
    return funcnet.optim.adam(LEARNING_RATE, b1=B1, b2=B2, eps=EPS)


def funcnet_step(workload: Workload, mesh, rules) -> Callable:
    return train.make_step(
        workload.model,
        optimizer(),
        loss_fn=funcnet.losses.softmax_cross_entropy,
        mesh=mesh,
        rules=rules,
    )


def raw_step_fn(forward: Callable[[dict, jax.Array], jax.Array]) -> Callable:
    """``step((params, mu, nu, count), (x, y)) -> (carry, {"loss", "accuracy"})``, by hand."""

    def loss_fn(params, x, y):
        logits = forward(params, x)
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, y[..., None], axis=-1)), logits

    def step(carry, batch):
        params, mu, nu, count = carry
        x, y = batch
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        params, (count, mu, nu) = adam_update(params, grads, (count, mu, nu))
        return (params, mu, nu, count), {"loss": loss, "accuracy": accuracy}

    return step


def raw_step(workload: Workload, mesh, rules, state: train.TrainState) -> tuple[Callable, Any]:
    """``(jitted step, carry shardings)``: the hand-written step, its carry laid out as
    `train.state_shardings` lays out funcnet's state (moments as their params)."""
    params = train.state_shardings(state, mesh, rules).params
    replicated = NamedSharding(mesh, P())
    carry = (params, params, params, replicated)
    rows = NamedSharding(mesh, P("data"))
    jitted = jax.jit(
        raw_step_fn(workload.forward),
        in_shardings=(carry, (rows, rows)),
        out_shardings=(carry, replicated),
        donate_argnums=0,
    )
    return jitted, carry


def raw_carry(state: train.TrainState, shardings) -> tuple:
    """`state`'s params (copied) with zero moments and count, placed as `shardings` say."""
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    carry = (state.params, zeros, zeros, jnp.zeros((), jnp.int32))
    return jax.tree.map(lambda a, s: jax.device_put(jnp.copy(a), s), carry, shardings)


def adam_moments(opt_state) -> funcnet.optim.ScaleByAdamState:
    """The `ScaleByAdamState` inside funcnet's Adam state (a chain of transformations)."""

    def is_adam(s):
        return isinstance(s, funcnet.optim.ScaleByAdamState)

    (moments,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
    return moments


# --- what a compiled step holds and communicates --------------------------------------------

_COLLECTIVE = re.compile(r"\s(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(")
_ARRAY_TYPE = re.compile(r"\b[a-z]+[0-9]*\[([0-9,]*)\]")


def collectives(hlo: str) -> dict[str, dict[str, int]]:
    """``{op: {"count", "elements"}}``: each collective of a compiled HLO module and the
    elements of its results (of every part of a tuple result)."""
    found = {op: {"count": 0, "elements": 0} for op in COLLECTIVES}
    for line in hlo.splitlines():
        match = _COLLECTIVE.search(line)
        if match is None or " = " not in line[: match.start()]:
            continue
        entry = found[match["op"]]
        entry["count"] += 1
        result_type = line[line.index(" = ") + 3 : match.start()]
        for dims in _ARRAY_TYPE.findall(result_type):
            entry["elements"] += math.prod(int(d) for d in dims.split(",") if d)
    return found


def program_figures(compiled) -> dict:
    """Collectives, XLA's cost analysis and the memory analysis of a compiled step."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    memory = compiled.memory_analysis()
    return {
        "collectives": collectives(compiled.as_text()),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "memory": memory_figures(memory),
    }


def memory_figures(memory) -> dict[str, int]:
    figures = {
        "argument": int(memory.argument_size_in_bytes),
        "output": int(memory.output_size_in_bytes),
        "temp": int(memory.temp_size_in_bytes),
        "alias": int(memory.alias_size_in_bytes),
    }
    figures["total"] = figures["argument"] + figures["output"] + figures["temp"] - figures["alias"]
    return figures


def device_bytes(tree, device) -> int:
    """Bytes of `tree`'s leaves that `device` holds (a PRNG key counted as its key data)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        total += sum(s.data.nbytes for s in leaf.addressable_shards if s.device == device)
    return total


def _short(counts: dict[str, dict[str, int]]) -> str:
    """``"8 AG, 2 AR"``: the collectives present, by initials."""
    names = {
        "all-gather": "AG",
        "all-reduce": "AR",
        "reduce-scatter": "RS",
        "collective-permute": "CP",
        "all-to-all": "A2A",
    }
    parts = [f"{v['count']} {names[op]}" for op, v in counts.items() if v["count"]]
    return ", ".join(parts) or "none"


# --- 1. step time ---------------------------------------------------------------------------


def _leaf_pairs(a, b):
    return zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)


def compare_first_step(f_new, f_values, r_new, r_values) -> dict:
    """The differences between one funcnet step and one hand-written step from the same
    state; raises AssertionError past the module doc's tolerances."""
    loss_f, loss_r = float(f_values["loss"]), float(r_values["loss"])
    loss_rel = abs(loss_f - loss_r) / abs(loss_r)
    mu_f = train.local_copy(adam_moments(f_new.opt_state).mu)
    mu_r = train.local_copy(r_new[1])
    # Against the largest moment of all: some gradients are round-off (the key projection's
    # bias, which softmax ignores), equal only to within their own size.
    scale = max(float(np.max(np.abs(np.asarray(m)), initial=0.0)) for m in jax.tree.leaves(mu_r))
    mu_rel = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)), initial=0.0))
        for a, b in _leaf_pairs(mu_f, mu_r)
    ) / max(scale, 1e-30)
    params_abs, skipped = 0.0, 0
    params_f, params_r = train.local_copy(f_new.params), train.local_copy(r_new[0])
    for (a, b), m in zip(_leaf_pairs(params_f, params_r), jax.tree.leaves(mu_r), strict=True):
        decided = np.abs(np.asarray(m)) / (1 - B1) > 1e-6
        skipped += int(np.size(decided) - np.count_nonzero(decided))
        diff = np.abs(np.asarray(a) - np.asarray(b))[decided]
        params_abs = max(params_abs, float(np.max(diff, initial=0.0)))
    found = {
        "loss_funcnet": loss_f,
        "loss_raw": loss_r,
        "loss_rel": loss_rel,
        "moment_rel": mu_rel,
        "params_abs": params_abs,
        "params_skipped": skipped,
    }
    assert loss_rel <= 1e-5 and mu_rel <= 1e-5 and params_abs <= 1e-6, found
    return found


def _runner(call: Callable, carry, batch) -> Callable[[int], object]:
    """``run(n)``: n steps of `call` on its own (donated) carry, blocking at the end."""
    held = [carry]

    def run(n):
        values = None
        for _ in range(n):
            held[0], values = call(held[0], batch)
        return jax.block_until_ready((held[0], values))

    return run


def step_section(size: Sizes, devices: list, log=print) -> dict:
    """Per model: the first-step check, the compiled programs and the interleaved timings of
    funcnet's and the hand-written step under each layout."""
    count = len(devices)
    results = []
    for workload in (mlp_workload(size), lm_workload(size)):
        start = train.init_train_state(
            workload.model, optimizer(), jax.random.key(0), workload.x.shape
        )
        runs, rows = {}, []
        for layout, (shape, rules) in layouts(count).items():
            mesh = train.model_mesh(*shape, devices=devices)
            batch = make_batch(workload, mesh)
            f_step = funcnet_step(workload, mesh, rules)
            r_step, r_shardings = raw_step(workload, mesh, rules, start)
            f_state = train.shard_state(start, mesh, rules)
            r_carry = raw_carry(start, r_shardings)
            began = time.perf_counter()
            f_compiled = f_step.__wrapped__.lower(f_state, batch).compile()
            f_compile_s = time.perf_counter() - began
            began = time.perf_counter()
            r_compiled = r_step.lower(r_carry, batch).compile()
            r_compile_s = time.perf_counter() - began
            f_program, r_program = program_figures(f_compiled), program_figures(r_compiled)
            # The arguments of the SPMD program are one device's shards: the check that
            # memory_analysis() speaks per device.
            held = device_bytes((f_state, batch), devices[0])
            assert f_program["memory"]["argument"] == held, (f_program["memory"], held)
            check = compare_first_step(
                *f_step(train.shard_state(start, mesh, rules), batch),
                *r_step(raw_carry(start, r_shardings), batch),
            )
            log(
                f"  {workload.name} {layout}: compile {f_compile_s:.1f} s / {r_compile_s:.1f} s, "
                f"loss {check['loss_funcnet']:.6f} vs {check['loss_raw']:.6f}, collectives "
                f"{_short(f_program['collectives'])} / {_short(r_program['collectives'])}"
            )
            runs[f"{layout}/funcnet"] = _runner(f_step, f_state, batch)
            runs[f"{layout}/raw"] = _runner(r_step, r_carry, batch)
            rows.append(
                {
                    "layout": layout,
                    "mesh": list(shape),
                    "check": check,
                    "argument_bytes_per_device": held,
                    "funcnet": {"program": f_program, "compile_s": f_compile_s},
                    "raw": {"program": r_program, "compile_s": r_compile_s},
                }
            )
        timings = timing.measure_interleaved(runs, repeats=size.repeats, min_time=size.min_time)
        for row in rows:
            for who in ("funcnet", "raw"):
                t = timings[f"{row['layout']}/{who}"]
                row[who] |= {"step_s": t.median, "low_s": t.low, "high_s": t.high}
                row[who]["steps_per_repeat"] = t.units
            row["ratio"] = row["funcnet"]["step_s"] / row["raw"]["step_s"]
            log(
                f"  {workload.name} {row['layout']}: funcnet {1e3 * row['funcnet']['step_s']:.1f}"
                f" ms, raw {1e3 * row['raw']['step_s']:.1f} ms, {row['ratio']:.3f}×"
            )
        results.append({"model": workload.name, "title": workload.title, "rows": rows})
    return {"models": results}


# --- 2. memory ------------------------------------------------------------------------------


def abstract_inputs(workload: Workload, mesh, rules) -> tuple[Any, tuple]:
    """The train state and a batch as `jax.ShapeDtypeStruct`s carrying their shardings:
    what the step is lowered with, nothing allocated."""
    state = jax.eval_shape(
        lambda key: train.init_train_state(workload.model, optimizer(), key, workload.x.shape),
        jax.random.key(0),
    )
    shardings = train.state_shardings(state, mesh, rules)
    state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings
    )
    rows = NamedSharding(mesh, P("data"))
    batch = tuple(
        jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rows) for s in (workload.x, workload.y)
    )
    return state, batch


def step_memory(workload: Workload, mesh, rules) -> dict:
    """The per-device bytes of the compiled training step and the model's parameter count."""
    state, batch = abstract_inputs(workload, mesh, rules)
    compiled = funcnet_step(workload, mesh, rules).__wrapped__.lower(state, batch).compile()
    figures = memory_figures(compiled.memory_analysis())
    figures["params"] = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state.params))
    figures["collectives"] = collectives(compiled.as_text())
    return figures


def raw_step_memory(workload: Workload, mesh, rules) -> dict[str, int]:
    """The per-device bytes of the hand-written step in the same layout, compiled the same
    way: what funcnet's figure is compared with."""
    state, batch = abstract_inputs(workload, mesh, rules)
    jitted, shardings = raw_step(workload, mesh, rules, state)
    leaves = (state.params, state.params, state.params, state.step)
    carry = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), leaves, shardings
    )
    return memory_figures(jitted.lower(carry, batch).compile().memory_analysis())


def check_per_device(workload: Workload, mesh) -> dict:
    """Replicated, the arguments of the compiled step are the whole state and a device's
    rows of the batch: `memory_analysis` per device, checked on a real (small) state."""
    state = train.shard_state(
        train.init_train_state(workload.model, optimizer(), jax.random.key(0), workload.x.shape),
        mesh,
    )
    batch = make_batch(workload, mesh)
    step = funcnet_step(workload, mesh, None)
    memory = memory_figures(step.__wrapped__.lower(state, batch).compile().memory_analysis())
    held = device_bytes((state, batch), mesh.devices.flat[0])
    whole = sum(leaf.nbytes for leaf in jax.tree.leaves((state.params, state.opt_state)))
    assert memory["argument"] == held, (memory, held)
    return {"argument": memory["argument"], "shards_on_device_0": held, "state_bytes": whole}


def largest_fitting(measure: Callable[[int], dict], budget: float, start: int) -> dict:
    """The largest multiple ``k`` (of the search unit) whose step fits `budget` bytes.

    `measure(k)` gives the step's figures at ``k``. Each probe guesses from the last one as
    if the bytes grew as ``k²`` (the weights and moments do; the activations only as ``k``),
    kept strictly inside the bracket found so far, and halves the bracket instead when the
    last two probes fell on the same side; so it ends in a handful of compilations.
    """
    probes: dict[int, dict] = {}
    lo, hi, k, sides = 0, None, max(1, start), []
    while True:
        if k not in probes:
            probes[k] = measure(k)
        fits = probes[k]["total"] <= budget
        sides.append(fits)
        if fits:
            lo = max(lo, k)
        else:
            hi = k if hi is None else min(hi, k)
        if hi is not None and hi - lo <= 1:
            break
        guess = round(k * math.sqrt(budget / probes[k]["total"]))
        if hi is None:
            k = min(max(guess, k + 1), 4 * k)
        elif len(sides) >= 2 and sides[-1] == sides[-2] and lo > 0:
            k = (lo + hi) // 2
        else:
            k = min(max(guess, lo + 1), hi - 1)
    return {"k": lo, "figures": probes.get(lo), "probes": sorted(probes)}


def memory_section(size: Sizes, devices: list, log=print) -> dict:
    """The largest MLP and transformer whose step fits the budget, replicated and FSDP."""
    count = len(devices)
    mesh = train.model_mesh(count, 1, devices=devices)
    budget = size.budget_mib * MIB
    per_device = check_per_device(mlp_workload(size, size.unit), mesh)
    log(
        f"  replicated MLP of width {size.unit}: arguments {per_device['argument']} bytes = "
        f"the state and batch shards on device 0, {per_device['shards_on_device_0']} bytes"
    )
    families = {
        "mlp": (mlp_workload, size.mlp_width),
        "transformer": (lm_workload, size.width),
    }
    results = []
    for name, (build, width) in families.items():
        rows = {}
        for layout, rules in (("replicated", None), ("fsdp", train.fsdp())):
            began = time.perf_counter()

            def measure(k, build=build, rules=rules):
                return step_memory(build(size, k * size.unit), mesh, rules)

            found = largest_fitting(measure, budget, width // size.unit)
            if found["figures"] is None:
                raise ValueError(
                    f"{name} {layout}: no width of {size.unit} or more fits {size.budget_mib} MiB"
                )
            width_found = found["k"] * size.unit
            workload = build(size, width_found)
            rows[layout] = {
                "layout": layout,
                "width": width_found,
                "title": workload.title,
                **found["figures"],
                "raw": raw_step_memory(workload, mesh, rules),
                "probes": [k * size.unit for k in found["probes"]],
                "seconds": time.perf_counter() - began,
            }
            log(
                f"  {name} {layout}: width {width_found}, {found['figures']['params']:,} params, "
                f"{found['figures']['total'] / MIB:.1f} MiB per device (hand-written "
                f"{rows[layout]['raw']['total'] / MIB:.1f}; {len(found['probes'])} "
                f"compilations, {rows[layout]['seconds']:.0f} s)"
            )
        ratio = rows["fsdp"]["params"] / rows["replicated"]["params"]
        results.append({"model": name, "rows": list(rows.values()), "params_ratio": ratio})
    return {
        "budget_mib": size.budget_mib,
        "mesh": [count, 1],
        "per_device_check": per_device,
        "models": results,
    }


# --- report ---------------------------------------------------------------------------------


def targets(result: dict, *, judged: bool) -> list[dict]:
    found = []
    for model in result["steps"]["models"]:
        for row in model["rows"]:
            found.append(
                {
                    "target": f"{model['model']} {LAYOUT_TITLES[row['layout']]}: funcnet step "
                    f"≤ {STEP_TARGET:.2f}× the hand-written sharded step",
                    "met": row["ratio"] <= STEP_TARGET,
                    "figure": f"{row['ratio']:.3f}×",
                }
            )
    for model in result["memory"]["models"]:
        found.append(
            {
                "target": f"{model['model']}: the largest FSDP model in "
                f"{result['memory']['budget_mib']:g} MiB per device ≥ {MEMORY_TARGET:g}× the "
                "replicated one's parameters",
                "met": model["params_ratio"] >= MEMORY_TARGET,
                "figure": f"{model['params_ratio']:.2f}×",
            }
        )
    return found if judged else [{**t, "met": None} for t in found]


LAYOUT_TITLES = {"fsdp": "FSDP", "tp": "TP", "replicated": "replicated"}


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:,.1f}"


def markdown(result: dict) -> str:
    count, machine, load = result["device_count"], result["machine"], result["load_average"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, JAX backend "
        f"`{result['backend']}`, {count} devices ({result['device']}); load average (1 min) "
        f"{load['start'][0]:.2f} at the start, {load['end'][0]:.2f} at the end.",
        "",
        f"**Step time**: ms per Adam step after compilation, median of "
        f"{result['size']['repeats']} repeats (fastest–slowest), the four contenders of a model "
        f"interleaved. FSDP: `train.fsdp()` on a {count} × 1 (data × model) mesh; TP: "
        f"`train.tensor_parallel()` on a 1 × {count} mesh. *Collectives*: in the compiled "
        "step's HLO (AG all-gather, AR all-reduce, RS reduce-scatter, A2A all-to-all), funcnet "
        "/ hand-written; *FLOPs*: XLA's `cost_analysis()` of funcnet's step over the "
        "hand-written one's; *first loss*: one step of each from the same state (the moments "
        "and params are compared too).",
        "",
        "| model | layout | funcnet ms | raw JAX ms | funcnet / raw | collectives | "
        "FLOPs ratio | first loss (funcnet, raw) |",
        "|---|---|---:|---:|---:|---|---:|---|",
    ]
    for model in result["steps"]["models"]:
        for row in model["rows"]:
            f, r = row["funcnet"], row["raw"]
            flops = f["program"]["flops"] / r["program"]["flops"] if r["program"]["flops"] else 0
            lines.append(
                f"| {model['model']} | {LAYOUT_TITLES[row['layout']]} "
                f"({row['mesh'][0]}×{row['mesh'][1]}) | {_ms(f['step_s'])} "
                f"({_ms(f['low_s'])}–{_ms(f['high_s'])}) | {_ms(r['step_s'])} "
                f"({_ms(r['low_s'])}–{_ms(r['high_s'])}) | {row['ratio']:.3f}× | "
                f"{_short(f['program']['collectives'])} / "
                f"{_short(r['program']['collectives'])} | {flops:.3f} | "
                f"{row['check']['loss_funcnet']:.6f}, {row['check']['loss_raw']:.6f} |"
            )
    lines.append("")
    lines += [f"- {m['model']}: {m['title']}" for m in result["steps"]["models"]]
    memory = result["memory"]
    lines += [
        "",
        f"**Memory**: the largest model whose Adam training step fits "
        f"{memory['budget_mib']:g} MiB per device, on a {memory['mesh'][0]} × 1 mesh; widths "
        f"searched in multiples of {result['size']['unit']}, depth, vocabulary and batch fixed. "
        "*MiB per device*: argument + output + temp − alias bytes of funcnet's compiled step "
        "(`memory_analysis()`, never run); *hand-written*: the same for the hand-written step "
        "in the same layout; *AG, AR elements*: what the step's all-gathers and all-reduces "
        "produce, over the parameter count.",
        "",
        "| model | layout | largest width | params | MiB per device | arguments | temp | "
        "hand-written MiB | AG, AR elements / params | × replicated params |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in memory["models"]:
        base = model["rows"][0]["params"]
        for row in model["rows"]:
            moved = row["collectives"]
            gathered = moved["all-gather"]["elements"] / row["params"]
            reduced = moved["all-reduce"]["elements"] / row["params"]
            lines.append(
                f"| {model['model']} | {LAYOUT_TITLES[row['layout']]} | {row['width']} | "
                f"{row['params']:,} | {row['total'] / MIB:.1f} | {row['argument'] / MIB:.1f} | "
                f"{row['temp'] / MIB:.1f} | {row['raw']['total'] / MIB:.1f} | "
                f"{gathered:.2f}, {reduced:.2f} | {row['params'] / base:.2f}× |"
            )
    check = memory["per_device_check"]
    lines += [
        "",
        f"Per device, checked: the replicated step's argument bytes ({check['argument']:,}) "
        f"equal the bytes of the state and batch shards on device 0 "
        f"({check['shards_on_device_0']:,}); so do the FSDP and TP steps' of the step-time "
        "section.",
        "",
    ]
    for t in result["targets"]:
        mark = {True: "**met**", False: "**not met**", None: "not judged (quick sizes)"}[t["met"]]
        lines.append(f"- {mark} — {t['target']}: {t['figure']}")
    return "\n".join(lines) + "\n"


def chosen_devices() -> list:
    """The devices of the meshes: every device of the default backend; on a CPU the 8
    forced host devices, refused when JAX started with fewer."""
    devices = jax.devices()
    if jax.default_backend() == "cpu" and len(devices) < DEVICES:
        raise RuntimeError(
            f"bench_sharding needs {DEVICES} CPU devices, JAX has {len(devices)}: JAX was "
            f"imported before this module could set XLA_FLAGS={_HOST_DEVICES}={DEVICES}; run "
            "it as its own process (python -m benchmarks.bench_sharding)"
        )
    return devices[:DEVICES] if jax.default_backend() == "cpu" else devices


def run(size: Sizes = FULL, log=print) -> dict:
    devices = chosen_devices()
    load_start = list(os.getloadavg())
    log(f"[step time, {len(devices)} {jax.default_backend()} devices]")
    steps = step_section(size, devices, log=log)
    log(f"[memory, {size.budget_mib:g} MiB per device]")
    memory = memory_section(size, devices, log=log)
    result = {
        "timestamp": timing.timestamp(),
        "versions": timing.versions(),
        "size": size._asdict(),
        "backend": jax.default_backend(),
        "device": devices[0].device_kind,
        "device_count": len(devices),
        "machine": timing.machine(),
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "steps": steps,
        "memory": memory,
    }
    result["targets"] = targets(result, judged=size.name != "quick")
    result["markdown"] = markdown(result)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    parser.add_argument(
        "--budget-mib",
        type=float,
        default=None,
        help="per-device memory budget (default 64; 2 with --quick)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.budget_mib is not None:
        size = size._replace(budget_mib=args.budget_mib)
    if args.repeats is not None:
        size = size._replace(repeats=args.repeats)
    began = time.perf_counter()
    result = run(size, log=functools.partial(print, file=sys.stderr, flush=True))
    result["seconds"] = time.perf_counter() - began
    result["command"] = " ".join(
        ["python -m benchmarks.bench_sharding", *(sys.argv[1:] if argv is None else argv)]
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in result.items() if k != "markdown"}, f, indent=1)
    print(result["markdown"], end="")
    print(f"({result['seconds']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
