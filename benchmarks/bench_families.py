"""Section 8: every model family, funcnet against hand-written JAX, Flax Linen and Equinox.

Workloads (sizes of the full and check runs; `benchmarks.family_models` has the models):

- ``cnn_step``: one Adam step of the CNN ``(128, 28, 28, 1) → conv 32 → pool → conv 64 →
  pool → dense 128 → 10``;
- ``cnn_fit``: one epoch of that CNN (16 steps; 8 in ``--check``) by `funcnet.train.fit`,
  by the hand-written step called once per batch, and by the hand-written step scanned over
  the epoch, all three visiting the rows in `fit`'s order;
- ``cnn_infer_small`` and ``cnn_infer_large``: the CNN's forward pass at batch 1 and 1024;
- ``lstm_step``: an LSTM classifier (batch 32, sequence 64, 64 features, hidden 256, the last
  state into a dense layer of 10 classes);
- ``gru_step``: the same classifier with a GRU;
- ``transformer_step``: a causal language model of two pre-norm transformer blocks (sequence
  128, width 128, 4 heads, MLP 512, vocabulary 256, batch 8);
- ``mlp_bn_step``: an MLP 256-512-512-10 with batch norm and dropout 0.2, batch 128.

Every contender starts from funcnet's initial params copied into its library's layout and
gets the same batches. Before any timing the first results are compared: the first step's
loss (or the logits, or the first epoch's mean loss) of every contender must agree with
funcnet's to a relative 1e-4; the batch-norm MLP is compared with dropout off, since each
library draws its own masks. The contenders' repeats are interleaved
(`benchmarks.timing.measure_interleaved`); each figure is a median. An epoch contender's
first call compiles and runs one epoch; then it is timed over `Sizes.fit_repeats` rounds of
one epoch each (3 in the full run, 1 in ``--check``), in turns with the others.

Figures per row: µs per step (per call for inference; epoch time / steps for the epochs),
the ratio to hand-written JAX and to the fastest peer (Flax Linen or Equinox), the compiled
call's temporary memory (``memory_analysis().temp_size_in_bytes``), and the achieved FLOP/s
(the convolutions' and matmuls' multiply-adds counted analytically, a training step as three
forward passes) as a fraction of the device's measured matmul peak (`benchmarks.bench_peak`).

Nothing here assumes a CPU: on a GPU the same code times the GPU's compiled steps.
"""

from __future__ import annotations

import functools
import gc
import statistics
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from benchmarks import bench_peak, family_models
from benchmarks.family_models import CNN, GRU, LSTM, MLPBN, Transformer
from benchmarks.settings import Settings
from benchmarks.timing import Timing, measure_interleaved, timed
from benchmarks.trainers import Unavailable

TOLERANCE = 1e-4  # relative: float32 round-off over a step, in another order of operations
PEERS = ("flax_linen", "equinox")


class Sizes(NamedTuple):
    """The families and workload sizes of one run."""

    cnn: CNN
    fit_steps: int
    fit_repeats: int
    inference_batches: tuple[int, int]
    lstm: LSTM
    gru: GRU
    transformer: Transformer
    mlp_bn: MLPBN


FULL = Sizes(CNN(), 16, 3, (1, 1024), LSTM(), GRU(), Transformer(), MLPBN())
CHECK = FULL._replace(fit_steps=8, fit_repeats=1)
SMOKE = Sizes(
    CNN(batch=4, image=4, channels=(4,), hidden=8, classes=3),
    2,
    1,
    (1, 4),
    LSTM(batch=4, seq=5, features=3, hidden=8, classes=3),
    GRU(batch=4, seq=5, features=3, hidden=8, classes=3),
    Transformer(batch=2, seq=8, width=16, heads=2, mlp=32, blocks=1, vocab=11),
    MLPBN(batch=8, sizes=(6, 16, 16, 3), rate=0.2),
)
SIZES = {"full": FULL, "check": CHECK, "smoke": SMOKE}


class Workload(NamedTuple):
    """One table: `kind` is ``"step"``, ``"fit"`` or ``"inference"``."""

    key: str
    kind: str
    family: Any
    title: str
    flops_per_call: int
    batch: int | None = None


