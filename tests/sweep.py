"""Sweep: every argument of every layer, optimizer, curvature tool and loss, given bad values.

Run with ``make sweep`` or ``python tests/sweep.py [--only NAME ...]``. Each argument of each
public function is replaced, one at a time, by each of `BAD_VALUES` (a string, -1, 0, 1.5,
None, NaN, True and a tuple) in an otherwise valid call, and the result is carried through
``init`` and ``apply`` (layers), ``init`` and ``update`` (optimizers) or the call itself
(curvature tools and losses). The "inputs" family gives each layer's ``apply`` bad params,
states and inputs in place of its own. Every call ends one of three ways:

- ``accepted``: the value worked (many arguments take some of these values: 0 for a
  decay, None for a default, True for a flag, any state to a layer that keeps none);
- ``refused``: a ValueError or TypeError (a LayerError or CheckpointError among them) raised
  by a ``raise`` statement of funcnet's own code: one line, or for trees of another
  structure a first line naming the function and the argument, then one line per leaf at
  fault;
- ``raw``: anything else: an error raised inside JAX or NumPy, an AttributeError or
  KeyError, or a TypeError that a line of funcnet met (``params["w"]`` of a string).

`KNOWN_RAW` lists the raw outcomes left as they are, each with the reason. Any other raw
outcome is printed with the call that gives it, and the exit status is 1. This file is not
collected by pytest; ``tests/test_sweep.py`` runs the sweep on a few functions in CI.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from funcnet import bayes, diff, losses, nn, optim
from funcnet.nn.core import Layer

BAD_VALUES = ("a", -1, 0, 1.5, None, float("nan"), True, (2, -1))

# (function, argument): why its raw outcome stays.
KNOWN_RAW = {
    ("check_grads", "rtol"): "a tolerance of 0 fails the check, whose failure is an AssertionError",
    ("check_grads", "step"): "a step of 1.5 fails the check, whose failure is an AssertionError",
    ("per_example_grads", "batch"): "the loss, the caller's function, reads the batch",
}
# Arguments the sweep's own functions read: a bad value breaks the caller's code, not
# funcnet's (params that the loss indexes, a model's inputs).
CALLERS_OWN = frozenset({"params", "params0", "params1", "x", "x1", "x2", "train", "test", "data"})
# Layers the sweep cannot build from sizes alone: combinators and wrappers take layers.
NOT_LAYERS = {
    "as_layer",
    "checkpoint_name",
    "fanout",
    "from_function",
    "layer_name",
    "mixed_precision",
    "parallel",
    "policy",
    "remat",
    "remat_policy",
    "repeat",
    "repeat_to_serial",
    "residual",
    "serial",
    "serial_to_repeat",
    "summary",
}
# Optimizers that take an inner one, or are not transformations (schedules, helpers).
NOT_OPTIMIZERS = {
    "accepts_extra_args",
    "apply_if_finite",
    "apply_updates",
    "bias_correction",
    "chain",
    "freeze",
    "global_norm",
    "identity",
    "masked",
    "multi_steps",
    "set_to_zero",
    "stateless",
    "update_moment",
    "with_extra_args_support",
}
KEY = jax.random.key(0)
PARAMS = {"w": jnp.full((3, 2), 0.3), "b": jnp.full((2,), 0.1)}
GRADS = {"w": jnp.full((3, 2), 0.1), "b": jnp.full((2,), -0.2)}
LAYER_INPUTS = ((2, 8, 8, 4), (2, 6, 4), (2, 4))
SIZE_NAMES = {"kernel_size", "window", "window_shape", "strides"}


class Case:
    """One public function, the valid call the sweep starts from, how to run a call to the
    end (`finish`), the arguments that the caller's own functions read (`caller_reads`),
    where a bad value is the caller's function's error to raise, and bad calls of its own
    beyond the bad values (`more`: ``{label: args}``)."""

    def __init__(
        self,
        name: str,
        fn: Callable,
        args: dict[str, Any],
        finish: Callable,
        caller_reads: frozenset[str] = frozenset(),
        more: dict[str, dict[str, Any]] | None = None,
    ):
        self.name, self.fn, self.args, self.finish = name, fn, args, finish
        self.caller_reads, self.more = caller_reads, more or {}

    def run(self, args: dict[str, Any]) -> None:
        self.finish(self.fn(**args))


def _required(fn: Callable, value: Callable[[str], Any]) -> dict[str, Any]:
    """The required arguments of `fn`, each given `value(name)`."""
    return {
        name: value(name)
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _through_layer(layer: Any) -> None:
    if not isinstance(layer, Layer):
        raise TypeError(f"not a Layer: {type(layer).__name__}")
    for shape in LAYER_INPUTS:
        try:
            _, params, state = layer.init(KEY, shape)
        except nn.LayerError:
            continue
        layer.apply(params, state, jnp.ones(shape), key=KEY, train=True)
        return


def _through_optimizer(tx: Any) -> None:
    tx.update(GRADS, tx.init(PARAMS), PARAMS)


def layer_cases(only: set[str] | None = None) -> Iterator[Case]:
    for name in sorted(nn.__all__):
        fn = getattr(nn, name)
        if not inspect.isfunction(fn) or name in NOT_LAYERS or (only and name not in only):
            continue
        args = _required(fn, lambda arg: (2, 2) if arg in SIZE_NAMES else 4)
        case = Case(name, fn, args, _through_layer)
        try:
            case.run(args)
        except Exception:
            continue  # not a layer built from sizes (activations taking arrays, helpers)
        yield case


def _applying(layer: Layer) -> Callable:
    def apply(params, state, x):
        return layer.apply(params, state, x, key=KEY, train=True)

    return apply


def _without_each_entry(tree: dict, where: str = "params") -> Iterator[tuple[str, dict]]:
    """`tree` with one entry removed, for each entry of it and of the dicts inside it."""
    for name, value in tree.items():
        yield f"{where}[{name!r}]", {k: v for k, v in tree.items() if k != name}
        if isinstance(value, dict):
            for label, inner in _without_each_entry(value, f"{where}[{name!r}]"):
                yield label, {**tree, name: inner}


def _each_leaf_misshapen(tree: dict, where: str = "params") -> Iterator[tuple[str, dict]]:
    """`tree` with one array given an extra axis, or one more entry along each axis, for each
    array in it."""
    for name, value in tree.items():
        if isinstance(value, dict):
            for label, inner in _each_leaf_misshapen(value, f"{where}[{name!r}]"):
                yield label, {**tree, name: inner}
            continue
        shape = jnp.shape(value)
        for label, new_shape in (
            ("with an extra axis", (*shape, 2)),
            ("one longer", (*(d + 1 for d in shape),) or (2,)),
        ):
            yield f"{where}[{name!r}] {label}", {**tree, name: jnp.ones(new_shape, value.dtype)}


def input_cases(only: set[str] | None = None) -> Iterator[Case]:
    """The layers of `layer_cases` applied to bad params, states and inputs, and to their
    own params and state with an entry missing or an array of another shape."""
    for case in layer_cases(only):
        layer = case.fn(**case.args)
        for shape in LAYER_INPUTS:
            try:
                _, params, state = layer.init(KEY, shape)
            except nn.LayerError:
                continue
            args = {"params": params, "state": state, "x": jnp.ones(shape)}
            more = {}
            for name, tree in (("params", params), ("state", state)):
                for label, other in _without_each_entry(tree, name):
                    more[f"{label} missing"] = {**args, name: other}
                for label, other in _each_leaf_misshapen(tree, name):
                    more[label] = {**args, name: other}
            yield Case(case.name, _applying(layer), args, jax.block_until_ready, more=more)
            break


def optimizer_cases(only: set[str] | None = None) -> Iterator[Case]:
    for name in sorted(optim.__all__):
        fn = getattr(optim, name)
        if not inspect.isfunction(fn) or name in NOT_OPTIMIZERS or (only and name not in only):
            continue
        args = _required(fn, lambda arg: KEY if arg == "key" else 0.5)
        case = Case(name, fn, args, _through_optimizer)
        try:
            case.run(args)
        except Exception:
            continue  # needs extra args, an inner optimizer or matrices only
        yield case


def curvature_cases(only: set[str] | None = None) -> Iterator[Case]:
    model = nn.serial(nn.dense(4), nn.tanh, nn.dense(3))
    _, params, state = model.init(KEY, (1, 5))
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    y = np.arange(8) % 3
    ce = losses.softmax_cross_entropy

    def outputs(p, inputs):
        return model.apply(p, state, inputs)[0]

    def f(p):
        return jnp.sum(jnp.tanh(p["w"]) ** 2) + jnp.sum(p["b"] ** 2)

    def example_loss(p, batch):
        return ce(outputs(p, batch[0]), batch[1])

    p, train = PARAMS, (x, y)
    calls = {
        "hvp": (diff.hvp, dict(f=f, x=p, v=p)),
        "gnvp": (diff.gnvp, dict(model_fn=lambda q: q["w"], loss_fn=jnp.sum, params=p, v=p)),
        "hessian": (diff.hessian, dict(f=f, x=p)),
        "flat_hessian": (diff.flat_hessian, dict(f=f, params=p)),
        "jacobian": (diff.jacobian, dict(f=lambda q: q["w"] * 2, x=p)),
        "hessian_eigs": (diff.hessian_eigs, dict(f=f, params=p, key=KEY, k=2)),
        "hessian_trace": (diff.hessian_trace, dict(f=f, params=p, key=KEY)),
        "hessian_density": (diff.hessian_density, dict(f=f, params=p, key=KEY)),
        "numerical_grad": (diff.numerical_grad, dict(f=f, x=p)),
        "complex_step_grad": (diff.complex_step_grad, dict(f=f, x=p)),
        "random_direction": (diff.random_direction, dict(key=KEY, params=p)),
        "filter_normalize": (diff.filter_normalize, dict(direction=p, params=p)),
        "linear_interpolation": (
            diff.linear_interpolation,
            dict(f=f, params0=p, params1=p, alphas=[0.0, 1.0]),
        ),
        "loss_line": (diff.loss_line, dict(f=f, params=p, direction=p, alphas=[0.0, 1.0])),
        "empirical_ntk": (diff.empirical_ntk, dict(f=outputs, params=params, x1=x, x2=x)),
        "per_example_grads": (
            diff.per_example_grads,
            dict(loss=example_loss, params=params, batch=train),
        ),
        "influence": (
            diff.influence,
            dict(model=outputs, loss=ce, params=params, train=train, test=train, method="exact"),
        ),
        "self_influence": (
            diff.self_influence,
            dict(model=outputs, loss=ce, params=params, train=train),
        ),
        "laplace": (bayes.laplace, dict(outputs_fn=outputs, params=params, data=train)),
        "inverse_hvp": (
            diff.inverse_hvp,
            dict(
                model=outputs,
                loss=ce,
                params=params,
                train=train,
                vectors=jax.tree.map(lambda a: a[None], params),
            ),
        ),
        "batch_quantities": (
            diff.batch_quantities,
            dict(
                f=outputs,
                params=params,
                inputs=x,
                loss_of_outputs=lambda out: ce(out, y),
                quantities="batch_l2",
            ),
        ),
        "check_grads": (diff.check_grads, dict(f=f, x=p)),
        "kronecker_factors": (
            diff.kronecker_factors,
            dict(outputs_fn=lambda q: outputs(q, x), params=params),
        ),
        "kronecker_layers": (
            diff.kronecker_layers,
            dict(outputs_fn=lambda q: outputs(q, x), params=params),
        ),
        "layer_ntk": (diff.layer_ntk, dict(layer=model, params=params, state=state, x1=x)),
        "loss_surface": (
            diff.loss_surface,
            dict(f=f, params=p, directions=(p, p), alphas=[0.0, 1.0]),
        ),
    }
    for name, (fn, args) in calls.items():
        if not only or name in only:
            yield Case(name, fn, args, lambda result: None, CALLERS_OWN)
    density = diff.hessian_density(f, p, key=KEY)
    posterior = bayes.laplace(outputs, params, train)
    calls = {
        "density_on_grid": (
            diff.density_on_grid,
            dict(density=density, grid=jnp.linspace(0, 1, 5)),
        ),
        "predictive": (bayes.predictive, dict(post=posterior, x=x)),
        "sample": (bayes.sample, dict(post=posterior, key=KEY, n_samples=2)),
        "log_marginal_likelihood": (bayes.log_marginal_likelihood, dict(post=posterior)),
        "optimize_prior_precision": (
            bayes.optimize_prior_precision,
            dict(post=posterior, n_steps=2),
        ),
        "posterior_precision": (bayes.posterior_precision, dict(post=posterior)),
        "functional_moments": (bayes.functional_moments, dict(post=posterior, x=x)),
    }
    for name, (fn, args) in calls.items():
        if not only or name in only:
            yield Case(name, fn, args, jax.block_until_ready, CALLERS_OWN - {"x"})


def loss_cases(only: set[str] | None = None) -> Iterator[Case]:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(4, 3)).astype(np.float32)
    classes, signs = np.array([0, 1, 2, 0]), np.array([1.0, -1.0, 1.0, -1.0], np.float32)
    bits = (rng.uniform(size=(4, 3)) > 0.5).astype(np.float32)
    calls = {
        "mse": (losses.mse, dict(predictions=scores, targets=scores[::-1])),
        "mae": (losses.mae, dict(predictions=scores, targets=scores[::-1])),
        "huber": (losses.huber, dict(predictions=scores, targets=scores[::-1])),
        "binary_cross_entropy": (losses.binary_cross_entropy, dict(logits=scores, labels=bits)),
        "logistic_loss": (losses.logistic_loss, dict(logits=scores[:, 0], labels=signs)),
        "hinge": (losses.hinge, dict(scores=scores[:, 0], labels=signs)),
        "softmax_cross_entropy": (
            losses.softmax_cross_entropy,
            dict(logits=scores, labels=classes),
        ),
        "nll": (
            losses.nll,
            dict(log_probs=np.log(np.full((4, 3), 1 / 3, np.float32)), labels=classes),
        ),
        "multiclass_hinge": (losses.multiclass_hinge, dict(scores=scores, labels=classes)),
        "accuracy": (losses.accuracy, dict(logits=scores, labels=classes)),
        "l1_penalty": (losses.l1_penalty, dict(params=PARAMS)),
        "l2_penalty": (losses.l2_penalty, dict(params=PARAMS)),
    }
    for name, (fn, args) in calls.items():
        if not only or name in only:
            yield Case(name, fn, args, jax.block_until_ready)


FAMILIES = {
    "layers": layer_cases,
    "optimizers": optimizer_cases,
    "curvature": curvature_cases,
    "losses": loss_cases,
    "inputs": input_cases,
}


def outcome(case: Case, args: dict[str, Any]) -> tuple[str, str]:
    """``(kind, detail)`` of one call: accepted, refused, or raw with the error and where."""
    try:
        case.run(args)
    except (ValueError, TypeError) as err:
        frames = traceback.extract_tb(err.__traceback__)
        message = str(err).strip()
        if "/funcnet/" in frames[-1].filename and (frames[-1].line or "").startswith("raise "):
            return "refused", message
        where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}"
        return "raw", f"{type(err).__name__} at {where}: {message.splitlines()[0][:120]}"
    except Exception as err:  # classifying every fault is the point
        frames = traceback.extract_tb(err.__traceback__)
        where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}"
        return "raw", f"{type(err).__name__} at {where}: {str(err)[:120]}"
    return "accepted", ""


def sweep(cases: list[Case]) -> tuple[collections.Counter, list[str]]:
    """Every argument of every case given every bad value; the counts of each kind of
    outcome and the unexplained raw ones."""
    counts: collections.Counter = collections.Counter()
    faults = []
    for case in cases:
        for arg, parameter in inspect.signature(case.fn).parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                continue
            for bad in BAD_VALUES:
                kind, detail = outcome(case, {**case.args, arg: bad})
                explained = (case.name, arg) in KNOWN_RAW or arg in case.caller_reads
                if kind == "raw" and explained:
                    kind = "raw, known"
                counts[kind] += 1
                if kind == "raw":
                    faults.append(f"{case.name}({arg}={bad!r}): {detail}")
        for label, args in case.more.items():
            kind, detail = outcome(case, args)
            counts[kind] += 1
            if kind == "raw":
                faults.append(f"{case.name}({label}): {detail}")
    return counts, faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="sweep only these functions")
    parser.add_argument("--families", nargs="*", choices=sorted(FAMILIES), default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    status = 0
    for family in args.families or sorted(FAMILIES):
        cases = list(FAMILIES[family](set(args.only or ())))
        counts, faults = sweep(cases)
        total = sum(counts.values())
        print(
            f"{family}: {len(cases)} functions, {total} calls: "
            + ", ".join(f"{counts[k]} {k}" for k in ("accepted", "refused", "raw, known", "raw"))
        )
        for fault in faults:
            print(f"  raw: {fault}")
        status |= bool(faults)
    return status


if __name__ == "__main__":
    sys.exit(main())
