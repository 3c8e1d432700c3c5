"""The CI smoke run of the benchmarks: tiny sizes, one repeat, funcnet and raw JAX only.

Benchmarks are not tests; this only keeps their code working. It runs every section through
`benchmarks.run.main`, as `funcnet bench --smoke` does, and checks what was written.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

import funcnet
from benchmarks import (
    bench_families,
    bench_per_example,
    bench_quantities,
    bench_steps_to_target,
    family_models,
    report,
    run,
    trainers,
    workload,
)
from benchmarks.settings import SMOKE
from tests.figure_checks import checked_figures

ALWAYS = "funcnet,funcnet_scan,raw_jax"


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = run.main(
        ["--smoke", "--out", str(out), "--contenders", ALWAYS, "--machine", "ci", "--quiet"]
    )
    return code, out


def test_main_writes_json_and_markdown(smoke):
    code, out = smoke
    assert code == 0
    results = json.loads((out / "ci.json").read_text())
    assert results["smoke"] is True
    assert results["machine"]["cores"] >= 1
    assert results["versions"]["jax"]
    assert set(results["sections"]) == set(run.SECTIONS)
    text = (out / "RESULTS.md").read_text()
    assert text.startswith("# funcnet benchmarks")
    for heading in ("## Targets", "## 1. MLP", "## 2. Compile", "## 4. Per-example", "## 8. Model"):
        assert heading in text
    assert len(results["targets"]) == 12 + len(bench_families.targets({}))
    per_example = [t for t in results["targets"] if t["target"].startswith("per_example_grads")]
    assert [t["target"] for t in per_example] == [
        "per_example_grads ≤ 1.5× torch.func at batch 4",
        "per_example_grads ≤ 2× the memory floor at batch 4",
        "per_example_grads ≤ 1.5× torch.func on the CNN at batch 4",
    ]
    assert per_example[1]["met"] is not None


def test_timings_are_positive(smoke):
    _, out = smoke
    sections = json.loads((out / "ci.json").read_text())["sections"]
    mlp = [r for r in sections["mlp"]["rows"] if r["status"] == "ok"]
    assert {r["contender"] for r in mlp} >= {"raw_jax"}
    for row in mlp:
        assert _positive(row["us_per_step"]) and row["us_low"] <= row["us_high"]
    assert all(r["mlp"] in ("small", "medium") for r in mlp)
    assert any(_positive(r.get("ratio_to_raw_jax")) for r in mlp)
    for row in sections["compile"]["rows"]:
        if row["status"] == "ok":
            assert _positive(row["first_call_s"])
    per_example = sections["per_example"]
    assert all(_positive(per_example["bandwidth"][k]) for k in ("gbs", "jax_gbs", "numpy_gbs"))
    for row in per_example["rows"]:
        times = ("vmap_us", "plain_us", "loop_us", "batched_us", "write_us", "floor_us")
        assert all(_positive(row[k]) for k in (*times, "floor_ratio"))
        if per_example["torch_status"] == "ok":
            assert _positive(row["torch_us"]) and _positive(row["torch_ratio"])
    for row in sections["ensemble"].get("rows", []):
        assert all(_positive(v) for k, v in row.items() if k.endswith("_per_s"))
    assert _positive(sections["peak"]["peak_gflops"])


def test_families_section_times_and_checks_every_workload(smoke):
    """Every family's workload is timed for the contenders asked for, and their first results
    agree with funcnet's."""
    _, out = smoke
    results = json.loads((out / "ci.json").read_text())
    section = results["sections"]["families"]
    tables = {t["workload"]: t for t in section["tables"]}
    assert set(tables) == {w.key for w in bench_families.workloads(bench_families.SMOKE)}
    for key, table in tables.items():
        rows = {r["contender"]: r for r in table["rows"]}
        expected = {"funcnet_scan", "raw_jax"} if table["kind"] == "fit" else {"funcnet", "raw_jax"}
        assert set(rows) == expected, key
        for row in rows.values():
            assert _positive(row["us"]) and row["us_low"] <= row["us_high"], key
            assert _positive(row["gflops"]) and _positive(row["first_call_s"]), key
            if row["contender"] != "funcnet_scan":  # fit's compiled epoch is not reachable
                assert _positive(row["temp_mb"]), key
        assert table["agreement"]["agree"] is True, (key, table["agreement"])
    assert _positive(section["peak_gflops"])
    found = [t for t in results["targets"] if t["target"].startswith("families:")]
    assert len(found) == len(bench_families.targets({}))
    assert found[-1]["met"] is True  # the first results agree
    assert all(t["met"] is None for t in bench_families.targets({}))


@functools.cache
def funcnet_first(family, step: bool):
    """funcnet's first logits on `family` (its first step's loss when `step`), computed once
    for every contender compared with it."""
    params, state = family_models.initial(family)
    if step:
        return family_models.STEP_CONTENDERS["funcnet"](family, params, state, family.data(2)).first
    x = family.data(1)[0][0]
    return family_models.INFERENCE_CONTENDERS["funcnet"](family, params, state, x).first


