"""Gradient accumulation, the params' moving average and dynamic loss scaling in training.

References: the gradient of the whole batch (float64), the per-micro-batch gradients
written out by hand, a NumPy loop of the moving-average rule over the params a plain run
visits, and a NumPy loop of the loss-scale rule over the steps' finiteness.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import checkpoint, losses, nn, optim, train
from tests.train.conftest import BATCH, blobs

pytestmark = pytest.mark.usefixtures("x64")

CE = losses.softmax_cross_entropy


def as_float64(tree):
    def widen(leaf):
        if isinstance(leaf, jax.Array) and jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf.astype(jnp.float64)
        return leaf

    return jax.tree.map(widen, tree)


def data64(seed=10, n=50):
    x, y = blobs(seed, n)
    return x.astype(jnp.float64), y


def max_diff(a, b):
    return max(
        float(np.max(np.abs(np.asarray(u) - np.asarray(v))))
        for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def fresh(model, opt, n_in=3, batch=BATCH, **extras):
    state = train.init_train_state(model, opt, jax.random.key(0), (batch, n_in), **extras)
    return as_float64(state)


MLP = nn.serial(nn.dense(8), nn.tanh, nn.dense(3))


# Accumulation.


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("weighted", [False, True])
def test_accumulated_step_is_the_whole_batch_step(k, weighted):
    x, y = data64(n=BATCH)
    batch = (x, y)
    if weighted:  # a padded batch: the last rows weigh nothing
        batch = (x, y, jnp.asarray(np.r_[np.ones(11), np.zeros(5)], jnp.float64))
    opt = optim.sgd(0.5, momentum=0.9)
    whole = train.make_step(MLP, opt, loss_fn=CE)
    micro = train.make_step(MLP, opt, loss_fn=CE, accumulate=k)
    a, b = fresh(MLP, opt), fresh(MLP, opt)
    for _ in range(3):
        a, ma = whole(a, batch)
        b, mb = micro(b, batch)
        assert abs(float(ma["loss"]) - float(mb["loss"])) < 1e-12
        assert abs(float(ma["accuracy"]) - float(mb["accuracy"])) < 1e-6
    assert max_diff(a.params, b.params) < 1e-12
    assert max_diff(a.opt_state, b.opt_state) < 1e-12


def test_fit_with_accumulation_equals_fit_with_the_whole_batch():
    data, held_out = data64(), data64(11, 30)
    opt = optim.sgd(0.3)
    settings = dict(loss_fn=CE, epochs=3, batch_size=BATCH, key=jax.random.key(2), progress=False)
    with jax.default_device(jax.devices("cpu")[0]):
        whole = train.fit(MLP, opt, data, eval_data=held_out, **settings)
        micro = train.fit(MLP, opt, data, eval_data=held_out, accumulate=4, **settings)
    assert max_diff(as_float64(whole.state.params), as_float64(micro.state.params)) < 1e-6
    np.testing.assert_allclose(whole.history["loss"], micro.history["loss"], rtol=1e-6)


def test_fit_with_accumulation_in_float64_is_exact():
    data = data64()
    opt = optim.sgd(0.3)
    start = fresh(MLP, opt)
    settings = dict(loss_fn=CE, epochs=2, batch_size=BATCH, progress=False)
    whole = train.fit(MLP, opt, data, state=start, **settings)
    micro = train.fit(MLP, opt, data, state=start, accumulate=2, **settings)
    assert max_diff(whole.state.params, micro.state.params) < 1e-12
    np.testing.assert_allclose(whole.history["loss"], micro.history["loss"], rtol=0, atol=1e-12)


def test_accumulation_under_an_ensemble_equals_each_member_alone():
    data = data64()
    settings = dict(loss_fn=CE, epochs=2, batch_size=BATCH, key=jax.random.key(3), progress=False)
    make = lambda learning_rate: optim.sgd(learning_rate)
    hparams = {"learning_rate": [0.1, 0.4]}
    whole = train.fit_ensemble(MLP, make, data, hparams=hparams, **settings)
    micro = train.fit_ensemble(MLP, make, data, hparams=hparams, accumulate=4, **settings)
    assert max_diff(whole.state.params, micro.state.params) < 1e-5


def test_batch_norm_normalises_each_micro_batch_and_updates_its_statistics_in_turn():
    model = nn.serial(nn.dense(6), nn.batch_norm(momentum=0.1), nn.relu, nn.dense(3))
    x, y = data64(n=BATCH)
    opt = optim.sgd(0.1)
    state = fresh(model, opt)
    step = train.make_step(model, opt, loss_fn=CE, accumulate=2)
    new, metrics = step(jax.tree.map(jnp.copy, state), (x, y))

    # By hand: micro-batch m holds rows m, m + 2, ...; each normalised by its own statistics,
    # the running statistics updated after each in turn, the gradients averaged.
    model_state, grads, loss = state.model_state, [], []
    for m in range(2):
        xm, ym = x[m::2], y[m::2]

        def objective(params, model_state=model_state, xm=xm, ym=ym):
            out, new_state = model.apply(params, model_state, xm, train=True)
            return CE(out, ym), new_state

        (value, model_state), g = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads.append(g)
        loss.append(value)
    mean_grad = jax.tree.map(lambda a, b: (a + b) / 2, *grads)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, mean_grad)
    assert max_diff(new.params, expected) < 1e-12
    assert max_diff(new.model_state, model_state) < 1e-12
    assert abs(float(metrics["loss"]) - (float(loss[0]) + float(loss[1])) / 2) < 1e-12


def test_micro_batches_draw_their_own_dropout_keys():
    model = nn.serial(nn.dense(8), nn.dropout(0.5), nn.dense(3))
    x, y = data64(n=BATCH)
    opt = optim.sgd(0.1)
    state = fresh(model, opt)
    new, _ = train.make_step(model, opt, loss_fn=CE, accumulate=2)(
        jax.tree.map(jnp.copy, state), (x, y)
    )
    key = train.step_key(state)
    grads = []
    for m in range(2):
        xm, ym = x[m::2], y[m::2]
        k = jax.random.fold_in(key, m)

        def objective(params, xm=xm, ym=ym, k=k):
            return CE(model.apply(params, {}, xm, key=k, train=True)[0], ym)

        grads.append(jax.grad(objective)(state.params))
    expected = jax.tree.map(lambda p, a, b: p - 0.1 * (a + b) / 2, state.params, *grads)
    assert max_diff(new.params, expected) < 1e-12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"accumulate": 0}, "accumulate must be a positive integer"),
        ({"accumulate": 2.5}, "accumulate must be a positive integer"),
        ({"accumulate": 3}, "does not divide the batch of 16 rows"),
        ({"ema": 1.0}, "must lie in [0, 1)"),
        ({"ema": -0.5}, "must lie in [0, 1)"),
        ({"ema": "high"}, "must be a number"),
        ({"loss_scale": "static"}, "loss_scale must be 'dynamic'"),
        ({"loss_scale": "dynamic", "on_nonfinite": "skip"}, "on_nonfinite='raise'"),
    ],
)
def test_bad_growth_settings_are_refused_in_one_line(kwargs, message):
    with pytest.raises(ValueError) as err:
        train.fit(
            MLP,
            optim.sgd(0.1),
            data64(),
            loss_fn=CE,
            epochs=1,
            batch_size=BATCH,
            key=jax.random.key(0),
            progress=False,
            **kwargs,
        )
    assert message in str(err.value)
    assert "\n" not in str(err.value)


# The moving average.


def timm_decay(t, decay, warmup):
    """timm's ModelEmaV3.get_decay for update number t (1-based), γ = 1, power 2/3."""
    s = t - 1
    if s <= 0:
        return 0.0
    if warmup:
        return max(min(1 - (1 + s) ** (-2 / 3), decay), 0.0)
    return decay


