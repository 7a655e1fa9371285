"""Experiment tracking: wandb runs, offline by default, with a no-op run for `mode: disabled`.

Library code (training, report) and the apps both log through these, so nothing below guidance.apps imports the
apps.
"""

from __future__ import annotations

import os

from omegaconf import DictConfig

class DisabledRun:
    """What init_wandb returns for `mode: disabled`: takes a run's calls and records nothing.

    wandb is not even imported then, so a machine without wandb (a bare GPU box) can run with logger=none.
    """

    disabled = True

    def __init__(self) -> None:
        self.summary: dict = {}
        self.dir = None

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self, *args, **kwargs) -> None:
        pass


def init_wandb(logger_cfg: DictConfig | dict | None, job_type: str, config: dict | None = None, name: str | None = None,
               group: str | None = None, dir: str | os.PathLike | None = None):
    """Start a wandb run; offline by default, `WANDB_MODE` overrides, `mode: disabled` turns it off.

    logger_cfg fields: mode (offline|online|disabled), project, entity, group, tags.
    """
    cfg = dict(logger_cfg or {})
    mode = os.environ.get("WANDB_MODE") or cfg.get("mode", "offline")
    if mode == "disabled":
        return DisabledRun()
    import wandb

    return wandb.init(
        project=cfg.get("project", "guidance"),
        entity=cfg.get("entity"),
        group=group or cfg.get("group"),
        tags=list(cfg.get("tags") or []),
        job_type=job_type,
        name=name,
        config=config,
        mode=mode,
        dir=str(dir) if dir else None,
        reinit="finish_previous",
    )


def log_images(run, images: dict[str, str | os.PathLike], step: int | None = None) -> None:
    """Log PNG files as wandb.Image under their keys (nothing for a disabled run)."""
    if getattr(run, "disabled", False):
        return
    import wandb

    run.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)