@pytest.mark.parametrize("contender", ["raw_jax", "flax_linen", "equinox"])
def test_family_models_compute_what_funcnet_computes(contender):
    """Each library's version of each family, holding funcnet's weights, gives funcnet's
    logits; the batch-norm MLP's first training step (dropout off) gives funcnet's loss."""
    sizes = bench_families.SMOKE
    for family in (sizes.cnn, sizes.lstm, sizes.gru, sizes.transformer, sizes.mlp_bn):
        params, state = family_models.initial(family)
        x = family.data(1)[0][0]
        try:
            theirs = family_models.INFERENCE_CONTENDERS[contender](family, params, state, x)
        except trainers.Unavailable as err:
            pytest.skip(str(err))
        np.testing.assert_allclose(theirs.first, funcnet_first(family, False), rtol=1e-4, atol=1e-5)
    family = sizes.mlp_bn._replace(rate=0.0)
    params, state = family_models.initial(family)
    theirs = family_models.STEP_CONTENDERS[contender](family, params, state, family.data(2))
    np.testing.assert_allclose(theirs.first, funcnet_first(family, True), rtol=1e-5)
    assert np.isfinite(theirs.run(1))


def test_missing_peer_is_a_row_not_a_crash(monkeypatch, tmp_path):
    def missing(module):
        raise trainers.Unavailable(f"{module} not installed")

    monkeypatch.setattr(trainers, "_require", missing)
    code = run.main(
        [
            "--smoke",
            "--only",
            "mlp",
            "--contenders",
            "raw_jax,flax_linen,torch",
            "--out",
            str(tmp_path),
            "--machine",
            "ci",
            "--quiet",
        ]
    )
    assert code == 0
    rows = json.loads((tmp_path / "ci.json").read_text())["sections"]["mlp"]["rows"]
    status = {(r["mlp"], r["contender"]): r["status"] for r in rows}
    assert status[("small", "raw_jax")] == "ok"
    assert status[("small", "torch")] == "torch not installed"
    assert "not installed" in (tmp_path / "RESULTS.md").read_text()


def test_per_example_section_without_torch_reports_a_status(monkeypatch):
    def missing(module):
        raise trainers.Unavailable(f"{module} not installed")

    monkeypatch.setattr(trainers, "_require", missing)
    section = bench_per_example.run(SMOKE, log=lambda *_: None)
    assert section["torch_status"] == "torch not installed"
    assert all("torch_us" not in r and r["torch_ratio"] is None for r in section["rows"])
    found = {t["target"]: t for t in report.targets({"sections": {"per_example": section}})}
    for name in ("at batch 4", "on the CNN at batch 4"):
        torch_target = found[f"per_example_grads ≤ 1.5× torch.func {name}"]
        assert torch_target["met"] is None and torch_target["figure"] == "torch not installed"
    assert section["cnn"]["row"]["torch_ratio"] is None
    assert "torch.func: torch not installed." in "\n".join(report._per_example_md(section))