@pytest.mark.parametrize("warmup", [True, False])
def test_moving_average_equals_a_numpy_loop_over_100_steps(warmup):
    x, y = data64(n=BATCH)
    opt = optim.adam(0.05)
    step = train.make_step(MLP, opt, loss_fn=CE)
    state = fresh(MLP, opt, ema=0.9, ema_warmup=warmup)
    state = state._replace(ema=as_float64(state.ema))
    visited = []
    for _ in range(100):
        state, _ = step(state, (x, y))
        visited.append(jax.tree.map(np.asarray, state.params))
    average = jax.tree.map(np.copy, visited[0])  # any start: the first update copies
    for t, params in enumerate(visited, start=1):
        d = timm_decay(t, 0.9, warmup)
        average = jax.tree.map(lambda a, p, d=d: d * a + (1 - d) * p, average, params)
    assert int(state.ema.count) == 100
    assert max_diff(state.ema.params, average) < 1e-12


def test_fit_evaluates_and_chooses_the_best_epoch_with_the_average():
    data, held_out = data64(), data64(11, 30)
    result = train.fit(
        MLP,
        optim.adam(0.05),
        data,
        eval_data=held_out,
        loss_fn=CE,
        epochs=4,
        batch_size=BATCH,
        key=jax.random.key(5),
        ema=0.8,
        progress=False,
    )
    evaluate = train.make_evaluate(MLP, loss_fn=CE)
    final = evaluate(result.state.ema.params, result.state.model_state, held_out)
    assert abs(float(final["loss"]) - result.history["val_loss"][-1]) < 1e-6
    plain = evaluate(result.state.params, result.state.model_state, held_out)
    assert abs(float(plain["loss"]) - result.history["val_loss"][-1]) > 1e-6
    best = evaluate(result.best.ema.params, result.best.model_state, held_out)
    assert abs(float(best["loss"]) - min(result.history["val_loss"])) < 1e-6


def test_asking_for_another_decay_than_the_states_average_is_refused():
    opt = optim.sgd(0.1)
    state = fresh(MLP, opt, ema=0.9)
    with pytest.raises(ValueError, match=r"the state's moving average has decay 0\.9"):
        train.fit(MLP, opt, data64(), state=state, ema=0.99, loss_fn=CE, epochs=1, batch_size=BATCH)


