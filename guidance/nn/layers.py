"""Building blocks shared by the ADM U-Net and the noise-aware classifier (Dhariwal & Nichol 2021).

Everything is 2-D (NCHW). Blocks whose last layer is zero-initialised start as the identity on their residual
path, which is what makes the whole U-Net output exactly 0 at initialisation (ADM sec. 3 / Improved DDPM).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from guidance.errors import GuidanceError


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, [B] -> [B, dim] (Transformer / DDPM sec. 4).

    emb[:, i] = cos(t * f_i), emb[:, half + i] = sin(t * f_i), f_i = max_period^(-i / half).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:  # odd width: pad one zero column so the shape is what was asked for
        emb = F.pad(emb, (0, 1))
    return emb


def num_groups(channels: int, max_groups: int = 32) -> int:
    """Largest divisor of `channels` that is <= max_groups (ADM uses 32; small widths need fewer)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 (as ADM does), so half-precision activations keep stable statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> nn.GroupNorm:
    return GroupNorm32(num_groups(channels), channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero all parameters: the block then contributes nothing until training moves it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Upsample(nn.Module):
    """Nearest-neighbour x2, optionally followed by a 3x3 conv."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class Downsample(nn.Module):
    """/2 with a strided 3x3 conv, or 2x2 average pooling without a conv."""

    def __init__(self, channels: int, use_conv: bool = True, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise GuidanceError("Downsample without a conv cannot change the channel count; set use_conv=True")
            self.op = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


def heads_for(channels: int, num_heads: int, num_head_channels: int) -> int:
    """ADM's rule: a fixed head width (num_head_channels) wins over a fixed head count when it is not -1."""
    if num_head_channels != -1:
        if num_head_channels <= 0 or channels % num_head_channels:
            raise GuidanceError(f"attention over {channels} channels cannot use num_head_channels={num_head_channels}; "
                                f"pick a divisor of {channels} (or -1 to use num_heads)")
        return channels // num_head_channels
    if num_heads <= 0 or channels % num_heads:
        raise GuidanceError(f"attention over {channels} channels cannot use num_heads={num_heads}; "
                            f"pick a divisor of {channels}")
    return num_heads


def multi_head_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """qkv [B, 3*C, L] (split q/k/v first, then heads) -> [B, C, L], softmax(q k^T / sqrt(d)) v per head."""
    b, three_c, length = qkv.shape
    c = three_c // 3
    q, k, v = qkv.reshape(b, 3, heads, c // heads, length).permute(1, 0, 2, 4, 3)  # each [B, heads, L, d]
    out = F.scaled_dot_product_attention(q, k, v)
    return out.permute(0, 1, 3, 2).reshape(b, c, length)


class AttentionBlock(nn.Module):
    """Residual multi-head self-attention over all H*W positions; zero-init output projection.

    `identity_attention = True` replaces the attention map by the identity (each position attends only to itself,
    so the attention output is V): the perturbed pass of PAG (Ahn et al. 2024), set by UNet.identity_attention."""

    identity_attention = False

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        self.heads = heads_for(channels, num_heads, num_head_channels)
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x.reshape(b, c, h * w)))
        attended = qkv[:, 2 * c:] if self.identity_attention else multi_head_attention(qkv, self.heads)
        return x + self.proj_out(attended).reshape(b, c, h, w)


class AttentionPool2d(nn.Module):
    """ADM's classifier head (after CLIP): attend from the mean token to all H*W tokens + itself.

    A learned positional embedding covers the H*W + 1 tokens, so the input size is fixed at construction.
    """

    def __init__(self, spatial: int, channels: int, num_heads: int, num_head_channels: int, out_channels: int):
        super().__init__()
        self.spatial = spatial
        self.heads = heads_for(channels, num_heads, num_head_channels)
        self.pos_emb = nn.Parameter(torch.randn(channels, spatial * spatial + 1) / channels**0.5)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.c_proj = nn.Conv1d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)
        tokens = torch.cat([flat.mean(dim=-1, keepdim=True), flat], dim=-1) + self.pos_emb.to(x.dtype)
        out = self.c_proj(multi_head_attention(self.qkv(tokens), self.heads))
        return out[:, :, 0]  # the mean token's output is the pooled representation


@contextmanager
def identity_attention(blocks: dict, names: Sequence[str], network: str):
    """Within the block, the named attention blocks of `blocks` (name -> block with an `identity_attention` flag)
    use an identity attention map (PAG's perturbed pass); an unknown name is one line naming the ones there are."""
    unknown = [n for n in names if n not in blocks]
    if unknown:
        raise GuidanceError(f"no self-attention block {unknown} in this {network}; it has {list(blocks)}")
    try:
        for n in names:
            blocks[n].identity_attention = True
        yield
    finally:
        for n in names:
            blocks[n].identity_attention = False
