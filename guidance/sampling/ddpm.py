"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) over a possibly respaced GaussianDiffusion, with any guider.

x_{t−1} = μ'(x_t) + σ_t z, where μ' is the model's posterior mean after guider.condition_mean (ADM Alg. 1);
no noise at the last step.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from guidance.errors import GuidanceError


class DDPMSampler:
    name = "ddpm"
    eta = None

    def __init__(self, diffusion, clip_denoised: bool = True):
        self.diffusion = diffusion
        self.clip_denoised = bool(clip_denoised)

    @property
    def steps(self) -> int:
        return self.diffusion.num_timesteps

    def step(self, model, guider, x, i: int, y, rng):
        d = self.diffusion
        t = torch.full((len(x),), i, dtype=torch.long, device=x.device)   # index into this (respaced) schedule
        t_orig = d.timestep_map.to(x.device)[t]                             # what the networks see
        out = d.p_mean_variance(guider.model_output(model, x, t_orig, y), x, t, clip_denoised=self.clip_denoised)
        mean = guider.condition_mean(out["mean"], out["variance"], x, t_orig, y)
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * out["log_variance"]) * rng.randn(x.shape[1:]).to(x.dtype)

    @torch.no_grad()
    def sample(self, model, guider, shape: Sequence[int], y: torch.Tensor, rng, progress: bool = False) -> torch.Tensor:
        """shape = [B, C, H, W]; y = target labels [B]; rng = PerImageRNG (or anything with randn(shape))."""
        x = check_inputs(shape, y, rng)
        for i in tqdm(range(self.steps)[::-1], desc=self.name, disable=not progress, leave=False):
            x = self.step(model, guider, x, i, y, rng)
        return x


def check_inputs(shape, y, rng) -> torch.Tensor:
    """Validate the batch and draw the initial noise x_T (first draw of every image's stream)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[0] != len(y) or len(rng) != shape[0]:
        raise GuidanceError(f"sample shape {shape}, {len(y)} labels and {len(rng)} random streams must agree on the "
                            "batch size; pass shape=[B, C, H, W] with one label and one stream per image")
    return rng.randn(shape[1:])
