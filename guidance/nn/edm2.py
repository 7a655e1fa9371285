"""EDM2's magnitude-preserving U-Net and its EDM preconditioning, restated from the paper (Karras et al. 2024,
"Analyzing and Improving the Training Dynamics of Diffusion Models", sec. 2-3, App. B and Fig. 21; the equation
numbers below are the paper's) and checked against NVlabs/edm2's training/networks_edm2.py on random weights
(tests/test_edm2.py).

Every layer keeps the expected magnitude of its activations at 1: weights are normalized on every use (eq. 47,
and forced back to unit norm while training, eq. 66), sums and concatenations are rescaled (eqs. 88, 103), SiLU
is divided by its output magnitude (eq. 81), and the noise level is embedded by Fourier features of unit
magnitude (eq. 75). There are no biases and no normalization layers but a pixel norm.

The parameter and buffer names equal edm2's (`unet.enc.64x64_block0.conv_res0.weight`, ...), so a state dict
read from edm2's pickles (guidance.edm2) loads as it is.

    net = EDM2Denoiser(img_resolution=64, img_channels=4, label_dim=1000, model_channels=192)
    D = net(x_noisy, sigma, labels)          # labels: class indices [N] (or edm2's one-hot rows [N, 1000])
    DenoisingModel(net, parameterization="edm", levels=ContinuousLevels(0.002, 80), noise_input="sigma",
                   null_label=1000, null_trained=False)
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from guidance.errors import GuidanceError
from guidance.nn.layers import identity_attention


def unit_norm(x: torch.Tensor, dim=None, eps: float = 1e-4) -> torch.Tensor:
    """x divided by its RMS over `dim` (default: all but the batch), in fp32: ||x|| / sqrt(N) + eps (eq. 47's
    normalization of weights, and the pixel norm)."""
    dims = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    rms = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / rms.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """SiLU divided by its expected output magnitude for unit-variance inputs (eq. 81)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """(1 − t) a + t b, rescaled to unit magnitude for independent unit inputs (eq. 88)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Channel concatenation with a's and b's contributions balanced by t (eq. 103)."""
    na, nb = a.shape[1], b.shape[1]
    scale = math.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
    return torch.cat([a * (scale / math.sqrt(na) * (1 - t)), b * (scale / math.sqrt(nb) * t)], dim=1)


def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
    """EDM2's [1, 1] box filter: 2x2 average pooling down, nearest-neighbour (each pixel to a 2x2 block) up."""
    if mode == "down":
        return F.avg_pool2d(x, 2)
    if mode == "up":
        return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    return x


