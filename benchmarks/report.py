"""The Markdown report of a run and the verdict on each target, from the results dict.

``python -m benchmarks.report results/<machine>.json`` prints the report of a saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import bench_families

Results = dict[str, Any]

PEERS = (
    "flax_linen",
    "flax_nnx",
    "flax_nnx_cached",
    "equinox",
    "haiku",
    "torch",
)


def _fmt(value: float | None, digits: int = 3) -> str:
    """A number with `digits` significant figures (no exponent for everyday sizes)."""
    if value is None:
        return "–"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 10 ** (digits - 1):
        return f"{value:,.0f}"
    return f"{value:.{digits}g}" if magnitude >= 1e-3 else f"{value:.2e}"


def _ratio(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _by_key(rows: list[dict], role: str) -> dict[str, dict]:
    return {r["contender"]: r for r in rows if r["mlp"] == role}


# --- targets ---------------------------------------------------------------------------------


def _target(name: str, met: bool | None, figure: str) -> dict:
    return {"target": name, "met": met, "figure": figure}


def targets(results: Results) -> list[dict]:
    """Each target of the issue with its figure from `results`: met, not met, or not measured."""
    sections = results["sections"]
    found = []
    mlp = sections.get("mlp", {}).get("rows", [])
    for role in ("small", "medium"):
        rows = _by_key(mlp, role)
        ratio = rows.get("funcnet", {}).get("ratio_to_raw_jax")
        found.append(
            _target(
                f"funcnet per-step jit within 1.10× of raw JAX ({role} MLP)",
                None if ratio is None else ratio <= 1.10,
                "not measured" if ratio is None else f"{ratio:.2f}× raw JAX",
            )
        )
    for role in ("small", "medium"):
        rows = _by_key(mlp, role)
        scan = rows.get("funcnet_scan", {}).get("us_per_step")
        raw = rows.get("raw_jax_epoch", {}).get("us_per_step")
        ratio = None if scan is None or raw is None else scan / raw
        found.append(
            _target(
                f"funcnet fit within 1.15× per step of the hand-written scan epoch ({role} MLP)",
                None if ratio is None else ratio <= 1.15,
                "not measured"
                if ratio is None
                else f"{ratio:.2f}× ({scan:.1f} vs {raw:.1f} µs/step)",
            )
        )
    rows = _by_key(mlp, "small")
    scan = rows.get("funcnet_scan", {}).get("us_per_step")
    peers = {k: r["us_per_step"] for k, r in rows.items() if k in PEERS and "us_per_step" in r}
    if scan is None or not peers:
        found.append(
            _target("funcnet scan-fused epoch faster than every peer's per-step loop", None, "")
        )
    else:
        fastest = min(peers, key=peers.get)
        found.append(
            _target(
                "funcnet scan-fused epoch faster than every peer's per-step loop (small MLP)",
                scan < peers[fastest],
                f"{scan:.1f} µs/step vs the fastest peer ({rows[fastest]['title']}) "
                f"{peers[fastest]:.1f} µs/step",
            )
        )
    found.append(_hvp_target(sections.get("second_order", {})))
    found += _per_example_targets(sections.get("per_example", {}))
    peak = sections.get("peak", {})
    best = {r["contender"]: r for r in peak.get("rows", [])}.get("funcnet")
    found.append(
        _target(
            "medium MLP (funcnet per-step jit) ≥ 50% of measured matmul peak",
            None if best is None else best["fraction_of_peak"] >= 0.5,
            "not measured"
            if best is None
            else f"{100 * best['fraction_of_peak']:.0f}% ({best['gflops']:.1f} of "
            f"{peak['peak_gflops']:.1f} GFLOP/s)",
        )
    )
    found.append(_scaling_target(sections.get("scaling", {})))
    found.append(_compile_target(sections.get("compile", {})))
    found += bench_families.targets(sections.get("families", {}))
    return found


def _scaling_target(section: dict) -> dict:
    name = "data-parallel fit within 1.15× of the hand-written sharded epoch (every device count)"
    ratios = {
        r["mesh_devices"]: r["step_us"] / r["raw_jax_step_us"]
        for r in section.get("rows", [])
        if r.get("label", "").endswith("device(s)")
        and r.get("step_us")
        and r.get("raw_jax_step_us")
        and r.get("mesh_devices", 1) > 1
    }
    if not ratios:
        return _target(name, None, "not measured")
    figure = ", ".join(f"{d} devices {v:.2f}×" for d, v in sorted(ratios.items()))
    return _target(name, max(ratios.values()) <= 1.15, figure)


def _compile_target(section: dict) -> dict:
    name = "compile of a fit epoch within 1.5× of the hand-written scan epoch's"
    found = {
        (r["mlp"], r["contender"]): r["compile_s"]
        for r in section.get("rows", [])
        if r.get("compile_s")
    }
    ratios = {
        role: found[(role, "funcnet_scan")] / found[(role, "raw_jax_epoch")]
        for role in ("small", "medium")
        if (role, "funcnet_scan") in found and (role, "raw_jax_epoch") in found
    }
    if not ratios:
        return _target(name, None, "not measured")
    figure = ", ".join(f"{role} {v:.2f}×" for role, v in ratios.items())
    return _target(name, max(ratios.values()) <= 1.5, figure)


def _per_example_targets(section: dict) -> list[dict]:
    """per_example_grads at the largest batch against torch.func and the memory floor."""
    last = max(section.get("rows", []), key=lambda r: r["batch"], default=None)
    batch = last["batch"] if last else 256
    torch_ratio = last.get("torch_ratio") if last else None
    floor_ratio = last.get("floor_ratio") if last else None
    if torch_ratio is None:
        torch_figure = "not measured" if last is None else section.get("torch_status", "")
    else:
        torch_figure = f"{torch_ratio:.2f}× ({last['vmap_us']:,.0f} vs {last['torch_us']:,.0f} µs)"
    if floor_ratio is None:
        floor_figure = "not measured"
    else:
        floor_figure = (
            f"{floor_ratio:.2f}× ({last['vmap_us']:,.0f} µs vs a floor of "
            f"{last['floor_us']:,.0f} µs at {section['bandwidth']['gbs']:.1f} GB/s)"
        )
    return [
        _target(
            f"per_example_grads ≤ 1.5× torch.func at batch {batch}",
            None if torch_ratio is None else torch_ratio <= 1.5,
            torch_figure,
        ),
        _target(
            f"per_example_grads ≤ 2× the memory floor at batch {batch}",
            None if floor_ratio is None else floor_ratio <= 2,
            floor_figure,
        ),
        _per_example_cnn_target(section.get("cnn")),
    ]


def _per_example_cnn_target(cnn: dict | None) -> dict:
    """per_example_grads on the CNN against torch.func."""
    row = (cnn or {}).get("row")
    name = f"per_example_grads ≤ 1.5× torch.func on the CNN at batch {row['batch'] if row else ''}"
    if row is None:
        return _target(name.rstrip(), None, "not measured")
    ratio = row.get("torch_ratio")
    if ratio is None:
        return _target(name, None, cnn.get("torch_status", ""))
    figure = f"{ratio:.2f}× ({row['vmap_us']:,.0f} vs {row['torch_us']:,.0f} µs)"
    return _target(name, ratio <= 1.5, figure)


def _hvp_target(section: dict) -> dict:
    name = "HVP ≤ 3× one gradient"
    ratios = [
        (row, key, value)
        for row in section.get("rows", [])
        for key, value in row.items()
        if "ratio" in key and "hvp" in key.lower() and isinstance(value, (int, float))
    ]
    if not ratios:
        return _target(name, None, section.get("status", "not measured"))
    by_mode: dict[str, float] = {}
    for _, key, value in ratios:
        by_mode[key] = max(by_mode.get(key, 0.0), value)
    best_mode = min(by_mode, key=by_mode.get)
    figure = "; ".join(f"{k}: worst {v:.2f}×" for k, v in by_mode.items())
    return _target(f"{name} (best composition, every size)", by_mode[best_mode] <= 3, f"{figure}")


# --- tables ----------------------------------------------------------------------------------


def _header(results: Results) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v)
    missing = [k for k, v in results["versions"].items() if not v]
    load = results.get("load_average", {})
    lines = [
        "# funcnet benchmarks",
        "",
        f"- **When**: {results['timestamp']} ({'smoke run' if results['smoke'] else 'full run'}, "
        f"`{results['command']}`)",
        f"- **Machine**: {m['cpu']}, {_cores(m)}, {m['platform']}, Python {m['python']}; "
        f"JAX backend `{m['jax_backend']}` ({', '.join(m['jax_devices'])})"
        + (f"; PyTorch threads {m['torch_threads']}" if m.get("torch_threads") else ""),
        f"- **Versions**: {versions}"
        + (f"; not installed: {', '.join(missing)}" if missing else ""),
    ]
    if load:
        system = m.get("cpu_count") or m["cores"] or 1
        # The run itself adds about one unit of load; other work shows in the load at start.
        busy = load["start"][0] > 0.5 * system
        lines.append(
            f"- **Load average** (1 min) at start {load['start'][0]:.2f}, at end "
            f"{load['end'][0]:.2f}, on {system} cores"
            + (
                " — **the machine was busy** before the run started, so figures are slower "
                "and noisier than on an idle machine"
                if busy
                else ""
            )
        )
    lines.append(
        f"- **Method**: median of {results['settings']['repeats']} repeats, each at least "
        f"{results['settings']['min_time']} s of steps, after warm-up; time.perf_counter, "
        "blocking on results at the end of each repeat."
    )
    return [*lines, ""]


def _cores(m: dict) -> str:
    if m.get("cpu_count") and m["cpu_count"] != m["cores"]:
        return f"{m['cores']} usable cores of {m['cpu_count']}"
    return f"{m['cores']} cores"


def _targets_md(found: list[dict]) -> list[str]:
    lines = ["## Targets", ""]
    for t in found:
        mark = {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        lines.append(f"- {mark} — {t['target']}: {t['figure']}")
    return [*lines, ""]


def _mlp_md(section: dict) -> list[str]:
    lines = ["## 1. MLP training step (Adam 1e-3, softmax cross-entropy)", ""]
    lines.append(
        "µs per step after compilation, median (fastest–slowest repeat); ratio to hand-written "
        "raw JAX on the same MLP (lower is better). The epoch rows' figure is epoch time "
        "/ steps. *returns*: what each contender computes and hands back besides the new "
        "weights."
    )
    for role in ("small", "medium"):
        rows = [r for r in section.get("rows", []) if r["mlp"] == role]
        if not rows:
            continue
        lines += ["", f"### {rows[0]['shape']}", ""]
        table = []
        for r in rows:
            if "us_per_step" not in r:
                table.append([r["title"], r.get("outputs", ""), r["status"], "", "", "", ""])
                continue
            table.append(
                [
                    r["title"],
                    r.get("outputs", ""),
                    _fmt(r["us_per_step"]),
                    f"{_fmt(r['us_low'])}–{_fmt(r['us_high'])}",
                    _ratio(r.get("ratio_to_raw_jax")),
                    _fmt(r["steps_per_s"]),
                    _fmt(r["gflops"]),
                ]
            )
        lines += _table(
            ["contender", "returns", "µs/step", "spread", "× raw JAX", "steps/s", "GFLOP/s"],
            table,
        )
    return [*lines, ""]


def _compile_md(section: dict) -> list[str]:
    lines = ["## 2. Compile time of the first step", ""]
    lines.append(
        "Seconds, median over fresh builds. *first call*: tracing + compilation + one "
        "execution; *compile*: first call − second call. The scan-fused row compiles a whole "
        "epoch (its call is an epoch). PyTorch eager compiles nothing."
    )
    rows = section.get("rows", [])
    titles = list(dict.fromkeys(r["title"] for r in rows))
    table = []
    for title in titles:
        cells = [title]
        for role in ("small", "medium"):
            r = next((r for r in rows if r["title"] == title and r["mlp"] == role), None)
            if r is None or "compile_s" not in r:
                cells += [r["status"] if r else "–", "", ""]
            else:
                cells += [
                    _fmt(r["first_call_s"]),
                    _fmt(r["compile_s"]),
                    _ratio(r.get("ratio_to_raw_jax")),
                ]
        table.append(cells)
    header = ["contender", "small: first call", "small: compile", "× raw JAX"]
    header += ["medium: first call", "medium: compile", "× raw JAX"]
    return [*lines, "", *_table(header, table), ""]


def _generic_md(rows: list[dict]) -> list[str]:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    table = [
        [_fmt(r.get(k)) if isinstance(r.get(k), float) else str(r.get(k, "–")) for k in keys]
        for r in rows
    ]
    return _table(keys, table)


def _second_order_md(section: dict) -> list[str]:
    lines = ["## 3. Second order: gradient, Hessian-vector products, dense Hessian", ""]
    if not section.get("rows"):
        return [*lines, section.get("status", "not measured"), ""]
    lines.append(
        "From `benchmarks/bench_second_order.py` (`funcnet.diff.hvp`, `flat_hessian`): µs per "
        "call, and each HVP composition's and the dense Hessian's ratio to one gradient."
    )
    table = section.get("markdown") or "\n".join(_generic_md(section["rows"]))
    return [*lines, "", table, ""]


def _per_example_md(section: dict) -> list[str]:
    lines = [f"## 4. Per-example gradients ({section.get('mlp', '')})", ""]
    lines.append(
        "µs per batch. *per_example_grads*: `funcnet.diff.per_example_grads` (jitted); "
        '*vmap(grad)*: the same with `method="vmap"`, JAX\'s own `vmap(grad)`; *loop*: a '
        "Python loop over a jitted one-example gradient; *batched*: one gradient of the "
        "batch's mean loss (not per example); *torch.func*: PyTorch's `vmap(grad)` on the "
        "same weights; *write*: a jitted program that only writes an output of the same size; "
        "*floor*: writing the per-example gradients once at the measured memory bandwidth. "
        "Ratios of *per_example_grads* to *batched*, *torch.func* and the floor."
    )
    bandwidth = section.get("bandwidth")
    if bandwidth:
        lines += [
            "",
            f"Memory bandwidth (bytes read + written): **{bandwidth['gbs']:.1f} GB/s**, the "
            f"higher of a jitted `x + 1` over {bandwidth['bytes'] / 2**20:,.0f} MiB into its "
            f"donated input ({bandwidth['jax_gbs']:.1f}) and `numpy.copyto` "
            f"({bandwidth['numpy_gbs']:.1f}); the same `x + 1` writing a fresh output each "
            f"call: {bandwidth['jax_fresh_gbs']:.1f} GB/s.",
        ]
    if section.get("torch_status", "ok") != "ok":
        lines += ["", f"torch.func: {section['torch_status']}."]
    table = [
        [
            str(r["batch"]),
            _fmt(r["vmap_us"]),
            _fmt(r.get("plain_us")),
            _fmt(r["loop_us"]),
            _fmt(r["batched_us"]),
            _fmt(r.get("torch_us")),
            _fmt(r.get("write_us")),
            _fmt(r.get("floor_us")),
            _ratio(r["vmap_ratio"]),
            _ratio(r.get("torch_ratio")),
            _ratio(r.get("floor_ratio")),
        ]
        for r in section.get("rows", [])
    ]
    header = ["batch", "per_example_grads µs", "vmap(grad) µs", "loop µs", "batched µs"]
    header += ["torch.func µs", "write µs", "floor µs", "/ batched", "/ torch.func", "/ floor"]
    return [*lines, "", *_table(header, table), "", *_per_example_cnn_md(section.get("cnn"))]


def _per_example_cnn_md(cnn: dict | None) -> list[str]:
    if not cnn:
        return []
    row = cnn["row"]
    lines = [
        f"The CNN, {cnn['model']} ({cnn['param_bytes'] / 1e6:.2f} MB of params), channels last; "
        "torch.func on the same weights, channels first. µs per batch, as above.",
    ]
    if cnn.get("torch_status", "ok") != "ok":
        lines += ["", f"torch.func: {cnn['torch_status']}."]
    header = ["batch", "per_example_grads µs", "vmap(grad) µs", "batched µs", "torch.func µs"]
    header += ["write µs", "/ batched", "vmap(grad) / batched", "/ torch.func"]
    cells = [
        str(row["batch"]),
        _fmt(row["vmap_us"]),
        _fmt(row["plain_us"]),
        _fmt(row["batched_us"]),
        _fmt(row.get("torch_us")),
        _fmt(row["write_us"]),
        _ratio(row["vmap_ratio"]),
        _ratio(row["plain_ratio"]),
        _ratio(row.get("torch_ratio")),
    ]
    return [*lines, "", *_table(header, [cells]), ""]


def _ensemble_md(section: dict) -> list[str]:
    lines = [f"## 5. Ensembles of the small MLP ({section.get('mlp', '')})", ""]
    if section.get("status"):
        return [*lines, section["status"], ""]
    lines.append(
        "Model-steps per second (K · steps / s; higher is better). *epoch*: the scan-fused "
        f"epoch of {section.get('epoch_steps')} steps, under `vmap` (as `fit_ensemble`) or "
        "called once per member; *step*: `make_step`, under `vmap` or once per member."
    )
    table = [
        [
            str(r["members"]),
            _fmt(r["vmap_epoch_model_steps_per_s"]),
            _fmt(r["sequential_epoch_model_steps_per_s"]),
            _ratio(r["vmap_speedup_epoch"]),
            _fmt(r["vmap_step_model_steps_per_s"]),
            _fmt(r["sequential_step_model_steps_per_s"]),
            _ratio(r["vmap_speedup_step"]),
        ]
        for r in section.get("rows", [])
    ]
    header = ["K", "vmap epoch", "sequential epoch", "speed-up", "vmap step"]
    header += ["sequential step", "speed-up"]
    return [*lines, "", *_table(header, table), ""]


def _peak_md(section: dict) -> list[str]:
    lines = ["## 6. Matmul-bound efficiency (medium MLP)", ""]
    if "peak_gflops" not in section:
        return [*lines, "not measured", ""]
    n = section["matmul_size"]
    shape = section["mlp_shape"]
    measured = section.get("peak_measurements_gflops") or [section["peak_gflops"]]
    lines.append(
        f"Peak: jitted float32 `jnp.dot` {n}×{n} @ {n}×{n}, fastest repeat: "
        f"**{_fmt(section['peak_gflops'])} GFLOP/s** (the higher of "
        f"{' and '.join(_fmt(p) for p in measured)}, measured after and before the MLP "
        "section)."
        if len(measured) > 1
        else f"Peak: jitted float32 `jnp.dot` {n}×{n} @ {n}×{n}, fastest repeat: "
        f"**{_fmt(section['peak_gflops'])} GFLOP/s**."
    )
    lines.append(
        f"The MLP's widest product ({shape[0]}×{shape[1]} @ {shape[1]}×{shape[2]}) "
        f"alone: {_fmt(section['mlp_shape_matmul_gflops'])} GFLOP/s"
        + (
            f"; PyTorch `matmul` {n}²: {_fmt(section['torch_matmul_gflops'])} GFLOP/s."
            if section.get("torch_matmul_gflops")
            else "."
        )
        + f" A step of {section['mlp']} is {section['flops_per_step'] / 1e9:.2f} GFLOP "
        "(6 · batch · Σ in·out)."
    )
    table = [
        [
            r["title"],
            _fmt(r["us_per_step"]),
            _fmt(r["gflops"]),
            f"{100 * r['fraction_of_peak']:.0f}%",
        ]
        for r in section.get("rows", [])
    ]
    lines += ["", *_table(["contender", "µs/step", "GFLOP/s", "of peak"], table)]
    if any(r["fraction_of_peak"] > 1 for r in section.get("rows", [])):
        lines += [
            "",
            "Fractions above 100% mean the machine's load changed between the peak and the MLP "
            "measurements (a busy machine slows both); rerun on an idle machine.",
        ]
    return [*lines, ""]


def _scaling_md(section: dict) -> list[str]:
    lines = [f"## 7. Data-parallel training ({section.get('mlp', '')})", ""]
    lines.append(
        f"`funcnet.train.fit` with a `data` mesh, µs per step of the scan-fused epoch "
        f"({section.get('epoch_steps')} steps), each configuration in fresh processes; ratio to "
        f"`fit` without a mesh. This machine has {section.get('cores')} cores, which forced host "
        "devices and local processes share: the figures are the cost of partitioning the step "
        "and all-reducing its gradient, not a speed-up."
    )
    lines.append("")
    lines.append(
        "*raw JAX*: the hand-written scan epoch (same shuffle, each batch's rows over the same "
        "`data` axis), timed in the same process (not measured across processes)."
    )
    table = []
    for r in section.get("rows", []):
        raw = r.get("raw_jax_step_us")
        step = r.get("step_us")
        table.append(
            [
                r["label"],
                str(r.get("mesh_devices", "-")),
                str(r["processes"]),
                _fmt(step) if step is not None else r.get("status", "-"),
                _ratio(r.get("ratio")),
                _fmt(raw),
                _ratio(None if raw is None or step is None else step / raw),
            ]
        )
    header = ["configuration", "devices on the mesh", "processes", "µs/step", "ratio"]
    header += ["raw JAX µs/step", "funcnet / raw"]
    return [*lines, "", *_table(header, table), ""]


RENDERERS = {
    "mlp": _mlp_md,
    "compile": _compile_md,
    "second_order": _second_order_md,
    "per_example": _per_example_md,
    "ensemble": _ensemble_md,
    "peak": _peak_md,
    "scaling": _scaling_md,
    "families": bench_families.markdown,
}


def markdown(results: Results) -> str:
    """The whole report: header, targets, then one table per section that ran."""
    lines = _header(results) + _targets_md(results["targets"])
    for name, render in RENDERERS.items():
        if name in results["sections"]:
            lines += render(results["sections"][name])
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    saved = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    saved["targets"] = targets(saved)
    print(markdown(saved), end="")
