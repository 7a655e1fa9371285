"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) over a possibly respaced GaussianDiffusion, with any guider.

x_{t−1} = μ'(x_t) + σ_t z, where μ' is the model's posterior mean after guider.condition_mean (ADM Alg. 1);
no noise at the last step.
"""

from __future__ import annotations

import torch

from guidance.sampling.base import Sampler


class DDPMSampler(Sampler):
    name = "ddpm"

    def step(self, model, guider, x, i: int, y, rng):
        d = self.diffusion
        t = torch.full((len(x),), i, dtype=torch.long, device=x.device)   # index into this (respaced) schedule
        t_orig = d.timestep_map.to(x.device)[t]                             # what the networks see
        out = d.p_mean_variance(guider.model_output(model, x, t_orig, y), x, t, clip_denoised=self.clip_denoised)
        mean = guider.condition_mean(out["mean"], out["variance"], x, t_orig, y)
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * out["log_variance"]) * rng.randn(x.shape[1:]).to(x.dtype)
