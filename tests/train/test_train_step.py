"""`make_step`, `make_eval` and the padded batches, against hand-written references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from funcnet import losses, nn, optim, train

LOSS = losses.softmax_cross_entropy


def test_train_state_holds_initialised_model_and_optimizer(model, optimizer):
    state = train.init_train_state(model, optimizer, jax.random.key(0), (16, 3))
    init_key, state_key = jax.random.split(jax.random.key(0))
    _, params, model_state = model.init(init_key, (16, 3))
    jax.tree.map(np.testing.assert_array_equal, state.params, params)
    assert model_state == state.model_state == {}
    assert state.step.dtype == jnp.int32 and int(state.step) == 0
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(state_key))
    legacy = train.init_train_state(model, optimizer, jax.random.PRNGKey(0), (16, 3))
    assert jnp.issubdtype(legacy.key.dtype, jax.dtypes.prng_key)


def test_make_step_is_one_descent_step_on_the_loss_gradient(data, model):
    (x, y), _ = data
    opt = optim.sgd(0.1)
    state = train.init_train_state(model, opt, jax.random.key(0), x.shape)
    given = jax.tree.map(jnp.copy, state)
    new, metrics = train.make_step(model, opt, loss_fn=LOSS, grad_norm=True)(given, (x, y))

    def loss(params):
        return LOSS(model.apply(params, {}, x)[0], y)

    value, grads = jax.value_and_grad(loss)(state.params)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new.params, expected
    )
    np.testing.assert_allclose(metrics["loss"], value, rtol=1e-6)
    norm = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grads)))
    np.testing.assert_allclose(metrics["grad_norm"], norm, rtol=1e-5)
    logits = model.apply(state.params, {}, x)[0]
    np.testing.assert_allclose(metrics["accuracy"], np.mean(np.argmax(logits, -1) == y))
    assert int(new.step) == 1
    np.testing.assert_array_equal(jax.random.key_data(new.key), jax.random.key_data(state.key))


def test_make_step_consumes_the_state_it_is_given(data, model, optimizer):
    (x, y), _ = data
    state = train.init_train_state(model, optimizer, jax.random.key(0), x.shape)
    train.make_step(model, optimizer, loss_fn=LOSS)(state, (x, y))
    assert state.params["dense_0"]["w"].is_deleted()


def test_step_keys_are_the_root_key_folded_with_the_step(data):
    (x, y), _ = data
    model = nn.serial(nn.dense(8), nn.dropout(0.5), nn.dense(3))
    opt = optim.sgd(0.1)
    state = train.init_train_state(model, opt, jax.random.key(0), x.shape)
    state = state._replace(step=jnp.array(7, jnp.int32))
    new, _ = train.make_step(model, opt, loss_fn=LOSS)(jax.tree.map(jnp.copy, state), (x, y))

    def loss(params):
        key = jax.random.fold_in(state.key, 14)
        return LOSS(model.apply(params, {}, x, key=key, train=True)[0], y)

    expected = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, jax.grad(loss)(state.params))
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    shuffle = jax.random.key_data(train.shuffle_key(state))
    np.testing.assert_array_equal(shuffle, jax.random.key_data(jax.random.fold_in(state.key, 15)))


def test_padded_batch_gives_the_step_of_its_real_rows(data, model, optimizer):
    (x, y), _ = data
    state = train.init_train_state(model, optimizer, jax.random.key(0), (8, 3))
    step = train.make_step(model, optimizer, loss_fn=LOSS, grad_norm=True)
    real = 5
    padded = (x[:8], y[:8], (jnp.arange(8) < real).astype(jnp.float32))
    new_padded, m_padded = step(jax.tree.map(jnp.copy, state), padded)
    new_real, m_real = step(state, (x[:real], y[:real]))
    for a, b in zip(
        jax.tree.leaves(new_padded.params), jax.tree.leaves(new_real.params), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in ("loss", "accuracy", "grad_norm"):
        np.testing.assert_allclose(m_padded[name], m_real[name], rtol=1e-5)


def test_batch_plan_visits_every_example_once_and_weights_the_filler_zero():
    indices, weights = train.batch_plan(50, 16, jax.random.key(3))
    assert indices.shape == weights.shape == (4, 16)
    real = np.asarray(indices).reshape(-1)[np.asarray(weights).reshape(-1) == 1]
    np.testing.assert_array_equal(np.sort(real), np.arange(50))
    np.testing.assert_array_equal(np.asarray(weights)[-1], [1, 1] + [0] * 14)
    high, low = np.asarray(jax.random.bits(jax.random.key(3), (2, 50), jnp.uint32))
    by_64_random_bits = np.lexsort((np.arange(50), low, high))
    np.testing.assert_array_equal(np.asarray(indices).reshape(-1)[:50], by_64_random_bits)
    in_order, _ = train.batch_plan(5, 2)
    np.testing.assert_array_equal(in_order, [[0, 1], [2, 3], [4, 0]])


@pytest.mark.parametrize("batch_size", [None, 7, 64])
def test_make_eval_means_over_all_examples(data, model, optimizer, batch_size):
    (x, y), _ = data
    state = train.init_train_state(model, optimizer, jax.random.key(0), x.shape)
    metrics = train.make_evaluate(model, loss_fn=LOSS, batch_size=batch_size)(
        state.params, {}, (x, y)
    )
    logits = np.asarray(model.apply(state.params, {}, x)[0], np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits), axis=-1, keepdims=True))
    np.testing.assert_allclose(
        metrics["loss"], -np.mean(log_probs[np.arange(len(y)), y]), rtol=1e-4
    )
    np.testing.assert_allclose(metrics["accuracy"], np.mean(np.argmax(logits, -1) == y), rtol=1e-6)


def test_custom_metrics_replace_the_default(data, model, optimizer):
    (x, y), _ = data
    state = train.init_train_state(model, optimizer, jax.random.key(0), x.shape)
    top = {"max_logit": lambda out, labels: jnp.mean(jnp.max(out, axis=-1))}
    _, metrics = train.make_step(model, optimizer, loss_fn=LOSS, metrics=top)(state, (x, y))
    assert set(metrics) == {"loss", "max_logit"}


def test_regression_targets_get_no_accuracy():
    model = nn.dense(2)
    opt = optim.sgd(0.1)
    x = jnp.ones((4, 3))
    state = train.init_train_state(model, opt, jax.random.key(0), x.shape)
    _, metrics = train.make_step(model, opt, loss_fn=losses.mse)(state, (x, jnp.zeros((4, 2))))
    assert set(metrics) == {"loss"}


def test_a_malformed_batch_is_refused(data, model, optimizer):
    (x, _), _ = data
    state = train.init_train_state(model, optimizer, jax.random.key(0), x.shape)
    with pytest.raises(ValueError, match=r"\(x, y\) or \(x, y, weights\)"):
        train.make_step(model, optimizer, loss_fn=LOSS)(state, (x,))
