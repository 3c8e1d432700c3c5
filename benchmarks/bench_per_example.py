"""Section 4: per-example gradients of the small MLP, for batch sizes 1 to 256, and of the
families section's CNN at its batch size.

Contenders, each timed per whole batch, their repeats interleaved (one of each per round):

- ``vmap``: `funcnet.diff.per_example_grads` (its default ``method="auto"``), jitted;
- ``plain``: the same with ``method="vmap"``: ``vmap(grad)`` as JAX writes it, jitted;
- ``loop``: a Python loop calling a jitted single-example gradient once per example;
- ``batched``: one jitted gradient of the mean loss over the batch (not per example: the
  reference cost of one backward pass over the same data);
- ``torch``: ``torch.func.vmap(torch.func.grad(loss))`` on a `torch.nn.Sequential` holding
  the same weights, at PyTorch's default thread count (a row status when PyTorch is not
  installed);
- ``write``: a jitted program that only writes an output of the same size, every param
  broadcast over the batch (times a scalar argument): what writing the per-example gradients
  costs here, with nothing computed.

The memory floor of a batch is the time to write its per-example gradients once, at the
machine's memory bandwidth: ``batch × (bytes of the params) / bandwidth``. The bandwidth is
measured once per section, as bytes read and written per second by ``x + 1`` over a large
float32 array (jitted, with the input donated so the output reuses its buffer) and by
`numpy.copyto` into a preallocated array; the floor uses the higher of the two.

A batch's per-example gradients are large (27 MB for the small MLP at batch 256), so the
jitted batch contenders keep at most `IN_FLIGHT` results waiting, as a loop that consumes
each batch's gradients does (PyTorch's eager calls finish one by one). With the 16 results
in flight of the other sections, 430 MB of gradients are alive at once and the allocator
hands most calls freshly mapped memory, whose pages the operating system faults in and
zeroes on first touch (compare ``jax_fresh_gbs`` with ``jax_gbs`` in `memory_bandwidth`): a
cost of the harness, which nearly doubled the batch-256 figures on a 2-core Xeon.

Ratios: ``vmap_ratio``, ``plain_ratio`` and ``loop_ratio`` to ``batched``, ``torch_ratio``
(``vmap`` over ``torch``) and ``floor_ratio`` (``vmap`` over the floor).

The CNN (`run_cnn`) has the same contenders but the loop, on the families section's CNN
(conv 3×3 → relu → max-pool 2, twice, then two dense layers; channels last), its torch.func
twin holding the same weights (channels first, flattened in funcnet's order).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

import funcnet
from benchmarks import bench_families, family_models, trainers, workload
from benchmarks.family_models import CNN
from benchmarks.settings import Settings
from benchmarks.timing import measure, measure_interleaved, run_calls

BANDWIDTH_BYTES = 256 * 2**20
SMOKE_BANDWIDTH_BYTES = 4 * 2**20
IN_FLIGHT = 2


def gradient_fns(model: funcnet.nn.Layer):
    """``(example_loss, batch_loss)`` of a stateless classifier: one example's loss, and a
    batch's mean loss."""
    loss = funcnet.losses.softmax_cross_entropy

    def batch_loss(params, batch):
        x, y = batch
        logits, _ = model.apply(params, {}, x)
        return loss(logits, y)

    def example_loss(params, example):
        x, y = example
        return batch_loss(params, (x[None], y[None]))

    return example_loss, batch_loss


def torch_per_example(weights: workload.Weights) -> Callable[[np.ndarray, np.ndarray], dict]:
    """``grads(x, y)``: `torch.func`'s per-example gradients of the MLP with these weights.

    The model is ``Linear, ReLU, ..., Linear`` with each funcnet kernel ``w`` (in, out)
    copied to ``Linear.weight`` (out, in); the loss is one example's softmax cross-entropy.
    ``grads`` takes float32 inputs ``(batch, in)`` and integer labels ``(batch,)`` and
    returns ``{"0.weight": (batch, out, in), "0.bias": (batch, out), ...}``. Raises
    `trainers.Unavailable` when PyTorch is not installed.
    """
    th = trainers._require("torch")
    layers: list = []
    for i, (w, b) in enumerate(weights):
        linear = th.nn.Linear(*w.shape)
        with th.no_grad():
            linear.weight.copy_(th.from_numpy(w.T.copy()))
            linear.bias.copy_(th.from_numpy(b.copy()))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(th.nn.ReLU())
    return _torch_grads(th, th.nn.Sequential(*layers))


