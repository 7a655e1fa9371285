"""A DiT/SiT `.pt` state dict (facebookresearch/DiT, willisma/SiT models.py; the two are one architecture) ->
the state dict of guidance.nn.dit.DiTNetwork (diffusers' DiTTransformer2DModel under `transformer.`).

Names (DiT -> diffusers; i a block):
    x_embedder.proj                      pos_embed.proj
    t_embedder.mlp.{0,2}                 transformer_blocks.i.norm1.emb.timestep_embedder.linear_{1,2}   (every i)
    y_embedder.embedding_table           transformer_blocks.i.norm1.emb.class_embedder.embedding_table    (every i)
    blocks.i.adaLN_modulation.1          transformer_blocks.i.norm1.linear   (same six chunks: shift, scale, gate
                                                                              of the attention, then of the MLP)
    blocks.i.attn.qkv                    transformer_blocks.i.attn1.to_{q,k,v}  (timm's qkv rows are [q; k; v])
    blocks.i.attn.proj                   transformer_blocks.i.attn1.to_out.0
    blocks.i.mlp.fc{1,2}                 transformer_blocks.i.ff.net.{0.proj,2}
    final_layer.adaLN_modulation.1       proj_out_1   (shift, scale)
    final_layer.linear                   proj_out_2
DiT's `pos_embed` is the fixed 2-D sin-cos table that diffusers computes itself: it is checked, not loaded.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from guidance.errors import GuidanceError

_BLOCK = {"adaLN_modulation.1": "norm1.linear", "attn.proj": "attn1.to_out.0", "mlp.fc1": "ff.net.0.proj",
          "mlp.fc2": "ff.net.2"}
_TOP = {"x_embedder.proj": "pos_embed.proj", "final_layer.adaLN_modulation.1": "proj_out_1",
        "final_layer.linear": "proj_out_2"}
_SHARED = {"t_embedder.mlp.0": "norm1.emb.timestep_embedder.linear_1",
           "t_embedder.mlp.2": "norm1.emb.timestep_embedder.linear_2",
           "y_embedder.embedding_table": "norm1.emb.class_embedder.embedding_table"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)$")
P = "transformer."


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def dit_to_diffusers(dit: dict, depth: int) -> dict:
    """DiT's tensors under diffusers' names (qkv split, shared embedders copied to each of `depth` blocks); the
    names are prefixed with `transformer.` as in DiTNetwork. pos_embed is left out (see the module docstring)."""
    out = {}
    for key, value in dit.items():
        if key == "pos_embed":
            continue
        module, _, kind = key.rpartition(".")
        if module in _TOP:
            out[f"{P}{_TOP[module]}.{kind}"] = value
        elif module in _SHARED:
            for i in range(depth):
                out[f"{P}transformer_blocks.{i}.{_SHARED[module]}.{kind}"] = value
        elif m := _BLOCK_KEY.match(key):
            i, inner = m.group(1), m.group(2)
            base = f"{P}transformer_blocks.{i}."
            if inner == "attn.qkv":
                for name, part in zip(("to_q", "to_k", "to_v"), value.chunk(3, dim=0)):
                    out[f"{base}attn1.{name}.{kind}"] = part
            elif inner in _BLOCK:
                out[f"{base}{_BLOCK[inner]}.{kind}"] = value
            else:
                out[key] = value  # no place: reported by the check
        else:
            out[key] = value
    return out


def convert_state_dict(dit: dict, network: nn.Module, where: str = "checkpoint") -> dict:
    """A DiT/SiT state dict -> `network`'s (a DiTNetwork), checked tensor by tensor: one line naming the first
    tensor that is missing, extra or of another shape."""
    for key, value in dit.items():
        if not isinstance(value, torch.Tensor):
            raise GuidanceError(f"{where}: entry {key!r} is not a tensor; pass a DiT/SiT state dict file "
                                "(models.py's, as DiT-XL-2-256x256.pt)")
    ours = network.state_dict()
    depth = len(network.transformer.transformer_blocks)
    # the source name of every converted tensor, for messages in the file's own names
    origin = {}
    for key, value in dit.items():
        for name in dit_to_diffusers({key: value}, depth):
            origin.setdefault(name, key)
    out = dit_to_diffusers(dit, depth)
    for name, value in out.items():
        if name not in ours:
            raise GuidanceError(f"{where}: tensor {origin[name]} {_shape(value)} has no place in this model: the "
                                "file is another model (or not a DiT/SiT checkpoint)")
        if value.shape != ours[name].shape:
            raise GuidanceError(f"{where}: tensor {origin[name]} is {_shape(value)} but this model needs "
                                f"{_shape(ours[name])}: the file is another model")
    missing = [k for k in ours if k not in out]
    if missing:
        raise GuidanceError(f"{where}: tensor {missing[0]} of this model is missing ({len(missing)} missing): the "
                            "file is another model or truncated")
    if "pos_embed" in dit:
        table = network.transformer.pos_embed.pos_embed
        if dit["pos_embed"].shape != table.shape:
            raise GuidanceError(f"{where}: tensor pos_embed is {_shape(dit['pos_embed'])} but this model needs "
                                f"{_shape(table)}: the file is of another image size")
        if not (table.is_meta or dit["pos_embed"].is_meta) and \
                not torch.allclose(dit["pos_embed"].float(), table.float(), atol=1e-5):
            raise GuidanceError(f"{where}: pos_embed is not DiT's fixed sin-cos table; the file is not a DiT/SiT "
                                "checkpoint")
    return {k: v.float() for k, v in out.items()}


def check_shared(state: dict, depth: int) -> bool:
    """Whether every block of a diffusers DiT state dict holds the same time/label embedder (a DiT conversion)."""
    for name in _SHARED.values():
        for kind in ("weight", "bias"):
            first = state.get(f"transformer_blocks.0.{name}.{kind}")
            if first is None:
                continue
            if any(not torch.equal(state[f"transformer_blocks.{i}.{name}.{kind}"], first) for i in range(1, depth)
                   if f"transformer_blocks.{i}.{name}.{kind}" in state):
                return False
    return True
