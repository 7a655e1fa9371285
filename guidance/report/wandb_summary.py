"""One wandb run per report, in the sweep's group (job_type "tradeoff"): tables, curves, plots, sample grids.

Offline by default through guidance.tracking.init_wandb; `logger=none` (mode: disabled) or no logger config
skips wandb entirely (no import, no run folder).
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from guidance.metrics.registry import METRICS
from guidance.report.collect import Sweep, is_finite
from guidance.report.plots import group_series, shown_metrics, x_of


def _cell(text: str):
    """CSV text back to a typed cell, so wandb can sort and plot the numbers."""
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def wandb_enabled(logger_cfg) -> bool:
    if logger_cfg is None:
        return False
    mode = os.environ.get("WANDB_MODE") or dict(logger_cfg).get("mode", "offline")
    return mode != "disabled"


def log_summary(sweep: Sweep, csv_text: str, plots: dict[str, Path], logger_cfg, out_dir: Path) -> str | None:
    """Log the report; returns the wandb run folder (None when disabled)."""
    if not wandb_enabled(logger_cfg):
        return None
    import wandb

    from guidance.tracking import init_wandb

    group = dict(logger_cfg).get("group") or sweep.name
    run = init_wandb(logger_cfg, job_type="tradeoff", name=f"tradeoff-{group}", group=group, dir=out_dir,
                     config={"sweep_dir": str(sweep.root), "extractor": sweep.extractor,
                             "weights_sha256": sweep.weights_sha256, "num_points": len(sweep.points)})
    try:
        rows = list(csv.reader(io.StringIO(csv_text)))
        log = {"tradeoff/table": wandb.Table(columns=rows[0], data=[[_cell(c) for c in r] for r in rows[1:]])}
        for metric in shown_metrics(sweep.points):  # the registry's table metrics the sweep measured
            series = {k: [p for p in pts if is_finite(p.value(metric)) and x_of(p) is not None]
                      for k, pts in group_series(sweep.points).items() if not pts[0].baseline}
            series = {k: pts for k, pts in series.items() if pts}
            if series:
                log[f"tradeoff/charts/{metric}_vs_scale"] = wandb.plot.line_series(
                    xs=[[x_of(p) for p in pts] for pts in series.values()],
                    ys=[[p.value(metric) for p in pts] for pts in series.values()],
                    keys=list(series), title=f"{METRICS[metric].label} vs guidance scale ({METRICS[metric].better} "
                    "is better)", xname="scale")
        for name, path in plots.items():
            log[f"tradeoff/plots/{name}"] = wandb.Image(str(path))
        for p in sweep.points:  # each point's own grid, so the dashboard can page through them
            if p.grid is not None:
                log[f"grids/{p.name}"] = wandb.Image(str(p.grid), caption=f"{p.strategy} scale {x_of(p)} ({p.model})")
        run.log(log)
        return getattr(run, "dir", None)
    finally:
        run.finish()