def workloads(sizes: Sizes) -> list[Workload]:
    cnn = sizes.cnn
    small, large = sizes.inference_batches
    return [
        Workload(
            "cnn_step", "step", cnn, f"{cnn.label}, training step", 3 * cnn.forward_flops(cnn.batch)
        ),
        Workload(
            "cnn_fit",
            "fit",
            cnn,
            f"{cnn.label}, one epoch of {sizes.fit_steps} steps",
            3 * cnn.forward_flops(cnn.batch),
            sizes.fit_steps,
        ),
        Workload(
            "cnn_infer_small",
            "inference",
            cnn,
            f"the same CNN, inference at batch {small}",
            cnn.forward_flops(small),
            small,
        ),
        Workload(
            "cnn_infer_large",
            "inference",
            cnn,
            f"the same CNN, inference at batch {large}",
            cnn.forward_flops(large),
            large,
        ),
        Workload(
            "lstm_step",
            "step",
            sizes.lstm,
            f"{sizes.lstm.label}, training step",
            3 * sizes.lstm.forward_flops(sizes.lstm.batch),
        ),
        Workload(
            "gru_step",
            "step",
            sizes.gru,
            f"{sizes.gru.label}, training step",
            3 * sizes.gru.forward_flops(sizes.gru.batch),
        ),
        Workload(
            "transformer_step",
            "step",
            sizes.transformer,
            f"{sizes.transformer.label}, training step",
            3 * sizes.transformer.forward_flops(sizes.transformer.batch),
        ),
        Workload(
            "mlp_bn_step",
            "step",
            sizes.mlp_bn,
            f"{sizes.mlp_bn.label}, training step",
            3 * sizes.mlp_bn.forward_flops(sizes.mlp_bn.batch),
        ),
    ]


def _builders(workload: Workload) -> dict[str, Callable[..., family_models.Built]]:
    if workload.kind == "fit":
        return family_models.FIT_CONTENDERS
    if workload.kind == "inference":
        return family_models.INFERENCE_CONTENDERS
    return family_models.STEP_CONTENDERS


def _build(workload: Workload, key: str, family, params, state, data) -> family_models.Built:
    build = _builders(workload)[key]
    if workload.kind == "fit":
        return build(family, params, state, data, workload.batch)
    return build(family, params, state, data)


def _data(workload: Workload, family):
    if workload.kind == "inference":
        x, _ = family.data(1, batch=workload.batch)
        return x[0]
    if workload.kind == "fit":
        return family.data(workload.batch)
    return family.data(4)


