"""Bad input refused before anything compiles: labels, wrong objects, sizes, hyperparameters.

Each case in `CASES` is a call that must raise a `ValueError` or `TypeError` whose message is
one line holding every listed fragment: the function or layer, the argument and the value.
The other tests check what the refusals leave alone: lists of numbers are trained on as the
arrays they spell, traced hyperparameters pass, and labels traced under `jit` give a NaN loss.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

import funcnet as fn
from funcnet import losses, nn, optim, train

KEY = jax.random.key(0)
MLP = nn.serial(nn.dense(8), nn.relu, nn.dense(3))
ONE = nn.serial(nn.dense(4), nn.relu, nn.dense(1))
X = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
Y = np.arange(10, dtype=np.int32) % 3
CE = losses.softmax_cross_entropy
FIT = {"loss_fn": CE, "epochs": 1, "batch_size": 4, "key": KEY, "progress": False}


def fit(data, model=MLP, optimizer=None, **kwargs):
    opt = optim.adam(1e-3) if optimizer is None else optimizer
    return lambda: train.fit(model, opt, data, **{**FIT, **kwargs})


def fit_ensemble(data, optimizer=None, **kwargs):
    opt = optim.adam(1e-3) if optimizer is None else optimizer
    settings = {**FIT, "members": 2, **kwargs}
    return lambda: train.fit_ensemble(MLP, opt, data, **settings)


def mlp_state():
    return train.init_train_state(MLP, optim.adam(1e-3), KEY, (4, 5))


def step_on(batch, optimizer=None):
    step = train.make_step(MLP, optim.adam(1e-3) if optimizer is None else optimizer, loss_fn=CE)
    return lambda: step(mlp_state(), batch)


def evaluate_on(data):
    state = mlp_state()
    evaluate = train.make_evaluate(MLP, loss_fn=CE)
    return lambda: evaluate(state.params, state.model_state, data)


def apply_to(inputs):
    _, params, state = MLP.init(KEY, (1, 5))
    return lambda: MLP.apply(params, state, inputs)


def posterior():
    _, params, state = MLP.init(KEY, (1, 5))
    outputs = lambda p, x: MLP.apply(p, state, x)[0]
    return fn.bayes.laplace(outputs, params, (X, Y))


def parts_of(layer, shape):
    _, params, state = layer.init(KEY, shape)
    return params, state


CASES = {
    # Labels, checked on the host against the loss and the model's output shape.
    "labels at the number of classes": (
        fit((X, Y + 1)),
        ["fit: train_data y", "softmax_cross_entropy", "[0, 3)", "[1, 3]"],
    ),
    "negative labels": (fit((X, Y - 1)), ["fit: train_data y", "[0, 3)", "[-1, 1]"]),
    "held-out labels out of range": (
        fit((X, Y), eval_data=(X, Y + 3)),
        ["fit: eval_data y", "[0, 3)", "[3, 5]"],
    ),
    "string labels": (
        fit((X, Y.astype(str))),
        ["fit: train_data y", "dtype <U", "integer ids"],
    ),
    "float class labels": (
        fit((X, Y.astype(np.float32))),
        ["fit: train_data y", "integers", "float32"],
    ),
    "one-hot labels of more classes than outputs": (
        fit((X, np.eye(4, dtype=np.float32)[Y])),
        ["fit: train_data y", "(10, 4)", "(10, 3)"],
    ),
    "labels out of range through functools.partial": (
        fit((X, Y + 1), loss_fn=functools.partial(CE, reduction="mean")),
        ["fit: train_data y", "[0, 3)"],
    ),
    "multiclass hinge labels out of range": (
        fit((X, Y * 2), loss_fn=losses.multiclass_hinge),
        ["train_data y", "multiclass_hinge", "[0, 3)", "[0, 4]"],
    ),
    "±1 labels to binary cross-entropy": (
        fit(
            (X, np.where(Y[:, None] > 0, 1.0, -1.0)), model=ONE, loss_fn=losses.binary_cross_entropy
        ),
        ["train_data y", "binary_cross_entropy", "[0, 1]", "logistic_loss"],
    ),
    "0/1 labels to the hinge loss": (
        fit((X, (Y[:, None] > 0).astype(np.float32)), model=ONE, loss_fn=losses.hinge),
        ["train_data y", "hinge", "−1 or +1"],
    ),
    "held-out labels out of range in an ensemble": (
        fit_ensemble((X, Y), eval_data=(X, Y + 3)),
        ["fit_ensemble: eval_data y", "[0, 3)", "[3, 5]"],
    ),
    "labels out of range to make_evaluate": (
        evaluate_on((X, Y + 1)),
        ["make_evaluate: the data y", "[0, 3)", "[1, 3]"],
    ),
    "NumPy labels out of range to make_step": (
        step_on((X[:4], np.array([0, 1, 2, 3]))),
        ["make_step: the batch y", "[0, 3)", "[0, 3]"],
    ),
    # Wrong objects and values.
    "the optimizer as a string": (
        fit((X, Y), optimizer="adam"),
        ["fit: optimizer", "gradient transformation", "'adam'", "funcnet.optim.adam(1e-3)"],
    ),
    "another optimizer as a string": (
        fit((X, Y), optimizer="SGD"),
        ["fit: optimizer", "'SGD'", "funcnet.optim.sgd(1e-3)"],
    ),
    "the optimizer's constructor, not called": (
        fit((X, Y), optimizer=optim.adam),
        ["fit: optimizer", "the function funcnet.optim.adam", "funcnet.optim.adam(1e-3)"],
    ),
    "the optimizer as a number": (fit((X, Y), optimizer=1e-3), ["fit: optimizer", "float"]),
    "the model as a string": (fit((X, Y), model="mlp"), ["fit: model", "funcnet.nn.Layer", "str"]),
    "the model as a plain function": (
        fit((X, Y), model=jax.nn.relu),
        ["fit: model", "funcnet.nn.Layer", "from_function"],
    ),
    "an ensemble's optimizer as a string": (
        fit_ensemble((X, Y), optimizer="adam"),
        ["fit_ensemble: optimizer", "'adam'", "funcnet.optim.adam(1e-3)"],
    ),
    "make_step with the optimizer as a string": (
        lambda: train.make_step(MLP, "adam", loss_fn=CE),
        ["make_step: optimizer", "'adam'"],
    ),
    "make_evaluate of a float batch size": (
        lambda: train.make_evaluate(MLP, loss_fn=CE, batch_size=1.5),
        ["make_evaluate: batch_size", "1.5"],
    ),
    "make_evaluate with the model as a string": (
        lambda: train.make_evaluate("mlp", loss_fn=CE),
        ["make_evaluate: model", "str"],
    ),
    "apply to a list of Python numbers": (
        apply_to([[0.0] * 5]),
        ["serial", "list of Python numbers", "(1, 5)", "jnp.asarray"],
    ),
    "fit on ragged lists": (
        fit(([[0.0] * 5] * 9 + [[0.0] * 4], Y.tolist())),
        ["fit: train_data x", "ragged", "list"],
    ),
    "fit on string inputs": (fit((X.astype(str), Y)), ["fit: train_data x", "dtype <U"]),
    "fit on a Python object among the inputs": (
        fit(({"a": X, "b": "pixels"}, Y)),
        ["fit: train_data x/b", "str", "'pixels'"],
    ),
    "fit on inputs without labels": (fit(X), ["fit: train_data", "pair (x, y)", "ndarray"]),
    "make_step on a batch of three parts and one more": (
        step_on((X[:4], Y[:4], np.ones(4), np.ones(4))),
        ["make_step: the batch", "(x, y) or (x, y, weights)", "length 4"],
    ),
    # Sizes: integers in range, one line naming the layer or function and the argument.
    "dense of a float width": (lambda: nn.dense(3.5), ["dense: features", "3.5"]),
    "dense of a string width": (lambda: nn.dense("8"), ["dense: features", "'8'"]),
    "dense of a bool width": (lambda: nn.dense(True), ["dense: features", "True"]),
    "conv of a float kernel size": (lambda: nn.conv(4, 3.5), ["conv: kernel_size", "3.5"]),
    "conv of float features": (lambda: nn.conv(4.0, 3), ["conv: features", "4.0"]),
    "conv of float groups": (lambda: nn.conv(4, 3, groups=1.5), ["conv: groups", "1.5"]),
    "conv_transpose of float features": (
        lambda: nn.conv_transpose(2.5, 3),
        ["conv_transpose: features", "2.5"],
    ),
    "max_pool of a float window": (lambda: nn.max_pool(2.5), ["max_pool: window", "2.5"]),
    "avg_pool of zero strides": (lambda: nn.avg_pool(2, strides=0), ["avg_pool: strides", "0"]),
    "adaptive_avg_pool of a float size": (
        lambda: nn.adaptive_avg_pool(2.5),
        ["adaptive_avg_pool: output_size", "2.5"],
    ),
    "attention of a float head count": (
        lambda: nn.multi_head_attention(2.5),
        ["multi_head_attention: num_heads", "2.5"],
    ),
    "attention of no head width": (
        lambda: nn.multi_head_attention(2, head_dim=0),
        ["multi_head_attention: head_dim", "0"],
    ),
    "cross-attention of a string head count": (
        lambda: nn.cross_attention("2"),
        ["cross_attention: num_heads", "'2'"],
    ),
    "transformer block of a float MLP width": (
        lambda: nn.transformer_block(2, 3.5),
        ["transformer_block: mlp_dim", "3.5"],
    ),
    "embedding of a float table size": (
        lambda: nn.embedding(10.5, 4),
        ["embedding: num_embeddings", "10.5"],
    ),
    "embedding of a float padding index": (
        lambda: nn.embedding(10, 4, padding_idx=1.5),
        ["embedding: padding_idx", "[-10, 10)", "1.5"],
    ),
    "gru of a float width": (lambda: nn.gru(4.5), ["gru: hidden", "4.5"]),
    "lstm of no layers": (lambda: nn.lstm(4, num_layers=0), ["lstm: num_layers", "0"]),
    "group_norm of a float group count": (
        lambda: nn.group_norm(2.5),
        ["group_norm: num_groups", "2.5"],
    ),
    "fanout of a float count": (lambda: nn.fanout(1.5), ["fanout: num", "1.5"]),
    "fit of a float batch size": (
        fit((X, Y), batch_size=16.5),
        ["fit: batch_size", "positive int", "16.5"],
    ),
    "fit of float epochs": (fit((X, Y), epochs=1.5), ["fit: epochs", "non-negative int", "1.5"]),
    "fit of a float patience": (
        fit((X, Y), eval_data=(X, Y), patience=2.5),
        ["fit: patience", "2.5"],
    ),
    "fit of negative skips": (
        fit((X, Y), max_consecutive_skips=-1),
        ["fit: max_consecutive_skips", "-1"],
    ),
    "fit_ensemble of a string batch size": (
        fit_ensemble((X, Y), batch_size="8"),
        ["fit_ensemble: batch_size", "'8'"],
    ),
    # Optimizer hyperparameters: the optimizer, the argument, the value, what is allowed.
    "adam at a negative rate": (
        lambda: optim.adam(-1e-3),
        ["adam: learning_rate", "finite positive number or a schedule", "-0.001"],
    ),
    "adam at a string rate": (lambda: optim.adam("abc"), ["adam: learning_rate", "'abc'"]),
    "adam at a NaN rate": (lambda: optim.adam(float("nan")), ["adam: learning_rate", "nan"]),
    "adam at a negative rate held in an array": (
        lambda: optim.adam(jnp.array(-1.0)),
        ["adam: learning_rate", "-1.0"],
    ),
    "sgd at an infinite rate": (lambda: optim.sgd(float("inf")), ["sgd: learning_rate", "inf"]),
    "sgd at a zero rate": (lambda: optim.sgd(0.0), ["sgd: learning_rate", "0.0"]),
    "sgd with momentum above 1": (
        lambda: optim.sgd(0.1, momentum=1.5),
        ["sgd: momentum", "[0, 1)", "1.5"],
    ),
    "adam with no eps": (lambda: optim.adam(eps=0.0), ["adam: eps", "> 0", "0.0"]),
    "adam with negative weight decay": (
        lambda: optim.adam(weight_decay=-0.1),
        ["adam: weight_decay", ">= 0", "-0.1"],
    ),
    "adamw with a negative beta": (lambda: optim.adamw(b2=-0.1), ["adamw: b2", "[0, 1)", "-0.1"]),
    "adamax with a string beta": (lambda: optim.adamax(b1="0.9"), ["adamax: b1", "'0.9'"]),
    "nadam with a negative momentum decay": (
        lambda: optim.nadam(momentum_decay=-1.0),
        ["nadam: momentum_decay", "-1.0"],
    ),
    "rmsprop with momentum 1": (
        lambda: optim.rmsprop(momentum=1.0),
        ["rmsprop: momentum", "[0, 1)", "1.0"],
    ),
    "rmsprop with no eps": (lambda: optim.rmsprop(eps=-1e-8), ["rmsprop: eps", "-1e-08"]),
    "momentum with a negative beta": (
        lambda: optim.momentum(beta=-0.5),
        ["momentum: beta", "[0, 1)", "-0.5"],
    ),
    "nesterov with beta 2": (lambda: optim.nesterov(beta=2), ["nesterov: beta", "[0, 1)", "2"]),
    "lion with a beta above 1": (lambda: optim.lion(b1=1.5), ["lion: b1", "[0, 1]", "1.5"]),
    "adagrad with a negative eps": (lambda: optim.adagrad(eps=-1.0), ["adagrad: eps", "-1.0"]),
    "adadelta with rho above 1": (lambda: optim.adadelta(rho=1.5), ["adadelta: rho", "1.5"]),
    "scale_by_learning_rate at rate 0": (
        lambda: optim.scale_by_learning_rate(0),
        ["scale_by_learning_rate: learning_rate", "0"],
    ),
    "scale_by_adam with no eps": (
        lambda: optim.scale_by_adam(eps=0.0),
        ["scale_by_adam: eps", "0.0"],
    ),
    "trace with a decay above 1": (lambda: optim.trace(1.5), ["trace: decay", "1.5"]),
    # Functions and flags: refused before init, not when the first epoch calls them.
    "fit with no loss function": (fit((X, Y), loss_fn=None), ["fit: loss_fn", "a function"]),
    "fit with metrics that are not a dict": (
        fit((X, Y), metrics=5),
        ["fit: metrics", "a dict", "got int 5"],
    ),
    "fit with a metric that is not a function": (
        fit((X, Y), metrics={"top1": 5}),
        ["fit: metrics['top1']", "a function", "5"],
    ),
    "fit with a metric named loss": (
        fit((X, Y), metrics={"loss": losses.accuracy}),
        ["fit: metrics names", "loss", "grad_norm"],
    ),
    "fit with an on_epoch_end that is not a function": (
        fit((X, Y), on_epoch_end="print"),
        ["fit: on_epoch_end", "a function or None", "'print'"],
    ),
    "fit with a stop that is not a function": (
        fit((X, Y), stop=True),
        ["fit: stop", "a function or None", "True"],
    ),
    "fit with the string 'False' as a flag": (
        fit((X, Y), grad_norm="False"),
        ["fit: grad_norm", "True or False", "'False'"],
    ),
    "fit with progress 1": (fit((X, Y), progress=1), ["fit: progress", "True or False", "1"]),
    "fit with ema_warmup None": (
        fit((X, Y), ema=0.9, ema_warmup=None),
        ["fit: ema_warmup", "True or False", "None"],
    ),
    "fit_ensemble with eval_ema 'yes'": (
        fit_ensemble((X, Y), eval_ema="yes"),
        ["fit_ensemble: eval_ema", "True or False", "'yes'"],
    ),
    "make_step with a string loss": (
        lambda: train.make_step(MLP, optim.adam(1e-3), loss_fn="softmax_cross_entropy"),
        ["make_step: loss_fn", "a function", "'softmax_cross_entropy'"],
    ),
    "make_evaluate with a metric named grad_norm": (
        lambda: train.make_evaluate(MLP, loss_fn=CE, metrics={"grad_norm": losses.accuracy}),
        ["make_evaluate: metrics names", "'grad_norm'"],
    ),
    "epoch_fn with a list of metrics": (
        lambda: train.epoch_fn(
            MLP, lambda: optim.adam(1e-3), loss_fn=CE, batch_size=4, metrics=[losses.accuracy]
        ),
        ["epoch_fn: metrics", "a dict", "list"],
    ),
    # Wrappers and combinators: the inner object's kind and the wrapper's own values.
    "clip to a negative bound": (lambda: optim.clip(-1.0), ["clip: max_delta", ">= 0", "-1.0"]),
    "clip_by_global_norm to a negative norm": (
        lambda: optim.clip_by_global_norm(-1.0),
        ["clip_by_global_norm: max_norm", "> 0", "-1.0"],
    ),
    "clip_by_global_norm to NaN": (
        lambda: optim.clip_by_global_norm(float("nan")),
        ["clip_by_global_norm: max_norm", "nan"],
    ),
    "apply_if_finite with a negative count": (
        lambda: optim.apply_if_finite(optim.adam(1e-3), -1),
        ["apply_if_finite: max_consecutive_errors", "non-negative", "-1"],
    ),
    "apply_if_finite of a name": (
        lambda: optim.apply_if_finite("adam", 3),
        ["apply_if_finite: inner", "gradient transformation", "'adam'"],
    ),
    "chain of a constructor not called": (
        lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adam),
        ["chain: transforms[1]", "the function adam", "call it"],
    ),
    "masked with a mask of numbers": (
        lambda: optim.masked(optim.adam(1e-3), {"a": 1, "b": 0}).init(
            {"a": jnp.ones(2), "b": jnp.ones(2)}
        ),
        ["masked: the mask", "True or False", "int 1", "['a']"],
    ),
    "masked with a mask of another structure": (
        lambda: optim.masked(optim.adam(1e-3), {"a": True}).init(
            {"a": jnp.ones(2), "b": jnp.ones(2)}
        ),
        ["masked: the mask", "prefix", "{'a': *}", "{'a': *, 'b': *}"],
    ),
    "muon with a mask of another structure": (
        lambda: optim.muon(1e-3, muon_mask=[True, False]).init(
            {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
        ),
        ["muon: muon_mask", "prefix", "[*, *]", "{'b': *, 'w': *}"],
    ),
    "masked of a number": (
        lambda: optim.masked(5, {"a": True}),
        ["masked: inner", "gradient transformation", "int 5"],
    ),
    "multi_steps of a number": (
        lambda: optim.multi_steps(5, 2),
        ["multi_steps: optimizer", "gradient transformation", "int 5"],
    ),
    "with_extra_args_support of None": (
        lambda: optim.with_extra_args_support(None),
        ["with_extra_args_support: tx", "gradient transformation", "None"],
    ),
    "mixed_precision of a number": (
        lambda: nn.mixed_precision(5, "mixed_bfloat16"),
        ["mixed_precision", "a Layer or a function", "int 5"],
    ),
    "serial of a string": (
        lambda: nn.serial(nn.dense(3), "relu"),
        ["serial", "a Layer or a function", "'relu'"],
    ),
    "serial of a layer constructor not called": (
        lambda: nn.serial(nn.dense(8), nn.flatten),
        ["serial: flatten makes a layer", "flatten(...)"],
    ),
    "repeat_to_serial with a number for the block": (
        lambda: nn.repeat_to_serial({}, 5),
        ["repeat_to_serial: block", "Layer or its kind", "int 5"],
    ),
    # Layer settings that JAX met only at init or apply (found by trying each argument of
    # every layer with a string, -1, 0, 1.5, None, NaN, True and a tuple).
    "dense with an unknown initializer": (
        lambda: nn.dense(3, w_init="glorot"),
        ["dense: w_init: unknown initializer 'glorot'", "glorot_uniform"],
    ),
    "conv with a number as initializer": (
        lambda: nn.conv(4, (3, 3), b_init=0),
        ["conv: b_init: unknown initializer 0", "a function (key, shape, dtype)"],
    ),
    "gru with a list as initializer": (
        lambda: nn.gru(4, u_init=["orthogonal"]),
        ["gru: u_init: unknown initializer ['orthogonal']"],
    ),
    "embedding with an integer dtype": (
        lambda: nn.embedding(10, 4, dtype=jnp.int32),
        ["embedding: dtype", "floating-point", "int32"],
    ),
    "multi_head_attention with a dtype of 1.5": (
        lambda: nn.multi_head_attention(2, dtype=1.5),
        ["multi_head_attention: dtype", "floating-point", "1.5"],
    ),
    "layer_norm with a string eps": (
        lambda: nn.layer_norm(eps="1e-5"),
        ["layer_norm: eps", ">= 0", "'1e-5'"],
    ),
    "group_norm with a negative eps": (
        lambda: nn.group_norm(2, eps=-1e-5),
        ["group_norm: eps", ">= 0", "-1e-05"],
    ),
    "batch_norm with momentum None": (
        lambda: nn.batch_norm(momentum=None),
        ["batch_norm: momentum", "[0, 1]", "None"],
    ),
    "batch_norm with a numbered axis": (
        lambda: nn.batch_norm(axis_name=0),
        ["batch_norm: axis_name", "mapped axis", "0"],
    ),
    "batch_norm applied with its axis unbound": (
        lambda: (
            lambda layer: layer.apply(*layer.init(KEY, (4, 3))[1:], jnp.ones((4, 3)), train=True)
        )(nn.batch_norm(axis_name="batch")),
        ["batch_norm", "axis_name 'batch'", "no enclosing vmap", "axis_name=None"],
    ),
    "a model applied to None": (apply_to(None), ["dense_0", "the input", "array", "None"]),
    "dense applied with string params": (
        lambda: nn.dense(3).apply("w", {}, jnp.ones((2, 4))),
        ["dense: params", "the dict init returns, with w", "str 'w'"],
    ),
    "layer_norm applied with params None": (
        lambda: nn.layer_norm().apply(None, {}, jnp.ones((2, 4))),
        ["layer_norm: params", "dict init returns", "None"],
    ),
    "layer_norm applied with empty params": (
        lambda: nn.layer_norm().apply({}, {}, jnp.ones((2, 4))),
        ["layer_norm: params", "no entry 'scale'", "it has []"],
    ),
    "batch_norm applied with the params of one without a bias": (
        lambda: nn.batch_norm().apply(
            {"scale": jnp.ones(4)}, {"mean": jnp.zeros(4), "var": jnp.ones(4)}, jnp.ones((2, 4))
        ),
        ["batch_norm: params", "no entry 'bias'", "it has ['scale']"],
    ),
    "dense applied with params without its bias": (
        lambda: nn.dense(3).apply({"w": jnp.ones((4, 3))}, {}, jnp.ones((2, 4))),
        ["dense: params", "no entry 'b'", "it has ['w']"],
    ),
    "a stacked bidirectional GRU without one direction's bias": (
        lambda: (
            lambda layer, params: layer.apply(
                {**params, "layer_1": {**params["layer_1"], "backward": {"w_ih": 0, "w_hh": 0}}},
                {},
                jnp.ones((2, 3, 5)),
            )
        )(
            nn.gru(4, num_layers=2, bidirectional=True),
            nn.gru(4, num_layers=2, bidirectional=True).init(KEY, (2, 3, 5))[1],
        ),
        ["gru: params['layer_1']['backward']", "no entry 'b_ih'"],
    ),
    "attention applied without a projection's bias": (
        lambda: (
            lambda params: nn.multi_head_attention(2).apply(
                {**params, "k": {"w": params["k"]["w"]}}, {}, jnp.ones((2, 3, 8))
            )
        )(nn.multi_head_attention(2).init(KEY, (2, 3, 8))[1]),
        ["multi_head_attention: params['k']", "no entry 'b'", "it has ['w']"],
    ),
    "cached attention applied with a cache without its index": (
        lambda: (
            lambda layer, params, state: layer.apply(
                params,
                {"cache": {k: v for k, v in state["cache"].items() if k != "index"}},
                jnp.ones((2, 1, 8)),
            )
        )(
            nn.multi_head_attention(2, causal=True, cache_length=4),
            *nn.multi_head_attention(2, causal=True, cache_length=4).init(KEY, (2, 1, 8))[1:],
        ),
        ["multi_head_attention: state['cache']", "no entry 'index'"],
    ),
    "a stacked GRU whose second layer's recurrent kernel is too narrow": (
        lambda: (
            lambda params: nn.gru(12, num_layers=2).apply(
                {**params, "layer_1": {**params["layer_1"], "w_hh": jnp.ones((12, 30))}},
                {},
                jnp.ones((2, 3, 5)),
            )
        )(nn.gru(12, num_layers=2).init(KEY, (2, 3, 5))[1]),
        ["gru: params['layer_1']['w_hh']", "(12, 30)", "expected (12, 36)", "hidden=12"],
    ),
    "a bidirectional LSTM whose backward kernel reads other features": (
        lambda: (
            lambda params: nn.lstm(4, bidirectional=True).apply(
                {**params, "backward": {**params["backward"], "w_ih": jnp.ones((6, 16))}},
                {},
                jnp.ones((2, 3, 5)),
            )
        )(nn.lstm(4, bidirectional=True).init(KEY, (2, 3, 5))[1]),
        ["lstm: params['backward']['w_ih']", "(6, 16)", "expected (5, 16)", "5 input features"],
    ),
    "cross-attention whose value kernel reads the queries' features": (
        lambda: (
            lambda params: nn.cross_attention(2).apply(
                {**params, "v": {**params["v"], "w": jnp.ones((8, 8))}},
                {},
                (jnp.ones((2, 3, 8)), jnp.ones((2, 4, 6))),
            )
        )(nn.cross_attention(2).init(KEY, ((2, 3, 8), (2, 4, 6)))[1]),
        ["cross_attention: params['v']['w']", "(8, 8)", "expected (6, 8)", "6 of the context"],
    ),
    "layer_norm whose bias is longer than its scale": (
        lambda: nn.layer_norm().apply(
            {"scale": jnp.ones(4), "bias": jnp.zeros(5)}, {}, jnp.ones((2, 4))
        ),
        ["layer_norm: params['bias']", "(5,)", "expected (4,) as params['scale']"],
    ),
    "embedding applied with a string as its params": (
        lambda: nn.embedding(10, 4).apply("table", {}, jnp.array([[1, 2]])),
        ["embedding: params", "dict init returns, with table", "str 'table'"],
    ),
    "weight_norm applied without its gain": (
        lambda: nn.weight_norm(nn.dense(3)).apply(
            {"v": jnp.ones((4, 3)), "b": jnp.zeros(3)}, {}, jnp.ones((2, 4))
        ),
        ["weight_norm: params", "no entry 'g'", "it has ['b', 'v']"],
    ),
    "a model applied with a list as its state": (
        lambda: MLP.apply(parts_of(MLP, (1, 5))[0], [], jnp.ones((2, 5))),
        ["serial: state", "dict init returns", "list []"],
    ),
    "layer_norm with eps None": (
        lambda: nn.layer_norm(eps=None),
        ["layer_norm: eps", ">= 0", "None"],
    ),
    "layer_ntk of a string": (
        lambda: fn.diff.layer_ntk("mlp", {}, {}, X),
        ["layer_ntk", "a Layer or a function", "'mlp'"],
    ),
    "hessian of a string": (
        lambda: fn.diff.hessian("loss", {"w": jnp.ones(2)}),
        ["hessian: f", "a function", "'loss'"],
    ),
    "loss_line with has_aux but a scalar loss": (
        lambda: fn.diff.loss_line(
            lambda p: jnp.sum(p["w"] ** 2),
            {"w": jnp.ones(2)},
            {"w": jnp.ones(2)},
            alphas=[0.0, 1.0],
            has_aux=True,
        ),
        ["loss_line: has_aux=True", "a pair (loss, metric)"],
    ),
    "density_on_grid of eigenvalues": (
        lambda: fn.diff.density_on_grid(jnp.ones(3), jnp.linspace(0, 1, 5)),
        ["density_on_grid: density", "HessianDensity", "ArrayImpl"],
    ),
    "inverse_hvp of one params-shaped vector": (
        lambda: fn.diff.inverse_hvp(
            lambda p, x: MLP.apply(p, {}, x)[0],
            CE,
            parts_of(MLP, (1, 5))[0],
            (X, Y),
            parts_of(MLP, (1, 5))[0],
            method="exact",
        ),
        ["inverse_hvp: vectors", "leading axis of k vectors"],
    ),
    "batch_quantities of a number": (
        lambda: fn.diff.batch_quantities(
            lambda p, x: MLP.apply(p, {}, x)[0],
            parts_of(MLP, (1, 5))[0],
            X,
            loss_of_outputs=lambda out: CE(out, Y),
            quantities=5,
        ),
        ["batch_quantities: quantities", "a name or a sequence", "int 5"],
    ),
    "predictive on a string": (
        lambda: fn.bayes.predictive(posterior(), "x"),
        ["predictive: x", "must be an array", "str 'x'"],
    ),
    "sample of a dict": (
        lambda: fn.bayes.sample({"mean": 0}, KEY, 3),
        ["sample: post", "LaplacePosterior", "dict"],
    ),
    "log_marginal_likelihood with a string prior": (
        lambda: fn.bayes.log_marginal_likelihood(posterior(), prior_precision="1"),
        ["log_marginal_likelihood: prior_precision", "'1'"],
    ),
    "prodigy with one beta": (
        lambda: optim.prodigy(1.0, betas=0.9),
        ["prodigy: betas", "a pair", "0.9"],
    ),
    "muon with a number of coefficients": (
        lambda: optim.muon(1e-3, ns_coeffs=1.5).init({"w": jnp.ones((2, 2))}),
        ["muon: ns_coeffs", "triple", "1.5"],
    ),
    "multiclass_hinge with a margin per class": (
        lambda: losses.multiclass_hinge(jnp.ones((2, 3)), jnp.array([0, 1]), margin=(1.0, 2.0)),
        ["multiclass_hinge: margin", "one number", "(1.0, 2.0)"],
    ),
    "softmax_cross_entropy on lists": (
        lambda: losses.softmax_cross_entropy([[0.0, 1.0]], [1]),
        ["softmax_cross_entropy: logits", "must be an array", "list"],
    ),
    "multiclass_hinge with a string margin": (
        lambda: losses.multiclass_hinge(jnp.ones((2, 3)), jnp.array([0, 1]), margin="1"),
        ["multiclass_hinge: margin", "finite number", "'1'"],
    ),
    "multiclass_hinge with a NaN margin": (
        lambda: losses.multiclass_hinge(jnp.ones((2, 3)), jnp.array([0, 1]), margin=float("nan")),
        ["multiclass_hinge: margin", "finite number", "nan"],
    ),
    "l2_penalty with biases as a string": (
        lambda: losses.l2_penalty({"w": jnp.ones((2, 2))}, biases="False"),
        ["l2_penalty: biases", "'False'"],
    ),
    "mse with an unknown reduction": (
        lambda: losses.mse(jnp.ones(2), jnp.ones(2), reduction="avg"),
        ["mse: reduction", "'mean', 'sum' or 'none'", "'avg'"],
    ),
    "transformer_block with a dropout rate of 2": (
        lambda: nn.transformer_block(2, 8, dropout_rate=2.0),
        ["transformer_block: dropout_rate", "[0, 1)", "2.0"],
    ),
    "transformer_block with a string attention dropout rate": (
        lambda: nn.transformer_block(2, 8, attention_dropout_rate="0.1"),
        ["transformer_block: attention_dropout_rate", "[0, 1)", "'0.1'"],
    ),
    "dropout with rate None": (lambda: nn.dropout(None), ["dropout: rate", "[0, 1)", "None"]),
    "lstm with a dropout string": (
        lambda: nn.lstm(4, num_layers=2, dropout="0.1"),
        ["lstm: dropout", "[0, 1)", "0.1"],
    ),
    "lstm with a forget bias per gate": (
        lambda: nn.lstm(4, forget_bias=(1.0, 1.0)),
        ["lstm: forget_bias", "a finite number", "(1.0, 1.0)"],
    ),
    "max_pool with a float padding": (
        lambda: nn.max_pool((2, 2), padding=1.5),
        ["max_pool", "padding", "1.5"],
    ),
    "weight_norm of a string": (
        lambda: nn.weight_norm("dense"),
        ["weight_norm", "a Layer or a function", "'dense'"],
    ),
    # Optimizer settings that JAX met only at init or update (each argument of every
    # optimizer tried the same way).
    "adam with eps None": (lambda: optim.adam(1e-3, eps=None), ["adam: eps", "> 0", "None"]),
    "scale_by_amsgrad with eps None": (
        lambda: optim.scale_by_amsgrad(eps=None),
        ["scale_by_amsgrad: eps", "> 0", "None"],
    ),
    "rmsprop with a moment dtype of -1": (
        lambda: optim.rmsprop(1e-3, moment_dtype=-1.0),
        ["scale_by_rms: moment_dtype", "floating-point", "-1.0"],
    ),
    "trace with dampening None": (
        lambda: optim.trace(0.9, dampening=None),
        ["trace: dampening", "[0, 1]", "None"],
    ),
    "scale by a string": (lambda: optim.scale("0.1"), ["scale: step_size", "finite", "'0.1'"]),
    "scale by NaN": (lambda: optim.scale(float("nan")), ["scale: step_size", "finite", "nan"]),
    "sam of a number": (
        lambda: optim.sam(0.05),
        ["sam: optimizer", "gradient transformation", "float 0.05"],
    ),
    "lookahead of a constructor": (
        lambda: optim.lookahead(optim.adam, 5, 0.5),
        ["lookahead: fast_optimizer", "the function adam", "call it"],
    ),
    "schedule_free of a rate": (
        lambda: optim.schedule_free(1e-3, 1e-3),
        ["schedule_free: base_optimizer", "gradient transformation", "0.001"],
    ),
    # The training and data helpers below `fit`.
    "init_train_state with a string for the optimizer": (
        lambda: train.init_train_state(MLP, "adam", KEY, (4, 5)),
        ["init_train_state: optimizer", "gradient transformation", "'adam'"],
    ),
    "init_train_state of a number for the model": (
        lambda: train.init_train_state(5, optim.adam(1e-3), KEY, (4, 5)),
        ["init_train_state: model", "funcnet.nn.Layer", "int"],
    ),
    "init_train_state with a width for the input shape": (
        lambda: train.init_train_state(MLP, optim.adam(1e-3), KEY, 5),
        ["init_train_state: in_shape", "(128, 64)", "5"],
    ),
    "train_step of a number for the optimizer": (
        lambda: train.train_step(MLP, 5, loss_fn=CE),
        ["train_step: optimizer", "gradient transformation", "int"],
    ),
    "eval_step with no loss": (
        lambda: train.eval_step(MLP, loss_fn=None),
        ["eval_step: loss_fn", "a function", "None"],
    ),
    "steps_per_epoch with a fractional batch": (
        lambda: train.steps_per_epoch((X, Y), 2.5),
        ["steps_per_epoch: batch_size", "positive int", "2.5"],
    ),
    "shuffle with a seed for the key": (lambda: train.shuffle(5, 3), ["shuffle: key", "int"]),
    "shuffle of -1 rows": (lambda: train.shuffle(KEY, -1), ["shuffle: n", "non-negative", "-1"]),
    "shard_state onto a number": (
        lambda: train.shard_state(mlp_state(), 5),
        ["shard_state: mesh", "jax.sharding.Mesh", "int"],
    ),
    "data_mesh of a string": (
        lambda: train.data_mesh("cpu"),
        ["data_mesh: devices", "list of jax devices", "'cpu'"],
    ),
    "minibatches with a seed for the key": (
        lambda: list(fn.data.minibatches((X, Y), 4, key=0)),
        ["minibatches: key", "int"],
    ),
    "minibatches of 2.5 rows": (
        lambda: list(fn.data.minibatches((X, Y), 2.5)),
        ["minibatches: batch_size", "positive int", "2.5"],
    ),
    "digits with no test split": (
        lambda: fn.data.digits(test_fraction=0),
        ["digits: test_fraction", "(0, 1)", "0"],
    ),
    "char_corpus of a number": (
        lambda: fn.data.char_corpus(5),
        ["char_corpus: path", "a file path or None", "5"],
    ),
    # Layout rules: their own arguments, before any mesh is seen.
    "fsdp with a negative min_size": (
        lambda: train.fsdp(min_size=-1),
        ["fsdp: min_size", "non-negative", "-1"],
    ),
    "fsdp over an axis given by number": (lambda: train.fsdp(axis=0), ["fsdp: axis", "0"]),
    "tensor_parallel over no axis": (
        lambda: train.tensor_parallel(axis=""),
        ["tensor_parallel: axis", "''"],
    ),
    "by_path of a list": (
        lambda: train.by_path(["*/w"]),
        ["by_path: patterns", "a dict", "list"],
    ),
    "by_path with a spec of numbers": (
        lambda: train.by_path({"*/w": (None, 1)}),
        ["by_path: the spec of '*/w'", "mesh axis names", "(None, 1)"],
    ),
    # Curvature tools, data sets and losses: their functions, directions and sizes.
    "hvp along a direction of another shape": (
        lambda: fn.diff.hvp(lambda p: jnp.sum(p["w"] ** 2), {"w": jnp.ones(3)}, {"w": jnp.ones(2)}),
        ["hvp: v must have the structure and shapes of x", "(2,)", "(3,)"],
    ),
    "hvp of a number": (
        lambda: fn.diff.hvp(5, {"w": jnp.ones(3)}, {"w": jnp.ones(3)}),
        ["hvp: f", "a function", "int 5"],
    ),
    "gnvp along a scalar": (
        lambda: fn.diff.gnvp(lambda p: p["w"], jnp.sum, {"w": jnp.ones(3)}, 1.0),
        ["gnvp: v must have the structure and shapes of params"],
    ),
    "hessian_eigs of 1.5 eigenvalues": (
        lambda: fn.diff.hessian_eigs(jnp.sum, jnp.ones(4), key=KEY, k=1.5),
        ["hessian_eigs: k", "positive int", "1.5"],
    ),
    "hessian_eigs with a string tolerance": (
        lambda: fn.diff.hessian_eigs(jnp.sum, jnp.ones(4), key=KEY, k=1, tol="1e-6"),
        ["hessian_eigs: tol", ">= 0", "'1e-6'"],
    ),
    "hessian_trace of 2.5 samples": (
        lambda: fn.diff.hessian_trace(jnp.sum, jnp.ones(4), key=KEY, num_samples=2.5),
        ["hessian_trace: num_samples", "an int >= 2", "2.5"],
    ),
    "hessian_density of string params": (
        lambda: fn.diff.hessian_density(jnp.sum, {"w": "ones"}, key=KEY),
        ["hessian_density: params", "float arrays", "<U4"],
    ),
    "numerical_grad with a negative step": (
        lambda: fn.diff.numerical_grad(jnp.sum, jnp.ones(3), step=-1e-3),
        ["numerical_grad: step", "> 0", "-0.001"],
    ),
    "complex_step_grad along a direction of another shape": (
        lambda: fn.diff.complex_step_grad(jnp.sum, jnp.ones(3), direction=jnp.ones(2)),
        ["complex_step_grad: direction must have the structure and shapes of x", "(2,)"],
    ),
    "per_example_grads of integer params": (
        lambda: fn.diff.per_example_grads(lambda p, b: jnp.sum(p * b), jnp.arange(3), X[:, :3]),
        ["per_example_grads: params", "float arrays", "int32"],
    ),
    "laplace of string params": (
        lambda: fn.bayes.laplace(lambda p, x: x, {"w": "a"}, (X, Y)),
        ["laplace: params", "float arrays", "<U1"],
    ),
    "params_ema with warmup 'no'": (
        lambda: train.params_ema({"w": jnp.ones(2)}, 0.9, warmup="no"),
        ["params_ema: warmup", "True or False", "'no'"],
    ),
    "check_grads with a negative tolerance": (
        lambda: fn.diff.check_grads(lambda p: jnp.sum(p**2), jnp.ones(3), rtol=-1.0),
        ["check_grads: rtol", ">= 0", "-1.0"],
    ),
    "self_influence of more inputs than labels": (
        lambda: fn.diff.self_influence(
            lambda p, x: x @ p, CE, jnp.zeros((5, 3)), (X, Y[:4]), method="exact"
        ),
        ["self_influence: x and y", "differ in length", "(10, 5)", "(4,)"],
    ),
    "laplace of a layer": (
        lambda: fn.bayes.laplace(MLP, {}, (X, Y)),
        ["laplace: outputs_fn", "got Layer", "model.apply(p, state, x)[0]"],
    ),
    "moons with the sample count in place of the key": (
        lambda: fn.data.moons(200),
        ["moons: key", "jax.random.key(seed)", "int"],
    ),
    "moons of no points": (lambda: fn.data.moons(KEY, n=0), ["moons: n", "positive int", "0"]),
    "spirals of no classes": (
        lambda: fn.data.spirals(KEY, classes=0),
        ["spirals: classes", "positive int", "0"],
    ),
    "spirals with negative noise": (
        lambda: fn.data.spirals(KEY, noise=-0.1),
        ["spirals: noise", ">= 0", "-0.1"],
    ),
    "huber with a negative delta": (
        lambda: losses.huber(jnp.ones(3), jnp.zeros(3), delta=-1.0),
        ["huber: delta", "> 0", "-1.0"],
    ),
    "checkpoint metadata that is not a dict": (
        lambda: fn.checkpoint.save("unused.npz", {"w": np.ones(2)}, metadata=[1, 2]),
        ["checkpoint metadata must be a dict", "list"],
    ),
    # Sharded checkpoints: the step and what is kept, before orbax starts.
    "save_sharded at a step given as a string": (
        lambda: fn.checkpoint.save_sharded("unused", {"w": np.ones(2)}, step="3"),
        ["save_sharded: step", "non-negative int", "'3'"],
    ),
    "save_sharded keeping a fraction of the steps": (
        lambda: fn.checkpoint.save_sharded("unused", {"w": np.ones(2)}, step=0, keep=0.5),
        ["save_sharded: keep", "positive int", "0.5"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_refused_in_one_line_naming_the_argument_and_value(name):
    call, fragments = CASES[name]
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, f"{name}: the message is not one line:\n{message}"
    missing = [f for f in fragments if f not in message]
    assert not missing, f"{name}: {missing} not in the message:\n{message}"


def test_fit_on_lists_of_numbers_equals_fit_on_the_arrays():
    by_arrays = train.fit(MLP, optim.adam(1e-2), (X, Y), **{**FIT, "epochs": 2})
    by_lists = train.fit(MLP, optim.adam(1e-2), (X.tolist(), Y.tolist()), **{**FIT, "epochs": 2})
    assert by_lists.history == by_arrays.history


def test_traced_and_scheduled_hyperparameters_pass_unchecked():
    params = {"w": jnp.ones(3)}

    def one_step(rate, beta):
        opt = optim.sgd(rate, momentum=beta)
        return opt.update({"w": jnp.ones(3)}, opt.init(params), params)[0]["w"]

    updates = jax.vmap(one_step)(jnp.array([0.1, 0.2]), jnp.array([0.5, 0.9]))
    np.testing.assert_allclose(updates, [[-0.1] * 3, [-0.2] * 3])
    optim.adam(lambda count: 1e-3 / (1 + count))  # a schedule is not read
    result = train.fit_ensemble(
        MLP,
        lambda learning_rate: optim.adam(learning_rate),
        (X, Y),
        hparams={"learning_rate": [1e-3, 1e-2]},
        **FIT,
    )
    assert len(result.history) == 2


@pytest.mark.parametrize(
    "loss", [losses.softmax_cross_entropy, losses.nll, losses.multiclass_hinge]
)
@pytest.mark.parametrize("label", [3, -1, 7])
def test_a_traced_label_out_of_range_gives_a_nan_loss_never_another_class(loss, label):
    logits = jnp.log(jnp.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    good = jax.jit(loss)(logits, jnp.array([0, 2]))
    np.testing.assert_allclose(good, loss(logits, np.array([0, 2])), rtol=1e-6)
    assert np.isnan(jax.jit(loss)(logits, jnp.array([0, label])))
    per_example = jax.jit(functools.partial(loss, reduction="none"))(logits, jnp.array([0, label]))
    assert np.isfinite(per_example[0]) and np.isnan(per_example[1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        loss(logits, np.array([0, label]))


def test_checkify_turns_a_traced_label_out_of_range_into_an_error():
    checked = checkify.checkify(jax.jit(losses.softmax_cross_entropy), errors=checkify.float_checks)
    error, _ = checked(jnp.zeros((2, 3)), jnp.array([0, -1]))
    assert error.get() is not None and "nan" in error.get()
    error, _ = checked(jnp.zeros((2, 3)), jnp.array([0, 2]))
    assert error.get() is None


def test_make_step_leaves_labels_on_the_device_unread():
    """Labels already on the device are not read back each step (a wait on the device); an
    out-of-range one shows as a NaN loss instead."""
    step = train.make_step(MLP, optim.adam(1e-3), loss_fn=CE)
    _, metrics = step(mlp_state(), (jnp.asarray(X[:4]), jnp.array([0, 1, 2, 3])))
    assert np.isnan(metrics["loss"])
    _, metrics = step(mlp_state(), (X[:4].tolist(), Y[:4].tolist()))
    assert np.isfinite(metrics["loss"])


def test_label_check_knows_the_losses_that_constrain_labels():
    assert losses.label_check(losses.mse) is None
    assert losses.label_check(lambda outputs, labels: 0.0) is None
    for loss in (CE, losses.nll, losses.binary_cross_entropy, losses.hinge):
        assert losses.label_check(loss) is not None
        assert losses.label_check(jax.jit(functools.partial(loss, reduction="sum"))) is not None
    assert fn.losses.label_check(CE)(np.zeros((2, 3), np.float32), np.array([0, 2])) is None
