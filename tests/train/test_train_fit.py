"""`fit`: the scan-fused epoch against a Python loop of jitted steps, compilation counts,
early stopping, schedules, clipping and the progress bar."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train

LOSS = losses.softmax_cross_entropy
BATCH = 16


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(x, y)


def test_scan_epoch_equals_python_loop_of_jitted_steps(data, model, optimizer, reference):
    train_data, _ = data
    result = train.fit(
        model,
        optimizer,
        train_data,
        loss_fn=LOSS,
        epochs=3,
        batch_size=BATCH,
        key=jax.random.key(0),
        progress=False,
    )
    start = train.init_train_state(model, optimizer, jax.random.key(0), (BATCH, 3))
    expected, losses_per_epoch = reference(model, optimizer, start, train_data, 3)
    for got, want in zip(
        jax.tree.leaves(result.state.params), jax.tree.leaves(expected.params), strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert_trees_equal(result.state.step, expected.step)
    assert_trees_equal(result.state.key, expected.key)
    assert int(result.state.step) == 3 * 4
    np.testing.assert_allclose(result.history["loss"], losses_per_epoch, rtol=1e-5)
    assert result.history["epoch"] == [0, 1, 2]
    assert result.best_epoch == 2


def test_dropout_and_batch_norm_models_follow_the_same_keys_and_state(data, reference):
    model = nn.serial(nn.dense(8), nn.batch_norm(), nn.relu, nn.dropout(0.3), nn.dense(3))
    optimizer = optim.sgd(0.05, momentum=0.9)
    result = train.fit(
        model,
        optimizer,
        data[0],
        loss_fn=LOSS,
        epochs=2,
        batch_size=BATCH,
        key=jax.random.key(1),
        eval_data=data[1],
        progress=False,
    )
    start = train.init_train_state(model, optimizer, jax.random.key(1), (BATCH, 3))
    expected, _ = reference(model, optimizer, start, data[0], 2)
    for got, want in zip(jax.tree.leaves(result.state), jax.tree.leaves(expected), strict=True):
        if jnp.issubdtype(got.dtype, jax.dtypes.prng_key):
            got, want = jax.random.key_data(got), jax.random.key_data(want)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    running_mean = result.state.model_state["batch_norm_1"]["mean"]
    assert np.all(np.abs(running_mean) > 0)  # the running statistics moved during training


def test_no_compilation_after_the_first_epoch(data, model, optimizer):
    traces = []

    def counted_loss(outputs, labels):
        traces.append(1)
        return LOSS(outputs, labels)

    compiles = []
    listening = [True]

    def listener(event, duration, **kwargs):
        if listening[0] and event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    seen = []
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        train.fit(
            model,
            optimizer,
            data[0],
            loss_fn=counted_loss,
            epochs=4,
            batch_size=BATCH,
            key=jax.random.key(0),
            eval_data=data[1],
            patience=10,
            progress=False,
            on_epoch_end=lambda epoch, state, metrics: seen.append((len(compiles), len(traces))),
        )
    finally:
        listening[0] = False
        unregister = getattr(jax.monitoring, "unregister_event_duration_listener", None)
        if unregister is not None:  # JAX 0.8.1 and later
            unregister(listener)
    assert len(seen) == 4
    assert seen[0][0] > 0 and seen[0][1] > 0
    assert seen == [seen[0]] * 4


def test_early_stopping_keeps_the_best_state(data, model, optimizer):
    (x, y), (x_val, y_val) = data
    wrong = (x_val, (y_val + 1) % 3)  # learning the task makes this held-out loss worse
    states = []
    result = train.fit(
        model,
        optimizer,
        (x, y),
        loss_fn=LOSS,
        epochs=30,
        batch_size=BATCH,
        key=jax.random.key(0),
        eval_data=wrong,
        patience=2,
        progress=False,
        on_epoch_end=lambda epoch, state, metrics: states.append(state),
    )
    val_loss = result.history["val_loss"]
    best = int(np.argmin(val_loss))
    assert result.best_epoch == best
    assert len(val_loss) == best + 1 + 2 < 30
    assert_trees_equal(result.best, states[best])
    assert_trees_equal(result.state, states[-1])


def test_a_schedule_counts_optimizer_steps(data, model):
    steps = train.steps_per_epoch(data[0], BATCH)
    assert steps == 4
    stop_after_one_epoch = optim.sgd(optim.piecewise_constant_schedule(0.1, {steps: 0.0}))
    states = []
    train.fit(
        model,
        stop_after_one_epoch,
        data[0],
        loss_fn=LOSS,
        epochs=3,
        batch_size=BATCH,
        key=jax.random.key(0),
        progress=False,
        on_epoch_end=lambda epoch, state, metrics: states.append(state.params),
    )
    start = train.init_train_state(model, stop_after_one_epoch, jax.random.key(0), (BATCH, 3))
    assert not np.allclose(states[0]["dense_0"]["w"], start.params["dense_0"]["w"])
    assert_trees_equal(states[0], states[2])


def test_clip_norm_chains_clipping_before_the_optimizer(data, model, optimizer):
    kwargs = dict(loss_fn=LOSS, epochs=2, batch_size=BATCH, key=jax.random.key(0), progress=False)
    clipped = train.fit(model, optimizer, data[0], clip_norm=0.05, **kwargs)
    chained = optim.chain(optim.clip_by_global_norm(0.05), optimizer)
    expected = train.fit(model, chained, data[0], **kwargs)
    for a, b in zip(
        jax.tree.leaves(clipped.state.params), jax.tree.leaves(expected.state.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    unclipped = train.fit(model, optimizer, data[0], **kwargs)
    assert not np.allclose(
        clipped.state.params["dense_0"]["w"], unclipped.state.params["dense_0"]["w"]
    )


def test_progress_bar_shows_epoch_loss_and_accuracy_and_quiet_shows_nothing(
    data, model, optimizer, capsys
):
    kwargs = dict(loss_fn=LOSS, epochs=2, batch_size=BATCH, key=jax.random.key(0))
    train.fit(model, optimizer, data[0], eval_data=data[1], progress=True, **kwargs)
    shown = capsys.readouterr().err  # not a terminal: one plain line per epoch
    lines = shown.splitlines()
    assert len(lines) == 2 and lines[-1].startswith("fit: epoch 2/2, loss ")
    assert ", acc " in lines[-1] and ", val_acc " in lines[-1] and "\r" not in shown
    train.fit(model, optimizer, data[0], eval_data=data[1], progress=False, **kwargs)
    assert capsys.readouterr().err == ""


def test_fit_continues_a_state_up_to_the_total_number_of_epochs(data, model, optimizer):
    kwargs = dict(loss_fn=LOSS, batch_size=BATCH, progress=False)
    first = train.fit(model, optimizer, data[0], epochs=1, key=jax.random.key(0), **kwargs)
    second = train.fit(model, optimizer, data[0], epochs=3, state=first.state, **kwargs)
    assert second.history["epoch"] == [1, 2]
    assert int(second.state.step) == 3 * 4
    done = train.fit(model, optimizer, data[0], epochs=3, state=second.state, **kwargs)
    assert done.history == {} and done.best_epoch is None


def test_a_continued_fit_traces_the_model_no_more(data, model, optimizer):
    """The model's shape facts `fit` needs before training (its output shape for the label
    check, whether it convolves for `loop="auto"`) are traced once per model and input
    shape, as the compiled epoch is compiled once: a continued `fit` calls `init` no more."""
    inits = []

    def counted_init(key, in_shape):
        inits.append(in_shape)
        return model.init(key, in_shape)

    counted = nn.Layer(counted_init, model.apply, kind="counted")
    kwargs = dict(loss_fn=LOSS, batch_size=BATCH, progress=False)
    first = train.fit(counted, optimizer, data[0], epochs=1, key=jax.random.key(0), **kwargs)
    # The first continuation traces the state's template once (`_initial_state`).
    second = train.fit(counted, optimizer, data[0], epochs=2, state=first.state, **kwargs)
    inits.clear()
    third = train.fit(counted, optimizer, data[0], epochs=3, state=second.state, **kwargs)
    assert inits == [] and third.history["epoch"] == [2]
    fresh = nn.Layer(counted_init, model.apply, kind="counted")  # equal, hence the same key
    train.fit(fresh, optimizer, data[0], epochs=4, state=third.state, **kwargs)
    assert inits == []


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(patience=3), ValueError, "needs eval_data"),
        (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
        (dict(mesh=object()), TypeError, "mesh must be a jax.sharding.Mesh"),
        (dict(key=None), ValueError, "needs a key"),
        (dict(batch_size=0), ValueError, "batch_size"),
    ],
)
def test_fit_refuses_bad_settings(data, model, optimizer, kwargs, error, match):
    settings = dict(loss_fn=LOSS, epochs=1, batch_size=BATCH, key=jax.random.key(0), progress=False)
    with pytest.raises(error, match=match):
        train.fit(model, optimizer, data[0], **{**settings, **kwargs})
