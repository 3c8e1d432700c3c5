"""The same MLP training step written in each library, the way its users write it.

Every builder takes ``(mlp, weights, data)`` and returns a `Runner` whose ``run(n)`` does `n`
calls (a call is one Adam step of softmax cross-entropy on one batch, or one whole epoch for
the scan-fused contender) and blocks on the result. A builder raises `Unavailable` when its
library is not installed, so a run without the ``bench`` extra reports the row instead of
crashing.

What each contender is:

- ``funcnet``: `funcnet.train.make_step` with its defaults (loss and accuracy), the jitted
  per-step function, called once per step.
- ``funcnet_scan``: `funcnet.train.fit` with its defaults, one epoch as one compiled
  `lax.scan`; the host reads the epoch's mean loss and accuracy back after each epoch.
- ``raw_jax``: hand-written params as ``[(w, b), ...]``, hand-written Adam, one `jax.jit` step
  with the params and optimizer state donated (updated in place), returning the loss and the
  accuracy of the batch, as `make_step` does: the baseline of the per-step rows;
- ``raw_jax_plain``: the same step without donation, as most hand-written loops are;
- ``raw_jax_epoch``: the same step in one jitted, donated `lax.scan` over an epoch, with the
  shuffle `fit` uses (a sort of the rows by 64 random bits drawn on the device), the data
  gathered into that order once and sliced into contiguous batches, and the epoch's mean
  loss and accuracy read back after each epoch: what `fit` computes, written by hand, the
  baseline of the scan-fused row;
- ``raw_jax_scan``: the same step in a `lax.scan` over an epoch of pre-cut batches: the
  floor for a scan-fused epoch (no shuffle, gather or metrics).
- ``flax_linen``: `flax.linen.Dense` layers, `optax.adam`, a `jax.jit` step.
- ``flax_nnx``: `flax.nnx.Linear` layers, `nnx.Optimizer`, an `nnx.jit` step.
- ``flax_nnx_cached``: the same step through `nnx.cached_partial`, Flax's advice for
  cutting `nnx.jit`'s Python overhead in small steps.
- ``equinox``: `equinox.nn.Linear` layers vmapped over the batch, `optax.adam`, an
  `eqx.filter_jit` step.
- ``haiku``: `haiku.nets.MLP`, `optax.adam`, a `jax.jit` step.
- ``torch``: `torch.nn.Sequential`, `torch.optim.Adam`, eager mode (forward, backward, step).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.workload import (
    LEARNING_RATE,
    MLP,
    Batches,
    Weights,
    funcnet_model,
    funcnet_params,
    weights_of,
)

B1, B2, EPS = 0.9, 0.999, 1e-8


class Unavailable(Exception):
    """A contender that cannot run here (its library is not installed)."""


class Runner(NamedTuple):
    """``run(n)``: `n` calls, blocking at the end; each call does `steps_per_call` steps.

    ``weights()`` reads the current weights back as ``[(w, b), ...]`` numpy arrays in the
    funcnet layout, so tests can check that every contender does the same arithmetic.
    """

    run: Callable[[int], object]
    steps_per_call: int = 1
    weights: Callable[[], Weights] | None = None


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise Unavailable(f"{module} not installed") from err


def _device_batches(data: Batches, sharding=None) -> tuple[list[jax.Array], list[jax.Array]]:
    if sharding is not None:
        return [jax.device_put(x, sharding) for x in data.x], [
            jax.device_put(y, sharding) for y in data.y
        ]
    return [jnp.asarray(x) for x in data.x], [jnp.asarray(y) for y in data.y]


def _jax_loop(
    step, carry, data: Batches, weights_of_carry, pair: bool = False, sharding=None
) -> Runner:
    """A per-step loop over `data` of ``carry, out = step(carry, x, y)``.

    With `pair`, the step takes the batch as one argument: ``step(carry, (x, y))``. With a
    `sharding`, the batches are placed with it before the loop.
    """
    xs, ys = _device_batches(data, sharding)
    batches = list(zip(xs, ys, strict=True)) if pair else None
    state = [carry]

    def run(n):
        carry = state[0]
        loss = None
        for i in range(n):
            if pair:
                carry, loss = step(carry, batches[i % len(xs)])
            else:
                carry, loss = step(carry, xs[i % len(xs)], ys[i % len(ys)])
        state[0] = carry
        return jax.block_until_ready((carry, loss))

    return Runner(run, weights=lambda: _numpy(weights_of_carry(state[0])))


def _numpy(weights) -> Weights:
    return [(np.asarray(w), np.asarray(b)) for w, b in weights]


# --- funcnet -------------------------------------------------------------------------------


def _funcnet_train():
    try:
        from funcnet import train
    except ImportError as err:
        raise Unavailable("funcnet.train not available yet") from err
    for name in ("make_step", "epoch_fn", "init_train_state"):
        if not hasattr(train, name):
            raise Unavailable(f"funcnet.train.{name} not available yet")
    return train


def funcnet_state(mlp: MLP, weights: Weights, optimizer, key: int = 0):
    """A `funcnet.train.TrainState` at step 0 holding `weights`."""
    train = _funcnet_train()
    params = funcnet_params(mlp, weights)
    state = train.init_train_state(
        funcnet_model(mlp), optimizer, jax.random.key(key), (mlp.batch, mlp.sizes[0])
    )
    return state._replace(params=params, opt_state=optimizer.init(params))


def funcnet_setup(mlp: MLP):
    """``(train module, model, loss, optimizer)`` of the funcnet contenders."""
    train = _funcnet_train()
    import funcnet as fn

    return train, funcnet_model(mlp), fn.losses.softmax_cross_entropy, fn.optim.adam(LEARNING_RATE)


def funcnet(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    train, model, loss_fn, optimizer = funcnet_setup(mlp)
    step = train.make_step(model, optimizer, loss_fn=loss_fn)
    state = funcnet_state(mlp, weights, optimizer)
    return _jax_loop(step, state, data, lambda s: weights_of(s.params), pair=True)


def epoch_data(mlp: MLP, data: Batches, epoch_steps: int) -> tuple[jax.Array, jax.Array]:
    """``(x, y)`` of `epoch_steps` batches' worth of examples, cycling through `data`."""
    epoch = data.tiled(epoch_steps)
    x = epoch.x.reshape(epoch_steps * mlp.batch, mlp.sizes[0])
    return jnp.asarray(x), jnp.asarray(epoch.y.reshape(-1))


