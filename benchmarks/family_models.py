"""The model families of `benchmarks.bench_families`, written in each library the way its
users write them.

Five families: a CNN, an LSTM and a GRU sequence classifier, a pre-norm transformer language
model and an MLP with batch norm and dropout. Each is defined once as a funcnet model; its initial
params (funcnet's initializers) are copied into every other library's layout, so that all
contenders start from the same weights and train on the same batches with Adam (1e-3,
β = (0.9, 0.999), ε = 1e-8) on the mean softmax cross-entropy.

Every builder returns a `Built`: ``run(n)`` makes `n` calls (a training step, an inference
call or a whole epoch) and blocks on the result; the builder has already made the first call,
whose result is `first` (the first step's loss, the logits, or the first epoch's mean loss),
so that the contenders can be checked to compute the same thing.

The contenders:

- ``funcnet``: `funcnet.train.make_step` with its defaults (state donated, loss and accuracy
  returned) for a training step; ``jax.jit`` of ``model.apply`` for inference.
- ``raw_jax``: hand-written ``jax.lax`` / ``jax.nn`` code over the same params dict, Adam
  written out, one ``jax.jit`` step with its carry donated, returning loss and accuracy.
- ``flax_linen``: ``flax.linen`` modules, ``optax.adam``, a ``jax.jit`` step (Linen rather
  than NNX: the faster of Flax's two APIs per call, see section 1), batch statistics as a
  mutable collection and a ``"dropout"`` rng stream.
- ``equinox``: ``equinox.nn`` modules called per example under ``jax.vmap`` (batch norm with
  ``axis_name="batch"``, its state an ``eqx.nn.State``), ``optax.adam``, an
  ``eqx.filter_jit`` step. Its CNN is channels-first, as Equinox's convolutions are: its
  batches are the same images transposed to ``(batch, channels, height, width)`` and its
  first dense kernel has its rows permuted to match.

The Flax and Equinox steps do not donate their carry, as their users' steps do not.

For ``fit``: ``funcnet_scan`` is `funcnet.train.fit` for one epoch per call; ``raw_jax``
the hand-written step called once per batch (the epoch's shuffle and gather one jitted call
first); ``raw_jax_epoch`` the hand-written step scanned over the epoch in one jitted call.
Both hand-written epochs visit the rows in `fit`'s order (one sort of the rows by 64 random
bits from the train state's key), so all three compute the same epoch.

Where the libraries differ, the difference is kept and named: dropout masks come from each
library's own keys (same rule, ``x ⊙ m / (1 − rate)``, different draws), so the batch-norm MLP
is checked for equal losses with dropout off; Flax's batch norm keeps the biased variance in
its running statistics and Equinox's (``mode="batch"``) debiases them at evaluation, where
funcnet and PyTorch keep the unbiased one (the training step normalises alike in all of them);
Flax's layer norm computes the variance as ``E[x²] − E[x]²``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcnet
from benchmarks.trainers import B1, B2, EPS, _require
from benchmarks.workload import LEARNING_RATE

# The key the hand-written, Flax and Equinox steps fold their step count into for dropout.
ROOT_SEED = 1


class Built(NamedTuple):
    """A contender ready to time.

    Attributes:
      run: ``run(n)`` makes `n` calls and blocks on the last one's results.
      first: the first call's result, a float (loss) or an array (logits).
      temp_bytes: the compiled call's temporary memory, or None where it is not reachable.
      compile_s: seconds of the first call (tracing, compilation and one execution).
      steps_per_call: training steps per call (an epoch's steps for the epochs).
      detail: what the report adds to the contender's title (how `fit` ran its epochs).
    """

    run: Callable[[int], Any]
    first: Any
    temp_bytes: int | None
    compile_s: float
    steps_per_call: int = 1
    detail: str = ""


# --- the families ----------------------------------------------------------------------------


class CNN(NamedTuple):
    """``(batch, image, image, 1)`` → conv 3×3 → relu → max-pool 2 (per channel count) →
    dense `hidden` → relu → dense `classes`; convolutions "SAME", channels last."""

    batch: int = 128
    image: int = 28
    channels: tuple[int, ...] = (32, 64)
    hidden: int = 128
    classes: int = 10

    @property
    def label(self) -> str:
        convs = " → ".join(f"conv {c} → pool" for c in self.channels)
        return (
            f"CNN ({self.batch}, {self.image}, {self.image}, 1) → {convs} → dense "
            f"{self.hidden} → {self.classes}"
        )

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.batch, self.image, self.image, 1)

    @property
    def final_side(self) -> int:
        return self.image // 2 ** len(self.channels)

    def model(self) -> funcnet.nn.Layer:
        nn = funcnet.nn
        layers: list = []
        for c in self.channels:
            layers += [nn.conv(c, 3), nn.relu, nn.max_pool(2)]
        layers += [nn.flatten(), nn.dense(self.hidden), nn.relu, nn.dense(self.classes)]
        return nn.serial(*layers)

    def forward_flops(self, batch: int) -> int:
        """Multiply-add FLOPs (2 per multiply-add) of the convolutions and dense layers."""
        flops, side, channels = 0, self.image, 1
        for c in self.channels:
            flops += 2 * side * side * c * 9 * channels
            side, channels = side // 2, c
        flops += 2 * side * side * channels * self.hidden + 2 * self.hidden * self.classes
        return batch * flops

    def data(self, count: int, batch: int | None = None, seed: int = 0):
        rng = np.random.default_rng(seed)
        b = batch or self.batch
        x = rng.standard_normal((count, b, self.image, self.image, 1), dtype=np.float32)
        return x, rng.integers(0, self.classes, (count, b), dtype=np.int32)


class LSTM(NamedTuple):
    """``(batch, seq, features)`` → LSTM `hidden` → last hidden state → dense `classes`."""

    batch: int = 32
    seq: int = 64
    features: int = 64
    hidden: int = 256
    classes: int = 10

    @property
    def label(self) -> str:
        return (
            f"LSTM classifier ({self.batch}, {self.seq}, {self.features}) → LSTM "
            f"{self.hidden} → last state → dense {self.classes}"
        )

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.batch, self.seq, self.features)

    def model(self) -> funcnet.nn.Layer:
        nn = funcnet.nn
        return nn.serial(nn.lstm(self.hidden, return_sequences=False), nn.dense(self.classes))

    def forward_flops(self, batch: int) -> int:
        gates = 4 * self.hidden
        per_step = 2 * (self.features + self.hidden) * gates
        return batch * (self.seq * per_step + 2 * self.hidden * self.classes)

    def data(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((count, self.batch, self.seq, self.features), dtype=np.float32)
        return x, rng.integers(0, self.classes, (count, self.batch), dtype=np.int32)


class GRU(NamedTuple):
    """``(batch, seq, features)`` → GRU `hidden` → last hidden state → dense `classes`: the
    LSTM's workload with funcnet's other recurrent cell."""

    batch: int = 32
    seq: int = 64
    features: int = 64
    hidden: int = 256
    classes: int = 10
    cell: str = "gru"  # so that a GRU never equals an LSTM of the same sizes (caches key on it)

    @property
    def label(self) -> str:
        return (
            f"GRU classifier ({self.batch}, {self.seq}, {self.features}) → GRU "
            f"{self.hidden} → last state → dense {self.classes}"
        )

    in_shape = LSTM.in_shape
    data = LSTM.data

    def model(self) -> funcnet.nn.Layer:
        nn = funcnet.nn
        return nn.serial(nn.gru(self.hidden, return_sequences=False), nn.dense(self.classes))

    def forward_flops(self, batch: int) -> int:
        gates = 3 * self.hidden
        per_step = 2 * (self.features + self.hidden) * gates
        return batch * (self.seq * per_step + 2 * self.hidden * self.classes)


class Transformer(NamedTuple):
    """Token ids ``(batch, seq)`` → embedding `width` → `blocks` causal pre-norm
    `funcnet.nn.transformer_block` (`heads` heads, MLP `mlp`, exact GELU) → layer norm →
    dense `vocab`: next-token logits at every position."""

    batch: int = 8
    seq: int = 128
    width: int = 128
    heads: int = 4
    mlp: int = 512
    blocks: int = 2
    vocab: int = 256

    @property
    def label(self) -> str:
        return (
            f"transformer LM ({self.batch}, {self.seq}) → embedding {self.width} → "
            f"{self.blocks} pre-norm blocks ({self.heads} heads, MLP {self.mlp}) → dense "
            f"{self.vocab}"
        )

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.batch, self.seq)

    def model(self) -> funcnet.nn.Layer:
        nn = funcnet.nn
        blocks = [nn.transformer_block(self.heads, self.mlp, causal=True)] * self.blocks
        return nn.serial(
            nn.embedding(self.vocab, self.width), *blocks, nn.layer_norm(), nn.dense(self.vocab)
        )

    def forward_flops(self, batch: int) -> int:
        t, d = self.seq, self.width
        block = 2 * t * d * 4 * d + 2 * 2 * t * t * d + 2 * 2 * t * d * self.mlp
        return batch * (self.blocks * block + 2 * t * d * self.vocab)

    def data(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        ids = rng.integers(0, self.vocab, (count, self.batch, self.seq + 1), dtype=np.int32)
        return ids[..., :-1], ids[..., 1:]


class MLPBN(NamedTuple):
    """``sizes[0] → (dense → batch norm → relu → dropout(rate)) per hidden size → dense
    sizes[-1]``."""

    batch: int = 128
    sizes: tuple[int, ...] = (256, 512, 512, 10)
    rate: float = 0.2

    @property
    def label(self) -> str:
        return (
            f"MLP {'-'.join(map(str, self.sizes))}, batch norm + dropout {self.rate}, "
            f"batch {self.batch}"
        )

    @property
    def in_shape(self) -> tuple[int, ...]:
        return (self.batch, self.sizes[0])

    def model(self) -> funcnet.nn.Layer:
        nn = funcnet.nn
        layers: list = []
        for size in self.sizes[1:-1]:
            layers += [nn.dense(size), nn.batch_norm(), nn.relu, nn.dropout(self.rate)]
        return nn.serial(*layers, nn.dense(self.sizes[-1]))

    def forward_flops(self, batch: int) -> int:
        return batch * sum(2 * i * o for i, o in zip(self.sizes[:-1], self.sizes[1:], strict=False))

    def data(self, count: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((count, self.batch, self.sizes[0]), dtype=np.float32)
        return x, rng.integers(0, self.sizes[-1], (count, self.batch), dtype=np.int32)


Family = CNN | LSTM | GRU | Transformer | MLPBN


@functools.lru_cache(maxsize=16)
def initial(family: Family, seed: int = 0) -> tuple[dict, dict]:
    """funcnet's initial ``(params, model_state)`` of `family`, as every contender's start.

    One jitted init (an eager one compiles every initializer's ops one by one); kept for
    the next workload of the same family, so a contender that donates its carry copies
    them first."""
    model = family.model()
    return jax.jit(lambda key: model.init(key, family.in_shape)[1:])(jax.random.key(seed))


def _layers(tree: dict, kind: str) -> list[dict]:
    """The entries of a serial model's params (or state) of one layer kind, in layer order."""
    names = [k for k in tree if k.rsplit("_", 1)[0] == kind]
    return [tree[k] for k in sorted(names, key=lambda k: int(k.rsplit("_", 1)[1]))]


def _blocks(params: dict) -> list[dict]:
    return _layers(params, "transformer_block")


# --- shared pieces ---------------------------------------------------------------------------


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy of integer `labels` over all leading axes."""
    log_probs = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[..., None], axis=-1))


def _root_key():
    return jax.random.key(ROOT_SEED)


def _temp_bytes(lowered) -> int | None:
    """The temporary memory of a lowered call once compiled (an Equinox `Lowered` too)."""
    compiled = lowered.compile()
    compiled = getattr(compiled, "compiled", compiled)  # Equinox wraps JAX's Compiled
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except (AttributeError, NotImplementedError, TypeError):
        return None


def _first(call: Callable[[], Any], lower: Callable[[], Any] | None = None):
    """``(result, seconds, temp_bytes)``: `lower` compiled for its memory figure, then
    `call` made and blocked on; the seconds cover both (the call reuses the compilation)."""
    start = time.perf_counter()
    temp = None if lower is None else _temp_bytes(lower())
    out = jax.block_until_ready(call())
    return out, time.perf_counter() - start, temp


def _device(data, transform=None) -> list[tuple[jax.Array, jax.Array]]:
    """The batches of ``(x, y)`` as device arrays, `transform` applied to each ``x``."""
    x, y = data
    transform = transform or (lambda a: a)
    return [(jnp.asarray(transform(xi)), jnp.asarray(yi)) for xi, yi in zip(x, y, strict=True)]


def _step_loop(step, carry, batches, lower=None) -> Built:
    """The per-step loop of ``carry, loss = step(carry, x, y)`` over `batches` in turn.

    The first step is taken here (after ``lower()`` is compiled for its memory figure, which
    the call then reuses); ``run(n)`` takes the next `n`.
    """
    held = [carry]
    count = [0]

    def run(n):
        carry, loss = held[0], None
        for _ in range(n):
            x, y = batches[count[0] % len(batches)]
            carry, loss = step(carry, x, y)
            count[0] += 1
        held[0] = carry
        jax.block_until_ready(carry)
        return jax.block_until_ready(loss)

    loss, seconds, temp = _first(lambda: run(1), lower)
    return Built(run, float(loss), temp, seconds)


def adam_update(params, grads, opt):
    """One step of Adam written out: ``(new params, new (count, mu, nu))``."""
    count, mu, nu = opt
    count = count + 1
    mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, mu, grads)
    nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, nu, grads)
    t = count.astype(jnp.float32)
    mu_scale, nu_scale = 1 / (1 - B1**t), 1 / (1 - B2**t)
    params = jax.tree.map(
        lambda p, m, v: p - LEARNING_RATE * (m * mu_scale) / (jnp.sqrt(v * nu_scale) + EPS),
        params,
        mu,
        nu,
    )
    return params, (count, mu, nu)


# --- hand-written JAX ------------------------------------------------------------------------


def _conv(p, x):
    y = lax.conv_general_dilated(
        x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return y + p["b"]


def _pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _layer_norm(p, x, eps=1e-5):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
    return (x - mean) * lax.rsqrt(var + eps) * p["scale"] + p["bias"]


def _attention(p, x, heads):
    batch, t, width = x.shape

    def split(name):
        h = x @ p[name]["w"] + p[name]["b"]
        return h.reshape(batch, t, heads, -1).transpose(0, 2, 1, 3)

    q, k, v = split("q"), split("k"), split("v")
    scores = jnp.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("bhij,bhjd->bhid", jax.nn.softmax(scores), v)
    return out.transpose(0, 2, 1, 3).reshape(batch, t, width) @ p["o"]["w"] + p["o"]["b"]


def raw_forward(family: Family) -> Callable:
    """``forward(params, model_state, x, key, train) -> (logits, model_state)`` by hand."""
    if isinstance(family, CNN):

        def forward(params, state, x, key, train):
            for p in _layers(params, "conv"):
                x = _pool(jax.nn.relu(_conv(p, x)))
            hidden, head = _layers(params, "dense")
            x = jax.nn.relu(x.reshape(x.shape[0], -1) @ hidden["w"] + hidden["b"])
            return x @ head["w"] + head["b"], state

    elif isinstance(family, LSTM):

        def forward(params, state, x, key, train):
            (p,), (head,) = _layers(params, "lstm"), _layers(params, "dense")
            projected = jnp.swapaxes(x @ p["w_ih"] + p["b"], 0, 1)  # (time, batch, 4·hidden)

            def cell(carry, gates_x):
                c, h = carry
                i, f, g, o = jnp.split(gates_x + h @ p["w_hh"], 4, axis=-1)
                c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
                return (c, jax.nn.sigmoid(o) * jnp.tanh(c)), None

            zeros = jnp.zeros((x.shape[0], p["w_hh"].shape[0]), x.dtype)
            (_, h), _ = lax.scan(cell, (zeros, zeros), projected)
            return h @ head["w"] + head["b"], state

    elif isinstance(family, GRU):

        def forward(params, state, x, key, train):
            (p,), (head,) = _layers(params, "gru"), _layers(params, "dense")
            projected = jnp.swapaxes(x @ p["w_ih"] + p["b_ih"], 0, 1)  # (time, batch, 3·hidden)

            def cell(h, gates_x):
                x_r, x_z, x_n = jnp.split(gates_x, 3, axis=-1)
                h_r, h_z, h_n = jnp.split(h @ p["w_hh"] + p["b_hh"], 3, axis=-1)
                r, z = jax.nn.sigmoid(x_r + h_r), jax.nn.sigmoid(x_z + h_z)
                n = jnp.tanh(x_n + r * h_n)
                return (1 - z) * n + z * h, None

            zeros = jnp.zeros((x.shape[0], p["w_hh"].shape[0]), x.dtype)
            h, _ = lax.scan(cell, zeros, projected)
            return h @ head["w"] + head["b"], state

    elif isinstance(family, Transformer):

        def forward(params, state, ids, key, train):
            x = jnp.take(_layers(params, "embedding")[0]["table"], ids, axis=0)
            for p in _blocks(params):
                x = x + _attention(p["attention"], _layer_norm(p["norm_1"], x), family.heads)
                mlp = p["mlp"]
                h = _layer_norm(p["norm_2"], x) @ mlp["dense_0"]["w"] + mlp["dense_0"]["b"]
                x = (
                    x
                    + jax.nn.gelu(h, approximate=False) @ mlp["dense_3"]["w"]
                    + mlp["dense_3"]["b"]
                )
            (norm,), (head,) = _layers(params, "layer_norm"), _layers(params, "dense")
            return _layer_norm(norm, x) @ head["w"] + head["b"], state

    else:

        def forward(params, state, x, key, train):
            dense, norms = _layers(params, "dense"), _layers(params, "batch_norm")
            names = sorted(state, key=lambda k: int(k.rsplit("_", 1)[1]))
            new_state = {}
            for i, (d, p, name) in enumerate(zip(dense, norms, names, strict=False)):
                x = x @ d["w"] + d["b"]
                running = state[name]
                if train:
                    mean, var = jnp.mean(x, 0), jnp.var(x, 0)
                    n = x.shape[0]
                    new_state[name] = {
                        "mean": 0.9 * running["mean"] + 0.1 * lax.stop_gradient(mean),
                        "var": 0.9 * running["var"] + 0.1 * lax.stop_gradient(var) * n / (n - 1),
                    }
                else:
                    mean, var, new_state[name] = running["mean"], running["var"], running
                x = jax.nn.relu((x - mean) * lax.rsqrt(var + 1e-5) * p["scale"] + p["bias"])
                if train and family.rate > 0:
                    keep = jax.random.bernoulli(
                        jax.random.fold_in(key, i), 1 - family.rate, x.shape
                    )
                    x = jnp.where(keep, x / (1 - family.rate), 0.0)
            return x @ dense[-1]["w"] + dense[-1]["b"], new_state

    return forward


def _raw_step_fn(family: Family):
    """The hand-written step ``(carry, x, y) -> (carry, (loss, accuracy))``, not jitted."""
    forward = raw_forward(family)

    def loss_fn(params, state, x, y, key):
        logits, state = forward(params, state, x, key, True)
        return cross_entropy(logits, y), (logits, state)

    def step(carry, x, y):
        params, state, opt = carry
        key = jax.random.fold_in(_root_key(), opt[0])
        (loss, (logits, state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, state, x, y, key
        )
        accuracy = jnp.mean(jnp.argmax(logits, -1) == y)
        params, opt = adam_update(params, grads, opt)
        return (params, state, opt), (loss, accuracy)

    return step


@functools.lru_cache(maxsize=16)
def _jitted_raw_step(family: Family):
    """The hand-written step jitted with its carry donated, one per family (the per-step
    epoch reuses the step workload's compilation)."""
    return jax.jit(_raw_step_fn(family), donate_argnums=0)


def _raw_carry(params, state):
    zeros = jax.tree.map(jnp.zeros_like, params)
    copy = functools.partial(jax.tree.map, jnp.array)
    return (copy(params), copy(state), (jnp.zeros((), jnp.int32), zeros, copy(zeros)))


def raw_jax(family: Family, params, state, data) -> Built:
    step = _jitted_raw_step(family)
    carry, batches = _raw_carry(params, state), _device(data)

    def loss_only(carry, x, y):
        carry, (loss, _) = step(carry, x, y)
        return carry, loss

    return _step_loop(loss_only, carry, batches, lambda: step.lower(carry, *batches[0]))


# --- funcnet ---------------------------------------------------------------------------------


def _funcnet_state(family: Family, params, state):
    """``(optimizer, train state)``: the state `init_train_state` gives for key 0 (its shape
    taken without running the initializers), holding copies of `params` and `state`."""
    optimizer = funcnet.optim.adam(LEARNING_RATE)
    template = jax.eval_shape(
        lambda: funcnet.train.init_train_state(
            family.model(), optimizer, jax.random.key(0), family.in_shape
        )
    )
    copy = functools.partial(jax.tree.map, jnp.array)
    params = copy(params)
    train_state = template._replace(
        params=params,
        model_state=copy(state),
        opt_state=optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        key=jax.random.split(jax.random.key(0))[1],  # init_train_state's split of its key
    )
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(train_state)):
        raise ValueError(f"the train state has fields this benchmark does not fill: {template}")
    return optimizer, train_state


def funcnet_step(family: Family, params, state, data) -> Built:
    optimizer, train_state = _funcnet_state(family, params, state)
    step = funcnet.train.make_step(
        family.model(), optimizer, loss_fn=funcnet.losses.softmax_cross_entropy
    )
    batches = _device(data)

    def loss_only(train_state, x, y):
        train_state, metrics = step(train_state, (x, y))
        return train_state, metrics["loss"]

    lower = lambda: step.__wrapped__.lower(train_state, batches[0])
    return _step_loop(loss_only, train_state, batches, lower)


# --- Flax Linen ------------------------------------------------------------------------------


def _check_layout(template, variables, library: str):
    """Refuses converted weights whose tree or shapes differ from the library's own init."""
    shapes = jax.tree.map(lambda a: tuple(a.shape), variables)
    expected = jax.tree.map(lambda a: tuple(a.shape), template)
    if shapes != expected:
        raise ValueError(f"{library}: converted weights {shapes} differ from its init {expected}")
    return variables


def flax_model(family: Family, params, state):
    """``(module, variables)``: `family` as a Linen module holding funcnet's weights."""
    nn = _require("flax.linen")
    a = jnp.asarray

    if isinstance(family, CNN):

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                for c in family.channels:
                    x = nn.max_pool(nn.relu(nn.Conv(c, (3, 3))(x)), (2, 2), strides=(2, 2))
                x = nn.relu(nn.Dense(family.hidden)(x.reshape(x.shape[0], -1)))
                return nn.Dense(family.classes)(x)

        convs, dense = _layers(params, "conv"), _layers(params, "dense")
        weights = {
            f"Conv_{i}": {"kernel": a(p["w"]), "bias": a(p["b"])} for i, p in enumerate(convs)
        }
        weights |= {
            f"Dense_{i}": {"kernel": a(p["w"]), "bias": a(p["b"])} for i, p in enumerate(dense)
        }
        variables = {"params": weights}

    elif isinstance(family, LSTM):

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                cell = nn.OptimizedLSTMCell(family.hidden)
                (_, h), _ = nn.RNN(cell, return_carry=True)(x)
                return nn.Dense(family.classes)(h)

        (p,), (head,) = _layers(params, "lstm"), _layers(params, "dense")
        cell = {}
        for gate, i in zip("ifgo", range(4), strict=True):
            block = slice(i * family.hidden, (i + 1) * family.hidden)
            cell[f"i{gate}"] = {"kernel": a(p["w_ih"][:, block])}
            cell[f"h{gate}"] = {"kernel": a(p["w_hh"][:, block]), "bias": a(p["b"][block])}
        dense = {"kernel": a(head["w"]), "bias": a(head["b"])}
        variables = {"params": {"OptimizedLSTMCell_0": cell, "Dense_0": dense}}

    elif isinstance(family, GRU):

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                h, _ = nn.RNN(nn.GRUCell(family.hidden), return_carry=True)(x)
                return nn.Dense(family.classes)(h)

        (p,), (head,) = _layers(params, "gru"), _layers(params, "dense")
        blocks = [slice(i * family.hidden, (i + 1) * family.hidden) for i in range(3)]
        # Flax sums r's and z's two biases into the input one; n's recurrent bias is its own.
        cell = {
            f"i{gate}": {
                "kernel": a(p["w_ih"][:, block]),
                "bias": a(p["b_ih"][block] + (p["b_hh"][block] if gate != "n" else 0)),
            }
            for gate, block in zip("rzn", blocks, strict=True)
        }
        cell |= {f"h{gate}": {"kernel": a(p["w_hh"][:, blocks[i]])} for i, gate in enumerate("rz")}
        cell["hn"] = {"kernel": a(p["w_hh"][:, blocks[2]]), "bias": a(p["b_hh"][blocks[2]])}
        dense = {"kernel": a(head["w"]), "bias": a(head["b"])}
        variables = {"params": {"GRUCell_0": cell, "Dense_0": dense}}

    elif isinstance(family, Transformer):

        class Block(nn.Module):
            @nn.compact
            def __call__(self, x, mask):
                h = nn.LayerNorm(epsilon=1e-5, name="norm_1")(x)
                x = x + nn.MultiHeadDotProductAttention(family.heads, name="attention")(
                    h, mask=mask
                )
                h = nn.Dense(family.mlp, name="dense_0")(
                    nn.LayerNorm(epsilon=1e-5, name="norm_2")(x)
                )
                return x + nn.Dense(family.width, name="dense_1")(nn.gelu(h, approximate=False))

        class Net(nn.Module):
            @nn.compact
            def __call__(self, ids, train=False):
                x = nn.Embed(family.vocab, family.width, name="embed")(ids)
                mask = nn.make_causal_mask(ids)
                for i in range(family.blocks):
                    x = Block(name=f"block_{i}")(x, mask)
                return nn.Dense(family.vocab, name="head")(
                    nn.LayerNorm(epsilon=1e-5, name="norm")(x)
                )

        heads, d = family.heads, family.width // family.heads

        def block(p):
            att = p["attention"]
            projections = {
                name: {
                    "kernel": a(att[short]["w"]).reshape(family.width, heads, d),
                    "bias": a(att[short]["b"]).reshape(heads, d),
                }
                for name, short in (("query", "q"), ("key", "k"), ("value", "v"))
            }
            projections["out"] = {
                "kernel": a(att["o"]["w"]).reshape(heads, d, family.width),
                "bias": a(att["o"]["b"]),
            }
            mlp = p["mlp"]
            return {
                "norm_1": {k: a(v) for k, v in p["norm_1"].items()},
                "attention": projections,
                "norm_2": {k: a(v) for k, v in p["norm_2"].items()},
                "dense_0": {"kernel": a(mlp["dense_0"]["w"]), "bias": a(mlp["dense_0"]["b"])},
                "dense_1": {"kernel": a(mlp["dense_3"]["w"]), "bias": a(mlp["dense_3"]["b"])},
            }

        (norm,), (head,) = _layers(params, "layer_norm"), _layers(params, "dense")
        weights = {
            "embed": {"embedding": a(_layers(params, "embedding")[0]["table"])},
            **{f"block_{i}": block(p) for i, p in enumerate(_blocks(params))},
            "norm": {k: a(v) for k, v in norm.items()},
            "head": {"kernel": a(head["w"]), "bias": a(head["b"])},
        }
        variables = {"params": weights}

    else:

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train=False):
                for size in family.sizes[1:-1]:
                    x = nn.Dense(size)(x)
                    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
                    x = nn.Dropout(family.rate, deterministic=not train)(nn.relu(x))
                return nn.Dense(family.sizes[-1])(x)

        dense, norms = _layers(params, "dense"), _layers(params, "batch_norm")
        running = _layers(state, "batch_norm")
        weights = {
            f"Dense_{i}": {"kernel": a(p["w"]), "bias": a(p["b"])} for i, p in enumerate(dense)
        }
        weights |= {
            f"BatchNorm_{i}": {"scale": a(p["scale"]), "bias": a(p["bias"])}
            for i, p in enumerate(norms)
        }
        stats = {
            f"BatchNorm_{i}": {"mean": a(s["mean"]), "var": a(s["var"])}
            for i, s in enumerate(running)
        }
        variables = {"params": weights, "batch_stats": stats}

    module = Net()
    x = jnp.zeros(family.in_shape, jnp.int32 if isinstance(family, Transformer) else jnp.float32)
    template = jax.eval_shape(module.init, jax.random.key(0), x)
    return module, _check_layout(template, variables, "Flax")


def flax_linen(family: Family, params, state, data) -> Built:
    optax = _require("optax")
    module, variables = flax_model(family, params, state)
    tx = optax.adam(LEARNING_RATE)
    collections = [k for k in variables if k != "params"]

    @jax.jit
    def step(carry, x, y):
        params, stats, opt_state, count = carry

        def loss_fn(params):
            rngs = {"dropout": jax.random.fold_in(_root_key(), count)}
            variables = {"params": params, **stats}
            if collections:
                logits, stats_out = module.apply(
                    variables, x, train=True, rngs=rngs, mutable=collections
                )
            else:
                logits, stats_out = module.apply(variables, x, train=True, rngs=rngs), stats
            return cross_entropy(logits, y), stats_out

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), stats, opt_state, count + 1), loss

    stats = {k: variables[k] for k in collections}
    carry = (variables["params"], stats, tx.init(variables["params"]), jnp.zeros((), jnp.int32))
    batches = _device(data)
    return _step_loop(step, carry, batches, lambda: step.lower(carry, *batches[0]))


