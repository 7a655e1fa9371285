"""What every sampler shares: the reverse loop over a (possibly respaced) schedule; subclasses write `step`."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from guidance.errors import GuidanceError


class Sampler:
    name = "sampler"
    eta: float | None = None

    def __init__(self, diffusion, clip_denoised: bool = True):
        self.diffusion = diffusion
        self.clip_denoised = bool(clip_denoised)

    @property
    def steps(self) -> int:
        return self.diffusion.num_timesteps

    def step(self, model, guider, x: torch.Tensor, i: int, y: torch.Tensor, rng) -> torch.Tensor:
        """x_i -> x_{i-1}; i indexes this sampler's (respaced) schedule."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, model, guider, shape: Sequence[int], y: torch.Tensor, rng, progress: bool = False) -> torch.Tensor:
        """shape = [B, C, H, W]; y = target labels [B]; rng = PerImageRNG (or anything with randn(shape))."""
        x = check_inputs(shape, y, rng)
        desc = self.name if self.eta is None else f"{self.name} eta={self.eta:g}"
        for i in tqdm(range(self.steps)[::-1], desc=desc, disable=not progress, leave=False):
            x = self.step(model, guider, x, i, y, rng)
        return x


def check_inputs(shape, y, rng) -> torch.Tensor:
    """Validate the batch and draw the initial noise x_T (first draw of every image's stream)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[0] != len(y) or len(rng) != shape[0]:
        raise GuidanceError(f"sample shape {shape}, {len(y)} labels and {len(rng)} random streams must agree on the "
                            "batch size; pass shape=[B, C, H, W] with one label and one stream per image")
    return rng.randn(shape[1:])
