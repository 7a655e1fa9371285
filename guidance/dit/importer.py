"""A DiT/SiT release (a models.py state dict `.pt`, or a diffusers DiT folder) -> a toolkit snapshot (the library
behind guidance-import-dit).

The snapshot's model_config rebuilds guidance.nn.dit.DiTNetwork; its `adapter` (guidance.checkpoint's schema,
guidance.dit.releases.adapter: parameterization, noise input, null label trained by label dropout, learned
variance, levels) is what guidance.checkpoint.load_model builds the DenoisingModel from; `extra` records the
origin, the source file's sha256, null_class_trained, the latent space as LatentDecoder's fields (SD VAE,
x 0.18215) and `vae` (the decoder DiT evaluates with; a diffusers folder's own vae/ when it has one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from guidance.config import build
from guidance.dit.convert import check_shared, convert_state_dict
from guidance.dit.releases import DECODER, adapter, diffusion_config, latent, model_config
from guidance.errors import GuidanceError

SOURCES = ("dit", "sit", "diffusers")


def _load_pt(path: Path) -> dict:
    """Tensors only (weights_only: nothing in the file runs); a train.py checkpoint's `args` is an argparse
    Namespace, a plain attribute bag, allowed as such."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GuidanceError(f"{path} is not a readable torch file ({type(e).__name__}); download it again") from None
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict):
        obj = obj["ema"]  # a checkpoint of DiT's/SiT's train.py: its EMA weights, as their find_model does
    if not isinstance(obj, dict):
        raise GuidanceError(f"{path} holds a {type(obj).__name__}, not a state dict: not a DiT/SiT file")
    return obj


def _learn_sigma(state: dict, cfg: dict) -> bool:
    """Whether the file's final layer returns 2C channels (the one thing a DiT/SiT file may choose freely)."""
    w = state.get("final_layer.linear.weight")
    return w is None or w.shape[0] != cfg["patch_size"] ** 2 * cfg["in_channels"]


def _vae(path: str | None = None) -> dict:
    """The decoder the release evaluates with (guidance-sample's vae=PATH gives its weights)."""
    return {"name": DECODER, "path": path}


def import_dit(checkpoint: str | Path, out: str | Path, source: str = "dit", model: str | None = None,
               image_size: int = 256, conventions: str = "dit", arch: dict | None = None) -> Path:
    """Convert `checkpoint` (source dit|sit: a models.py state dict; diffusers: a DiT pipeline or transformer
    folder) into a snapshot at `out`. model: DiT's/SiT's model name (default {DiT,SiT}-XL/2); `arch`: a
    DiTNetwork config given instead (tests: tiny models)."""
    from guidance.checkpoint import save_snapshot
    from guidance.io import sha256_file

    if source not in SOURCES:
        raise GuidanceError(f"source={source} is unknown; use dit (DiT's .pt), sit (SiT's .pt) or diffusers (a folder)")
    checkpoint = Path(checkpoint)
    if source == "diffusers":
        return _import_diffusers(checkpoint, out, conventions, arch)
    family = "DiT" if source == "dit" else "SiT"
    if not checkpoint.is_file():
        raise GuidanceError(f"checkpoint={checkpoint} is not a file; download {family}-XL-2-{image_size}x{image_size}.pt "
                            f"(see {family}'s README)")
    model = model or f"{family}-XL/2"
    if not str(model).startswith(f"{family}-"):
        raise GuidanceError(f"release={model} is not a {family} model but source={source}; name a {family}-… model "
                            f"(or source={'sit' if family == 'DiT' else 'dit'})")
    state = _load_pt(checkpoint)
    cfg = dict(arch) if arch else model_config(model, image_size, conventions=conventions)
    cfg["learn_sigma"] = _learn_sigma(state, cfg)
    cfg["velocity"] = "sit" if family == "SiT" else None
    with torch.device("meta"):  # a file of another model is refused before an XL network's memory is allocated
        convert_state_dict(state, build(cfg, _convert_="all"), where=str(checkpoint))
    net = build(cfg, _convert_="all")
    net.load_state_dict(convert_state_dict(state, net, where=str(checkpoint)))
    extra = {"origin": f"{'facebookresearch/DiT' if family == 'DiT' else 'willisma/SiT'} {checkpoint.name}",
             "source": source, "model": model, "source_sha256": sha256_file(checkpoint), "null_class_trained": True,
             "p_uncond": 0.1, "latent": latent(), "vae": _vae(), "conventions": cfg.get("conventions", "dit")}
    diffusion = diffusion_config(cfg["learn_sigma"]) if family == "DiT" else None  # SiT: continuous levels
    return save_snapshot(out, "unet", net, cfg, step=0, diffusion_config=diffusion, data_config=_data(cfg),
                         extra=extra, adapter=adapter(family, cfg["num_classes"], cfg["learn_sigma"]))