# --- Equinox ---------------------------------------------------------------------------------


def _nchw(x):
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def equinox_model(family: Family, params, state):
    """``(model, state, transform)``: `family` as an Equinox module holding funcnet's weights,
    its `eqx.nn.State` (None without batch norm) and the map of funcnet's input batches to its
    own (channels first for the CNN). The module maps one example ``(x, state, key)`` to
    ``(logits, state)``. Modules without state are built by `eqx.filter_eval_shape`, their
    arrays all replaced by funcnet's, so that no initializer runs eagerly."""
    eqx = _require("equinox")
    key = jax.random.key(0)
    a = jnp.asarray
    transform = None

    if isinstance(family, CNN):

        class Net(eqx.Module):
            convs: list
            dense: list
            pool: Any

            def __init__(self, key):
                keys = jax.random.split(key, len(family.channels) + 2)
                ins = (1, *family.channels[:-1])
                self.convs = [
                    eqx.nn.Conv2d(i, o, 3, padding=1, key=k)
                    for i, o, k in zip(ins, family.channels, keys, strict=False)
                ]
                flat = family.channels[-1] * family.final_side**2
                self.dense = [
                    eqx.nn.Linear(flat, family.hidden, key=keys[-2]),
                    eqx.nn.Linear(family.hidden, family.classes, key=keys[-1]),
                ]
                self.pool = eqx.nn.MaxPool2d(2, 2)

            def __call__(self, x, state=None, key=None):
                for conv in self.convs:
                    x = self.pool(jax.nn.relu(conv(x)))
                x = jax.nn.relu(self.dense[0](x.reshape(-1)))
                return self.dense[1](x), state

        model = eqx.filter_eval_shape(Net, key)
        convs, (hidden, head) = _layers(params, "conv"), _layers(params, "dense")
        side, channels = family.final_side, family.channels[-1]
        # funcnet flattens (h, w, c); Equinox's channels-first image flattens (c, h, w).
        hidden_w = np.asarray(hidden["w"]).reshape(side, side, channels, -1)
        hidden_w = hidden_w.transpose(2, 0, 1, 3).reshape(side * side * channels, -1)
        leaves = []
        for p in convs:
            leaves += [a(np.asarray(p["w"]).transpose(3, 2, 0, 1)), a(p["b"])[:, None, None]]
        leaves += [a(hidden_w.T), a(hidden["b"]), a(np.asarray(head["w"]).T), a(head["b"])]
        model = eqx.tree_at(
            lambda m: [
                *[leaf for c in m.convs for leaf in (c.weight, c.bias)],
                *[leaf for d in m.dense for leaf in (d.weight, d.bias)],
            ],
            model,
            leaves,
        )
        transform, eqx_state = _nchw, None

    elif isinstance(family, (LSTM, GRU)):
        lstm = isinstance(family, LSTM)

        class Net(eqx.Module):
            cell: Any
            head: Any

            def __init__(self, key):
                k1, k2 = jax.random.split(key)
                cell = eqx.nn.LSTMCell if lstm else eqx.nn.GRUCell
                self.cell = cell(family.features, family.hidden, key=k1)
                self.head = eqx.nn.Linear(family.hidden, family.classes, key=k2)

            def __call__(self, xs, state=None, key=None):
                zeros = jnp.zeros(family.hidden, xs.dtype)
                # The LSTM's carry is (h, c), the GRU's h alone.
                carry = (zeros, zeros) if lstm else zeros
                carry, _ = lax.scan(lambda c, x: (self.cell(x, c), None), carry, xs)
                return self.head(carry[0] if lstm else carry), state

        (p,), (head,) = _layers(params, "lstm" if lstm else "gru"), _layers(params, "dense")
        if lstm:
            biases = {"bias": p["b"]}
        else:
            # Equinox sums r's and z's two biases into `bias`; n's recurrent bias is `bias_n`.
            two = 2 * family.hidden
            biases = {"bias": p["b_ih"].at[:two].add(p["b_hh"][:two]), "bias_n": p["b_hh"][two:]}
        names = ["weight_ih", "weight_hh", *biases]
        model = eqx.tree_at(
            lambda m: [*(getattr(m.cell, n) for n in names), m.head.weight, m.head.bias],
            eqx.filter_eval_shape(Net, key),
            [
                a(p["w_ih"]).T,
                a(p["w_hh"]).T,
                *(a(b) for b in biases.values()),
                a(head["w"]).T,
                a(head["b"]),
            ],
        )
        eqx_state = None

    elif isinstance(family, Transformer):

        class Block(eqx.Module):
            norm_1: Any
            attention: Any
            norm_2: Any
            dense_0: Any
            dense_1: Any

            def __init__(self, key):
                k1, k2, k3 = jax.random.split(key, 3)
                self.norm_1 = eqx.nn.LayerNorm(family.width, eps=1e-5)
                self.attention = eqx.nn.MultiheadAttention(
                    family.heads,
                    family.width,
                    use_query_bias=True,
                    use_key_bias=True,
                    use_value_bias=True,
                    use_output_bias=True,
                    key=k1,
                )
                self.norm_2 = eqx.nn.LayerNorm(family.width, eps=1e-5)
                self.dense_0 = eqx.nn.Linear(family.width, family.mlp, key=k2)
                self.dense_1 = eqx.nn.Linear(family.mlp, family.width, key=k3)

            def __call__(self, x, mask):
                h = jax.vmap(self.norm_1)(x)
                x = x + self.attention(h, h, h, mask=mask)
                h = jax.vmap(self.dense_0)(jax.vmap(self.norm_2)(x))
                return x + jax.vmap(self.dense_1)(jax.nn.gelu(h, approximate=False))

        class Net(eqx.Module):
            embed: Any
            blocks: list
            norm: Any
            head: Any

            def __init__(self, key):
                keys = jax.random.split(key, family.blocks + 2)
                self.embed = eqx.nn.Embedding(family.vocab, family.width, key=keys[0])
                self.blocks = [Block(k) for k in keys[1:-1]]
                self.norm = eqx.nn.LayerNorm(family.width, eps=1e-5)
                self.head = eqx.nn.Linear(family.width, family.vocab, key=keys[-1])

            def __call__(self, ids, state=None, key=None):
                x = jax.vmap(self.embed)(ids)
                mask = jnp.tril(jnp.ones((ids.shape[0], ids.shape[0]), bool))
                for block in self.blocks:
                    x = block(x, mask)
                return jax.vmap(self.head)(jax.vmap(self.norm)(x)), state

        def where(m):
            found = [m.embed.weight]
            for b in m.blocks:
                att = b.attention
                found += [b.norm_1.weight, b.norm_1.bias, b.norm_2.weight, b.norm_2.bias]
                for proj in (att.query_proj, att.key_proj, att.value_proj, att.output_proj):
                    found += [proj.weight, proj.bias]
                found += [b.dense_0.weight, b.dense_0.bias, b.dense_1.weight, b.dense_1.bias]
            return [*found, m.norm.weight, m.norm.bias, m.head.weight, m.head.bias]

        leaves = [a(_layers(params, "embedding")[0]["table"])]
        for p in _blocks(params):
            att, mlp = p["attention"], p["mlp"]
            leaves += [a(p["norm_1"]["scale"]), a(p["norm_1"]["bias"])]
            leaves += [a(p["norm_2"]["scale"]), a(p["norm_2"]["bias"])]
            for name in "qkvo":
                leaves += [a(att[name]["w"]).T, a(att[name]["b"])]
            leaves += [a(mlp["dense_0"]["w"]).T, a(mlp["dense_0"]["b"])]
            leaves += [a(mlp["dense_3"]["w"]).T, a(mlp["dense_3"]["b"])]
        (norm,), (head,) = _layers(params, "layer_norm"), _layers(params, "dense")
        leaves += [a(norm["scale"]), a(norm["bias"]), a(head["w"]).T, a(head["b"])]
        model, eqx_state = eqx.tree_at(where, eqx.filter_eval_shape(Net, key), leaves), None

    else:

        class Net(eqx.Module):
            dense: list
            norms: list
            dropout: Any

            def __init__(self, key):
                pairs = list(zip(family.sizes[:-1], family.sizes[1:], strict=True))
                keys = jax.random.split(key, len(pairs))
                self.dense = [
                    eqx.nn.Linear(i, o, key=k) for (i, o), k in zip(pairs, keys, strict=True)
                ]
                self.norms = [
                    eqx.nn.BatchNorm(o, axis_name="batch", momentum=0.9, mode="batch")
                    for o in family.sizes[1:-1]
                ]
                self.dropout = eqx.nn.Dropout(family.rate)

            def __call__(self, x, state, key):
                n = len(self.norms)
                keys = [None] * n if key is None else jax.random.split(key, n)
                for dense, norm, k in zip(self.dense, self.norms, keys, strict=False):
                    x, state = norm(dense(x), state)
                    x = self.dropout(jax.nn.relu(x), key=k)
                return self.dense[-1](x), state

        model, eqx_state = eqx.nn.make_with_state(Net)(key)
        dense, norms = _layers(params, "dense"), _layers(params, "batch_norm")
        leaves = [leaf for p in dense for leaf in (a(p["w"]).T, a(p["b"]))]
        leaves += [leaf for p in norms for leaf in (a(p["scale"]), a(p["bias"]))]
        model = eqx.tree_at(
            lambda m: [
                *[leaf for d in m.dense for leaf in (d.weight, d.bias)],
                *[leaf for n in m.norms for leaf in (n.weight, n.bias)],
            ],
            model,
            leaves,
        )
    if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(model)):
        raise ValueError("Equinox: some of the model's arrays were not given funcnet's weights")
    return model, eqx_state, transform


