"""DDIM sampling (Song et al. 2021, eq. 12) with η, on the chain's (respaced) process, with any guider.

σ_t = η sqrt((1 − ᾱ_{t−1})/(1 − ᾱ_t)) sqrt(1 − ᾱ_t/ᾱ_{t−1})
x_{t−1} = sqrt(ᾱ_{t−1}) x̂0 + sqrt(1 − ᾱ_{t−1} − σ_t²) ε + σ_t z
A classifier term acts on ε (ADM Alg. 2): x̂0 is re-derived from the guided ε and NOT clipped again, exactly as
ADM's ddim_sample. η = 0 is deterministic, η = 1 matches DDPM's β̃ variance.
ADM's semantics on a discrete VP model; on every other model (guidance.engine.model: x̂0, v, flow, EDM, continuous
levels) the same update on the VP view of its chain, ᾱ_i = 1/(1 + σ_i²) of the grid's σ (Sampler.diffusion). A
chain from σ = ∞ (a flow grid's τ = 1) has no such step and is refused.
Capabilities: GRAD_IN_EPS; RENOISE_EPS at η = 0 (x̂0 re-noised with the prediction's renoise_eps alone: CFG++'s
Alg. 1; with η > 0 the fresh noise σ_t z has no form in CFG++'s paper).
"""

from __future__ import annotations

import math

from guidance.engine import GRAD_IN_EPS, RENOISE_EPS
from guidance.errors import GuidanceError, check_scale
from guidance.sampling.base import Sampler


class DDIMSampler(Sampler):
    name = "ddim"

    def __init__(self, diffusion, respacing=None, eta: float = 0.0, clip_denoised: bool = True, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        self.eta = check_scale(eta, "sampler.eta")
        if self.eta > 1:  # 1 − ᾱ_{t−1} − σ² turns negative: ADM's update is undefined there
            raise GuidanceError(f"sampler.eta={eta} must be in [0, 1] (0: deterministic DDIM, 1: DDPM's variance)")
        self.label = f"ddim eta={self.eta:g}"

    @property
    def capabilities(self):
        return frozenset({GRAD_IN_EPS} | ({RENOISE_EPS} if self.eta == 0 else set()))

    def info(self):
        return {**super().info(), "eta": self.eta}

    def step(self, denoiser, x, i: int, y, rng):
        step = self.step_at(i)
        pred = denoiser(x, y, step, clip=self.clip_denoised).eps_form(x, step)
        j = self.steps - 1 - i
        ab, ab_prev = float(self.diffusion.alphas_cumprod[j]), float(self.diffusion.alphas_cumprod_prev[j])
        sigma = self.eta * math.sqrt((1 - ab_prev) / (1 - ab)) * math.sqrt(1 - ab / ab_prev)
        # noise_eps is ε itself except for CFG++, which re-noises with the unconditional ε (Chung et al. 2024).
        x_prev = math.sqrt(ab_prev) * pred.x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * pred.noise_eps
        if i == self.steps - 1 or sigma == 0:
            return x_prev
        return x_prev + sigma * rng.randn(x.shape[1:]).to(x.dtype)