def _data(cfg: dict) -> dict:
    size = cfg["image_size"] * 8
    return {"name": f"imagenet{size}", "image_size": size, "channels": 3, "num_classes": cfg["num_classes"]}


def _read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GuidanceError(f"{path} is not a readable {what} ({type(e).__name__}); point to a diffusers DiT folder") from None


def _folder_weights(folder: Path) -> tuple[dict, Path]:
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                return load_file(str(path)), path
            return _load_pt(path), path
    raise GuidanceError(f"{folder} has no diffusion_pytorch_model.safetensors/.bin; point to a diffusers DiT folder")


def _check_scheduler(path: Path) -> None:
    """The folder's scheduler must describe DiT's training process: 1000 linear β from 1e-4 to 0.02, ε."""
    if not path.is_file():
        return
    s = _read_json(path, "scheduler config")
    want = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
            "prediction_type": "epsilon"}
    for key, value in want.items():
        if key in s and s[key] != value:
            raise GuidanceError(f"{path}: {key}={s[key]!r}, but a DiT model is trained with {key}={value!r}; this "
                                "folder is not a DiT (import it with its own adapter)")


def _import_diffusers(folder: Path, out, conventions: str, arch: dict | None) -> Path:
    from guidance.checkpoint import save_snapshot
    from guidance.io import sha256_file

    if not folder.is_dir():
        raise GuidanceError(f"checkpoint={folder} is not a folder; source=diffusers takes a DiT pipeline folder "
                            "(transformer/, vae/, scheduler/) or its transformer/ folder")
    root, tdir = (folder, folder / "transformer") if (folder / "transformer").is_dir() else (folder.parent, folder)
    config = _read_json(tdir / "config.json", "transformer config")
    if config.get("_class_name") not in ("DiTTransformer2DModel", "Transformer2DModel") or \
            config.get("norm_type") != "ada_norm_zero" or not config.get("patch_size"):
        raise GuidanceError(f"{tdir}/config.json describes a {config.get('_class_name')} (norm_type "
                            f"{config.get('norm_type')}), not a DiT transformer (adaLN-Zero, patches)")
    state, weights = _folder_weights(tdir)
    depth = int(config.get("num_layers", 28))
    heads, head_dim = int(config.get("num_attention_heads", 16)), int(config.get("attention_head_dim", 72))
    in_ch = int(config.get("in_channels", 4))
    cfg = arch and dict(arch) or {
        "_target_": "guidance.nn.dit.DiTNetwork", "image_size": int(config.get("sample_size", 32)),
        "patch_size": int(config["patch_size"]), "in_channels": in_ch, "hidden_size": heads * head_dim,
        "depth": depth, "num_heads": heads, "num_classes": int(config.get("num_embeds_ada_norm", 1000)),
        "learn_sigma": int(config.get("out_channels") or in_ch) == 2 * in_ch, "velocity": None}
    cfg["conventions"] = conventions
    cfg["shared_embedding"] = check_shared(state, depth)
    if conventions == "diffusers":
        cfg["norm_eps"] = float(config.get("norm_eps", 1e-5))
    _check_scheduler(root / "scheduler" / "scheduler_config.json")
    net = build(cfg, _convert_="all")
    ours = net.state_dict()
    named = {f"transformer.{k}": v for k, v in state.items()}
    for key, value in named.items():
        if key not in ours or value.shape != ours[key].shape:
            where = "has no place in" if key not in ours else f"is [{', '.join(map(str, value.shape))}], not as"
            raise GuidanceError(f"{weights}: tensor {key.removeprefix('transformer.')} {where} this DiT "
                                f"({'config.json and weights disagree' if key in ours else 'not a DiT file'})")
    missing = [k for k in ours if k not in named]
    if missing:
        raise GuidanceError(f"{weights}: tensor {missing[0].removeprefix('transformer.')} is missing "
                            f"({len(missing)} missing): not a DiT transformer or truncated")
    net.load_state_dict({k: v.float() for k, v in named.items()})
    vae = root / "vae"
    extra = {"origin": f"diffusers DiT folder {root.name}", "source": "diffusers", "model": config.get("_class_name"),
             "source_sha256": sha256_file(weights), "null_class_trained": True, "p_uncond": 0.1,
             "conventions": conventions, "latent": latent(), "vae": _vae(str(vae) if vae.is_dir() else None)}
    return save_snapshot(out, "unet", net, cfg, step=0, diffusion_config=diffusion_config(cfg["learn_sigma"]),
                         data_config=_data(cfg), extra=extra,
                         adapter=adapter("DiT", cfg["num_classes"], cfg["learn_sigma"]))
