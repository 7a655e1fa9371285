"""Sweep aggregation: read a sweep's point folders, write tradeoff tables (md/csv/tex), plots and a wandb summary.

`build_report(sweep_dir, out_dir, describe=guidance.guiders.describe_point)` is the whole pipeline;
guidance-tradeoff is its Hydra front end. The package reads data only: the strategies' describe function comes in
as an argument and the metrics come from guidance.metrics.registry (data), so importing it loads no torch.
Outputs in out_dir (each written atomically):
  tradeoff.md, tradeoff.csv, tradeoff.tex   all table kinds in one file per format (csv: one long table with a
                                            `table` column; see guidance.report.tables); md and tex end with
                                            "Best FID at a budget" (guidance.report.budget) when >= 2 strategies ran
  plots/fid_vs_scale.png, plots/precision_recall.png, plots/is_vs_fid.png, plots/grids.png,
  plots/accuracy_recall.png (class accuracy of the samples vs recall), plots/fid_vs_nfe.png,
  plots/metrics_vs_scale.png (one panel per metric the tables show)
"""

from __future__ import annotations

import os
from pathlib import Path

from guidance.io import atomic_write_text
from guidance.metrics.registry import METRICS
from guidance.report.budget import budget_latex, budget_markdown, budget_table
from guidance.report.collect import Describe, Point, Sweep, collect_sweep
from guidance.report.plots import PLOTS, make_plots
from guidance.report.tables import Table, build_tables, to_csv, to_latex, to_markdown
from guidance.report.wandb_summary import log_summary

__all__ = ["METRICS", "Describe", "Point", "Sweep", "Table", "build_report", "build_tables", "collect_sweep",
           "make_plots", "render", "to_csv", "to_latex", "to_markdown"]


def render(sweep: Sweep) -> tuple[str, str, str]:
    """(tradeoff.md, tradeoff.csv, tradeoff.tex) of a collected sweep: the tables, then the budget table."""
    tables = build_tables(sweep)
    md, csv_text, tex = to_markdown(tables), to_csv(tables, sweep), to_latex(tables)
    budget = budget_table(sweep)
    if budget is not None:
        md, tex = md + "\n" + budget_markdown(budget, len(tables) + 1), tex + "\n" + budget_latex(budget)
    return md, csv_text, tex


def build_report(sweep_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, describe: Describe,
                 logger_cfg=None, progress: bool = True, name: str | None = None) -> dict[str, Path]:
    """Aggregate the sweep below `sweep_dir` into `out_dir` (default <sweep_dir>/report); returns name -> path.

    `describe(sample_info)` says how each point is shown (guidance.guiders.describe_point for the toolkit's
    strategies). `name` (the sweep's wandb group and plot titles) defaults to multirun.yaml's sweep_name, else the
    folder name.
    """
    out_dir = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    sweep = collect_sweep(sweep_dir, describe, exclude=[out_dir], progress=progress)
    if name:
        sweep.name = name
    md, csv_text, tex = render(sweep)
    paths = {
        "md": atomic_write_text(md, out_dir / "tradeoff.md"),
        "csv": atomic_write_text(csv_text, out_dir / "tradeoff.csv"),
        "tex": atomic_write_text(tex, out_dir / "tradeoff.tex"),
    }
    paths.update(make_plots(sweep, out_dir / "plots"))
    wandb_dir = log_summary(sweep, csv_text, {k: paths[k] for k in PLOTS}, logger_cfg, out_dir)
    if wandb_dir:
        paths["wandb"] = Path(wandb_dir)
    return paths