def funcnet_scan(
    mlp: MLP, weights: Weights, data: Batches, epoch_steps: int = 256, mesh=None
) -> Runner:
    """`funcnet.train.fit` itself, continuing the same train state call after call.

    ``run(n)`` is one `fit` call of `n` more epochs: each epoch is one compiled `lax.scan`
    (shuffle, gather, step, non-finite check), and the host reads its metrics back, as in
    any `fit`. `fit` caches the compiled epoch, so only the first call compiles. With a
    `mesh`, `fit` trains data parallel on it, each process passing its share of the rows.
    """
    train, model, loss_fn, optimizer = funcnet_setup(mlp)
    if not hasattr(train, "fit"):
        raise Unavailable("funcnet.train.fit not available yet")
    train_data = epoch_data(mlp, data, epoch_steps)
    if mesh is not None:
        train_data = train.process_share(train_data)
    state = [funcnet_state(mlp, weights, optimizer)]
    done = [0]

    def run(n):
        result = train.fit(
            model,
            optimizer,
            train_data,
            loss_fn=loss_fn,
            epochs=done[0] + n,
            batch_size=mlp.batch,
            state=state[0],
            progress=False,
            mesh=mesh,
        )
        state[0], done[0] = result.state, done[0] + n
        return jax.block_until_ready(result.state)

    return Runner(run, epoch_steps, weights=lambda: weights_of(state[0].params))


# --- hand-written JAX ----------------------------------------------------------------------


def _raw_step(weights: Weights):
    """The hand-written step ``(carry, x, y) -> (carry, (loss, accuracy))`` and its initial
    carry; the accuracy comes from the logits of the forward pass the gradient uses."""
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in weights]
    mu, nu = (jax.tree.map(jnp.zeros_like, params) for _ in range(2))
    carry = (params, (jnp.zeros((), jnp.int32), mu, nu))

    def loss_fn(params, x, y):
        for w, b in params[:-1]:
            x = jax.nn.relu(x @ w + b)
        w, b = params[-1]
        logits = x @ w + b
        log_probs = jax.nn.log_softmax(logits)
        return -jnp.mean(jnp.take_along_axis(log_probs, y[:, None], axis=1)), logits

    def step(carry, x, y):
        params, (count, mu, nu) = carry
        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == y)
        count = count + 1
        mu = jax.tree.map(lambda m, g: B1 * m + (1 - B1) * g, mu, grads)
        nu = jax.tree.map(lambda v, g: B2 * v + (1 - B2) * g * g, nu, grads)
        t = count.astype(jnp.float32)
        mu_hat_scale = 1 / (1 - B1**t)
        nu_hat_scale = 1 / (1 - B2**t)
        params = jax.tree.map(
            lambda p, m, v: (
                p - LEARNING_RATE * (m * mu_hat_scale) / (jnp.sqrt(v * nu_hat_scale) + EPS)
            ),
            params,
            mu,
            nu,
        )
        return (params, (count, mu, nu)), (loss, accuracy)

    return step, carry


