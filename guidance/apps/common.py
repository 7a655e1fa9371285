"""Shared plumbing of the Hydra apps: one-line errors. conf/ is found by guidance.config, wandb set-up lives in
guidance.tracking."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from guidance.errors import GuidanceError


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