def equinox(family: Family, params, state, data) -> Built:
    eqx = _require("equinox")
    optax = _require("optax")
    model, eqx_state, transform = equinox_model(family, params, state)
    tx = optax.adam(LEARNING_RATE)

    @eqx.filter_jit
    def step(carry, x, y):
        model, state, opt_state, count = carry
        keys = jax.random.split(jax.random.fold_in(_root_key(), count), x.shape[0])

        def loss_fn(model):
            batched = jax.vmap(model, axis_name="batch", in_axes=(0, None, 0), out_axes=(0, None))
            logits, state_out = batched(x, state, keys)
            return cross_entropy(logits, y), state_out

        (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), state, opt_state, count + 1), loss

    carry = (model, eqx_state, tx.init(eqx.filter(model, eqx.is_array)), jnp.zeros((), jnp.int32))
    batches = _device(data, transform)
    return _step_loop(step, carry, batches, lambda: step.lower(carry, *batches[0]))


STEP_CONTENDERS: dict[str, Callable[..., Built]] = {
    "funcnet": funcnet_step,
    "raw_jax": raw_jax,
    "flax_linen": flax_linen,
    "equinox": equinox,
}


# --- inference -------------------------------------------------------------------------------


def _inference(forward, args) -> Built:
    """``run(n)``: `n` calls of ``forward(*args)`` with at most 16 results in flight."""

    def run(n):
        pending = []
        out = None
        for _ in range(n):
            out = forward(*args)
            pending.append(out)
            if len(pending) > 16:
                jax.block_until_ready(pending.pop(0))
        return jax.block_until_ready(out)

    out, seconds, temp = _first(lambda: run(1), lambda: forward.lower(*args))
    return Built(run, np.asarray(out), temp, seconds)


