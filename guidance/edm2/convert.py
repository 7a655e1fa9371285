"""An EDM2 file (a network pickle, or a .pt state dict) -> the state dict and constructor config of
guidance.nn.edm2.EDM2Denoiser, checked tensor by tensor.

The parameter names are edm2's own (guidance.nn.edm2 keeps them), so no tensor is renamed. The config is the
pickled Precond's constructor arguments (persistence records them as `_init_kwargs`) where the file has them, and
otherwise read off the tensors' names and shapes (`infer_config`): a file of another model fails there, naming its
first tensor that has no place in an EDM2 network.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from guidance.edm2.safe_pickle import Persistent, Record, load_edm2_pickle
from guidance.errors import GuidanceError

CONV = re.compile(r"^unet\.enc\.(\d+)x\1_conv\.weight$")
BLOCK = re.compile(r"^unet\.enc\.(\d+)x\1_block(\d+)\.")
EDM2_PREFIXES = ("unet.enc.", "unet.dec.", "unet.emb_", "unet.out_", "logvar_")


@dataclass
class EDM2File:
    """What an EDM2 file holds: the network's state dict (source dtype), its config, the latent encoder (None:
    pixels, as edm2's StandardRGBEncoder) and where each came from."""

    state: dict
    config: dict
    encoder: dict | None
    kind: str                         # "pickle" | "state_dict"
    key: str | None = None            # the pickle's entry ("ema", "net")
    notes: list = field(default_factory=list)


