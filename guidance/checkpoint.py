"""Snapshots (what sampling reads) and the resumable training state, kept apart as in edm2.

A snapshot is one network, rebuilt by instantiating its `model_config` (`_target_` + constructor fields):

    {format: "guidance-snapshot-v1", role, model_config, state_dict (EMA weights), raw_state_dict (non-EMA),
     step, diffusion_config, data_config, extra[, adapter]}

A U-Net snapshot is sampled as a `DenoisingModel` (guidance.engine.model) built from that metadata
(`denoising_model`, `load_model`): `adapter` (optional; absent in every snapshot before engine v3) declares its
parameterization, noise input and time scale, default ε on integer timesteps; `diffusion_config` gives its trained
levels (a GaussianDiffusion), or `adapter.levels = {sigma_min, sigma_max}` continuous ones; the null label is
`model_config.num_classes` (None: unconditional), `extra.null_class_trained` says whether it was trained (False
for ADM's conditional releases), `model_config.learn_sigma` whether the output carries a learned variance.

The training state (`checkpoints/state.pt`) holds everything to continue a run: models, EMAs, optimizers,
step, RNG states and the resolved config. Every file is written atomically (guidance.io).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from guidance.errors import GuidanceError
from guidance.io import atomic_torch_save

SNAPSHOT_FORMAT = "guidance-snapshot-v1"
STATE_FORMAT = "guidance-train-state-v1"
ROLES = ("unet", "classifier", "evaluator")


def _plain(cfg: Any) -> Any:
    """DictConfig / ListConfig -> plain dicts and lists (resolved), so files load with weights_only=True."""
    if cfg is None:
        return None
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {k: _plain(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [_plain(v) for v in cfg]
    return cfg


def config_diff(a: Mapping | None, b: Mapping | None, prefix: str = "") -> list[str]:
    """Differences between two nested configs, as ["model_channels: 64 -> 32", ...] (a -> b)."""
    a, b = _plain(a) or {}, _plain(b) or {}
    out = []
    for k in sorted(set(a) | set(b), key=str):
        va, vb = a.get(k, "<unset>"), b.get(k, "<unset>")
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va} -> {vb}")
    return out


def _read(path: str | os.PathLike, what: str, hint: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GuidanceError(f"no {what} at {path}; {hint}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, truncated files, non-torch files
        raise GuidanceError(f"{path} is not a readable {what} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                            f"{hint}") from e
    if not isinstance(obj, dict):
        raise GuidanceError(f"{path} is not a {what} (it holds a {type(obj).__name__}); {hint}")
    return obj


# ----------------------------------------------------------------------------------------------------------
# Snapshots


def save_snapshot(path: str | os.PathLike, role: str, model: nn.Module, model_config: Mapping, step: int,
                  diffusion_config: Mapping | None = None, data_config: Mapping | None = None,
                  extra: Mapping | None = None, raw_state_dict: Mapping | None = None,
                  adapter: Mapping | None = None) -> Path:
    """Write `model`'s weights (the EMA ones, when the caller trains with EMA) as a snapshot.

    `raw_state_dict` is the non-EMA weights; None means `model` itself is not averaged (both are the same).
    `adapter` (a U-Net's; keys of ADAPTER_KEYS): how it is sampled, when not ε on integer timesteps.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    model_config = _plain(model_config)
    if not isinstance(model_config, dict) or "_target_" not in model_config:
        raise ValueError("model_config must be a mapping with _target_ so the loader can rebuild the network")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    raw = state if raw_state_dict is None else {k: v.detach().cpu() for k, v in raw_state_dict.items()}
    adapter = _plain(adapter)
    if adapter is not None:
        check_adapter(adapter, "adapter")
    return atomic_torch_save({
        "format": SNAPSHOT_FORMAT,
        "role": role,
        "model_config": model_config,
        "state_dict": state,
        "raw_state_dict": raw,
        "step": int(step),
        "diffusion_config": _plain(diffusion_config),
        "data_config": _plain(data_config),
        "extra": _plain(extra) or {},
        **({} if adapter is None else {"adapter": adapter}),
    }, path)


def load_snapshot(path: str | os.PathLike, role: str | None = None, map_location: str | torch.device = "cpu",
                  use_ema: bool = True, model_config: Mapping | None = None,
                  option: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild the network of a snapshot and load its weights -> (model in eval mode, meta).

    meta holds every field but the state dicts, plus `path`. `model_config` (optional) builds the network from
    that config instead of the stored one, e.g. to check a snapshot against the current run's config.
    `option`: the config option that named the file (the hints name it; default `<role>_ckpt`).
    """
    from hydra.utils import instantiate

    what = f"{role or 'model'} snapshot"
    option = option or f"{role or 'unet'}_ckpt"
    trainer = "guidance-train-evaluator" if role == "evaluator" else "guidance-train"
    hint = f"train first with {trainer} or set {option}=<path to a {role or 'unet'} snapshot>"
    snap = _read(path, what, hint)
    if snap.get("format") == STATE_FORMAT:
        raise GuidanceError(f"{path} is a resumable training state, not a snapshot; point to the unet.pt / "
                            "classifier.pt next to its checkpoints/ folder")
    if snap.get("format") != SNAPSHOT_FORMAT:
        raise GuidanceError(f"{path} is not a guidance snapshot (format {snap.get('format')!r}, expected "
                            f"{SNAPSHOT_FORMAT!r}); {hint}")
    if role is not None and snap["role"] != role:
        raise GuidanceError(f"{path} is a {snap['role']!r} snapshot but a {role!r} one is needed; "
                            f"set {option}=<path to a {role} snapshot>")
    stored_cfg = snap["model_config"]
    cfg = stored_cfg if model_config is None else _plain(model_config)
    try:
        model = instantiate(cfg, _convert_="all")
    except Exception as e:
        raise GuidanceError(f"{path}: cannot rebuild the network from its model_config "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:160]})") from e
    state = snap["state_dict"] if use_ema else snap["raw_state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        diff = config_diff(stored_cfg, cfg)
        # torch's message: a header line, then one tab-indented line per problem; the first problem is enough
        problems = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
        why = (f"config differs, file -> given: {'; '.join(diff)}" if diff
               else (problems[0] if problems else str(e).splitlines()[0])[:240])
        raise GuidanceError(f"{path}: weights do not fit the {snap['role']} architecture ({why}); "
                            "use the config the snapshot was trained with") from e
    model.to(map_location).eval()
    meta = {k: v for k, v in snap.items() if k not in ("state_dict", "raw_state_dict")}
    meta["path"] = str(path)
    return model, meta


# ----------------------------------------------------------------------------------------------------------
# A U-Net snapshot as the engine's model

ADAPTER_KEYS = ("parameterization", "noise_input", "time_scale", "levels")


def check_adapter(adapter: Mapping, where: str) -> None:
    unknown = sorted(set(adapter) - set(ADAPTER_KEYS))
    if unknown:
        raise GuidanceError(f"{where} has unknown key(s) {', '.join(unknown)}; known are {', '.join(ADAPTER_KEYS)}")
    levels = adapter.get("levels")
    if levels is not None and (not isinstance(levels, Mapping) or set(levels) - {"sigma_min", "sigma_max"}):
        raise GuidanceError(f"{where}.levels={levels!r} must be {{sigma_min, sigma_max}} (continuous levels) or null "
                            "(the trained timesteps of diffusion_config)")


def denoising_model(network: nn.Module, meta: Mapping):
    """The DenoisingModel of a U-Net snapshot's network from its metadata (module docstring): exactly the ε model
    on integer timesteps that sampling called before the adapters, unless its `adapter` says otherwise."""
    from guidance.engine.model import ContinuousLevels, DenoisingModel

    where = meta.get("path", "the snapshot")
    adapter = dict(meta.get("adapter") or {})
    check_adapter(adapter, f"{where}: adapter")
    mc = meta.get("model_config") or {}
    if adapter.get("levels") is not None:
        levels = ContinuousLevels(**adapter["levels"])
    elif meta.get("diffusion_config"):
        levels = snapshot_diffusion(meta["diffusion_config"])
    else:
        raise GuidanceError(f"{where} records no diffusion_config (noise schedule); re-save it with "
                            "guidance.checkpoint.save_snapshot(..., diffusion_config=...)")
    learned = mc.get("learn_sigma")
    return DenoisingModel(network, adapter.get("parameterization", "eps"), levels,
                          noise_input=adapter.get("noise_input", "timestep"),
                          time_scale=adapter.get("time_scale", 1.0), null_label=mc.get("num_classes"),
                          null_trained=(meta.get("extra") or {}).get("null_class_trained") is not False,
                          learned_variance=None if learned is None else bool(learned),
                          name=f"U-Net {Path(where).name}")


def snapshot_diffusion(diffusion_config: Mapping):
    """The trained (un-respaced) GaussianDiffusion of a diffusion_config: the model's discrete levels."""
    from guidance.diffusion import create_diffusion

    return create_diffusion(**{k: v for k, v in diffusion_config.items()
                               if k not in ("_target_", "timestep_respacing")})


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu", use_ema: bool = True,
               option: str = "unet_ckpt"):
    """A U-Net snapshot as the engine's model -> (DenoisingModel, meta): `load_snapshot` + `denoising_model`."""
    network, meta = load_snapshot(path, role="unet", map_location=map_location, use_ema=use_ema, option=option)
    return denoising_model(network, meta), meta


# ----------------------------------------------------------------------------------------------------------
# Resumable training state


def save_training_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write the training state dict (models, EMAs, optimizers, step, rng, config, arch) atomically."""
    return atomic_torch_save({"format": STATE_FORMAT, **state}, path)


def load_training_state(path: str | os.PathLike, arch: Mapping[str, Any] | None = None) -> dict:
    """Read a training state; the entries of `arch` ({"unet": cfg, "classifier": cfg, "diffusion": cfg}) that
    the file also has must equal the stored ones."""
    state = _read(path, "training state", "delete it or choose another run folder (out_dir=... or name=...)")
    if state.get("format") != STATE_FORMAT:
        raise GuidanceError(f"{path} is not a guidance training state (format {state.get('format')!r}); delete it "
                            "or choose another run folder (out_dir=... or name=...)")
    if arch is not None:
        # Only networks present in both are compared: a run may add or drop one (train_unet / train_classifier).
        stored = state.get("arch") or {}
        diff = config_diff({k: v for k, v in stored.items() if k in arch}, {k: v for k, v in arch.items() if k in stored})
        if diff:
            raise GuidanceError(f"{path} was trained with a different architecture (file -> now: {'; '.join(diff[:4])}); "
                                "rerun with the same config, or use another run folder (name=... or out_dir=...)")
    return state
