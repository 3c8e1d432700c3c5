"""Steps and wall time to a target training loss, per optimizer, on three small workloads.

Workloads (float32, fixed batch size, no dropout or batch norm):

- ``mlp``: the 8×8 digits (`funcnet.data.digits`, 1,437 training images), MLP 64 → 128 → 10
  (ReLU), batch 64, softmax cross-entropy.
- ``cnn``: the same digits as images, conv 3×3 (8) → ReLU → max-pool 2 → conv 3×3 (16) → ReLU
  → max-pool 2 → dense 10, batch 64.
- ``transformer``: a causal character model on the bundled text (`funcnet.data.char_corpus`,
  its first 90%): embedding 64 + learned positions → a pre-norm block (4 heads, MLP 256) →
  layer norm → dense to the vocabulary, windows of 32 characters, batch 16.

Every run of a workload and seed starts from the same params (``model.init`` with
``key(seed)``) and sees the same batches in the same order (a NumPy generator seeded by
`seed`: shuffled epochs of the digits, random windows of the text), whatever the optimizer.
Each step is `funcnet.train.make_step`'s, so the curvature optimizers get their extra args
(the loss, its function of the params, the model's outputs function, a key).

Every `EVAL_EVERY` steps the training loss is evaluated (``train=False``, Schedule-Free at
its averaged params `schedule_free_eval_params`): on the whole training set for the digits,
and on a fixed batch of 64 training windows (drawn once, with its own seed) for the text. A
run stops when that loss reaches the workload's target (*reached*, its step count and the
seconds its training steps took), when it stops being finite or exceeds 10× its value at
the start (*diverged*), or at the workload's cap of steps or of seconds of steps (*capped*).
Wall time counts the training steps only, each segment between evaluations blocked on at its
end: not the evaluations, and not compilation, which is measured separately as the first
call of the step of each workload and optimizer.

The swept hyperparameter (the learning rate; for Hessian-free and K-FAC, which adapt their
damping, the initial damping) is kept in the optimizer's state as an array (`swept`), so one
compiled step serves the whole sweep and every seed. Per workload and optimizer, the best
value is the one with the fewest median steps to target over the seeds (a run that misses
counts as infinitely many; ties go to the lower median time), and its median steps and
median seconds are reported.

    OPENBLAS_NUM_THREADS=1 python -m benchmarks.bench_steps_to_target --out runs/stt
    python -m benchmarks.bench_steps_to_target --quick --workloads mlp --optimizers adam muon
    python -m benchmarks.bench_steps_to_target --workloads cnn --seeds 1

``--out DIR`` receives ``steps_to_target.json`` (every run, its curve with losses to 5
significant digits, the settings and the machine; compact) and ``steps_to_target.png``.
Nothing here is specific to a CPU: on a machine with a GPU, JAX's default device runs the
same script. `kfac` joins the optimizers when `funcnet.optim` has it; on the transformer it
uses the sampled Fisher (`Workload.kfac_curvature`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import funcnet as fn
import funcnet.optim as fo
from benchmarks import timing
from funcnet import nn

EVAL_EVERY = 5
DIVERGED = 10.0  # a loss above this multiple of the initial loss stops the run
EVAL_WINDOWS = 64


# --- workloads -------------------------------------------------------------------------------


class Workload(NamedTuple):
    """One model and its data.

    `batches(seed, count)` gives `count` device batches ``(x, y)`` in the order of `seed`;
    `evaluation` is the fixed ``(x, y)`` the training loss is measured on; `target` the loss
    to reach; `cap` and `seconds_cap` the most steps and seconds of steps a run takes;
    `quick_target` and `quick_cap` the target and step cap of ``--quick``; `kfac_curvature`
    K-FAC's curvature there.
    """

    name: str
    title: str
    model: nn.Layer
    in_shape: tuple[int, ...]
    batches: Callable[[int, int], list[tuple[jax.Array, jax.Array]]]
    evaluation: tuple[jax.Array, jax.Array]
    target: float
    cap: int
    seconds_cap: float
    quick_target: float
    quick_cap: int
    kfac_curvature: str = "ggn"


def _digit_batches(x: np.ndarray, y: np.ndarray, batch: int) -> Callable:
    def batches(seed: int, count: int):
        rng = np.random.default_rng(seed)
        per_epoch = len(x) // batch
        order = np.concatenate(
            [rng.permutation(len(x))[: per_epoch * batch] for _ in range(-(-count // per_epoch))]
        )
        rows = order[: count * batch].reshape(count, batch)
        return [(jnp.asarray(x[r]), jnp.asarray(y[r])) for r in rows]

    return batches


def digits_mlp() -> Workload:
    split = fn.data.digits()
    x, y = np.asarray(split.x_train), np.asarray(split.y_train)
    model = nn.serial(nn.dense(128), nn.relu, nn.dense(10))
    return Workload(
        "mlp",
        "digits MLP 64-128-10",
        model,
        (64, 64),
        _digit_batches(x, y, 64),
        (jnp.asarray(x), jnp.asarray(y)),
        target=0.05,
        cap=500,
        seconds_cap=5.0,
        quick_target=1.5,
        quick_cap=10,
    )


def digits_cnn() -> Workload:
    split = fn.data.digits(images=True)
    x, y = np.asarray(split.x_train), np.asarray(split.y_train)
    model = nn.serial(
        nn.conv(8, 3),
        nn.relu,
        nn.max_pool(2),
        nn.conv(16, 3),
        nn.relu,
        nn.max_pool(2),
        nn.flatten(),
        nn.dense(10),
    )
    return Workload(
        "cnn",
        "digits CNN conv8-conv16-10",
        model,
        (64, 8, 8, 1),
        _digit_batches(x, y, 64),
        (jnp.asarray(x), jnp.asarray(y)),
        target=0.1,
        cap=400,
        seconds_cap=8.0,
        quick_target=2.0,
        quick_cap=10,
    )


def positions(length: int) -> nn.Layer:
    """Adds a learned vector per position, ``y[:, t] = x[:, t] + P[t]``; ``P ~ N(0, 0.02²)``."""

    def init(key, in_shape):
        return in_shape, {"table": 0.02 * jax.random.normal(key, (length, in_shape[-1]))}, {}

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        return x + params["table"][: x.shape[1]], state

    return nn.Layer(init, apply, kind="positions")


def char_transformer() -> Workload:
    corpus = fn.data.char_corpus()
    ids = np.asarray(corpus.ids)
    ids = ids[: int(0.9 * len(ids))]
    vocab, width, window, batch = len(corpus.vocab), 64, 32, 16
    model = nn.serial(
        nn.embedding(vocab, width),
        positions(window),
        nn.transformer_block(4, 4 * width, causal=True),
        nn.layer_norm(),
        nn.dense(vocab),
    )

    def take(starts):
        rows = starts[:, None] + np.arange(window)
        return jnp.asarray(ids[rows]), jnp.asarray(ids[rows + 1])

    def batches(seed: int, count: int):
        rng = np.random.default_rng(seed)
        return [take(rng.integers(0, len(ids) - window - 1, batch)) for _ in range(count)]

    fixed = np.random.default_rng(12345).integers(0, len(ids) - window - 1, EVAL_WINDOWS)
    return Workload(
        "transformer",
        "char transformer, 1 block, width 64",
        model,
        (batch, window),
        batches,
        take(fixed),
        target=2.3,
        cap=300,
        seconds_cap=12.0,
        quick_target=4.0,
        quick_cap=10,
        # K-FAC's exact Gauss-Newton factors take one output direction per logit of an
        # example, 32 × 66 = 2,112 here (about a minute a step on 2 cores): the sampled
        # Fisher (one class drawn per position) takes one backward pass.
        kfac_curvature="fisher",
    )


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "mlp": digits_mlp,
    "cnn": digits_cnn,
    "transformer": char_transformer,
}


# --- optimizers ------------------------------------------------------------------------------


class Contender(NamedTuple):
    """An optimizer `build(value)` of the swept hyperparameter `swept`, over `values`;
    `initial` when the value is only where the state starts (Hessian-free's damping)."""

    name: str
    build: Callable[[Any], fo.GradientTransformation]
    swept: str
    values: tuple[float, ...]
    initial: bool = False


ADAM_RATES = (1e-3, 3e-3, 1e-2)


def _muon_mask(params):
    """Muon takes the matrices except the embedding table; the rest goes to its Adam."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: x.ndim == 2 and "embedding" not in jax.tree_util.keystr(path), params
    )


def contenders(work: Workload | None = None) -> dict[str, Contender]:
    """The optimizers compared on `work`, each with its sweep (module docstring)."""
    found = {
        "adam": Contender("adam", fo.adam, "learning_rate", ADAM_RATES),
        "adamw": Contender("adamw", fo.adamw, "learning_rate", ADAM_RATES),
        "schedule_free_adamw": Contender(
            "schedule_free_adamw",
            fo.schedule_free_adamw,
            "learning_rate",
            (2.5e-3, 7.5e-3, 2.25e-2),
        ),
        "muon": Contender(
            "muon",
            lambda lr: fo.muon(lr, muon_mask=_muon_mask, adam_learning_rate=3e-3),
            "learning_rate",
            (6.7e-3, 2e-2, 6e-2),
        ),
        "shampoo": Contender("shampoo", fo.shampoo, "learning_rate", ADAM_RATES),
        "soap": Contender("soap", fo.soap, "learning_rate", ADAM_RATES),
        "sophia": Contender("sophia", fo.sophia, "learning_rate", ADAM_RATES),
        "hessian_free": Contender(
            "hessian_free",
            lambda damping: fo.hessian_free(initial_damping=damping, cg_iters=20),
            "initial_damping",
            (1.0, 10.0, 100.0),
            initial=True,
        ),
    }
    if hasattr(fo, "kfac"):
        found["kfac"] = _kfac("ggn" if work is None else work.kfac_curvature)
    return found


def _kfac(curvature: str) -> Contender:
    """K-FAC with its rate and momentum from the quadratic model and its damping adapted;
    the initial damping swept ×10 up from its default."""
    return Contender(
        "kfac",
        lambda damping: fo.kfac(damping=damping, curvature=curvature),
        "initial_damping",
        (1e-3, 1e-2, 1e-1),
        initial=True,
    )


class SweptState(NamedTuple):
    """`value`, the swept hyperparameter as an array, and the optimizer's own state."""

    value: jax.Array
    inner: Any


def swept(contender: Contender) -> tuple[Callable, Any]:
    """``(start, opt)``: ``start(params, value)``, the state of ``build(value)`` with `value`
    kept in it, and `opt`, the transformation that updates such a state.

    The update rebuilds the optimizer from the state's (traced) value, so one compiled step
    serves every value; `start` builds it from the plain number, as a user would. `opt.init`
    (which the train step reads for the state's shapes) builds it at value 1, as does the
    update of an `initial` value.
    """
    build = contender.build
    extra = fo.accepts_extra_args(build(1.0))

    def start(params, value):
        return SweptState(jnp.asarray(value, jnp.float32), build(value).init(params))

    def update(updates, state, params=None, **extra_args):
        opt = build(1.0 if contender.initial else state.value)
        if extra:
            updates, inner = opt.update(updates, state.inner, params, **extra_args)
        else:
            updates, inner = opt.update(updates, state.inner, params)
        return updates, SweptState(state.value, inner)

    kind = fo.GradientTransformationExtraArgs if extra else fo.GradientTransformation
    return start, kind(lambda params: start(params, 1.0), update)


def eval_params(state: fn.train.TrainState):
    """The params to measure the loss at: Schedule-Free's average, the params otherwise."""
    inner = state.opt_state.inner
    if isinstance(inner, fo.ScheduleFreeState):
        return fo.schedule_free_eval_params(inner, state.params)
    return state.params


# --- runs ------------------------------------------------------------------------------------


def loss_fn(outputs, labels):
    return fn.losses.softmax_cross_entropy(outputs, labels)


def run_one(step, evaluate, start, batches, target: float, cap: int, seconds_cap: float) -> dict:
    """Trains from `start` (consumed) until the target, divergence or a cap."""
    state, seconds = start, 0.0
    curve = [[0, _kept(float(evaluate(eval_params(state))))]]
    status, steps = "capped", 0
    while steps < cap and seconds < seconds_cap:
        began = time.perf_counter()
        for i in range(steps, min(steps + EVAL_EVERY, cap)):
            state, _ = step(state, batches[i])
        jax.block_until_ready(state.params)
        seconds += time.perf_counter() - began
        steps = min(steps + EVAL_EVERY, cap)
        loss = float(evaluate(eval_params(state)))
        curve.append([steps, _kept(loss)])
        if not math.isfinite(loss) or loss > DIVERGED * curve[0][1]:
            status = "diverged"
            break
        if loss <= target:
            status = "reached"
            break
    reached = status == "reached"
    return {
        "status": status,
        "steps": steps if reached else None,
        "seconds": seconds if reached else None,
        "steps_run": steps,
        "seconds_run": seconds,
        "final_loss": curve[-1][1],
        "curve": curve,
    }


def _kept(loss: float) -> float:
    """A curve's loss as the JSON keeps it: 5 significant digits."""
    return float(f"{loss:.5g}")


def _median(values: Sequence[float | None]) -> float:
    """The median, a missing value counting as infinite."""
    return statistics.median(math.inf if v is None else v for v in values)


def run_workload(work: Workload, names: Sequence[str], seeds: int, quick: bool, log=print) -> dict:
    """Every optimizer of `names`, value and seed on one workload; the best value of each."""
    chosen = {k: v for k, v in contenders(work).items() if k in names}
    target, cap = (work.quick_target, work.quick_cap) if quick else (work.target, work.cap)
    seconds_cap = math.inf if quick else work.seconds_cap
    data = {seed: work.batches(seed, cap) for seed in range(seeds)}
    starts = {seed: work.model.init(jax.random.key(seed), work.in_shape) for seed in range(seeds)}
    ex, ey = work.evaluation

    @jax.jit
    def evaluate(params):
        outputs, _ = work.model.apply(params, {}, ex, train=False)
        return loss_fn(outputs, ey)

    rows = []
    for contender in chosen.values():
        init, opt = swept(contender)
        step = fn.train.make_step(work.model, opt, loss_fn=loss_fn, metrics={})
        values = contender.values[1:2] if quick else contender.values

        def fresh(seed, value, init=init):
            _, params, model_state = starts[seed]
            params = jax.tree.map(jnp.copy, params)
            return fn.train.TrainState(
                params=params,
                model_state=model_state,
                opt_state=init(params, value),
                step=jnp.zeros([], jnp.int32),
                key=jax.random.key(seed),
            )

        began = time.perf_counter()
        try:
            jax.block_until_ready(step(fresh(0, values[0]), data[0][0]))
        except Exception as err:  # one optimizer's failure is its row's, not the run's
            log(f"  {work.name} {contender.name}: {type(err).__name__}: {err}")
            rows.append({"optimizer": contender.name, "error": f"{type(err).__name__}: {err}"})
            continue
        jax.block_until_ready(evaluate(starts[0][1]))
        compile_s = time.perf_counter() - began
        runs = []
        for value in values:
            for seed in range(seeds):
                result = run_one(
                    step, evaluate, fresh(seed, value), data[seed], target, cap, seconds_cap
                )
                runs.append({"value": value, "seed": seed, **result})
                log(
                    f"  {work.name} {contender.name} {contender.swept}={value:g} seed {seed}: "
                    f"{result['status']} after {result['steps_run']} steps, "
                    f"{result['seconds_run']:.2f} s, loss {result['final_loss']:.4f}"
                )
        rows.append(summarise(contender, runs, compile_s))
    return {
        "workload": work.name,
        "title": work.title,
        "target": target,
        "cap": cap,
        "seconds_cap": seconds_cap,
        "eval_every": EVAL_EVERY,
        "rows": rows,
    }


def summarise(contender: Contender, runs: list[dict], compile_s: float) -> dict:
    """Per value the medians over seeds; the best value by median steps, then time."""
    sweep = []
    for value in dict.fromkeys(r["value"] for r in runs):
        mine = [r for r in runs if r["value"] == value]
        sweep.append(
            {
                "value": value,
                "median_steps": _median([r["steps"] for r in mine]),
                "median_seconds": _median([r["seconds"] for r in mine]),
                "reached": sum(r["status"] == "reached" for r in mine),
                "seeds": len(mine),
                "median_final_loss": statistics.median(r["final_loss"] for r in mine),
            }
        )
    best = min(
        sweep,
        key=lambda s: (s["median_steps"], s["median_seconds"], s["median_final_loss"]),
    )
    finite = {k: (None if v == math.inf else v) for k, v in best.items()}
    return {
        "optimizer": contender.name,
        "swept": contender.swept,
        "values": list(contender.values),
        "best_value": best["value"],
        "median_steps": finite["median_steps"],
        "median_seconds": finite["median_seconds"],
        "reached": best["reached"],
        "seeds": best["seeds"],
        "median_final_loss": best["median_final_loss"],
        "compile_s": compile_s,
        "sweep": [{k: (None if v == math.inf else v) for k, v in s.items()} for s in sweep],
        "runs": runs,
    }


# --- report ----------------------------------------------------------------------------------


def median_curve(runs: list[dict], target: float) -> tuple[list[int], list[float]]:
    """The median over seeds of the evaluated loss at each evaluation step, a finished run
    held at its last value, up to the first point at or below `target`."""
    length = max(len(r["curve"]) for r in runs)
    steps = max((r["curve"] for r in runs), key=len)
    steps = [s for s, _ in steps]
    losses = []
    for i in range(length):
        at = [r["curve"][min(i, len(r["curve"]) - 1)][1] for r in runs]
        losses.append(statistics.median(at))
        if losses[-1] <= target:
            break
    return steps[: len(losses)], losses


def markdown(results: dict) -> str:
    """A table per workload: the best value, median steps and seconds, the sweep."""
    lines = []
    for work in results["workloads"]:
        lines += [
            f"### {work['title']} (target loss {work['target']}, cap {work['cap']} steps)",
            "",
            "| optimizer | swept | best | reached | median steps | median s | compile s "
            "| sweep: median steps (reached/seeds) |",
            "|---|---|---|---|---:|---:|---:|---|",
        ]
        for row in work["rows"]:
            if "error" in row:
                lines.append(f"| {row['optimizer']} | failed: {row['error'][:200]} |||||||")
                continue
            sweep = ", ".join(
                f"{s['value']:g}: {_count(s['median_steps'])} ({s['reached']}/{s['seeds']})"
                for s in row["sweep"]
            )
            lines.append(
                f"| {row['optimizer']} | {row['swept']} | {row['best_value']:g} "
                f"| {row['reached']}/{row['seeds']} | {_count(row['median_steps'])} "
                f"| {_seconds(row['median_seconds'])} | {row['compile_s']:.1f} | {sweep} |"
            )
        lines.append("")
    return "\n".join(lines)


def _count(value) -> str:
    return "–" if value is None else f"{value:.0f}"


def _seconds(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def figure(results: dict, path: Path) -> None:
    """Per workload: the median loss curve of each optimizer at its best value (top), and
    its median steps against median seconds to the target (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    works = results["workloads"]
    names = list(
        dict.fromkeys(r["optimizer"] for w in works for r in w["rows"] if "error" not in r)
    )
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}
    markers = {name: "osD^v<>ph*"[i % 10] for i, name in enumerate(names)}
    # Dashed every other line: one drawn over a near-equal one (AdamW over Adam) shows both.
    styles = {name: "-" if i % 2 == 0 else "--" for i, name in enumerate(names)}
    fig, axes = plt.subplots(2, len(works), figsize=(4.6 * len(works) + 2.2, 8), squeeze=False)
    handles = {}
    for column, work in enumerate(works):
        top, bottom = axes[0][column], axes[1][column]
        for row in (r for r in work["rows"] if "error" not in r):
            name = row["optimizer"]
            best = [r for r in row["runs"] if r["value"] == row["best_value"]]
            steps, losses = median_curve(best, work["target"])
            (line,) = top.plot(
                steps,
                losses,
                color=colours[name],
                linestyle=styles[name],
                marker=markers[name],
                markevery=0.2,
                ms=4,
            )
            handles[name] = line
            if row["median_steps"] is not None:
                bottom.plot(
                    row["median_steps"],
                    row["median_seconds"],
                    linestyle="none",
                    color=colours[name],
                    marker=markers[name],
                    ms=8,
                )
        top.axhline(work["target"], color="black", linestyle=":", linewidth=1)
        top.set_yscale("log")
        top.set_title(f"{work['title']}\ntarget {work['target']} (dotted)", fontsize=10)
        top.set_xlabel("step")
        top.set_ylabel("training loss (median of seeds)")
        bottom.set_title("to target, at the best value (reached only)", fontsize=10)
        bottom.set_xlabel("median steps")
        bottom.set_ylabel("median seconds of training steps")
        if any(r.get("median_steps") is not None for r in work["rows"]):
            bottom.set_xscale("log")
            bottom.set_yscale("log")
    fig.suptitle(
        "Steps and wall time to a target training loss\n"
        f"(each optimizer at the best value of its sweep, median of {results['seeds']} seeds)"
    )
    fig.legend(
        [handles[n] for n in names],
        names,
        loc="center right",
        bbox_to_anchor=(1.0, 0.5),
        title="optimizer",
    )
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --- command line ----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10-step caps, one value, one seed")
    parser.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--optimizers", nargs="+", metavar="NAME", help="default: all")
    parser.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--out", default=None, help="folder for the JSON and the figure")
    parser.add_argument("--quiet", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    known = contenders()
    if args.optimizers and set(args.optimizers) - set(known):
        parser.error(f"unknown optimizers {sorted(set(args.optimizers) - set(known))}")
    args.seeds = args.seeds or (1 if args.quick else 3)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    known = contenders()
    names = args.optimizers or list(known)

    def log(message: str) -> None:
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    began = time.perf_counter()
    out = Path(args.out) if args.out else None
    results = {
        "timestamp": timing.timestamp(),
        "command": " ".join(
            [
                "python -m benchmarks.bench_steps_to_target",
                *(sys.argv[1:] if argv is None else argv),
            ]
        ),
        "quick": args.quick,
        "seeds": args.seeds,
        "kfac": "kfac" in known,
        "machine": timing.machine(),
        "versions": timing.versions(),
        "workloads": [],
    }
    for name in args.workloads:
        log(f"[{name}]")
        results["workloads"].append(
            run_workload(WORKLOADS[name](), names, args.seeds, args.quick, log)
        )
        results["seconds"] = time.perf_counter() - began
        if load_start:
            results["load_average"] = {"start": load_start, "end": list(os.getloadavg())}
        if out:  # after each workload, so a long run keeps what it has measured
            out.mkdir(parents=True, exist_ok=True)
            (out / "steps_to_target.json").write_text(
                json.dumps(results, separators=(",", ":")) + "\n", encoding="utf-8"
            )
    print(markdown(results))
    if out:
        figure(results, out / "steps_to_target.png")
        log(f"wrote {out / 'steps_to_target.json'} and {out / 'steps_to_target.png'}")
    return results


if __name__ == "__main__":
    main()
