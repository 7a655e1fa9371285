"""The report reads only data: it imports no strategy, sampler or torch, takes its metrics from the registry (a toy
metric registered here shows up in every table, plot and the wandb summary with nothing else edited), and rebuilds
the main job's committed tables from its stored points to the last byte."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from guidance.guiders import describe_point
from guidance.metrics.registry import METRICS, MetricSpec
from guidance.report import build_report, build_tables, collect_sweep, render, to_csv, to_latex, to_markdown

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = REPO / "experiments" / "fmnist_cpu_study"


def test_report_imports_no_strategy_sampler_or_torch():
    code = ("import guidance.report, sys; print(sorted(m for m in sys.modules if m.startswith("
            "('guidance.guiders', 'guidance.sampling', 'guidance.apps', 'torch'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.fixture
def toy_metric():
    """A metric the toolkit does not have: a registry entry, removed again after the test."""
    spec = MetricSpec("toy", "toy_statistic", ("embedding",), "toy_value", "toy_value_std", "Toy", False, 3,
                      column="always")
    METRICS["toy"] = spec
    try:
        yield spec
    finally:
        del METRICS["toy"]


def _point(folder: Path, strategy: str, w: float, toy: float, fid: float):
    folder.mkdir(parents=True)
    info = {"strategy": strategy, "scale": w, "conditional": True, "sampler": "ddim", "steps": 10,
            "num_samples": 100, "seed": 3, "cost_per_sample": {"nfe": 20 if w else 10}}
    metrics = {"extractor": "evaluator", "weights_sha256": "e" * 64, "num_samples": 100, "fid": fid,
               "toy_value": toy, "toy_value_std": 0.001}
    (folder / "sample_info.json").write_text(json.dumps(info))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def test_a_registered_metric_appears_in_every_table_plot_and_the_wandb_summary(toy_metric, tmp_path, monkeypatch):
    root = tmp_path / "sweep"
    for w, toy, fid in [(0.0, 0.25, 9.0), (1.0, 0.5, 7.0), (2.0, 0.75, 8.0)]:  # toy: higher is better, best w = 2
        _point(root / f"w{w:g}", "cfg" if w else "none", w, toy, fid)

    import guidance.report.plots as plots
    import guidance.tracking as tracking

    ylabels, logged = {}, {}
    save = plots._save

    def recording_save(fig, path):  # every panel's y label, per figure
        ylabels[Path(path).stem] = [ax.get_ylabel() for ax in fig.axes]
        return save(fig, path)

    class FakeRun:
        dir = None

        def log(self, d):
            logged.update(d)

        def finish(self):
            pass

    monkeypatch.setattr(plots, "_save", recording_save)
    monkeypatch.setattr(tracking, "init_wandb", lambda *a, **k: FakeRun())
    monkeypatch.delenv("WANDB_MODE", raising=False)
    paths = build_report(root, tmp_path / "out", describe=describe_point, logger_cfg={"mode": "offline"},
                         progress=False)

    md = paths["md"].read_text()
    assert "| w | FID ↓ | sFID ↓ | IS ↑ | Precision ↑ | Recall ↑ | Toy ↑ | NFE/sample |" in md
    assert "| 2 | 8.00 | – | – | – | – | **0.750 ± 0.001** | 20 |" in md  # its decimals, its direction
    assert "higher for IS/Precision/Recall/Toy" in md
    tex = paths["tex"].read_text()
    assert "Toy $\\uparrow$" in tex and "\\textbf{0.750 $\\pm$ 0.001}" in tex
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    cfg = [r for r in rows if r["table"] == "cfg"]
    assert [(r["toy"], r["toy_std"], r["toy_best"]) for r in cfg] == [
        ("0.25", "0.001", ""), ("0.5", "0.001", ""), ("0.75", "0.001", "best")]
    assert "Toy (higher is better)" in ylabels["metrics_vs_scale"]
    assert "tradeoff/charts/toy_vs_scale" in logged and "toy" in logged["tradeoff/table"].columns


def test_a_csv_only_metric_stays_out_of_md_and_tex(toy_metric, tmp_path):
    METRICS["toy"] = MetricSpec(**{**toy_metric.__dict__, "column": "csv"})
    root = tmp_path / "sweep"
    for w in (0.0, 1.0):
        _point(root / f"w{w:g}", "cfg" if w else "none", w, 0.5 + w, 5.0 - w)
    sweep = collect_sweep(root, describe_point, progress=False)
    tables = build_tables(sweep)
    assert "Toy" not in to_markdown(tables) and "Toy" not in to_latex(tables)
    assert "toy_best" in to_csv(tables, sweep).splitlines()[0]


def test_metric_column_must_be_known():
    with pytest.raises(ValueError, match="column must be one of"):
        MetricSpec("bad", "frechet", ("embedding",), "bad", "bad_std", "Bad", True, 2, column="sometimes")


STORED = [MAIN_JOB] + [REPO / "experiments" / name for name in ("fmnist_sampler_strategy", "fmnist_budget")
                        if (REPO / "experiments" / name / "points").is_dir()]


@pytest.mark.parametrize("study", STORED, ids=lambda p: p.name)
def test_committed_tables_rebuild_from_their_stored_points(study):
    """experiments/<study>/points holds what the report reads of each point (the main job's 22, the sampler x
    strategy and budget studies'): the committed tables must come out of it unchanged (a change to the report that
    moves a digit fails here). The stored folders' names and paths are the run's own."""
    sweep = collect_sweep(study / "points", describe_point, progress=False)
    md, csv_text, tex = render(sweep)
    assert md == (study / "tradeoff.md").read_text()
    assert tex == (study / "tradeoff.tex").read_text()
    assert csv_text == (study / "tradeoff.csv").read_text()


def test_sampler_strategy_matrix_rebuilds_from_its_csv():
    """The sampler x strategy study's matrix.md is matrix.py's table of the committed tradeoff.csv (which the test
    above rebuilds from the stored points): a hand edit of a cell, or a change to the best-call rule, fails here."""
    folder = REPO / "experiments" / "fmnist_sampler_strategy"
    spec = importlib.util.spec_from_file_location("sampler_strategy_matrix", folder / "matrix.py")
    matrix = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(matrix)
    assert matrix.table(matrix.read_points(folder / "tradeoff.csv")) + "\n" == (folder / "matrix.md").read_text()
    # the best call: bold only when the interval lies wholly below every other sampler's
    assert matrix.best_sampler({"a": (1.0, 0.1, 10), "b": (1.5, 0.1, 10), "c": (1.2, 0.3, 10)}) is None
    assert matrix.best_sampler({"a": (1.0, 0.1, 10), "b": (1.5, 0.1, 10), "c": None}) == "a"
