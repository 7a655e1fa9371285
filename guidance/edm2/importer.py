"""An EDM2 file -> a toolkit snapshot, and the engine's model of an EDM2 network (the library behind
guidance-import-edm2).

The snapshot's network is guidance.nn.edm2.EDM2Denoiser (model_config `_target_`); it is read back by
guidance.checkpoint.load_model like every snapshot, from its `adapter` (guidance.checkpoint's schema: EDM's D on
continuous σ in [0.002, 80], generate_images.py's defaults; null label = label_dim; the latent's sample shape),
`extra.null_class_trained` (EDM2's conditional networks never trained an unconditional mode: False, so CFG on them
is refused and EDM2's separate unconditional network guides them as autoguidance's weak model, as its presets do)
and `extra.latent` (guidance.engine.latent.LatentDecoder's fields of EDM2's StabilityVAEEncoder: z = raw · scale +
bias over the 4 SD-VAE channels, on [0, 1] images). `extra.edm2` records the origin (file name, pickle entry,
post-hoc EMA length, the encoder's class and VAE name) and `extra.source_sha256` the file's hash.
"""

from __future__ import annotations

from pathlib import Path

import torch

from guidance.errors import GuidanceError

SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
ARCH_KEYS = ("img_resolution", "img_channels", "label_dim", "model_channels", "channel_mult", "num_blocks",
             "attn_resolutions")


def snapshot_adapter(config: dict) -> dict:
    """The snapshot adapter (guidance.checkpoint's schema) of an EDM2Denoiser config: D(x̃; σ) on σ in
    [0.002, 80] (generate_images.py's defaults); its null label is label_dim (None: unconditional), which a
    conditional network never trained (extra.null_class_trained False); it samples [img_channels, res, res]."""
    label_dim = int(config.get("label_dim", 0))
    res = int(config["img_resolution"])
    return {"parameterization": "edm", "noise_input": "sigma", "time_scale": 1.0,
            "levels": {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX}, "null_label": label_dim or None,
            "learned_variance": False, "sample_shape": [int(config["img_channels"]), res, res]}


def snapshot_meta(config: dict) -> dict:
    """What import_edm2 records for the engine (adapter, model_config, null_class_trained) of an EDM2 config."""
    label_dim = int(config.get("label_dim", 0))
    return {"adapter": snapshot_adapter(config),
            "model_config": {"_target_": "guidance.nn.edm2.EDM2Denoiser", **config},
            "extra": {"null_class_trained": False if label_dim else None}}


def denoising_model(net, name: str | None = None):
    """The engine's model of an EDM2Denoiser in memory, built as guidance.checkpoint builds an imported snapshot's
    (checkpoint.denoising_model on the metadata import_edm2 writes)."""
    from guidance.checkpoint import denoising_model as from_meta

    config = {"img_resolution": net.img_resolution, "img_channels": net.img_channels, "label_dim": net.label_dim}
    return from_meta(net, {**snapshot_meta(config), "path": name or "EDM2Denoiser"})


def latent_fields(encoder: dict | None) -> dict | None:
    """A pickled StabilityVAEEncoder as guidance.engine.latent.LatentDecoder's fields: z = raw · scale + bias, so
    shift = bias; its VAE works on [0, 1] images (encoders.py encodes x / 255, decodes with clamp(0, 1))."""
    if encoder is None:
        return None
    return {"scale": [float(v) for v in encoder["scale"]], "shift": [float(v) for v in encoder["bias"]],
            "vae_range": [0.0, 1.0], "batch_size": 8}


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
    encoder = None if f.encoder is None else {k: v for k, v in f.encoder.items() if k not in ("scale", "bias")}
    extra = {
        "edm2": {"origin": checkpoint.name, "kind": f.kind, "entry": f.key,
                 "architecture": arch.name if arch else None, "kimg": named["kimg"] if named else None,
                 "ema_std": named["ema_std"] if named else None, "notes": list(f.notes),
                 "weights_dtype": "float16" if half else "float32", "encoder": encoder},
        "source_sha256": sha256_file(checkpoint), "sigma_data": float(f.config.get("sigma_data", 0.5)),
        "class_conditional": bool(label_dim),
        "null_class_trained": snapshot_meta(f.config)["extra"]["null_class_trained"],
        "p_uncond": 0.0, "latent": latent_fields(f.encoder),
        "vae": None if f.encoder is None else {"name": f.encoder.get("vae_name"), "path": None},
    }
    latent = f.encoder is not None
    data = {"name": "imagenet512" if latent else "imagenet64",  # EDM2's releases: ImageNet, cond. and uncond.
            "image_size": 8 * f.config["img_resolution"] if latent else f.config["img_resolution"], "channels": 3,
            "num_classes": label_dim or None}
    return save_snapshot(out, "unet", model, config, step=int(named["kimg"]) if named else 0,
                         data_config=data, extra=extra, adapter=snapshot_adapter(f.config))


DEFAULTS = {"label_dim": 0, "model_channels": 192, "channel_mult": [1, 2, 3, 4], "num_blocks": 3,
            "attn_resolutions": [16, 8]}


def list_or(v):
    return list(v) if isinstance(v, (list, tuple)) else v
