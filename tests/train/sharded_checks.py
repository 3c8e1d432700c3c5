"""Run by `test_partition.py` in a process of 8 forced host devices: training under FSDP,
tensor parallelism and both against the replicated run, and FSDP's bytes per device."""

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
from funcnet import nn, train

LAYOUTS = {
    "fsdp": ((8, 1), train.fsdp()),
    "tp": ((1, 8), train.tensor_parallel()),
    "fsdp_tp": ((4, 2), (train.tensor_parallel(), train.fsdp())),
}
SETTINGS = {
    "loss_fn": fn.losses.softmax_cross_entropy,
    "epochs": 1,
    "batch_size": 32,
    "key": jax.random.key(0),
    "progress": False,
}


def assert_close(expected, found, what):
    pairs = zip(jax.tree.leaves(expected), jax.tree.leaves(found), strict=True)
    for i, (a, b) in enumerate(pairs):
        np.testing.assert_allclose(
            np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5, err_msg=f"{what}, leaf {i}"
        )


def mlp():
    return nn.serial(nn.dense(64), nn.relu, nn.dense(64), nn.relu, nn.dense(16))


def digits(n=160):
    """5 steps of 32 rows."""
    split = fn.data.digits()
    return np.asarray(split.x_train[:n]), np.asarray(split.y_train[:n])


def device_bytes(tree, device):
    """Bytes of `tree`'s leaves that `device` holds."""
    return sum(
        shard.data.nbytes
        for leaf in jax.tree.leaves(tree)
        for shard in leaf.addressable_shards
        if shard.device == device
    )


def check_fit():
    model, data = mlp(), digits()
    replicated = train.fit(model, fn.optim.adam(1e-2), data, mesh=train.data_mesh(), **SETTINGS)
    for name, (shape, rules) in LAYOUTS.items():
        mesh = train.model_mesh(*shape)
        result = train.fit(model, fn.optim.adam(1e-2), data, mesh=mesh, rules=rules, **SETTINGS)
        assert_close(replicated.state.params, train.local_copy(result.state.params), name)
        assert_close(replicated.state.opt_state, train.local_copy(result.state.opt_state), name)
        expected = train.state_shardings(result.state, mesh, rules)
        for leaf, sharding in zip(
            jax.tree.leaves(result.state), jax.tree.leaves(expected), strict=True
        ):
            assert leaf.sharding.is_equivalent_to(sharding, leaf.ndim), (name, leaf.sharding)
        if name == "fsdp":
            held = (result.state.params, result.state.opt_state)
            total = sum(leaf.nbytes for leaf in jax.tree.leaves(held))
            for device in mesh.devices.flat:
                share = device_bytes(held, device) / total
                assert abs(share - 1 / 8) <= 0.05 / 8, (device, share)
            replicated_share = device_bytes(replicated.state.params, jax.devices()[0])
            assert replicated_share == sum(
                x.nbytes for x in jax.tree.leaves(replicated.state.params)
            )


def check_make_step():
    """A transformer LM, 5 steps of `make_step`, attention and MLP under every layout."""
    vocab, batch, time = 32, 16, 8
    model = nn.serial(nn.embedding(vocab, 32), nn.transformer_block(4, 64), nn.dense(vocab))
    rng = np.random.default_rng(0)
    batches = [
        (rng.integers(0, vocab, (batch, time)), rng.integers(0, vocab, (batch, time)))
        for _ in range(5)
    ]
    # Not Adam: the key projection's bias has a zero gradient (softmax ignores a shift
    # common to every key), whose round-off Adam's g / √v would blow up to steps of ±lr.
    optimizer = fn.optim.sgd(0.1, momentum=0.9)
    start = train.init_train_state(model, optimizer, jax.random.key(1), (batch, time))

    def run(step, state):
        for x, y in batches:
            state, _ = step(state, (x, y))
        return state

    loss_fn = fn.losses.softmax_cross_entropy
    single = run(train.make_step(model, optimizer, loss_fn=loss_fn), jax.tree.map(jnp.copy, start))
    for name, (shape, rules) in LAYOUTS.items():
        mesh = train.model_mesh(*shape)
        step = train.make_step(model, optimizer, loss_fn=loss_fn, mesh=mesh, rules=rules)
        state = run(step, train.shard_state(start, mesh, rules))
        assert_close(single.params, train.local_copy(state.params), f"make_step {name}")
        q = state.params["transformer_block_1"]["attention"]["q"]["w"]
        if name == "tp":
            assert q.sharding.spec == jax.sharding.PartitionSpec(None, "model"), q.sharding


def check_ensemble():
    model, data = mlp(), digits()
    # Momentum SGD: Adam's g / √v turns the round-off of a near-zero gradient into a step.
    optimizer = fn.optim.sgd(0.1, momentum=0.9)
    plain = train.fit_ensemble(model, optimizer, data, members=2, **SETTINGS)
    mesh = train.model_mesh(4, 2)
    rules = (train.tensor_parallel(), train.fsdp())
    sharded = train.fit_ensemble(
        model, optimizer, data, members=2, mesh=mesh, rules=rules, **SETTINGS
    )
    assert_close(plain.state.params, train.local_copy(sharded.state.params), "ensemble")
    w = sharded.state.params["dense_0"]["w"]
    assert w.sharding.spec == jax.sharding.PartitionSpec(None, "data", "model"), w.sharding


if __name__ == "__main__":
    assert jax.device_count() == 8, jax.devices()
    check_fit()
    check_make_step()
    check_ensemble()
    print("ok")
