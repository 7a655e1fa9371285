"""A guided-diffusion state dict -> the toolkit network's state dict (names, attention order, null-class row).

Names: ADM's ResBlock keeps its layers in Sequentials (in_layers.0/2, emb_layers.1, out_layers.0/3,
skip_connection); ours names them (in_norm, in_conv, emb_proj, out_norm, out_conv, skip). The classifier's pool
`out.2.{positional_embedding, qkv_proj}` is ours `out.2.{pos_emb, qkv}`. Everything else keeps name and index.

Attention order: the qkv conv's 3C output rows. ADM's QKVAttentionLegacy splits them per head first
(row of (s, h, i) = h·3ch + s·ch + i, s ∈ {q, k, v}); QKVAttention and ours split q/k/v first (s·C + h·ch + i).
The output channels (h·ch + i) are the same in both, so only qkv's rows move.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from guidance.errors import GuidanceError
from guidance.nn.layers import AttentionBlock

RESBLOCK = {"in_layers.0": "in_norm", "in_layers.2": "in_conv", "emb_layers.1": "emb_proj",
            "out_layers.0": "out_norm", "out_layers.3": "out_conv", "skip_connection": "skip"}
POOL = {"out.2.positional_embedding": "out.2.pos_emb", "out.2.qkv_proj.": "out.2.qkv."}
_RES = re.compile(r"\.(" + "|".join(re.escape(k) for k in RESBLOCK) + r")\.(weight|bias)$")


def rename_key(key: str) -> str:
    key = _RES.sub(lambda m: f".{RESBLOCK[m.group(1)]}.{m.group(2)}", key)
    for old, new in POOL.items():
        if key.startswith(old):
            key = new + key[len(old):]
    return key


def legacy_to_new_qkv(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a legacy-order qkv weight [3C, C, 1] or bias [3C] in the new (our) order."""
    ch = t.shape[0] // (3 * heads)
    return t.reshape(heads, 3, ch, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def convert_state_dict(adm: dict, model: nn.Module, legacy_attention: bool, where: str = "checkpoint") -> dict:
    """ADM's tensors under our names, qkv rows in our order, a zero null-class row appended to label_emb; checked
    tensor by tensor against `model` (one line naming the first tensor that is missing, extra or of another
    shape)."""
    heads = {f"{name}.qkv": m.heads for name, m in model.named_modules() if isinstance(m, AttentionBlock)}
    ours = model.state_dict()
    out = {}
    for key, value in adm.items():
        if not isinstance(value, torch.Tensor):
            raise GuidanceError(f"{where}: entry {key!r} is not a tensor; pass a guided-diffusion state dict file")
        name = rename_key(key)
        value = value.float()
        if legacy_attention and name.rsplit(".", 1)[0] in heads:
            value = legacy_to_new_qkv(value, heads[name.rsplit(".", 1)[0]])
        if name == "label_emb.weight" and name in ours and value.shape[0] + 1 == ours[name].shape[0]:
            value = torch.cat([value, value.new_zeros(1, value.shape[1])])  # the null class ADM never trained
        if name not in ours:
            raise GuidanceError(f"{where}: tensor {key} [{', '.join(map(str, value.shape))}] has no place in this "
                                "release's network: the file is another release (or not an ADM checkpoint)")
        if value.shape != ours[name].shape:
            raise GuidanceError(f"{where}: tensor {key} is [{', '.join(map(str, value.shape))}] but this release "
                                f"needs [{', '.join(map(str, ours[name].shape))}]: the file is another release")
        out[name] = value
    missing = [k for k in ours if k not in out]
    if missing:
        raise GuidanceError(f"{where}: tensor {missing[0]} of this release is missing ({len(missing)} missing): the "
                            "file is another release or truncated")
    return out