def funcnet_inference(family: Family, params, state, x) -> Built:
    model = family.model()
    forward = jax.jit(lambda params, state, x: model.apply(params, state, x)[0])
    args = (jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, state), jnp.asarray(x))
    return _inference(forward, args)


def raw_jax_inference(family: Family, params, state, x) -> Built:
    model = raw_forward(family)
    forward = jax.jit(lambda params, state, x: model(params, state, x, None, False)[0])
    args = (jax.tree.map(jnp.asarray, params), jax.tree.map(jnp.asarray, state), jnp.asarray(x))
    return _inference(forward, args)


def flax_linen_inference(family: Family, params, state, x) -> Built:
    module, variables = flax_model(family, params, state)
    forward = jax.jit(lambda variables, x: module.apply(variables, x, train=False))
    args = (variables, jnp.asarray(x))
    return _inference(forward, args)


def equinox_inference(family: Family, params, state, x) -> Built:
    eqx = _require("equinox")
    model, eqx_state, transform = equinox_model(family, params, state)

    @eqx.filter_jit
    def forward(model, eqx_state, x):
        return jax.vmap(lambda e: model(e, eqx_state, None)[0], axis_name="batch")(x)

    args = (eqx.nn.inference_mode(model), eqx_state, jnp.asarray(transform(x) if transform else x))
    return _inference(forward, args)


