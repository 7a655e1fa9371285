"""A latent model's decoder: the autoencoder that turns sampled latents into images, with the latent
standardization the model was trained on. It is part of the model's adapter (`DenoisingModel(..., decoder=...)`).

    decoder = LatentDecoder.edm2().loaded("vae/sd-vae-ft-mse")            # EDM2 (Karras et al. 2024)
    decoder = LatentDecoder.dit().loaded("vae/sd-vae-ft-ema")             # DiT / Stable Diffusion: 0.18215
    model = DenoisingModel(net, "edm", ContinuousLevels(0.002, 80), "sigma", decoder=decoder)

The model samples its own, standardized latent z; the autoencoder decodes the raw latent
    z_raw = (z − shift) / scale    (per channel, or one number for every channel)
- EDM2 (training/encoders.py, StabilityVAEEncoder): final = raw · scale + bias, scale = final_std / raw_std,
  bias = final_mean − raw_mean · scale (float32), so shift = bias; its VAE works on images in [0, 1] (it encodes
  x / 255 and decodes with clamp(0, 1)): vae_range = (0, 1).
- DiT (sample_ddp.py) and Stable Diffusion: final = 0.18215 · raw, decoded as vae.decode(z / 0.18215) on images in
  [-1, 1]: scale = 0.18215, shift = 0, vae_range = (-1, 1).
`__call__` returns the toolkit's [-1, 1] images (guidance.data.to_uint8 rounds them to uint8: DiT's
floor(127.5 x + 128) is the same except at exact halves; EDM2's floor(255 u) truncates, ours rounds, so a pixel may be
one level above EDM2's).

The decoder is diffusers' AutoencoderKL (an optional dependency of the latent path only, imported when weights are
loaded), from a local folder (save_pretrained's config.json + weights) or a single weights file (its config.json
beside it, else diffusers infers the architecture). It runs eagerly in fp32 (as EDM2 does), in chunks of
`batch_size` latents, and its weights are identified by sha256 (sample_info records it; a changed file is new
samples). A LatentDecoder without weights (`vae` None) is a declaration: the standardization is known, the weights
come from the user (guidance-sample's `vae=PATH`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from guidance.errors import GuidanceError
from guidance.io import sha256_file

EDM2_RAW_MEAN = (5.81, 3.25, 0.12, -2.15)  # StabilityVAEEncoder's assumed statistics of sd-vae-ft-mse latents
EDM2_RAW_STD = (4.17, 4.62, 3.71, 3.28)
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _numbers(value, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in np.atleast_1d(np.asarray(value, dtype=np.float64)).ravel())
    if not values or not all(np.isfinite(values)):
        raise GuidanceError(f"latent {what}={value} must be finite numbers (one, or one per latent channel)")
    return values


def weights_sha256(path: str | Path) -> str:
    """sha256 of a weights file; of a folder, of every config/weights file in it (name and content, by name)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        digest.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def load_autoencoder(path: str | Path, device="cpu"):
    """diffusers' AutoencoderKL from a local folder (from_pretrained) or one weights file (from_single_file), in eval
    mode without gradients, never from the network."""
    path = Path(path)
    if not path.exists():
        raise GuidanceError(f"vae={path} does not exist; pass a local AutoencoderKL folder (config.json + weights, "
                            "as save_pretrained writes it) or weights file")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise GuidanceError("a latent model needs diffusers (its AutoencoderKL decodes the samples): "
                            "pip install diffusers") from None
    try:
        if path.is_dir():
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False)
        else:
            config = str(path.parent) if (path.parent / "config.json").is_file() else None
            vae = AutoencoderKL.from_single_file(path, config=config, local_files_only=True)
    except Exception as e:  # diffusers raises many kinds (OSError, ValueError, EnvironmentError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GuidanceError(f"vae={path} is not a loadable AutoencoderKL ({first}); pass a folder written by "
                            "save_pretrained, or a weights file with its config.json beside it") from None
    return vae.eval().requires_grad_(False).to(device)


