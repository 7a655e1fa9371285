"""guidance-tradeoff: aggregate a sweep into tradeoff tables, plots and a wandb summary.

    guidance-tradeoff sweep_dir=runs/sweeps/NAME [out_dir=<folder>] [logger=none]
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from guidance.apps.common import hydra_app, to_container
from guidance.errors import GuidanceError


@hydra_app("tradeoff")
def main(cfg: DictConfig) -> None:
    if cfg.sweep_dir is None:
        raise GuidanceError("sweep_dir is required: guidance-tradeoff sweep_dir=<sweep folder, e.g. runs/sweeps/NAME>")
    if not Path(cfg.sweep_dir).is_dir():  # checked before the heavy imports (torch, matplotlib): a fast one-liner
        raise GuidanceError(f"sweep_dir {cfg.sweep_dir!r} is not a folder: pass sweep_dir=<a sweep output folder, e.g. runs/sweeps/NAME>")
    from guidance.guiders import describe_point
    from guidance.io import atomic_write_text
    from guidance.report import build_report

    logger = to_container(cfg.logger) if cfg.get("logger") is not None else None
    paths = build_report(cfg.sweep_dir, cfg.out_dir, describe=describe_point, logger_cfg=logger,
                         progress=cfg.progress)
    atomic_write_text(OmegaConf.to_yaml(cfg, resolve=True), paths["md"].parent / "tradeoff_config.yaml")
    for name, path in paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