# Loss scaling.


def loss_scale_reference(finite, scale, period, factor, min_scale):
    """The loss-scale rule as a plain loop: the scale each step runs with."""
    scales, counter = [], 0
    for ok in finite:
        scales.append(scale)
        if ok:
            counter += 1
            if counter == period:
                scale, counter = scale * factor, 0
        else:
            scale, counter = max(min_scale, scale / factor), 0
    return scales


def test_loss_scaled_steps_follow_the_rule_and_skipped_steps_change_nothing():
    # float16 compute overflows for a scale of 2^24: the first steps are skipped until the
    # scale comes down, then it trains and grows again every `period` finite steps.
    model = nn.mixed_precision(nn.serial(nn.dense(16), nn.tanh, nn.dense(3)), "float16")
    x, y = blobs(10, BATCH)
    opt = optim.adam(1e-2)
    ls = train.dynamic_loss_scale(initial=2.0**24, period=3, min_scale=1.0)
    state = train.init_train_state(model, opt, jax.random.key(0), (BATCH, 3), loss_scale=ls)
    step = train.make_step(model, opt, loss_fn=CE)
    finite, scales = [], []
    for _ in range(30):
        before = jax.tree.map(np.asarray, (state.params, state.opt_state))
        scales.append(float(state.loss_scale.scale))
        state, metrics = step(state, (x, y))
        finite.append(bool(metrics["finite"]))
        if not finite[-1]:
            assert max_diff(before, (state.params, state.opt_state)) == 0.0
        assert not bool(metrics["fatal"])
    assert not all(finite) and any(finite)
    assert scales == loss_scale_reference(finite, 2.0**24, 3, 2.0, 1.0)
    assert int(state.step) == 30


def underflowing_problem():
    """A float16 regression whose output gradients (~1e-9) underflow float16 without a
    loss scale: the loss is mean((o − y)²) scaled by 1e-8."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 4)), jnp.float32)
    y = jnp.asarray(x @ rng.normal(size=(4, 1)), jnp.float32)
    model = nn.mixed_precision(nn.dense(1), "float16")
    return model, (x, y), lambda o, t: 1e-8 * losses.mse(o, t)


@pytest.mark.parametrize("scaled", [False, True])
def test_float16_gradients_that_underflow_train_only_with_a_loss_scale(scaled):
    model, data, loss_fn = underflowing_problem()
    result = train.fit(
        model,
        optim.sgd(2e7),
        data,
        loss_fn=loss_fn,
        epochs=5,
        batch_size=16,
        key=jax.random.key(0),
        loss_scale="dynamic" if scaled else None,
        progress=False,
    )
    losses_seen = result.history["loss"]
    if scaled:
        assert losses_seen[-1] < 0.1 * losses_seen[0]
    else:
        assert losses_seen[-1] == pytest.approx(losses_seen[0], rel=1e-6)  # nothing moved


def test_resume_with_a_loss_scale_and_an_average_is_bit_identical(tmp_path):
    model = nn.mixed_precision(MLP, "float16")
    data = blobs(10, 50)
    settings = dict(loss_fn=CE, batch_size=BATCH, ema=0.9, loss_scale="dynamic", progress=False)
    opt = optim.adam(1e-2)
    whole = train.fit(model, opt, data, epochs=4, key=jax.random.key(7), **settings)
    half = train.fit(model, opt, data, epochs=2, key=jax.random.key(7), **settings)
    path = checkpoint.save(tmp_path / "half.npz", half.state)
    like = jax.eval_shape(lambda: half.state)
    loaded = checkpoint.load(path, like=like)
    assert isinstance(loaded.ema, train.ParamsEma)
    assert isinstance(loaded.loss_scale, train.DynamicLossScale)
    resumed = train.fit(model, opt, data, epochs=4, state=loaded, **settings)
    for a, b in zip(jax.tree.leaves(whole.state), jax.tree.leaves(resumed.state), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_plain_step_carries_no_extra_fields():
    state = train.init_train_state(MLP, optim.adam(1e-3), jax.random.key(0), (4, 3))
    assert state.ema is None and state.loss_scale is None
    x, y = blobs(1, 4)
    new, metrics = train.make_step(MLP, optim.adam(1e-3), loss_fn=CE)(state, (x, y))
    assert new.ema is None and new.loss_scale is None
    assert set(metrics) == {"loss", "accuracy"}


def test_a_checkpoint_written_before_the_optional_fields_loads(tmp_path):
    import collections

    opt = optim.adam(1e-3)
    state = train.init_train_state(MLP, opt, jax.random.key(0), (4, 3))
    fields = ("params", "model_state", "opt_state", "step", "key")
    Old = collections.namedtuple("TrainState", fields)  # the five fields checkpoints had
    path = checkpoint.save(tmp_path / "old.npz", Old(*(getattr(state, f) for f in fields)))
    loaded = checkpoint.load(path, like=jax.eval_shape(lambda: state))
    assert isinstance(loaded, train.TrainState) and loaded.ema is None
    assert max_diff(loaded.params, state.params) == 0.0
