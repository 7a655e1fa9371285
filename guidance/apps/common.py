"""Shared plumbing of the Hydra apps: `hydra_app` (Hydra's main with one-line errors, also for what Hydra itself
refuses before the task runs). conf/ is found by guidance.config, wandb set-up lives in guidance.tracking."""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import hydra
from omegaconf import DictConfig, OmegaConf

from guidance.config import CONF_DIR
from guidance.errors import GuidanceError

MIN_FREE_BYTES = 1 << 20  # Hydra writes its config files first: less than this is a full disk


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


def hydra_app(config_name: str, check: Callable[[DictConfig, Path], None] | None = None
              ) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """@hydra.main(config_name) + one_line_errors, preceded by a check of the command line (the config composes,
    the output folder can be made, a SLURM launcher has SLURM, and the app's own `check(cfg, out_dir)`): Hydra's
    own multi-line errors and tracebacks for these become one line before Hydra writes anything."""

    def deco(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        run = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(one_line_errors(task))

        @functools.wraps(task)
        def main() -> Any:
            try:
                preflight(config_name, sys.argv[1:], check)
            except GuidanceError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            return run()

        return main

    return deco


def preflight(config_name: str, argv: list[str], check: Callable[[DictConfig, Path], None] | None = None) -> None:
    """The checks Hydra would otherwise fail on with a traceback or a multi-line message."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return  # --help, --cfg, -cn, ...: Hydra's own business
    overrides = [a for a in argv if not a.startswith("-")]
    if multirun:  # a sweep a,b,c: check its first value of each (a bad one later is Hydra's message)
        overrides = [_first_choice(o) for o in overrides]
    cfg = compose_or_explain(config_name, overrides)
    missing = sorted(k for k in cfg if k != "hydra" and OmegaConf.is_missing(cfg, k))  # `???` in the yaml
    if missing:
        raise GuidanceError(f"{', '.join(missing)} must be given (no default): pass "
                            + " ".join(f"{k}=..." for k in missing))
    hc = cfg.hydra
    slurm = "SlurmLauncher" in str(hc.launcher.get("_target_", ""))
    if multirun and slurm and not (shutil.which("srun") and shutil.which("sbatch")):
        raise GuidanceError("hydra/launcher=submitit_slurm needs SLURM, but no `srun`/`sbatch` is on this machine: "
                            "run on the cluster's login node, or use hydra/launcher=joblib (local processes)")
    try:
        out = Path(hc.sweep.dir if multirun else hc.run.dir)
    except Exception:  # an interpolation only Hydra's runtime can resolve
        return
    check_output_dir(out)
    if check is not None and not multirun:
        check(cfg, out)


def _first_choice(override: str) -> str:
    key, sep, value = override.partition("=")
    if sep and "," in value and not value.strip().startswith(("[", "{")) and "(" not in value:
        return f"{key}={value.split(',')[0]}"
    return override


def compose_or_explain(config_name: str, overrides: list[str]) -> DictConfig:
    """Compose conf/<config_name>.yaml as Hydra will; a composition error becomes one line with the remedy."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException

    def attempt(ovs):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Hydra repeats its own warnings when it composes for real
            return compose(config_name=config_name, overrides=ovs, return_hydra_config=True)

    try:
        return attempt(overrides)
    except MissingConfigException as e:
        group = (e.missing_cfg_file or "").rsplit("/", 1)[0]
        name = (e.missing_cfg_file or "").rsplit("/", 1)[-1]
        if e.options:
            raise GuidanceError(f"{group}={name} is unknown; choose one of {', '.join(sorted(e.options))}") from None
        raise GuidanceError(str(e).splitlines()[0]) from None
    except ConfigCompositionException as e:
        first = str(e).splitlines()[0]
        key = first.split("'")[1] if first.startswith("Could not override '") else None
        if key is None:
            raise GuidanceError(f"{first} {_first_line(e.__cause__)}".strip()) from None
        parent, _, leaf = key.rpartition(".")
        try:
            node = attempt([o for o in overrides if o.split("=")[0].lstrip("+~") != key])
            node = OmegaConf.select(node, parent) if parent else node
            known = sorted(k for k in node if k not in ("_target_", "hydra")) if isinstance(node, DictConfig) else []
        except Exception:
            known = []
        where = f"{parent} " if parent else ""
        choice = next((o for o in overrides if o.startswith(f"{parent}=")), None) if parent else None
        raise GuidanceError(f"{key} is not an option of {where or 'this command'}"
                            + (f"({choice})" if choice else "").strip()
                            + (f"; its options are {', '.join(known)}" if known else "; check the spelling")) from None
    except HydraException as e:
        raise GuidanceError(f"{_first_line(e)} {_first_line(e.__cause__)}".strip()) from None
    except Exception as e:  # OmegaConf's grammar and interpolation errors
        raise GuidanceError(f"bad command line: {_first_line(e)}") from None


def _first_line(e: BaseException | None) -> str:
    return str(e).strip().splitlines()[0] if e is not None and str(e).strip() else ""


def check_output_dir(path: Path) -> None:
    """The output folder can be created (nothing but folders on its way), is writable and has room."""
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise GuidanceError(f"cannot create the output folder {path}: {existing} is a regular file; choose another "
                            "output path (hydra.run.dir=..., or out_dir=... where the app has it)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GuidanceError(f"cannot write into {existing} (permission denied); choose another output path")
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise GuidanceError(f"no space left on the device of {existing} ({free} bytes free): free space or choose "
                            "another output path")


def to_container(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