def _torch_grads(th, model, layout: Callable[[np.ndarray], np.ndarray] = np.array):
    """``grads(x, y)``: `torch.func`'s per-example gradients of `model`'s softmax
    cross-entropy, ``layout(x)`` its input, as a dict of `model`'s parameter names."""
    weights = {name: p.detach() for name, p in model.named_parameters()}

    def example_loss(weights, x, y):
        logits = th.func.functional_call(model, weights, (x[None],))
        return th.nn.functional.cross_entropy(logits, y[None])

    per_example = th.func.vmap(th.func.grad(example_loss), in_dims=(None, 0, 0))

    def grads(x: np.ndarray, y: np.ndarray) -> dict:
        x = th.from_numpy(np.array(layout(x)))
        return per_example(weights, x, th.from_numpy(y.astype(np.int64)))

    return grads


def jitted_gradients(example_loss: Callable, batch_loss: Callable) -> tuple[Callable, ...]:
    """``(per_example, plain, batched)``, each jitted ``(params, batch) -> grads``:
    `per_example_grads` (``method="auto"``), the same with ``method="vmap"``, and one
    gradient of the batch's mean loss."""
    per_example = jax.jit(lambda p, b: funcnet.diff.per_example_grads(example_loss, p, b))
    plain = jax.jit(lambda p, b: funcnet.diff.per_example_grads(example_loss, p, b, method="vmap"))
    return per_example, plain, jax.jit(jax.grad(batch_loss))


@functools.partial(jax.jit, static_argnums=2)
def write(params, scale, size: int):
    """Every param broadcast over `size` examples (times `scale`): the bytes of a batch's
    per-example gradients, written with nothing computed."""
    return jax.tree.map(lambda a: jnp.broadcast_to(scale * a, (size, *a.shape)), params)