def test_torch_per_example_grads_match_funcnet():
    """torch.func on the same weights gives funcnet's per-example gradients, transposed."""
    mlp = SMOKE.mlps["small"]
    weights, data = workload.initial_weights(mlp), workload.batches(mlp, count=1)
    try:
        torch_grads = bench_per_example.torch_per_example(weights)
    except trainers.Unavailable as err:
        pytest.skip(str(err))
    theirs = torch_grads(data.x[0], data.y[0])
    example_loss, _ = bench_per_example.gradient_fns(workload.funcnet_model(mlp))
    params = workload.funcnet_params(mlp, weights)
    ours = funcnet.diff.per_example_grads(example_loss, params, (data.x[0], data.y[0]))
    for i, (w, b) in enumerate(workload.weights_of(ours)):
        t_w = theirs[f"{2 * i}.weight"].numpy()
        np.testing.assert_allclose(w, t_w.transpose(0, 2, 1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b, theirs[f"{2 * i}.bias"].numpy(), rtol=1e-5, atol=1e-6)


def test_torch_cnn_per_example_grads_match_funcnet():
    """torch.func on the CNN with funcnet's weights gives funcnet's per-example gradients,
    each kernel in PyTorch's layout."""
    family = bench_families.SMOKE.cnn._replace(channels=(3, 4), image=8)
    params, _ = family_models.initial(family)
    x, y = (a[0] for a in family.data(count=1))
    try:
        torch_grads = bench_per_example.torch_cnn_per_example(family, params)
    except trainers.Unavailable as err:
        pytest.skip(str(err))
    theirs = list(torch_grads(x, y).values())  # weight, bias of each layer, in layer order
    example_loss, _ = bench_per_example.gradient_fns(family.model())
    ours = funcnet.diff.per_example_grads(example_loss, params, (x, y))
    layers = family_models._layers(ours, "conv") + family_models._layers(ours, "dense")
    assert len(theirs) == 2 * len(layers) == 8
    for layer, t_w, t_b in zip(layers, theirs[::2], theirs[1::2], strict=True):
        to_ours = (0, 3, 4, 2, 1) if t_w.ndim == 5 else (0, 2, 1)
        np.testing.assert_allclose(layer["w"], t_w.numpy().transpose(to_ours), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(layer["b"], t_b.numpy(), rtol=1e-4, atol=1e-6)


@functools.cache
def raw_jax_after_three_steps():
    """Raw JAX's weights after three Adam steps on the small MLP, computed once."""
    mlp = SMOKE.mlps["small"]
    reference = trainers.raw_jax(mlp, workload.initial_weights(mlp), workload.batches(mlp, count=3))
    reference.run(3)
    return reference.weights()


@pytest.mark.parametrize(
    "contender",
    # The epochs shuffle, so their batches differ: test_hand_written_epoch_equals_fit.
    [c for c in trainers.CONTENDERS if c.key not in ("raw_jax", "funcnet_scan", "raw_jax_epoch")],
    ids=lambda c: c.key,
)
def test_contenders_do_the_same_arithmetic(contender):
    """After three Adam steps on the same batches every contender holds raw JAX's weights."""
    mlp = SMOKE.mlps["small"]
    weights, data = workload.initial_weights(mlp), workload.batches(mlp, count=3)
    reference = raw_jax_after_three_steps()
    try:
        runner = contender.make(mlp, weights, data, epoch_steps=3)
    except trainers.Unavailable as err:
        pytest.skip(str(err))
    runner.run(1 if contender.epoch else 3)
    for (w, b), (w_ref, b_ref) in zip(runner.weights(), reference, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-6)
    assert not np.allclose(reference[0][0], weights[0][0])


def test_hand_written_epoch_equals_fit():
    """The hand-written epoch shuffles as `fit` does: two epochs end on the same weights."""
    mlp = SMOKE.mlps["small"]
    weights, data = workload.initial_weights(mlp), workload.batches(mlp)
    ours = trainers.funcnet_scan(mlp, weights, data, epoch_steps=4)
    hand = trainers.raw_jax_epoch(mlp, weights, data, epoch_steps=4)
    ours.run(2)
    hand.run(2)
    for (w, b), (w_ref, b_ref) in zip(ours.weights(), hand.weights(), strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b, b_ref, rtol=1e-4, atol=1e-6)
    assert not np.allclose(hand.weights()[0][0], weights[0][0])


def test_scan_epoch_trains():
    mlp = SMOKE.mlps["small"]
    weights, data = workload.initial_weights(mlp), workload.batches(mlp)
    try:
        runner = trainers.funcnet_scan(mlp, weights, data, epoch_steps=4)
    except trainers.Unavailable as err:
        pytest.skip(str(err))
    runner.run(1)
    after = runner.weights()
    assert all(np.isfinite(w).all() for w, _ in after)
    assert not np.allclose(after[0][0], weights[0][0])


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        run.main(["--only", "nonsense"])
    with pytest.raises(SystemExit):  # --check has no target in this section
        run.main(["--check", "--only", "ensemble"])
    with pytest.raises(SystemExit):
        run.main(["--contenders", "nonsense"])


def test_steps_to_target_quick_run_writes_results_and_a_readable_figure(tmp_path):
    """`bench_steps_to_target --quick`: two optimizers on the digits MLP, one seed, a 10-step
    cap; every run recorded, the best value chosen from the sweep, the figure checked."""
    argv = ["--quick", "--workloads", "mlp", "--optimizers", "adam", "hessian_free"]
    with checked_figures() as saved:
        results = bench_steps_to_target.main([*argv, "--out", str(tmp_path), "--quiet"])
    assert saved == [tmp_path / "steps_to_target.png"]
    written = json.loads((tmp_path / "steps_to_target.json").read_text())
    assert written["workloads"] == json.loads(json.dumps(results["workloads"]))
    (work,) = written["workloads"]
    assert work["workload"] == "mlp" and work["cap"] == 10
    rows = {r["optimizer"]: r for r in work["rows"]}
    assert set(rows) == {"adam", "hessian_free"}
    assert rows["hessian_free"]["swept"] == "initial_damping"
    for row in rows.values():
        (run,) = row["runs"]
        assert run["status"] in ("reached", "capped", "diverged")
        assert [s for s, _ in run["curve"][:2]] == [0, bench_steps_to_target.EVAL_EVERY]
        assert all(math.isfinite(loss) for _, loss in run["curve"])
        assert row["best_value"] == run["value"] and _positive(row["compile_s"])
        if run["status"] == "reached":
            assert row["median_steps"] == run["steps"] and _positive(row["median_seconds"])
    # Hessian-free's damped Newton steps reach the quick target (loss 1.5) within 10 steps.
    assert rows["hessian_free"]["reached"] == 1
    assert "| hessian_free | initial_damping | 10 | 1/1 |" in bench_steps_to_target.markdown(
        results
    )


def test_quantities_quick_run_times_each_contender_against_a_gradient():
    rows = bench_quantities.main(["--quick"])
    assert [r["quantity"] for r in rows] == ["gradient", "diag_ggn", "all"]
    assert rows[0]["ratio"] == 1.0 and all(_positive(r["ms"]) for r in rows)