def _difference(value, reference) -> float:
    """The largest difference of `value` from `reference`, relative to the reference's size."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    scale = max(float(np.max(np.abs(reference))), 1e-12)
    return float(np.max(np.abs(value - reference))) / scale


def _agreement(firsts: dict[str, Any]) -> dict:
    """How far each contender's first result lies from funcnet's (or the first one's)."""
    if not firsts:
        return {"agree": None, "reference": None, "differences": {}}
    reference = next((k for k in ("funcnet", "funcnet_scan") if k in firsts), next(iter(firsts)))
    differences = {
        k: _difference(v, firsts[reference]) for k, v in firsts.items() if k != reference
    }
    worst = max(differences.values(), default=0.0)
    summary = {k: float(v) if np.ndim(v) == 0 else None for k, v in firsts.items()}
    return {
        "agree": worst <= TOLERANCE,
        "reference": reference,
        "max_difference": worst,
        "differences": differences,
        "first_losses": {k: v for k, v in summary.items() if v is not None},
    }


def epoch_rounds(runs: dict[str, Callable[[int], Any]], repeats: int) -> dict[str, Timing]:
    """Seconds of one epoch per contender, `repeats` rounds of one epoch each, in turns.

    The builders' first call compiled and warmed each epoch up, and an epoch of the CNN takes
    seconds on a CPU, so no further warm-up or sizing is spent (`measure_interleaved` would
    run two more epochs of each).
    """
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            samples[name].append(timed(functools.partial(run, 1))[0])
    return {
        name: Timing(statistics.median(v), min(v), max(v), 1, repeats)
        for name, v in samples.items()
    }


def measure_workload(
    workload: Workload,
    settings: Settings,
    sizes: Sizes,
    contenders: list[str] | None,
    log=print,
) -> dict:
    """Builds, checks and times every contender of `workload`; returns its table's dict."""
    family = workload.family
    params, state = family_models.initial(family)
    data = _data(workload, family)
    keys = [k for k in _builders(workload) if contenders is None or k in contenders]
    titles = family_models.FIT_TITLES if workload.kind == "fit" else family_models.TITLES
    rows: dict[str, dict] = {k: {"contender": k, "title": titles[k], "status": "ok"} for k in keys}
    built: dict[str, family_models.Built] = {}
    for key in keys:
        try:
            built[key] = _build(workload, key, family, params, state, data)
        except Unavailable as err:
            rows[key]["status"] = str(err)
    checked = {k: b.first for k, b in built.items()}
    check_note = None
    if isinstance(family, MLPBN) and family.rate > 0:
        # Each library draws its own dropout masks: compare the step with dropout off.
        off = family._replace(rate=0.0)
        off_params, off_state = family_models.initial(off)
        checked = {k: _build(workload, k, off, off_params, off_state, data).first for k in built}
        check_note = "compared with dropout off (each library draws its own masks)"
    agreement = _agreement(checked)
    if check_note:
        agreement["note"] = check_note
    gc.collect()
    runs = {k: b.run for k, b in built.items()}
    if workload.kind == "fit":
        timings = epoch_rounds(runs, sizes.fit_repeats)
    else:
        timings = measure_interleaved(runs, repeats=settings.repeats, min_time=settings.min_time)
    for key, timing in timings.items():
        b = built[key]
        per_step = timing.median / b.steps_per_call
        rows[key].update(
            us=per_step * 1e6,
            us_low=timing.low / b.steps_per_call * 1e6,
            us_high=timing.high / b.steps_per_call * 1e6,
            calls_per_repeat=timing.units,
            first_call_s=b.compile_s,
            temp_mb=None if b.temp_bytes is None else b.temp_bytes / 1e6,
            detail=b.detail,
            gflops=workload.flops_per_call / per_step / 1e9,
        )
    del built
    gc.collect()
    times = {k: r["us"] for k, r in rows.items() if "us" in r}
    for r in rows.values():
        if "us" not in r:
            continue
        if "raw_jax" in times:
            r["ratio_to_raw_jax"] = r["us"] / times["raw_jax"]
        peers = [times[k] for k in PEERS if k in times and k != r["contender"]]
        if peers:
            r["ratio_to_fastest_peer"] = r["us"] / min(peers)
        hand = [times[k] for k in ("raw_jax", "raw_jax_epoch") if k in times]
        if workload.kind == "fit" and hand:
            r["ratio_to_faster_hand_written"] = r["us"] / min(hand)
    return {
        "workload": workload.key,
        "kind": workload.kind,
        "title": workload.title,
        "batch": workload.batch,
        "flops_per_call": workload.flops_per_call,
        "agreement": agreement,
        "rows": list(rows.values()),
    }


def run(
    settings: Settings,
    contenders: list[str] | None = None,
    peak_section: dict | None = None,
    log=print,
) -> dict:
    """Every workload of `SIZES[settings.name]`, and the device's matmul peak (the ``peak``
    section's when it ran before, else measured here)."""
    sizes = SIZES.get(settings.name, FULL)
    if peak_section and peak_section.get("peak_gflops"):
        peak = peak_section["peak_gflops"] * 1e9
    else:
        peak = bench_peak.peak_flops(settings, log=log)
    tables = []
    for workload in workloads(sizes):
        table = measure_workload(workload, settings, sizes, contenders, log=log)
        for r in table["rows"]:
            if "gflops" in r:
                r["fraction_of_peak"] = r["gflops"] * 1e9 / peak
            figure = f"{r['us']:,.1f} µs" if "us" in r else r["status"]
            log(f"  families {workload.key:17s} {r['title']:26s} {figure}")
        agree = table["agreement"]
        if agree["agree"] is not None:
            verdict = "agree" if agree["agree"] else "DISAGREE"
            log(
                f"  families {workload.key:17s} first results {verdict} with "
                f"{agree['reference']}: largest relative difference {agree['max_difference']:.1e}"
                f" (tolerance {TOLERANCE:g})"
            )
        tables.append(table)
    section = {
        "sizes": {
            k: v._asdict() if hasattr(v, "_asdict") else v for k, v in sizes._asdict().items()
        },
        "device": jax.devices()[0].device_kind,
        "backend": jax.default_backend(),
        "peak_gflops": peak / 1e9,
        "tolerance": TOLERANCE,
        "tables": tables,
    }
    section["targets"] = targets(section)
    return section


# --- targets and report ----------------------------------------------------------------------


def _table(section: dict, key: str) -> dict:
    return next((t for t in section.get("tables", []) if t["workload"] == key), {})


def _rows(section: dict, key: str) -> dict[str, dict]:
    return {r["contender"]: r for r in _table(section, key).get("rows", []) if "us" in r}


def _target(name: str, met: bool | None, figure: str) -> dict:
    return {"target": name, "met": met, "figure": figure}


def _fastest_target(section: dict, key: str, what: str) -> dict:
    name = f"families: funcnet {what} ≤ 1.10× the fastest of raw JAX, Flax, Equinox"
    rows = _rows(section, key)
    others = {k: r["us"] for k, r in rows.items() if k != "funcnet"}
    if "funcnet" not in rows or not others:
        return _target(name, None, "not measured")
    fastest = min(others, key=others.get)
    ratio = rows["funcnet"]["us"] / others[fastest]
    return _target(
        name,
        ratio <= 1.10,
        f"{ratio:.3f}× ({rows['funcnet']['us']:,.0f} vs {rows[fastest]['title']} "
        f"{others[fastest]:,.0f} µs)",
    )


def _recurrent_targets(section: dict, key: str, cell: str) -> list[dict]:
    """The issue's two targets for a recurrent cell: step time ≤ Equinox's, temporary memory
    ≤ Flax's."""
    rows = _rows(section, key)
    found = []
    name = f"families: funcnet {cell} step time ≤ Equinox's"
    if "funcnet" in rows and "equinox" in rows:
        ours, theirs = rows["funcnet"]["us"], rows["equinox"]["us"]
        found.append(
            _target(name, ours <= theirs, f"{ours / theirs:.3f}× ({ours:,.0f} vs {theirs:,.0f} µs)")
        )
    else:
        found.append(_target(name, None, "not measured"))
    name = f"families: funcnet {cell} step temp memory ≤ Flax's"
    ours = rows.get("funcnet", {}).get("temp_mb")
    theirs = rows.get("flax_linen", {}).get("temp_mb")
    if ours is not None and theirs is not None:
        found.append(
            _target(name, ours <= theirs, f"{ours:.2f} vs {theirs:.2f} MB ({ours / theirs:.3f}×)")
        )
    else:
        found.append(_target(name, None, "not measured"))
    return found


def targets(section: dict) -> list[dict]:
    """The family targets of issue 28, each ``{"target", "met", "figure"}``."""
    found = [_fastest_target(section, "cnn_step", "CNN training step")]
    rows = _rows(section, "cnn_fit")
    name = (
        "families: funcnet fit (CNN epoch) ≤ 1.10× the faster of the hand-written per-step "
        "loop and scanned epoch"
    )
    hand = {k: rows[k]["us"] for k in ("raw_jax", "raw_jax_epoch") if k in rows}
    if "funcnet_scan" in rows and hand:
        faster = min(hand, key=hand.get)
        ratio = rows["funcnet_scan"]["us"] / hand[faster]
        found.append(
            _target(
                name,
                ratio <= 1.10,
                f"{ratio:.3f}× ({rows['funcnet_scan']['us']:,.0f} vs {rows[faster]['title']} "
                f"{hand[faster]:,.0f} µs/step)",
            )
        )
    else:
        found.append(_target(name, None, "not measured"))
    for key in ("cnn_infer_small", "cnn_infer_large"):
        batch = _table(section, key).get("batch", "?")
        found.append(_fastest_target(section, key, f"CNN inference at batch {batch}"))
    for key, cell in (("lstm_step", "LSTM"), ("gru_step", "GRU")):
        found.extend(_recurrent_targets(section, key, cell))
    found.append(_fastest_target(section, "transformer_step", "transformer step"))
    found.append(_fastest_target(section, "mlp_bn_step", "batch-norm + dropout MLP step"))
    tables = section.get("tables", [])
    judged = [t for t in tables if t["agreement"]["agree"] is not None]
    name = f"families: every contender's first loss (or logits) within {TOLERANCE:g} of funcnet's"
    if judged:
        bad = [t["workload"] for t in judged if not t["agreement"]["agree"]]
        worst = max(t["agreement"]["max_difference"] for t in judged)
        figure = f"largest relative difference {worst:.1e}" + (
            f"; disagree: {', '.join(bad)}" if bad else ""
        )
        found.append(_target(name, not bad, figure))
    else:
        found.append(_target(name, None, "not measured"))
    return found


def _fmt(value: float | None) -> str:
    if value is None:
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _agreement_line(table: dict, titles: dict[str, str]) -> str:
    agree = table["agreement"]
    if agree["agree"] is None:
        return "First results: none to compare."
    what = {"fit": "first epoch's mean loss", "inference": "logits"}.get(
        table["kind"], "first step's loss"
    )
    losses = ", ".join(
        f"{titles.get(k, k)} {v:.6f}" for k, v in agree.get("first_losses", {}).items()
    )
    verdict = "agree" if agree["agree"] else "**disagree**"
    note = f", {agree['note']}" if agree.get("note") else ""
    return (
        f"The {what}{note}: {losses + '; ' if losses else ''}{verdict} with "
        f"{titles.get(agree['reference'], agree['reference'])}'s to "
        f"{agree['max_difference']:.1e} (relative; tolerance {TOLERANCE:g})."
    )


def markdown(section: dict) -> list[str]:
    """The section's tables as Markdown lines (`benchmarks.report` renders them)."""
    lines = ["## 8. Model families: funcnet against hand-written JAX, Flax Linen and Equinox", ""]
    lines.append(
        "µs per training step (per call for inference; epoch time / steps for the epochs) "
        "after compilation, median (fastest–slowest repeat), the contenders' repeats "
        "interleaved. *× raw JAX*: over the hand-written step; *× fastest peer*: over the "
        "faster of Flax Linen and Equinox; *temp MB*: the compiled call's temporary buffers; "
        "*first call*: tracing, compilation and one call. GFLOP/s counts the multiply-adds of "
        "the convolutions and matmuls (a step = 3 forward passes); *of peak*: against the "
        f"measured `jnp.dot` peak of this device, {_fmt(section.get('peak_gflops'))} GFLOP/s "
        f"({section.get('backend')}, {section.get('device')})."
    )
    for table in section.get("tables", []):
        fit = table["kind"] == "fit"
        titles = {r["contender"]: r["title"] for r in table["rows"]}
        unit = "µs/call" if table["kind"] == "inference" else "µs/step"
        header = ["contender", unit, "spread"]
        header += ["× faster hand-written"] if fit else ["× raw JAX", "× fastest peer"]
        header += ["temp MB", "first call s", "GFLOP/s", "of peak"]
        body = []
        for r in table["rows"]:
            if "us" not in r:
                body.append([r["title"], r["status"], *[""] * (len(header) - 2)])
                continue
            ratios = (
                [_ratio(r.get("ratio_to_faster_hand_written"))]
                if fit
                else [_ratio(r.get("ratio_to_raw_jax")), _ratio(r.get("ratio_to_fastest_peer"))]
            )
            body.append(
                [
                    r["title"] + (f" ({r['detail']})" if r.get("detail") else ""),
                    _fmt(r["us"]),
                    f"{_fmt(r['us_low'])}–{_fmt(r['us_high'])}",
                    *ratios,
                    _fmt(r.get("temp_mb")),
                    _fmt(r.get("first_call_s")),
                    _fmt(r.get("gflops")),
                    "–"
                    if r.get("fraction_of_peak") is None
                    else f"{100 * r['fraction_of_peak']:.0f}%",
                ]
            )
        lines += ["", f"### {table['title']}", ""]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in body]
        lines += ["", _agreement_line(table, titles)]
    return [*lines, ""]
