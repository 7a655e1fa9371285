"""guidance-sample: draw guided samples from trained snapshots -> samples.npz + grid.png + sample_info.json.

  guidance-sample guidance=cfg guidance.scale=2
  guidance-sample -m guidance=classifier,cfg guidance.scale=0,0.5,1,2,4        # one job folder per point
  guidance-sample -m experiment=adm_table4                                       # ADM Table 4 sweep

Per-image seeds make sample i identical at every batch size and every scale of a sweep (paired comparisons).
A job whose samples.npz exists with matching sample_info.json is skipped (resume of a finished sweep point).
The work is guidance.sampling.point.run_sample; this app parses the config, calls it and prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from guidance.apps.common import hydra_app
from guidance.errors import GuidanceError
from guidance.sampling.point import run_sample


@hydra_app("sample")
def main(cfg: DictConfig) -> None:
    if cfg.evaluate:  # bad metrics settings fail before any sampling
        from guidance.metrics.evaluate import metrics_config

        metrics_config(cfg.metrics)
    npz = run_sample(cfg, HydraConfig.get().runtime.output_dir)
    if cfg.evaluate and int(os.environ.get("RANK", "0")) == 0:
        evaluate_point(cfg, npz)


def evaluate_point(cfg: DictConfig, npz: Path) -> None:
    """Chain guidance-evaluate into a sampling job, so `-m` over scales ends with one metrics.json per point."""
    from guidance.metrics.evaluate import evaluate_folder_if_stale

    reference = to_absolute_path(cfg.reference_npz) if cfg.reference_npz else None
    trained_on = json.loads((npz.parent / "sample_info.json").read_text()).get("dataset")
    if reference is None and trained_on and trained_on != cfg.data.name:
        raise GuidanceError(f"the U-Net was trained on {trained_on} but data={cfg.data.name}: pass data={trained_on} "
                            "(the reference set) or reference_npz=PATH")
    metrics = evaluate_folder_if_stale(npz.parent, cfg.metrics, cfg.data, reference)
    if metrics is None:
        print(f"{npz.parent / 'metrics.json'} is up to date; skipping evaluation")
    else:
        from guidance.metrics.registry import METRICS

        shown = "  ".join(f"{m.label} {metrics[m.key]:.{m.decimals}f}" for m in METRICS.values()
                          if m.column != "csv" and m.key in metrics)
        print(f"metrics [{metrics['extractor']}]: {shown}  -> {npz.parent / 'metrics.json'}")


if __name__ == "__main__":
    main()
