"""Shared plumbing of the Hydra apps: where conf/ lives, one-line errors; wandb set-up lives in guidance.tracking
(re-exported here for the apps)."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from guidance.errors import GuidanceError
from guidance.tracking import DisabledRun, init_wandb, log_images  # noqa: F401 (the apps' wandb plumbing)

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
