"""DDIM sampling (Song et al. 2021, eq. 12) with η, over a possibly respaced GaussianDiffusion, with any guider.

σ_t = η sqrt((1 − ᾱ_{t−1})/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_{t−1})
x_{t−1} = sqrt(ᾱ_{t−1}) x̂_0 + sqrt(1 − ᾱ_{t−1} − σ_t²) ε + σ_t z
Guidance acts on ε (guider.condition_eps, ADM Alg. 2); x̂_0 is then re-derived from the guided ε (and clipped
when clip_denoised), and ε re-derived from that x̂_0, so the update stays consistent. η = 0 is deterministic,
η = 1 matches DDPM's β̃ variance.
"""

from __future__ import annotations

import math

import torch

from guidance.guiders.base import check_scale
from guidance.sampling.base import Sampler


class DDIMSampler(Sampler):
    name = "ddim"

    def __init__(self, diffusion, eta: float = 0.0, clip_denoised: bool = True):
        super().__init__(diffusion, clip_denoised)
        self.eta = check_scale(eta, "sampler.eta")

    def step(self, model, guider, x, i: int, y, rng):
        d = self.diffusion
        t = torch.full((len(x),), i, dtype=torch.long, device=x.device)
        t_orig = d.timestep_map.to(x.device)[t]
        out = d.p_mean_variance(guider.model_output(model, x, t_orig, y), x, t, clip_denoised=self.clip_denoised)
        eps = d.predict_eps_from_x0(x, t, out["pred_x0"])  # consistent with the (clipped) x̂_0
        eps_guided = guider.condition_eps(eps, x, t_orig, y, d.extract(d.alphas_cumprod, t, x.shape))
        x0 = out["pred_x0"]
        if eps_guided is not eps:
            x0 = d.predict_x0_from_eps(x, t, eps_guided)
            if self.clip_denoised:
                x0 = x0.clamp(-1.0, 1.0)
            eps = d.predict_eps_from_x0(x, t, x0)
        ab, ab_prev = float(d.alphas_cumprod[i]), float(d.alphas_cumprod_prev[i])
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        x_prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if i == 0 or sigma == 0:
            return x_prev
        return x_prev + sigma * rng.randn(x.shape[1:]).to(x.dtype)
