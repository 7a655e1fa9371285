"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on the chain's (respaced) process, with any guider.

x_{t−1} = μ(x_t, x̂0) + Σ·grad + σ_t z: μ is the posterior mean at the (clipped) x̂0, Σ the model's variance
(fixed, or learned-range from the prediction's v), grad the guider's classifier term s∇log p (ADM Alg. 1);
no noise at the last step. ADM's semantics on a discrete VP model; on every other model the same
posterior on the VP view of its chain (ᾱ_i = 1/(1 + σ_i²) of the grid's σ; a continuous model's variance is the fixed
β̃ unless it outputs a learned range); a chain from σ = ∞ is refused (no VP step from there). Capabilities: GRAD_IN_MEAN (it re-noises with fresh noise, never with a given ε).
"""

from __future__ import annotations

import torch

from guidance.engine import GRAD_IN_MEAN
from guidance.sampling.base import Sampler


class DDPMSampler(Sampler):
    name = label = "ddpm"
    capabilities = frozenset({GRAD_IN_MEAN})

    def step(self, denoiser, x, i: int, y, rng):
        d, step = self.diffusion, self.step_at(i)
        pred = denoiser(x, y, step, clip=self.clip_denoised)
        j = torch.full((len(x),), self.steps - 1 - i, dtype=torch.long, device=x.device)
        mean, _, _ = d.q_posterior_mean_variance(pred.x0, x, j)
        variance, log_variance = d.p_variance(j, x.shape, pred.var_v)
        if pred.grad is not None:
            mean = mean + variance * pred.grad
        if i == self.steps - 1:
            return mean
        return mean + torch.exp(0.5 * log_variance) * rng.randn(x.shape[1:]).to(x.dtype)
