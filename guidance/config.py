"""Where conf/ lives, and composing its configs from Python, inside a Hydra app or without one.

    from guidance.config import compose_config
    cfg = compose_config("sample", ["guidance=cfg", "guidance.scale=2"])
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# conf/ sits at the repository top level (editable install). GUIDANCE_CONF_DIR points elsewhere.
CONF_DIR = os.environ.get("GUIDANCE_CONF_DIR", str(Path(__file__).resolve().parents[1] / "conf"))


def compose_config(name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """conf/<name>.yaml with `overrides`; uses the running Hydra app's search path, else conf/ alone."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def build(node, **kwargs):
    """hydra.utils.instantiate, but a GuidanceError from the constructor stays a one-line GuidanceError (Hydra
    wraps it in a multi-line InstantiationException). A dataclass instance among the keyword arguments (a
    sampler's ContinuousLevels) is handed to the constructor as it is: Hydra would turn it into a config node."""
    import dataclasses

    from hydra.utils import instantiate

    from guidance.errors import GuidanceError

    objects = {k: v for k, v in kwargs.items() if dataclasses.is_dataclass(v) and not isinstance(v, type)}
    kwargs = {k: v for k, v in kwargs.items() if k not in objects}
    try:
        if objects:
            return instantiate(node, _partial_=True, **kwargs)(**objects)
        return instantiate(node, **kwargs)
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, GuidanceError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def _sweep_dirname_excludes() -> list[str]:
    from guidance.settings import sweep_dirname_excludes

    return sweep_dirname_excludes()


# conf/sample.yaml names its sweep folders by the overrides that change samples: the rest is derived, not listed.
OmegaConf.register_new_resolver("guidance_dirname_excludes", _sweep_dirname_excludes, replace=True)
