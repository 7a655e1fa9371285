"""ADM's class-conditional U-Net with adaptive group normalisation (Dhariwal & Nichol 2021, sec. 3).

One network serves three roles: trained with label dropout to the null class `num_classes`, it is the
conditional model, the unconditional model (y = null) and, combined, classifier-free guidance (Ho & Salimans 2022).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from guidance.errors import GuidanceError
from guidance.nn.layers import (AttentionBlock, Downsample, Upsample, identity_attention, normalization,
                                timestep_embedding, zero_module)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv -> (+ timestep/class embedding) -> GroupNorm -> SiLU -> dropout -> zero conv.

    use_scale_shift_norm=True is AdaGN (ADM eq. in sec. 3): h = GroupNorm(h) * (1 + scale) + shift with
    (scale, shift) a linear projection of the embedding; otherwise the projection is added before the norm.
    up/down resample inside the block (BigGAN style) on both the residual path and the skip.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float = 0.0, out_channels: int | None = None,
                 use_scale_shift_norm: bool = True, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_norm = normalization(channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        # Resampling sits between the activation and the conv, so the conv works at the new resolution.
        if up:
            self.h_resample, self.x_resample = Upsample(channels, use_conv=False), Upsample(channels, use_conv=False)
        elif down:
            self.h_resample, self.x_resample = Downsample(channels, use_conv=False), Downsample(channels, use_conv=False)
        else:
            self.h_resample = self.x_resample = nn.Identity()
        self.emb_proj = nn.Linear(emb_channels, 2 * out_channels if use_scale_shift_norm else out_channels)
        self.out_norm = normalization(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_conv(self.h_resample(F.silu(self.in_norm(x))))
        e = self.emb_proj(F.silu(emb)).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift  # AdaGN
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(self.x_resample(x)) + h


class EmbedSequential(nn.Sequential):
    """A Sequential that hands the embedding to the blocks that take one."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