class FourierFeatures(nn.Module):
    """cos(2π(f σ' + φ)) · sqrt(2) with random frozen f ~ N(0, 1), φ ~ U[0, 1) (eq. 75): unit-magnitude embedding
    of the noise input. Buffers `freqs` = 2πf, `phases` = 2πφ (edm2's)."""

    def __init__(self, channels: int, bandwidth: float = 1.0):
        super().__init__()
        self.register_buffer("freqs", 2 * math.pi * torch.randn(channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.outer(x.float(), self.freqs.float()) + self.phases.float()
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """A bias-free convolution (kernel [k, k]) or linear layer (kernel []) whose weight is used at unit norm per
    output channel, scaled by gain / sqrt(fan_in) (eq. 47); in training mode the stored weight is also reset to
    unit norm before each use (forced weight normalization, eq. 66)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))

    def forward(self, x: torch.Tensor, gain=1.0) -> torch.Tensor:
        w = self.weight.float()
        if self.training:
            with torch.no_grad():
                self.weight.copy_(unit_norm(w))
        w = unit_norm(w) * (gain / math.sqrt(w[0].numel()))
        w = w.to(x.dtype)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)


class MPBlock(nn.Module):
    """One encoder ("enc") or decoder ("dec") block of Fig. 21: [resample] → (enc: 1x1 skip conv, pixel norm) →
    residual branch conv3x3(mp_silu) modulated by (1 + gain·Linear(emb)), conv3x3 → mp_sum with the main branch
    → optional multi-head self-attention on pixel-normed q, k, v → mp_sum → activations clipped."""

    identity_attention = False  # PAG's perturbed pass: each position attends only to itself (output = v)

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, flavor: str = "enc",
                 resample_mode: str = "keep", attention: bool = False, channels_per_head: int = 64,
                 dropout: float = 0.0, res_balance: float = 0.3, attn_balance: float = 0.3,
                 clip_act: float | None = 256):
        super().__init__()
        self.out_channels, self.flavor, self.resample_mode = out_channels, flavor, resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout, self.res_balance, self.attn_balance, self.clip_act = dropout, res_balance, attn_balance, clip_act
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads else None

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # qkv's output channels are laid out (head, channel, q|k|v): edm2's weight layout.
        qkv = self.attn_qkv(x).reshape(n, self.num_heads, c // self.num_heads, 3, h * w)
        q, k, v = unit_norm(qkv, dim=2).unbind(3)  # each [n, heads, ch, hw], pixel-normed over ch
        if self.identity_attention:
            y = v
        else:  # softmax(qᵀk / sqrt(ch)) over the keys, per head
            y = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3)).transpose(2, 3)
        return self.attn_proj(y.reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = unit_norm(x, dim=1)  # pixel norm
        y = self.conv_res0(mp_silu(x))
        scale = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * scale[:, :, None, None].to(y.dtype))
        if self.training and self.dropout:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)
        if self.num_heads:
            x = mp_sum(x, self.attend(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clip(-self.clip_act, self.clip_act)
        return x


class EDM2UNet(nn.Module):
    """The U-Net F of EDM2 (Fig. 21): forward(x, c_noise, class_onehot or None) -> F(x).

    Levels at resolutions img_resolution / 2^i with model_channels · channel_mult[i] channels; `num_blocks` blocks
    per level in the encoder and num_blocks + 1 in the decoder, self-attention at `attn_resolutions` and in the
    first block at the lowest resolution; a constant-ones channel is appended to the input."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, **block_kwargs):
        super().__init__()
        widths = [model_channels * m for m in channel_mult]
        noise_ch = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_ch = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_balance, self.concat_balance = label_balance, concat_balance
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = FourierFeatures(noise_ch)
        self.emb_noise = MPConv(noise_ch, emb_ch, [])
        self.emb_label = MPConv(label_dim, emb_ch, []) if label_dim else None

        self.enc = nn.ModuleDict()
        ch = img_channels + 1
        for level, width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = MPConv(ch, width, [3, 3])
                ch = width
            else:
                self.enc[f"{res}x{res}_down"] = MPBlock(ch, ch, emb_ch, "enc", "down", **block_kwargs)
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = MPBlock(ch, width, emb_ch, "enc",
                                                            attention=res in attn_resolutions, **block_kwargs)
                ch = width

        self.dec = nn.ModuleDict()
        skips = [m.out_channels for m in self.enc.values()]
        for level in reversed(range(len(widths))):
            res, width = img_resolution >> level, widths[level]
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = MPBlock(ch, ch, emb_ch, "dec", attention=True, **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = MPBlock(ch, ch, emb_ch, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = MPBlock(ch, ch, emb_ch, "dec", "up", **block_kwargs)
            for i in range(num_blocks + 1):
                self.dec[f"{res}x{res}_block{i}"] = MPBlock(ch + skips.pop(), width, emb_ch, "dec",
                                                            attention=res in attn_resolutions, **block_kwargs)
                ch = width
        self.out_conv = MPConv(ch, img_channels, [3, 3])

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, class_onehot: torch.Tensor | None) -> torch.Tensor:
        emb = self.emb_noise(self.emb_fourier(c_noise))
        if self.emb_label is not None:  # one-hot rows scaled to unit magnitude
            emb = mp_sum(emb, self.emb_label(class_onehot * math.sqrt(class_onehot.shape[1])), t=self.label_balance)
        emb = mp_silu(emb)
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for name, block in self.enc.items():
            x = block(x) if name.endswith("_conv") else block(x, emb)
            skips.append(x)
        for name, block in self.dec.items():
            if "_block" in name:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class EDM2Denoiser(nn.Module):
    """EDM2's preconditioned denoiser (its `Precond`): forward(x̃, σ, labels=None) -> D(x̃; σ) =
    c_skip x̃ + c_out F(c_in x̃; c_noise) with σ_data = 0.5 (Karras et al. 2022, eq. 7 and Table 1; EDM2 sec. 2).

    labels: class indices [N] (the toolkit's convention) or edm2's one-hot rows [N, label_dim]; an unconditional
    network (label_dim = 0) ignores them, a conditional one refuses None (EDM2 trained no unconditional mode).
    use_fp16: the U-Net runs in fp16 on CUDA, as edm2's sampling does. The uncertainty head (logvar_*) is kept so
    edm2's state dicts load whole; it only weighs EDM2's training loss, so forward never evaluates it."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = True,
                 sigma_data: float = 0.5, logvar_channels: int = 128, model_channels: int = 192,
                 channel_mult: Sequence[int] = (1, 2, 3, 4), channel_mult_noise: int | None = None,
                 channel_mult_emb: int | None = None, num_blocks: int = 3, attn_resolutions: Sequence[int] = (16, 8),
                 label_balance: float = 0.5, concat_balance: float = 0.5, resample_filter: Sequence[int] = (1, 1),
                 channels_per_head: int = 64, dropout: float = 0.0, res_balance: float = 0.3,
                 attn_balance: float = 0.3, clip_act: float | None = 256):
        super().__init__()
        check_config(img_resolution, channel_mult, attn_resolutions, resample_filter)
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, int(label_dim)
        self.image_size, self.in_channels = img_resolution, img_channels
        self.num_classes = self.label_dim or None
        self.use_fp16, self.sigma_data = bool(use_fp16), float(sigma_data)
        self.unet = EDM2UNet(img_resolution, img_channels, self.label_dim, model_channels, list(channel_mult),
                             channel_mult_noise, channel_mult_emb, num_blocks, list(attn_resolutions), label_balance,
                             concat_balance, channels_per_head=channels_per_head, dropout=dropout,
                             res_balance=res_balance, attn_balance=attn_balance, clip_act=clip_act)
        self.logvar_fourier = FourierFeatures(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, [])

    def class_onehot(self, labels: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        if not self.label_dim:
            return None
        if labels is None:
            raise GuidanceError(f"this EDM2 network is class-conditional ({self.label_dim} classes) and EDM2 trained "
                                "no unconditional mode: pass labels, or guide with EDM2's unconditional network")
        if labels.is_floating_point():
            if labels.shape != (n, self.label_dim):
                raise GuidanceError(f"one-hot labels must be [{n}, {self.label_dim}], got {list(labels.shape)}")
            return labels.to(device, torch.float32)
        if labels.shape != (n,):
            raise GuidanceError(f"labels must be class indices of shape [{n}], got {list(labels.shape)}")
        if not torch.compiler.is_compiling() and bool(((labels < 0) | (labels >= self.label_dim)).any()):
            raise GuidanceError(f"EDM2 labels must lie in 0..{self.label_dim - 1} (it has no null class), got "
                                f"{int(labels.min())}..{int(labels.max())}")
        return F.one_hot(labels.long(), self.label_dim).to(device, torch.float32)

    def forward(self, x: torch.Tensor, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise GuidanceError(f"EDM2Denoiser expects [N, {self.img_channels}, {self.img_resolution}, "
                                f"{self.img_resolution}] inputs, got {list(x.shape)}")
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        onehot = self.class_onehot(labels, x.shape[0], x.device)
        dtype = torch.float16 if self.use_fp16 and x.device.type == "cuda" else torch.float32
        s = sigma.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip, c_out, c_in = sd2 / (s ** 2 + sd2), s * self.sigma_data / (s ** 2 + sd2).sqrt(), 1 / (sd2 + s ** 2).sqrt()
        c_noise = sigma.log() / 4
        out = self.unet((c_in * x).to(dtype), c_noise, onehot)
        return c_skip * x + c_out * out.float()

    # --- the hooks of the perturbation strategies --------------------------------------------------------------
    def attention_layers(self) -> dict[str, MPBlock]:
        """The blocks with self-attention, by edm2's names ("enc.16x16_block0", "dec.8x8_in0", ...)."""
        return {f"{part}.{name}": b for part in ("enc", "dec") for name, b in getattr(self.unet, part).items()
                if isinstance(b, MPBlock) and b.num_heads}

    @contextmanager
    def identity_attention(self, names: Sequence[str]):
        """Within the block, the named attention blocks use an identity attention map (PAG's perturbed pass)."""
        with identity_attention(self.attention_layers(), names, "EDM2 network"):
            yield self


def check_config(img_resolution, channel_mult, attn_resolutions, resample_filter):
    """One line for a configuration edm2's network could not be built with."""
    if not channel_mult:
        raise GuidanceError("channel_mult is empty; give one multiplier per resolution level, e.g. [1, 2, 3, 4]")
    factor = 2 ** (len(channel_mult) - 1)
    if img_resolution <= 0 or img_resolution % factor:
        raise GuidanceError(f"img_resolution {img_resolution} is not divisible by 2**(len(channel_mult)-1) = {factor}")
    levels = [img_resolution >> i for i in range(len(channel_mult))]
    missing = sorted(set(attn_resolutions) - set(levels))
    if missing:
        raise GuidanceError(f"attn_resolutions {missing} never occur: the levels are {levels}")
    if list(resample_filter) != [1, 1]:
        raise GuidanceError(f"resample_filter {list(resample_filter)}: only EDM2's [1, 1] box filter is supported")
