"""Issue 22 item 2: "best FID at budget B" — each strategy's lowest FID among its points costing at most B, with
budgets from the sweep's own costs, differences called only beyond the spread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from guidance.guiders import describe_point
from guidance.report import build_report, collect_sweep
from guidance.report.budget import budget_markdown, budget_table, budgets_of

# (strategy, scale, steps, passes per step, classifier GFLOP per step, fid, std); the U-Net pass costs 1 GFLOP.
POINTS = [
    ("none", 0.0, 10, 1, 0.0, 5.0, 0.2),
    ("none", 0.0, 20, 1, 0.0, 4.0, 0.2),
    ("cfg", 1.0, 5, 2, 0.0, 6.0, 0.3),
    ("cfg", 1.0, 10, 2, 0.0, 2.0, 0.1),
    ("cfg", 4.0, 10, 2, 0.0, 9.0, 0.1),      # a worse scale at the same cost: never the cell
    ("classifier", 1.0, 10, 1, 0.8, 3.0, 0.1),  # 10 U-Net + 8 classifier GFLOP = 18
]


def write_sweep(root: Path, gflop: bool = True) -> Path:
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"sweep_name": "budget"}))
    for strategy, scale, steps, passes, clf, fid, std in POINTS:
        folder = root / f"guidance={strategy},guidance.scale={scale:g},steps={steps}"
        (folder / ".hydra").mkdir(parents=True)
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"guidance={strategy}"]))
        cost = {"nfe": passes * steps, "classifier_forward": steps if clf else 0,
                "classifier_backward": steps if clf else 0}
        if gflop:
            cost["gflop"] = passes * steps + clf * steps
        info = dict(strategy=strategy, scale=scale, conditional=True, sampler="ddim", steps=steps, num_samples=100,
                    seed=0, cost_per_sample=cost)
        (folder / "sample_info.json").write_text(json.dumps(info))
        (folder / "metrics.json").write_text(json.dumps({"extractor": "evaluator", "weights_sha256": "ab" * 32,
                                                          "num_samples": 100, "fid": fid, "fid_std": std}))
    return root


def test_budgets_merge_close_costs_and_keep_the_populated_ones():
    assert budgets_of([19, 20, 39, 40, 10]) == [10, 20, 40]  # Heun's 2N - 1 evaluations join DDIM's 2N
    assert budgets_of([10, 10, 17, 20, 20, 20, 30, 30, 40], limit=4) == [10, 20, 30, 40]  # 17: one point only
    assert budgets_of([5.0]) == [5.0]


def test_best_fid_at_each_budget(tmp_path):
    t = budget_table(collect_sweep(write_sweep(tmp_path / "s"), describe_point, progress=False))
    assert t.unit == "GFLOP/sample" and t.budgets == [10, 18, 20]
    fid = lambda s, b: t.cells[(s, b)].value("fid") if (s, b) in t.cells else None
    series = {p.desc.series for p in t.cells.values()}
    none, cfg, clf = (next(s for s in series if s.startswith(k)) for k in ("none", "cfg", "classifier"))
    # <= 10 GFLOP: unguided 10 steps (5) beats CFG at 5 steps (6): |5 - 6| > 0.2 + 0.3, called
    assert (fid(none, 10), fid(cfg, 10), fid(clf, 10)) == (5.0, 6.0, None) and t.best[10] == none
    # <= 18: classifier guidance's 18 GFLOP (its classifier counted) fits; CFG's 10-step point (20) does not
    assert (fid(clf, 18), fid(cfg, 18)) == (3.0, 6.0) and t.best[18] == clf
    # <= 20: CFG w = 1 at 10 steps (2 ± 0.1), not its w = 4 point at the same cost; called against 3 ± 0.1
    assert fid(cfg, 20) == 2.0 and fid(none, 20) == 4.0 and t.best[20] == cfg
    md = budget_markdown(t, 3)
    assert "| Strategy | ≤ 10 GFLOP | ≤ 18 GFLOP | ≤ 20 GFLOP |" in md and "**2.00 ± 0.10** (w = 1, ddim, 10 steps)" in md


def test_a_tie_within_the_spread_is_not_called(tmp_path):
    global POINTS
    saved = POINTS
    POINTS = [p if p[0] != "classifier" else ("classifier", 1.0, 10, 1, 0.0, 4.8, 0.1) for p in saved]
    try:
        t = budget_table(collect_sweep(write_sweep(tmp_path / "s"), describe_point, progress=False))
    finally:
        POINTS = saved
    assert 10 not in t.best and "5.00 ± 0.20" in t.not_called[10]  # 4.8 ± 0.1 vs 5.0 ± 0.2: overlapping


def test_records_without_flops_count_classifier_passes(tmp_path):
    t = budget_table(collect_sweep(write_sweep(tmp_path / "s", gflop=False), describe_point, progress=False))
    assert t.unit.startswith("passes/sample") and t.budgets == [10, 20, 30]  # classifier: 10 + 10 fwd + 10 bwd
    clf = next(s for s in t.strategies if s.startswith("classifier"))
    assert (clf, 20) not in t.cells and t.cells[(clf, 30)].value("fid") == 3.0


@pytest.mark.parametrize("strategies", [1, 3])
def test_report_ends_with_the_budget_table_when_strategies_compete(tmp_path, strategies):
    global POINTS
    saved = POINTS
    POINTS = [p for p in saved if p[0] in ("none", "cfg", "classifier")[:strategies]]
    try:
        paths = build_report(write_sweep(tmp_path / "s"), tmp_path / "out", describe=describe_point, progress=False)
    finally:
        POINTS = saved
    md, tex = paths["md"].read_text(), paths["tex"].read_text()
    assert ("Best FID at a budget" in md) == (strategies > 1) and ("Best FID at a budget" in tex) == (strategies > 1)
