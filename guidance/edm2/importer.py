"""An EDM2 file -> a toolkit snapshot, and the engine's model of an EDM2 network (the library behind
guidance-import-edm2).

The snapshot's network is guidance.nn.edm2.EDM2Denoiser (model_config `_target_`), its `diffusion_config` the
continuous levels EDM2 samples on (σ in [0.002, 80], generate_images.py's defaults), and `extra` records the
origin (file name, sha256, pickle entry, post-hoc EMA length), the parameterization (EDM's D on σ), the class
conditioning (EDM2's conditional networks never trained an unconditional mode: null_trained False, so CFG on them
needs EDM2's separate unconditional network as the guiding one, as its presets do) and the latent standardization
(EDM2's StabilityVAEEncoder: z = raw · scale + bias over the 4 SD-VAE channels; decoding: raw = (z − bias) / scale,
then the VAE decoder, then clamp(0, 1) · 255 truncated to uint8).
"""

from __future__ import annotations

from pathlib import Path

import torch

from guidance.errors import GuidanceError

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
ARCH_KEYS = ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult", "num_blocks",
             "attn_resolutions")


def levels_config() -> dict:
    return {"_target_": "guidance.engine.model.ContinuousLevels", "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}


def denoising_model_config(label_dim: int) -> dict:
    """DenoisingModel's keyword arguments for an EDM2 network (levels as a _target_ config)."""
    return {"parameterization": "edm", "noise_input": "sigma", "levels": levels_config(),
            "null_label": int(label_dim) if label_dim else None, "null_trained": False}


def denoising_model(net, name: str | None = None):
    """The engine's adapter of an EDM2Denoiser: D(x̃; σ) on continuous σ in [0.002, 80]; a conditional network's
    null label (label_dim) is declared untrained, so strategies needing an unconditional pass of it are refused."""
    from guidance.engine.model import ContinuousLevels, DenoisingModel

    label_dim = int(getattr(net, "label_dim", 0))
    return DenoisingModel(net, "edm", ContinuousLevels(SIGMA_MIN, SIGMA_MAX), "sigma",
                          null_label=label_dim or None, null_trained=False, name=name or "EDM2Denoiser")


def load_edm2_snapshot(path, map_location="cpu"):
    """A snapshot written by import_edm2 -> (DenoisingModel, meta)."""
    from guidance.checkpoint import load_snapshot

    net, meta = load_snapshot(path, role="unet", map_location=map_location)
    if "edm2" not in (meta.get("extra") or {}):
        raise GuidanceError(f"{path} is not an imported EDM2 snapshot (no extra.edm2); import it with "
                            "guidance-import-edm2")
    return denoising_model(net, name=meta["extra"]["edm2"].get("architecture") or Path(path).stem), meta


def import_edm2(checkpoint: str | Path, out: str | Path, architecture: str | None = None) -> Path:
    """Convert `checkpoint` (an EDM2 network pickle, read without executing it, or a .pt state dict) into a
    snapshot at `out`. `architecture` (e.g. "edm2-img512-xs"; default: from edm2's file name when it has one)
    is checked against the file's own configuration."""
    from hydra.utils import instantiate

    from guidance.checkpoint import save_snapshot
    from guidance.edm2.convert import check_state, read_edm2_file
    from guidance.edm2.releases import architecture as lookup, parse_file_name
    from guidance.io import sha256_file

    checkpoint = Path(checkpoint)
    named = parse_file_name(checkpoint.name)
    arch = lookup(architecture) if architecture else (lookup(named["architecture"]) if named else None)
    f = read_edm2_file(checkpoint)
    where = str(checkpoint)
    if arch is not None:
        diff = [f"{k}: {arch.model[k]} -> {f.config.get(k)}" for k in ARCH_KEYS
                if list_or(arch.model[k]) != list_or(f.config.get(k, DEFAULTS.get(k)))]
        if diff:
            raise GuidanceError(f"{where} is not {arch.name} ({'; '.join(diff)}); give the architecture the file is "
                                "(architecture=...) or leave it out")
    config = {"_target_": "guidance.nn.edm2.EDM2Denoiser", **f.config}
    try:
        model = instantiate(config, _convert_="all")
    except GuidanceError as e:
        raise GuidanceError(f"{where}: {e}") from None
    model.load_state_dict(check_state(f.state, model, where))
    half = all(t.dtype == torch.float16 for t in f.state.values() if t.is_floating_point())
    if half:  # EDM2 releases are fp16: keep them so (lossless); load_snapshot casts back into the fp32 network
        model = model.half()
    label_dim = int(f.config.get("label_dim", 0))
    extra = {
        "edm2": {"origin": checkpoint.name, "kind": f.kind, "entry": f.key,
                 "architecture": arch.name if arch else None, "kimg": named["kimg"] if named else None,
                 "ema_std": named["ema_std"] if named else None, "notes": list(f.notes),
                 "weights_dtype": "float16" if half else "float32"},
        "source_sha256": sha256_file(checkpoint),
        "parameterization": "edm", "sigma_data": float(f.config.get("sigma_data", 0.5)),
        "levels": {"kind": "continuous", "sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX},
        "denoising_model": denoising_model_config(label_dim),
        "class_conditional": bool(label_dim), "num_classes": label_dim or None,
        "null_class_trained": False if label_dim else None, "p_uncond": 0.0,
        "latent": f.encoder,
    }
    latent = f.encoder is not None
    data = {"name": ("imagenet512" if latent else "imagenet64") if label_dim in (0, 1000) else "edm2",
            "image_size": 8 * f.config["img_resolution"] if latent else f.config["img_resolution"], "channels": 3,
            "num_classes": label_dim or None}
    return save_snapshot(out, "unet", model, config, step=int(named["kimg"]) if named else 0,
                         diffusion_config=levels_config(), data_config=data, extra=extra)


DEFAULTS = {"label_dim": 0, "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
            "attn_resolutions": [16, 8]}


def list_or(v):
    return list(v) if isinstance(v, (list, tuple)) else v