def raw_jax(mlp: MLP, weights: Weights, data: Batches, donate: bool = True) -> Runner:
    del mlp
    step, carry = _raw_step(weights)
    step = jax.jit(step, donate_argnums=0 if donate else ())
    return _jax_loop(step, carry, data, lambda c: c[0])


def raw_jax_scan(mlp: MLP, weights: Weights, data: Batches, epoch_steps: int = 256) -> Runner:
    """The hand-written step scanned over a whole epoch of pre-cut batches, one jitted call.

    No shuffle, gather, metrics or checks: the floor a scan-fused epoch can reach.
    """
    del mlp
    step, carry = _raw_step(weights)
    epoch = data.tiled(epoch_steps)
    xs, ys = jnp.asarray(epoch.x), jnp.asarray(epoch.y)

    @functools.partial(jax.jit, donate_argnums=0)
    def run_epoch(carry):
        carry, _ = jax.lax.scan(lambda c, batch: step(c, *batch), carry, (xs, ys))
        return carry

    state = [carry]

    def run(n):
        for _ in range(n):
            state[0] = run_epoch(state[0])
        return jax.block_until_ready(state[0])

    return Runner(run, epoch_steps, weights=lambda: _numpy(state[0][0]))


def raw_jax_epoch(
    mlp: MLP, weights: Weights, data: Batches, epoch_steps: int = 256, mesh=None
) -> Runner:
    """The hand-written step in a hand-written epoch that computes what `fit`'s does.

    Each epoch draws 64 random bits per row from ``fold_in(key, 2·steps + 1)`` (the key and
    the derivation of the train state `funcnet_state` builds, so the two epochs visit the
    rows in the same order), sorts the rows by them, gathers the data into that order once,
    scans the step over contiguous batches and returns the mean loss and accuracy, which the
    host reads back. With a `mesh` the data is
    replicated, each batch's rows are laid out over its ``data`` axis and the carry is
    replicated: data parallel by hand.
    """
    step, carry = _raw_step(weights)
    x, y = epoch_data(mlp, data, epoch_steps)
    n, b = x.shape[0], mlp.batch
    constrain = lambda tree: tree
    if mesh is not None:
        from jax.sharding import NamedSharding
        from jax.sharding import PartitionSpec as P

        replicated = NamedSharding(mesh, P())
        x, y, carry = jax.device_put((x, y, carry), replicated)
        rows = NamedSharding(mesh, P(None, "data"))

        def constrain(tree):
            return jax.lax.with_sharding_constraint(tree, rows)

    root = jax.random.split(jax.random.key(0))[1]  # the key of `funcnet_state`'s state

    @functools.partial(jax.jit, donate_argnums=0)
    def run_epoch(carry, x, y):
        steps = carry[1][0].astype(jnp.uint32)  # Adam's step count
        high, low = jax.random.bits(jax.random.fold_in(root, 2 * steps + 1), (2, n))
        order = jax.lax.sort((high, low, jnp.arange(n, dtype=jnp.int32)), num_keys=2)[2]
        xs = constrain(jnp.take(x, order, axis=0).reshape(n // b, b, -1))
        ys = constrain(jnp.take(y, order, axis=0).reshape(n // b, b))
        carry, (losses, accuracies) = jax.lax.scan(
            lambda c, batch: step(c, *batch), carry, (xs, ys)
        )
        return carry, (jnp.mean(losses), jnp.mean(accuracies))

    state = [carry]

    def run(n_epochs):
        for _ in range(n_epochs):
            state[0], means = run_epoch(state[0], x, y)
            jax.device_get(means)
        return jax.block_until_ready(state[0])

    return Runner(run, epoch_steps, weights=lambda: _numpy(state[0][0]))


def raw_jax_plain(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    return raw_jax(mlp, weights, data, donate=False)


# --- Flax ------------------------------------------------------------------------------------


def _optax_loss(logits, y):
    optax = _require("optax")
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _optax_loop(apply, params, data: Batches, weights_of_params) -> Runner:
    """The per-step loop of a library whose model is ``apply(params, x) -> logits``: a
    `jax.jit` step of `optax.adam` on softmax cross-entropy, as Flax Linen's and Haiku's
    users write it."""
    optax = _require("optax")
    tx = optax.adam(LEARNING_RATE)

    @jax.jit
    def step(carry, x, y):
        params, opt_state = carry
        loss, grads = jax.value_and_grad(lambda p: _optax_loss(apply(p, x), y))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    return _jax_loop(
        step, (params, tx.init(params)), data, lambda carry: weights_of_params(carry[0])
    )


def flax_linen(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    nn = _require("flax.linen")

    class Net(nn.Module):
        sizes: tuple[int, ...]

        @nn.compact
        def __call__(self, x):
            for features in self.sizes[1:-1]:
                x = nn.relu(nn.Dense(features)(x))
            return nn.Dense(self.sizes[-1])(x)

    net = Net(mlp.sizes)
    params = {
        "params": {
            f"Dense_{i}": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
            for i, (w, b) in enumerate(weights)
        }
    }

    def weights_of_params(layers):
        layers = layers["params"]
        return [(layers[f"Dense_{i}"]["kernel"], layers[f"Dense_{i}"]["bias"]) for i in range(n)]

    n = len(weights)
    return _optax_loop(net.apply, params, data, weights_of_params)


def _nnx_model(mlp: MLP, weights: Weights):
    nnx = _require("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, layer_sizes, rngs):
            layers = [nnx.Linear(i, o, rngs=rngs) for i, o in layer_sizes]
            self.layers = nnx.List(layers) if hasattr(nnx, "List") else layers

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    model = Net(mlp.layers, nnx.Rngs(0))
    for layer, (w, b) in zip(model.layers, weights, strict=True):
        _nnx_set(layer.kernel, jnp.asarray(w))
        _nnx_set(layer.bias, jnp.asarray(b))
    return nnx, model


def _nnx_set(variable, value) -> None:
    # Flax 0.12 deprecates `.value` for `set_value`, which older releases lack.
    if hasattr(variable, "set_value"):
        variable.set_value(value)
    else:
        variable.value = value


def _nnx_get(variable):
    return variable.get_value() if hasattr(variable, "get_value") else variable.value


def _nnx_step(nnx):
    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: _optax_loss(m(x), y))(model)
        optimizer.update(model, grads)
        return loss

    return step


def flax_nnx(mlp: MLP, weights: Weights, data: Batches, cached: bool = False) -> Runner:
    optax = _require("optax")
    nnx, model = _nnx_model(mlp, weights)
    optimizer = nnx.Optimizer(model, optax.adam(LEARNING_RATE), wrt=nnx.Param)
    step = _nnx_step(nnx)
    if cached:
        step = nnx.cached_partial(step, model, optimizer)
        call = step
    else:
        call = functools.partial(step, model, optimizer)
    xs, ys = _device_batches(data)

    def run(n):
        loss = None
        for i in range(n):
            loss = call(xs[i % len(xs)], ys[i % len(ys)])
        return jax.block_until_ready(loss)

    def current():
        return _numpy((_nnx_get(layer.kernel), _nnx_get(layer.bias)) for layer in model.layers)

    return Runner(run, weights=current)


def flax_nnx_cached(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    return flax_nnx(mlp, weights, data, cached=True)


# --- Equinox ---------------------------------------------------------------------------------


def equinox(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    eqx = _require("equinox")
    optax = _require("optax")

    class Net(eqx.Module):
        layers: list

        def __init__(self, layer_sizes, key):
            keys = jax.random.split(key, len(layer_sizes))
            self.layers = [
                eqx.nn.Linear(i, o, key=k) for (i, o), k in zip(layer_sizes, keys, strict=True)
            ]

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = jax.nn.relu(layer(x))
            return self.layers[-1](x)

    model = Net(mlp.layers, jax.random.key(0))
    model = eqx.tree_at(
        lambda m: [leaf for layer in m.layers for leaf in (layer.weight, layer.bias)],
        model,
        [jnp.asarray(a) for w, b in weights for a in (w.T, b)],
    )
    tx = optax.adam(LEARNING_RATE)

    @eqx.filter_jit
    def step(carry, x, y):
        model, opt_state = carry
        loss, grads = eqx.filter_value_and_grad(lambda m: _optax_loss(jax.vmap(m)(x), y))(model)
        updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return (eqx.apply_updates(model, updates), opt_state), loss

    opt_state = tx.init(eqx.filter(model, eqx.is_array))
    return _jax_loop(
        step,
        (model, opt_state),
        data,
        lambda carry: [(layer.weight.T, layer.bias) for layer in carry[0].layers],
    )


# --- Haiku -----------------------------------------------------------------------------------


def haiku(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    hk = _require("haiku")
    net = hk.without_apply_rng(
        hk.transform(lambda x: hk.nets.MLP(mlp.sizes[1:], activation=jax.nn.relu)(x))
    )
    shapes = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((mlp.batch, mlp.sizes[0])))
    names = sorted(shapes, key=lambda k: int(k.rsplit("_", 1)[1]))
    params = {
        name: {"w": jnp.asarray(w), "b": jnp.asarray(b)}
        for name, (w, b) in zip(names, weights, strict=True)
    }
    return _optax_loop(
        net.apply, params, data, lambda layers: [(layers[k]["w"], layers[k]["b"]) for k in names]
    )


# --- PyTorch ---------------------------------------------------------------------------------


def torch(mlp: MLP, weights: Weights, data: Batches) -> Runner:
    th = _require("torch")
    layers: list = []
    for i, (w, b) in enumerate(weights):
        linear = th.nn.Linear(*w.shape)
        with th.no_grad():
            linear.weight.copy_(th.from_numpy(w.T.copy()))
            linear.bias.copy_(th.from_numpy(b.copy()))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(th.nn.ReLU())
    model = th.nn.Sequential(*layers)
    optimizer = th.optim.Adam(model.parameters(), lr=LEARNING_RATE, betas=(B1, B2), eps=EPS)
    xs = [th.from_numpy(x.copy()) for x in data.x]
    ys = [th.from_numpy(y.astype("int64")) for y in data.y]

    def run(n):
        loss = None
        for i in range(n):
            optimizer.zero_grad(set_to_none=True)
            loss = th.nn.functional.cross_entropy(model(xs[i % len(xs)]), ys[i % len(ys)])
            loss.backward()
            optimizer.step()
        return loss

    def current():
        linears = [m for m in model if isinstance(m, th.nn.Linear)]
        return [
            (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in linears
        ]

    return Runner(run, weights=current)


class Contender(NamedTuple):
    """An MLP contender: `build(mlp, weights, data)` (plus ``epoch_steps=`` when `epoch`)."""

    key: str
    title: str
    build: Callable[..., Runner]
    epoch: bool = False
    outputs: str = "loss"

    def make(self, mlp: MLP, weights: Weights, data: Batches, epoch_steps: int) -> Runner:
        if self.epoch:
            return self.build(mlp, weights, data, epoch_steps=epoch_steps)
        return self.build(mlp, weights, data)


BOTH = "loss, accuracy"
EPOCH_MEANS = "epoch means of loss, accuracy"

CONTENDERS = (
    Contender("funcnet", "funcnet per-step jit", funcnet, outputs=BOTH),
    Contender("funcnet_scan", "funcnet scan-fused epoch", funcnet_scan, True, EPOCH_MEANS),
    Contender("raw_jax", "raw JAX (hand-written)", raw_jax, outputs=BOTH),
    Contender("raw_jax_plain", "raw JAX, no donation", raw_jax_plain, outputs=BOTH),
    Contender(
        "raw_jax_epoch", "raw JAX scan epoch, same shuffle", raw_jax_epoch, True, EPOCH_MEANS
    ),
    Contender("raw_jax_scan", "raw JAX scanned epoch (floor)", raw_jax_scan, True, "nothing"),
    Contender("flax_linen", "Flax Linen", flax_linen),
    Contender("flax_nnx", "Flax NNX (nnx.jit)", flax_nnx),
    Contender("flax_nnx_cached", "Flax NNX (cached_partial)", flax_nnx_cached),
    Contender("equinox", "Equinox", equinox),
    Contender("haiku", "Haiku", haiku),
    Contender("torch", "PyTorch eager", torch),
)