def module_state(obj, prefix: str = "", out: dict | None = None) -> dict:
    """The state dict of a pickled torch module (a Persistent or Record tree), as Module.state_dict() names it."""
    out = {} if out is None else out
    state = obj.state
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise GuidanceError(f"tensor {prefix}{name} of the pickle is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, (Persistent, Record)):
            raise GuidanceError(f"submodule {prefix}{name} of the pickle is a {type(child).__name__}")
        module_state(child, f"{prefix}{name}.", out)
    return out


def _first_foreign(state: dict) -> str:
    for key, t in state.items():
        if not key.startswith(EDM2_PREFIXES):
            return f"tensor {key} [{', '.join(map(str, getattr(t, 'shape', ())))}]"
    return f"tensor {next(iter(state), '<none>')}"


def infer_config(state: dict, where: str) -> dict:
    """EDM2Denoiser's constructor config from the tensors' names and shapes, with edm2's defaults for what they do
    not show: the balances, clip_act and 64 channels per head (the released widths are all >= 128; a narrower
    attention block gets one head, as the shapes cannot tell its head count)."""
    conv = [(int(m.group(1)), k) for k in state if (m := CONV.match(k))]
    if len(conv) != 1 or "unet.out_conv.weight" not in state:
        raise GuidanceError(f"{where}: {_first_foreign(state)} has no place in an EDM2 network (edm2's names are "
                            "unet.enc.*, unet.dec.*, unet.emb_*, logvar_*): the file is not an EDM2 checkpoint")
    res, key = conv[0]
    mc = state[key].shape[0]
    blocks: dict[int, set] = {}
    for k in state:
        if m := BLOCK.match(k):
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    levels = sorted(blocks, reverse=True)
    if not levels or levels[0] != res or any(levels[i] != res >> i for i in range(len(levels))):
        raise GuidanceError(f"{where}: the encoder blocks are at resolutions {levels}, not {res}, {res // 2}, ...: "
                            "the file is not an EDM2 checkpoint or is truncated")
    num_blocks = len(blocks[res])
    widths = [state[f"unet.enc.{r}x{r}_block0.conv_res1.weight"].shape[0] for r in levels]
    if any(w % mc for w in widths):
        raise GuidanceError(f"{where}: level widths {widths} are not multiples of model_channels {mc}")
    noise_ch, emb_ch = state["unet.emb_fourier.freqs"].numel(), state["unet.emb_noise.weight"].shape[0]
    label = state.get("unet.emb_label.weight")
    cfg = {"img_resolution": res, "img_channels": state["unet.out_conv.weight"].shape[0],
           "label_dim": 0 if label is None else label.shape[1], "model_channels": mc,
           "channel_mult": [w // mc for w in widths], "num_blocks": num_blocks,
           "attn_resolutions": [r for r in levels if f"unet.enc.{r}x{r}_block0.attn_qkv.weight" in state]}
    if noise_ch != widths[0]:
        cfg["channel_mult_noise"] = noise_ch // mc
    if emb_ch != max(widths):
        cfg["channel_mult_emb"] = emb_ch // mc
    if "logvar_fourier.freqs" in state:
        cfg["logvar_channels"] = state["logvar_fourier.freqs"].numel()
    attn = [state[k].shape[1] for k in state if k.endswith(".attn_qkv.weight")]
    if attn and min(attn) < 64:  # edm2's 64 channels per head would leave these blocks without attention
        cfg["channels_per_head"] = min(attn)
    return cfg


def constructor_config(init_kwargs: dict, init_args, where: str) -> dict:
    """The pickled Precond's own constructor arguments as EDM2Denoiser's config (unknown options refused)."""
    from guidance.nn.edm2 import EDM2Denoiser

    if init_args:
        raise GuidanceError(f"{where}: the pickled Precond was built with positional arguments {init_args!r}; "
                            "EDM2's training loop passes keywords only")
    known = set(inspect.signature(EDM2Denoiser.__init__).parameters) - {"self"}
    unknown = sorted(set(init_kwargs) - known)
    if unknown:
        raise GuidanceError(f"{where}: the pickled Precond was built with {unknown}, which this restatement of "
                            "EDM2's network does not implement")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in init_kwargs.items()}


def check_state(state: dict, model: torch.nn.Module, where: str) -> dict:
    """`state` as fp32 tensors, each present in `model` with its shape; one line naming the first that is not."""
    ours = model.state_dict()
    out = {}
    for key, value in state.items():
        if key not in ours:
            raise GuidanceError(f"{where}: tensor {key} [{', '.join(map(str, value.shape))}] has no place in this "
                                "EDM2 network: the file is another model")
        if value.shape != ours[key].shape:
            raise GuidanceError(f"{where}: tensor {key} is [{', '.join(map(str, value.shape))}] but the network "
                                f"needs [{', '.join(map(str, ours[key].shape))}]: the file is another configuration")
        out[key] = value.float()
    missing = [k for k in ours if k not in out]
    if missing:
        raise GuidanceError(f"{where}: tensor {missing[0]} of the EDM2 network is missing ({len(missing)} missing): "
                            "the file is truncated or another model")
    return out


def _encoder_info(enc) -> dict | None:
    """The latent standardization of a pickled encoder: None for pixels (StandardRGBEncoder or none)."""
    if enc is None or (isinstance(enc, Persistent) and enc.class_name == "StandardRGBEncoder"):
        return None
    if isinstance(enc, Persistent) and enc.class_name == "StabilityVAEEncoder":
        s = enc.state
        return {"class": "StabilityVAEEncoder", "vae_name": str(s.get("vae_name")),
                "scale": [float(v) for v in s["scale"]], "bias": [float(v) for v in s["bias"]],
                "init_kwargs": dict(s.get("_init_kwargs") or {})}
    name = enc.class_name if isinstance(enc, (Persistent, Record)) else type(enc).__name__
    raise GuidanceError(f"the pickle's encoder is a {name}; EDM2's encoders are StandardRGBEncoder and "
                        "StabilityVAEEncoder")


def read_edm2_file(path: str | Path) -> EDM2File:
    """An EDM2 network pickle ({'ema': Precond, 'encoder': ...}, as generate_images.py loads it; or 'net') or a
    torch file holding a Precond state dict -> EDM2File. Nothing in the file is executed."""
    path = Path(path)
    if not path.is_file():
        raise GuidanceError(f"checkpoint={path} does not exist; download an EDM2 pickle (generate_images.py's "
                            "presets name them) or give a .pt state dict")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"
    where = str(path)
    if zipped:  # torch.save's format: a state dict (weights only)
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise GuidanceError(f"{path} is not a readable torch file ({type(e).__name__}); download it again") from None
        if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and "emas" in obj["ema"]:
            raise GuidanceError(f"{path} is an edm2 training state; make a network pickle from it with edm2's "
                                "reconstruct_phema.py and import that")
        for key in ("ema", "net", "state_dict"):
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise GuidanceError(f"{path} holds no state dict of tensors: not an EDM2 checkpoint")
        notes = ["config read off the tensor shapes (channels_per_head 64, edm2's default balances)"]
        enc = None
        cfg = infer_config(obj, where)
        if cfg["img_channels"] == 4:
            from guidance.edm2.releases import STABILITY_VAE

            enc = {"class": "StabilityVAEEncoder", **STABILITY_VAE, "init_kwargs": {}}
            notes.append("4 channels: EDM2's StabilityVAEEncoder defaults assumed (a .pt carries no encoder)")
        return EDM2File(dict(obj), cfg, enc, "state_dict", notes=notes)
    data = load_edm2_pickle(path)
    if isinstance(data, dict):
        key = next((k for k in ("ema", "net") if k in data), None)
        net = data.get(key) if key else None
    else:
        key, net = None, data
    if not isinstance(net, Persistent):
        what = f"entries {sorted(map(str, data))}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise GuidanceError(f"{path} holds {what}, no 'ema' network: not an EDM2 network pickle")
    if net.class_name != "Precond":
        raise GuidanceError(f"{path}: its network is a {net.class_name}, not EDM2's Precond (networks_edm2.py)")
    state = module_state(net)
    init = net.state.get("_init_kwargs")
    cfg = constructor_config(dict(init), net.state.get("_init_args"), where) if isinstance(init, dict) else \
        infer_config(state, where)
    enc = _encoder_info(data.get("encoder") if isinstance(data, dict) else None)
    return EDM2File(state, cfg, enc, "pickle", key=key,
                    notes=[f"Precond source sha256 {net.source_sha256[:16]} (not executed)"])