def check_geometry(image_size: int, channel_mult: Sequence[float], attention_resolutions: Sequence[int]) -> list[int]:
    """Resolutions (pixels) of the U-Net levels; GuidanceError when the size or an attention resolution cannot work."""
    if len(channel_mult) == 0:
        raise GuidanceError("channel_mult is empty; give one multiplier per resolution level, e.g. [1, 2, 2]")
    factor = 2 ** (len(channel_mult) - 1)
    if image_size <= 0 or image_size % factor:
        raise GuidanceError(f"image_size {image_size} is not divisible by {factor} = 2**(len(channel_mult)-1) "
                            f"for channel_mult {list(channel_mult)}; use fewer levels or another image size")
    levels = [image_size // 2**i for i in range(len(channel_mult))]
    missing = sorted(set(attention_resolutions) - set(levels))
    if missing:
        raise GuidanceError(f"attention_resolutions {missing} (pixels) never occur: the feature maps are {levels} px "
                            f"for image_size {image_size}; pick sizes from {levels}")
    return levels


def build_encoder(image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout,
                  channel_mult, num_heads, num_head_channels, use_scale_shift_norm, resblock_updown, emb_channels):
    """The downsampling half + middle block shared by the U-Net and the classifier.

    Returns (input_blocks, middle_block, skip_channels, channels at the bottom, bottom resolution in pixels).
    """
    levels = check_geometry(image_size, channel_mult, attention_resolutions)
    attn = set(attention_resolutions)

    def attention(c):
        return AttentionBlock(c, num_heads=num_heads, num_head_channels=num_head_channels)

    ch = int(model_channels * channel_mult[0])  # int(): ADM's 512 models start at a multiplier of 0.5
    blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
    skip_channels = [ch]
    for level, (mult, res) in enumerate(zip(channel_mult, levels)):
        for _ in range(num_res_blocks):
            layers = [ResBlock(ch, emb_channels, dropout, int(model_channels * mult), use_scale_shift_norm)]
            ch = int(model_channels * mult)
            if res in attn:
                layers.append(attention(ch))
            blocks.append(EmbedSequential(*layers))
            skip_channels.append(ch)
        if level != len(channel_mult) - 1:
            down = (ResBlock(ch, emb_channels, dropout, ch, use_scale_shift_norm, down=True) if resblock_updown
                    else Downsample(ch, use_conv=True))
            blocks.append(EmbedSequential(down))
            skip_channels.append(ch)
    middle = EmbedSequential(
        ResBlock(ch, emb_channels, dropout, ch, use_scale_shift_norm),
        attention(ch),
        ResBlock(ch, emb_channels, dropout, ch, use_scale_shift_norm),
    )
    return blocks, middle, skip_channels, ch, levels[-1]


def time_mlp(model_channels: int, emb_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(model_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels))


def batch_timesteps(t, x: torch.Tensor) -> torch.Tensor:
    """Accept a scalar or a [B] vector of (original, possibly fractional) timesteps."""
    t = torch.as_tensor(t, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise GuidanceError(f"timesteps have shape {tuple(t.shape)} but the batch has {x.shape[0]} images; "
                            f"pass one timestep per image or a scalar")
    return t


def check_input(x: torch.Tensor, in_channels: int, image_size: int, who: str) -> None:
    if x.ndim != 4 or x.shape[1] != in_channels or x.shape[2] != image_size or x.shape[3] != image_size:
        raise GuidanceError(f"{who} expects images [B, {in_channels}, {image_size}, {image_size}] but got "
                            f"{list(x.shape)}; check data.channels / data.image_size against the checkpoint")


class UNet(nn.Module):
    """ADM U-Net: forward(x, t, y=None) -> eps, or [eps, v] along channels when learn_sigma (Improved DDPM)."""

    def __init__(self, image_size: int, in_channels: int, model_channels: int, out_channels: int,
                 num_res_blocks: int, attention_resolutions: Sequence[int] = (), dropout: float = 0.0,
                 channel_mult: Sequence[float] = (1, 2, 4, 8), num_classes: int | None = None, num_heads: int = 1,
                 num_head_channels: int = -1, use_scale_shift_norm: bool = True, resblock_updown: bool = False,
                 learn_sigma: bool = False):
        super().__init__()
        channel_mult, attention_resolutions = list(channel_mult), list(attention_resolutions)
        self.image_size, self.in_channels, self.out_channels = image_size, in_channels, out_channels
        self.num_classes, self.learn_sigma = num_classes, learn_sigma
        self.model_channels = model_channels
        emb_channels = model_channels * 4

        self.time_embed = time_mlp(model_channels, emb_channels)
        # Row `num_classes` is the null label used by label dropout (CFG, Ho & Salimans 2022).
        self.label_emb = nn.Embedding(num_classes + 1, emb_channels) if num_classes is not None else None

        self.input_blocks, self.middle_block, skip_channels, ch, _ = build_encoder(
            image_size, in_channels, model_channels, num_res_blocks, attention_resolutions, dropout, channel_mult,
            num_heads, num_head_channels, use_scale_shift_norm, resblock_updown, emb_channels)

        levels = [image_size // 2**i for i in range(len(channel_mult))]
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            mult = channel_mult[level]
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_channels.pop(), emb_channels, dropout,
                                                    int(model_channels * mult), use_scale_shift_norm)]
                ch = int(model_channels * mult)
                if levels[level] in attention_resolutions:
                    layers.append(AttentionBlock(ch, num_heads=num_heads, num_head_channels=num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(ResBlock(ch, emb_channels, dropout, ch, use_scale_shift_norm, up=True)
                                  if resblock_updown else Upsample(ch, use_conv=True))
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), nn.SiLU(),
            # Zero init: the untrained U-Net predicts exactly 0 (Improved DDPM / ADM).
            zero_module(nn.Conv2d(ch, out_channels * (2 if learn_sigma else 1), 3, padding=1)),
        )

    def attention_blocks(self) -> dict[str, AttentionBlock]:
        """Self-attention blocks by place: "input.<i>", "middle", "output.<i>" (i: index in that block list)."""
        places = [(f"input.{i}", b) for i, b in enumerate(self.input_blocks)] + [("middle", self.middle_block)]
        places += [(f"output.{i}", b) for i, b in enumerate(self.output_blocks)]
        return {name: m for name, block in places for m in block if isinstance(m, AttentionBlock)}

    def residual_layers(self) -> dict[str, nn.Module]:
        """Layers whose output has their input's shape, by place: "input.<i>.<j>", "middle.<j>", "output.<i>.<j>"
        (j: index inside that block): attention blocks and ResBlocks that keep channels and resolution. Skip
        layer guidance replaces one by the identity."""
        places = [(f"input.{i}", b) for i, b in enumerate(self.input_blocks)] + [("middle", self.middle_block)]
        places += [(f"output.{i}", b) for i, b in enumerate(self.output_blocks)]
        return {f"{name}.{j}": m for name, block in places for j, m in enumerate(block)
                if isinstance(m, AttentionBlock) or (isinstance(m, ResBlock) and isinstance(m.skip, nn.Identity)
                                                     and isinstance(m.x_resample, nn.Identity))}

    @contextmanager
    def identity_attention(self, names: Sequence[str]):
        """Within the block, the named attention blocks use an identity attention map (PAG's perturbed pass)."""
        with identity_attention(self.attention_blocks(), names, "U-Net"):
            yield self

    def forward(self, x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
        check_input(x, self.in_channels, self.image_size, "UNet")
        t = batch_timesteps(t, x)
        emb = self.time_embed(timestep_embedding(t, self.model_channels))
        if self.label_emb is not None:
            if y is None:  # no label: the null class, i.e. the unconditional model
                y = torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            elif y.shape != (x.shape[0],) or y.dtype not in (torch.int64, torch.int32):
                raise GuidanceError(f"labels must be an integer tensor of shape [{x.shape[0]}], got "
                                    f"{y.dtype} {list(y.shape)}")
            # The range check reads the labels on the host: skipped inside torch.compile, where it would break
            # the graph (the sampling engine compiles, and its labels come from guidance.sampling.rng).
            elif not torch.compiler.is_compiling() and bool(((y < 0) | (y > self.num_classes)).any()):
                raise GuidanceError(f"labels must lie in 0..{self.num_classes} ({self.num_classes} = null label), "
                                    f"got values {int(y.min())}..{int(y.max())}")
            emb = emb + self.label_emb(y)
        elif y is not None:
            raise GuidanceError("this UNet is unconditional (num_classes=None) but labels were given; "
                                "pass y=None or build the model with num_classes")

        h, skips = x, []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
