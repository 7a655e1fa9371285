"""Shared plumbing of the Hydra apps: where conf/ lives, one-line errors, wandb set-up."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from guidance.errors import GuidanceError

# conf/ sits at the repository top level (editable install). GUIDANCE_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("GUIDANCE_CONF_DIR", str(Path(__file__).resolve().parents[2] / "conf"))


def one_line_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a GuidanceError raised inside a Hydra task into `error: <message>` and exit status 2.

    Hydra prints full tracebacks for other exceptions, which is what a genuine bug deserves.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GuidanceError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


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
