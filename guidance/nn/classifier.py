"""ADM's noise-aware classifier p_phi(y | x_t, t): the U-Net encoder + middle block and a pooling head.

It sees the original timestep (no class input) and gives the logits whose log-softmax gradient drives
classifier guidance (Dhariwal & Nichol 2021, Alg. 1 and 2).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from guidance.errors import GuidanceError
from guidance.nn.layers import AttentionPool2d, normalization, timestep_embedding, zero_module
from guidance.nn.unet import batch_timesteps, build_encoder, check_input, time_mlp

POOLS = ("attention", "adaptive")


class EncoderClassifier(nn.Module):
    """forward(x, t) -> logits [B, num_classes]."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, num_classes: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int] = (), channel_mult: Sequence[float] = (1, 2, 4, 8),
                 pool: str = "attention", dropout: float = 0.0, num_heads: int = 1, num_head_channels: int = -1,
                 use_scale_shift_norm: bool = True, resblock_updown: bool = False):
        super().__init__()
        if pool not in POOLS:
            raise GuidanceError(f"unknown classifier pool {pool!r}; use one of {', '.join(POOLS)}")
        if not num_classes or num_classes < 1:
            raise GuidanceError(f"a classifier needs num_classes >= 1, got {num_classes}; set data.num_classes")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.model_channels = model_channels
        emb_channels = model_channels * 4
        self.time_embed = time_mlp(model_channels, emb_channels)
        self.input_blocks, self.middle_block, _, ch, bottom = build_encoder(
            image_size, in_channels, model_channels, num_res_blocks, list(attention_resolutions), dropout,
            list(channel_mult), num_heads, num_head_channels, use_scale_shift_norm, resblock_updown, emb_channels)
        if pool == "attention":
            self.out = nn.Sequential(normalization(ch), nn.SiLU(),
                                     AttentionPool2d(bottom, ch, num_heads, num_head_channels, num_classes))
        else:
            self.out = nn.Sequential(normalization(ch), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                     zero_module(nn.Conv2d(ch, num_classes, 1)), nn.Flatten())

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        check_input(x, self.in_channels, self.image_size, "EncoderClassifier")
        emb = self.time_embed(timestep_embedding(batch_timesteps(t, x), self.model_channels))
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
        return self.out(self.middle_block(h, emb))