def torch_cnn_per_example(family: CNN, params: dict) -> Callable[[np.ndarray, np.ndarray], dict]:
    """``grads(x, y)``: `torch.func`'s per-example gradients of the family CNN with funcnet's
    weights `params`.

    Each conv kernel ``w`` (kh, kw, in, out) is copied to ``Conv2d.weight`` (out, in, kh,
    kw) and each dense kernel to ``Linear.weight`` (out, in); the input is taken channels
    last, moved to channels first, and the features are moved back to channels last before
    the flatten, so the first dense layer reads funcnet's order. Raises
    `trainers.Unavailable` when PyTorch is not installed.
    """
    th = trainers._require("torch")

    class ChannelsLast(th.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    def copied(layer, w, b):
        with th.no_grad():
            layer.weight.copy_(th.from_numpy(np.ascontiguousarray(w)))
            layer.bias.copy_(th.from_numpy(np.array(b)))
        return layer

    layers: list = []
    for conv in family_models._layers(params, "conv"):
        w = np.asarray(conv["w"]).transpose(3, 2, 0, 1)
        layers += [
            copied(th.nn.Conv2d(w.shape[1], w.shape[0], w.shape[2:], padding="same"), w, conv["b"])
        ]
        layers += [th.nn.ReLU(), th.nn.MaxPool2d(2)]
    hidden, head = (np.asarray(d["w"]).T for d in family_models._layers(params, "dense"))
    biases = [d["b"] for d in family_models._layers(params, "dense")]
    layers += [ChannelsLast(), th.nn.Flatten()]
    layers += [copied(th.nn.Linear(hidden.shape[1], hidden.shape[0]), hidden, biases[0])]
    layers += [th.nn.ReLU(), copied(th.nn.Linear(head.shape[1], head.shape[0]), head, biases[1])]
    return _torch_grads(th, th.nn.Sequential(*layers), lambda x: x.transpose(0, 3, 1, 2))


def memory_bandwidth(nbytes: int, settings: Settings) -> dict:
    """Bytes read + written per second by copies of an `nbytes` float32 array, in GB/s.

    ``jax_gbs``: jitted ``x + 1`` with `x` donated, so each call writes into the buffer it
    reads (no fresh allocation); ``numpy_gbs``: `numpy.copyto` into a preallocated array;
    ``jax_fresh_gbs``: the same ``x + 1`` without donation, each call writing a newly
    allocated output, whose pages the operating system maps on first touch. ``gbs`` is the
    higher of the first two: the bandwidth of the floor.
    """
    n = nbytes // 4
    moved = 2 * n * 4
    step = jax.jit(lambda a: a + 1, donate_argnums=0)
    fresh = jax.jit(lambda a: a + 1)
    held = [jnp.zeros(n, jnp.float32)]
    source = jnp.zeros(n, jnp.float32)
    src, dst = np.zeros(n, np.float32), np.empty(n, np.float32)

    def donated(k):
        for _ in range(k):
            held[0] = step(held[0])
        jax.block_until_ready(held[0])

    def allocating(k):
        for _ in range(k):
            jax.block_until_ready(fresh(source))

    def numpy_copy(k):
        for _ in range(k):
            np.copyto(dst, src)

    found = {"bytes": nbytes}
    for name, fn in (("jax", donated), ("numpy", numpy_copy), ("jax_fresh", allocating)):
        timing = measure(fn, repeats=settings.repeats, min_time=settings.min_time)
        found[f"{name}_gbs"] = moved / timing.median / 1e9
    found["gbs"] = max(found["jax_gbs"], found["numpy_gbs"])
    return found


def run(settings: Settings, log=print) -> dict:
    """Times every contender at each batch size of `settings.per_example_batches`."""
    mlp = settings.mlps["small"]
    weights = workload.initial_weights(mlp)
    params = workload.funcnet_params(mlp, weights)
    param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    example_loss, batch_loss = gradient_fns(workload.funcnet_model(mlp))
    per_example, plain, batched = jitted_gradients(example_loss, batch_loss)
    one_example = jax.jit(jax.grad(example_loss))
    try:
        torch_grads, torch_status = torch_per_example(weights), "ok"
    except trainers.Unavailable as err:
        torch_grads, torch_status = None, str(err)
    bandwidth = memory_bandwidth(
        SMOKE_BANDWIDTH_BYTES if settings.smoke else BANDWIDTH_BYTES, settings
    )
    log(
        f"  memory bandwidth {bandwidth['gbs']:.1f} GB/s (jax {bandwidth['jax_gbs']:.1f}, "
        f"numpy {bandwidth['numpy_gbs']:.1f}, fresh output {bandwidth['jax_fresh_gbs']:.1f})"
    )
    rows = []
    for size in settings.per_example_batches:
        data = workload.batches(mlp._replace(batch=size), count=1)
        x, y = jnp.asarray(data.x[0]), jnp.asarray(data.y[0])
        examples = [(x[i], y[i]) for i in range(size)]

        def jitted(fn, n, x=x, y=y):
            run_calls((functools.partial(fn, params, (x, y)) for _ in range(n)), IN_FLIGHT)

        def looped(n, examples=examples):
            run_calls(functools.partial(one_example, params, e) for _ in range(n) for e in examples)

        def writes(n, size=size):
            run_calls((functools.partial(write, params, 2.0, size) for _ in range(n)), IN_FLIGHT)

        def torch_calls(n, x=data.x[0], y=data.y[0]):
            for _ in range(n):
                torch_grads(x, y)

        contenders = {
            "vmap": functools.partial(jitted, per_example),
            "plain": functools.partial(jitted, plain),
            "loop": looped,
            "batched": functools.partial(jitted, batched),
            "write": writes,
        }
        if torch_grads is not None:
            contenders["torch"] = torch_calls
        timings = measure_interleaved(
            contenders, repeats=settings.repeats, min_time=settings.min_time
        )
        row = {"batch": size, **{f"{k}_us": t.median * 1e6 for k, t in timings.items()}}
        row["floor_us"] = size * param_bytes / (bandwidth["gbs"] * 1e9) * 1e6
        row["vmap_ratio"] = row["vmap_us"] / row["batched_us"]
        row["plain_ratio"] = row["plain_us"] / row["batched_us"]
        row["loop_ratio"] = row["loop_us"] / row["batched_us"]
        row["torch_ratio"] = row["vmap_us"] / row["torch_us"] if "torch_us" in row else None
        row["floor_ratio"] = row["vmap_us"] / row["floor_us"]
        rows.append(row)
        torch_figure = f"{row['torch_us']:.1f} µs" if "torch_us" in row else torch_status
        log(
            f"  per-example batch {size:4d}: per_example_grads {row['vmap_us']:.1f} µs, "
            f"vmap(grad) {row['plain_us']:.1f} µs, loop {row['loop_us']:.1f} µs, batched "
            f"{row['batched_us']:.1f} µs, torch.func {torch_figure}, write "
            f"{row['write_us']:.1f} µs, floor {row['floor_us']:.1f} µs"
        )
    return {
        "mlp": mlp.label,
        "param_bytes": param_bytes,
        "bandwidth": bandwidth,
        "torch_status": torch_status,
        "rows": rows,
        "cnn": run_cnn(settings, log=log),
    }


def run_cnn(settings: Settings, log=print) -> dict:
    """The contenders of `run` but the loop, on the families section's CNN at its batch."""
    family = bench_families.SIZES[settings.name].cnn
    example_loss, batch_loss = gradient_fns(family.model())
    params, _ = family_models.initial(family)
    x, y = (a[0] for a in family.data(count=1))
    batch = (jnp.asarray(x), jnp.asarray(y))
    per_example, plain, batched = jitted_gradients(example_loss, batch_loss)

    def jitted(fn, n):
        run_calls((functools.partial(fn, params, batch) for _ in range(n)), IN_FLIGHT)

    def writes(n):
        calls = (functools.partial(write, params, 2.0, family.batch) for _ in range(n))
        run_calls(calls, IN_FLIGHT)

    contenders = {
        "vmap": functools.partial(jitted, per_example),
        "plain": functools.partial(jitted, plain),
        "batched": functools.partial(jitted, batched),
        "write": writes,
    }
    try:
        torch_grads, torch_status = torch_cnn_per_example(family, params), "ok"
    except trainers.Unavailable as err:
        torch_grads, torch_status = None, str(err)
    if torch_grads is not None:

        def torch_calls(n):
            for _ in range(n):
                torch_grads(x, y)

        contenders["torch"] = torch_calls
    timings = measure_interleaved(contenders, repeats=settings.repeats, min_time=settings.min_time)
    row = {"batch": family.batch, **{f"{k}_us": t.median * 1e6 for k, t in timings.items()}}
    row["vmap_ratio"] = row["vmap_us"] / row["batched_us"]
    row["plain_ratio"] = row["plain_us"] / row["batched_us"]
    row["torch_ratio"] = row["vmap_us"] / row["torch_us"] if "torch_us" in row else None
    torch_figure = f"{row['torch_us']:.0f} µs" if "torch_us" in row else torch_status
    log(
        f"  per-example CNN batch {family.batch}: per_example_grads {row['vmap_us']:.0f} µs, "
        f"vmap(grad) {row['plain_us']:.0f} µs, batched {row['batched_us']:.0f} µs, "
        f"torch.func {torch_figure}, write {row['write_us']:.0f} µs"
    )
    param_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(params))
    return {
        "model": family.label,
        "param_bytes": param_bytes,
        "torch_status": torch_status,
        "row": row,
    }
