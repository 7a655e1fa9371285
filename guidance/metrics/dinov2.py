"""DINOv2 ViT-L/14 (Oquab et al. 2023), restated to load Meta's released weights from a local file.

torch-fidelity 0.4's DINOv2 extractor builds the network with `torch.hub.load("facebookresearch/dinov2")`, which
needs GitHub, and refuses a local weights file; FD-DINOv2 must also work offline. This is the same network
(facebookresearch/dinov2 `vit_large`, patch 14, LayerScale, 518-px position grid, hub defaults
interpolate_offset=0.1 and no antialias) with the same parameter names, so `dinov2_vitl14_pretrain.pth` loads
with strict=True; tests/test_dinov2.py checks it against output of Meta's code on a small configuration.
The feature is the final LayerNorm of the class token (`x_norm_clstoken`, what `model(x)` returns).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

WEIGHTS_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
VIT_L14 = dict(embed_dim=1024, depth=24, num_heads=16, patch_size=14, img_size=518)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # B, HW, C


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).unbind(2)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.norm1, self.attn, self.ls1 = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads), LayerScale(dim)
        self.norm2, self.mlp, self.ls2 = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim), LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2ViT(nn.Module):
    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int, img_size: int):
        super().__init__()
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # unused at inference; in the released file
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """The trained grid resized to this input's (DINOv2's interpolate_pos_encoding, offset 0.1)."""
        n = self.pos_embed.shape[1] - 1
        h0, w0, m = h // self.patch_size, w // self.patch_size, int(math.sqrt(n))
        if h0 * w0 == n and h == w:
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        # A scale factor (not a size) with DINOv2's 0.1 offset: the kernel uses the factor, so this matters.
        grid = F.interpolate(grid, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic", antialias=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
        return torch.cat((pos[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(len(x), -1, -1), tokens), dim=1)
        tokens = tokens + self.position_embedding(x.shape[2], x.shape[3])
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)[:, 0]