INFERENCE_CONTENDERS: dict[str, Callable[..., Built]] = {
    "funcnet": funcnet_inference,
    "raw_jax": raw_jax_inference,
    "flax_linen": flax_linen_inference,
    "equinox": equinox_inference,
}


# --- one epoch: fit against the hand-written per-step loop and scanned epoch ----------------


def epoch_data(family: CNN, data, steps: int) -> tuple[jax.Array, jax.Array]:
    """``(x, y)`` of `steps` batches' worth of examples, cycling through `data`."""
    x, y = data
    index = np.arange(steps) % len(x)
    return (
        jnp.asarray(x[index].reshape(steps * family.batch, *x.shape[2:])),
        jnp.asarray(y[index].reshape(steps * family.batch, *y.shape[2:])),
    )


def _fit_order(step, n: int):
    """The rows of an epoch in `fit`'s order: sorted by 64 random bits from
    ``fold_in(key, 2·step + 1)``, the key being that of the state `_funcnet_state` builds."""
    root = jax.random.split(jax.random.key(0))[1]
    key = jax.random.fold_in(root, 2 * step.astype(jnp.uint32) + 1)
    high, low = jax.random.bits(key, (2, n), jnp.uint32)
    return lax.sort((high, low, jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]


def funcnet_fit(family: CNN, params, state, data, steps: int) -> Built:
    """`funcnet.train.fit` itself, with its defaults: ``run(n)`` is one `fit` call of `n`
    more epochs. Its `detail` says how `fit` ran them (``FitResult.loop``)."""
    optimizer, train_state = _funcnet_state(family, params, state)
    train_data = epoch_data(family, data, steps)
    model = family.model()
    held, done, loop = [train_state], [0], [None]

    def run(n):
        result = funcnet.train.fit(
            model,
            optimizer,
            train_data,
            loss_fn=funcnet.losses.softmax_cross_entropy,
            epochs=done[0] + n,
            batch_size=family.batch,
            state=held[0],
            progress=False,
        )
        held[0], done[0] = result.state, done[0] + n
        loop[0] = getattr(result, "loop", None)  # "scan" or "step", where fit says
        jax.block_until_ready(result.state)
        return result.history["loss"][-1]

    loss, seconds, _ = _first(lambda: run(1))
    return Built(run, float(loss), None, seconds, steps, f"loop={loop[0]}" if loop[0] else "")


def raw_jax_steps(family: CNN, params, state, data, steps: int) -> Built:
    """The hand-written step called once per batch; the epoch's batches are gathered in
    `fit`'s order by one jitted call, and the epoch's mean loss read back at its end."""
    step = _jitted_raw_step(family)
    x, y = epoch_data(family, data, steps)
    n, b = x.shape[0], family.batch

    @jax.jit
    def batches(count, x, y):
        order = _fit_order(count, n)
        xs, ys = jnp.take(x, order, axis=0), jnp.take(y, order, axis=0)
        return [(xs[i * b : (i + 1) * b], ys[i * b : (i + 1) * b]) for i in range(n // b)]

    carry = _raw_carry(params, state)
    held = [carry]

    def run(epochs):
        carry, means = held[0], None
        for _ in range(epochs):
            losses = []
            for xb, yb in batches(carry[2][0], x, y):
                carry, (loss, _) = step(carry, xb, yb)
                losses.append(loss)
            means = float(np.mean(jax.device_get(losses)))
        held[0] = jax.block_until_ready(carry)
        return means

    loss, seconds, temp = _first(lambda: run(1), lambda: step.lower(carry, x[:b], y[:b]))
    return Built(run, loss, temp, seconds, steps)


def raw_jax_epoch(family: CNN, params, state, data, steps: int) -> Built:
    """The hand-written step scanned over the epoch in one jitted, donated call: the rows in
    `fit`'s order, gathered once, contiguous batches, the mean loss read back."""
    step = _raw_step_fn(family)
    x, y = epoch_data(family, data, steps)
    n, b = x.shape[0], family.batch

    @functools.partial(jax.jit, donate_argnums=0)
    def epoch(carry, x, y):
        order = _fit_order(carry[2][0], n)
        xs = jnp.take(x, order, axis=0).reshape(n // b, b, *x.shape[1:])
        ys = jnp.take(y, order, axis=0).reshape(n // b, b, *y.shape[1:])
        carry, (losses, accuracies) = lax.scan(lambda c, batch: step(c, *batch), carry, (xs, ys))
        return carry, (jnp.mean(losses), jnp.mean(accuracies))

    carry = _raw_carry(params, state)
    held = [carry]

    def run(epochs):
        carry, means = held[0], None
        for _ in range(epochs):
            carry, means = epoch(carry, x, y)
            means = jax.device_get(means)
        held[0] = jax.block_until_ready(carry)
        return float(means[0])

    loss, seconds, temp = _first(lambda: run(1), lambda: epoch.lower(carry, x, y))
    return Built(run, loss, temp, seconds, steps)


FIT_CONTENDERS: dict[str, Callable[..., Built]] = {
    "funcnet_scan": funcnet_fit,
    "raw_jax": raw_jax_steps,
    "raw_jax_epoch": raw_jax_epoch,
}

TITLES = {
    "funcnet": "funcnet",
    "raw_jax": "raw JAX (hand-written)",
    "flax_linen": "Flax Linen",
    "equinox": "Equinox",
    "funcnet_scan": "funcnet fit (one epoch)",
}
FIT_TITLES = {
    "funcnet_scan": "funcnet fit (one epoch)",
    "raw_jax": "raw JAX per-step loop",
    "raw_jax_epoch": "raw JAX scanned epoch",
}