class LatentDecoder:
    """Latents z [B, C, h, w] of a latent model -> images [B, 3, H, W] in [-1, 1] (see the module docstring).
    scale, shift: the model's standardization (numbers, one per channel or one for all); vae_range: the range of the
    autoencoder's images; vae: an AutoencoderKL (None: declared, not loaded); source / sha256: where its weights
    came from and their hash (set by `loaded`)."""

    def __init__(self, scale=1.0, shift=0.0, vae_range: Sequence[float] = (-1.0, 1.0), batch_size: int = 8,
                 vae=None, source: str | None = None, sha256: str | None = None):
        self.scale, self.shift = _numbers(scale, "scale"), _numbers(shift, "shift")
        if any(s == 0 for s in self.scale):
            raise GuidanceError(f"latent scale={scale} must be non-zero (the decoder divides by it)")
        lo, hi = (float(v) for v in vae_range)
        if not lo < hi:
            raise GuidanceError(f"vae_range={list(vae_range)} must be (low, high) with low < high")
        if int(batch_size) < 1:
            raise GuidanceError(f"decoder batch_size={batch_size} must be a positive integer")
        self.vae_range, self.batch_size = (lo, hi), int(batch_size)
        self.vae, self.source, self.sha256 = vae, source, sha256

    @classmethod
    def edm2(cls, raw_mean=EDM2_RAW_MEAN, raw_std=EDM2_RAW_STD, final_mean=0.0, final_std=0.5, **kwargs):
        """EDM2's StabilityVAEEncoder standardization, computed in float32 as it does."""
        scale = np.float32(final_std) / np.asarray(raw_std, dtype=np.float32)
        bias = np.float32(final_mean) - np.asarray(raw_mean, dtype=np.float32) * scale
        return cls(scale=scale, shift=bias, vae_range=(0.0, 1.0), **kwargs)

    @classmethod
    def dit(cls, scale: float = 0.18215, **kwargs):
        """DiT's (and Stable Diffusion's) latent scaling: decode vae.decode(z / 0.18215) on [-1, 1] images."""
        return cls(scale=scale, shift=0.0, vae_range=(-1.0, 1.0), **kwargs)

    @classmethod
    def from_path(cls, path: str | Path, scale=1.0, shift=0.0, vae_range=(-1.0, 1.0), batch_size: int = 8,
                  device="cpu") -> "LatentDecoder":
        return cls(scale, shift, vae_range, batch_size).loaded(path, device)

    def loaded(self, path: str | Path, device="cpu") -> "LatentDecoder":
        """This standardization with the AutoencoderKL weights at `path` (a folder or a file)."""
        vae = load_autoencoder(path, device)
        return LatentDecoder(self.scale, self.shift, self.vae_range, self.batch_size, vae, str(path),
                             weights_sha256(path))

    def to(self, device) -> "LatentDecoder":
        """Its autoencoder on `device` (in place, as nn.Module.to)."""
        if self.vae is not None:
            self.vae.to(device)
        return self

    @property
    def is_loaded(self) -> bool:
        return self.vae is not None

    def _per_channel(self, values, z: torch.Tensor) -> torch.Tensor:
        if len(values) not in (1, z.shape[1]):
            raise GuidanceError(f"the latent standardization has {len(values)} channels but the latents have "
                                f"{z.shape[1]}; give one scale/shift per latent channel")
        return torch.tensor(values, dtype=torch.float32, device=z.device).reshape(1, -1, 1, 1)

    def to_raw(self, z: torch.Tensor) -> torch.Tensor:
        """The autoencoder's raw latent (z − shift) / scale, in float32."""
        z = z.to(torch.float32)
        return (z - self._per_channel(self.shift, z)) / self._per_channel(self.scale, z)

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents in chunks of batch_size; images in [-1, 1] (float32, not clamped: to_uint8 clamps)."""
        if self.vae is None:
            raise GuidanceError("this model runs in the latent space of an autoencoder whose weights were not loaded: "
                                "pass vae=PATH (a local AutoencoderKL folder or file)")
        raw = self.to_raw(z)
        images = torch.cat([self.vae.decode(chunk).sample for chunk in raw.split(self.batch_size)])
        lo, hi = self.vae_range
        return images.float() if (lo, hi) == (-1.0, 1.0) else (images.float() - lo) * (2.0 / (hi - lo)) - 1.0

    def info(self) -> dict:
        """What sample_info records as `decoder` (the weights by content, not by path: a reuse key)."""
        return {"class": "diffusers.AutoencoderKL", "sha256": self.sha256, "scale": list(self.scale),
                "shift": list(self.shift), "vae_range": list(self.vae_range), "batch_size": self.batch_size}

    def __repr__(self) -> str:
        return (f"LatentDecoder(scale={list(self.scale)}, shift={list(self.shift)}, vae_range={self.vae_range}, "
                f"source={self.source!r})")
