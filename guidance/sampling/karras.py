"""Euler and Heun samplers of Karras et al. 2022 ("EDM", Alg. 1-2) on the VP model seen in EDM's form.

The chain runs on x̃ = x_t / sqrt(ᾱ_t) = x̂0 + σ ε, σ_t = sqrt((1 − ᾱ_t)/ᾱ_t), along dx̃/dσ = (x̃ − D(x̃; σ))/σ = ε
(EDM eq. 3 with s(t) = 1), from σ of the first timestep down to σ = 0. The denoiser sees the VP input
x_t = x̃ / sqrt(1 + σ²) at an original timestep (a continuous model: at the grid's σ exactly, its adapter turning
x_t back into its own x̃); a classifier term enters through ε (ADM Alg. 2).

Churn (EDM Alg. 2): γ_i = min(s_churn / N, sqrt(2) − 1) for s_tmin <= σ_i <= s_tmax, else 0;
σ̂ = σ_i (1 + γ_i) snapped to a trained timestep (grid.py; kept only if above t_i; a continuous model: σ̂ itself), x̂ = x̃ + sqrt(σ̂² − σ_i²) s_noise z,
N the chain's step count after merging. Both evaluations of a step carry the step's index and σ_i (guidance.engine.Step).
Euler without churn is DDIM with η = 0 on the same timesteps (both are exact Euler steps of this ODE).
Capabilities: GRAD_IN_EPS; RENOISE_EPS for Euler without churn (x̃_{i+1} = x̂0 + σ_{i+1} ε', CFG++'s Euler form);
churn and Heun's correction have no such form.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from guidance.engine import GRAD_IN_EPS, RENOISE_EPS, Step
from guidance.errors import GuidanceError
from guidance.sampling.base import Sampler


class EulerSampler(Sampler):
    name = "euler"
    second_order = False

    def __init__(self, diffusion, respacing="edm18", clip_denoised: bool = True, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        self.check_finite_start()
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = map(float, (s_churn, s_tmin, s_tmax, s_noise))
        if self.s_churn < 0 or self.s_noise <= 0:
            raise GuidanceError(f"{self.name}: s_churn must be >= 0 and s_noise > 0, got {s_churn}, {s_noise}")
        self.label = self.name + (f" churn={self.s_churn:g}" if self.s_churn else "")
        if self.s_churn and not any(self.churned(i).grid_sigma is not None for i in range(self.steps)):
            raise GuidanceError(f"{self.name}: s_churn={self.s_churn:g} churns no step of this chain (no σ_i in "
                                f"[s_tmin, s_tmax] = [{self.s_tmin:g}, {self.s_tmax:g}] is raised to a higher trained "
                                "level); widen the window or set s_churn=0")

    @property
    def capabilities(self):
        exact = self.s_churn == 0 and not self.second_order
        return frozenset({GRAD_IN_EPS} | ({RENOISE_EPS} if exact else set()))

    def info(self):
        return {**super().info(), "s_churn": self.s_churn, "s_tmin": self.s_tmin, "s_tmax": self.s_tmax,
                "s_noise": self.s_noise}

    def next_sigma(self, i: int) -> float:
        return self.step_at(i + 1).sigma if i + 1 < self.steps else 0.0

    def churned(self, i: int) -> Step:
        """Where step i evaluates the denoiser: σ_i, or the churned σ̂ on a trained timestep."""
        step = self.step_at(i)
        if self.s_churn == 0 or not (self.s_tmin <= step.sigma <= self.s_tmax):
            return step
        gamma = min(self.s_churn / self.steps, math.sqrt(2) - 1)
        hat = self.snapped_step(step.sigma * (1 + gamma), i)
        return replace(hat, grid_sigma=step.sigma) if hat.sigma > step.sigma else step

    def second(self, i: int) -> Step:
        """Heun's second evaluation of step i: at σ_{i+1}, belonging to step i."""
        return replace(self.step_at(i + 1), index=i, grid_sigma=self.step_at(i).sigma)

    def evaluation_steps(self) -> list[Step]:
        out = []
        for i in range(self.steps):
            out.append(self.churned(i))
            if self.second_order and i + 1 < self.steps:
                out.append(self.second(i))
        return out

    def predict(self, denoiser, x_scaled, y, step: Step):
        """The guided prediction for the VP input x̃ / sqrt(1 + σ²); its ε is dx̃/dσ at (x̃, σ)."""
        x = x_scaled / math.sqrt(1.0 + step.sigma**2)
        return denoiser(x, y, step, clip=self.clip_denoised).eps_form(x, step)

    def eps(self, denoiser, x_scaled, y, step: Step) -> torch.Tensor:
        return self.predict(denoiser, x_scaled, y, step).eps

    def prior(self, x):
        """x_T ~ N(0, I) (ADM's VP prior) in the scaled variable: x̃ = x_T sqrt(1 + σ_0²)."""
        return x * math.sqrt(1.0 + self.step_at(0).sigma ** 2)

    def run(self, denoiser, x, y, rng, progress):
        x = self.prior(x)
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            sigma, hat = self.step_at(i).sigma, self.churned(i)
            if hat.sigma > sigma:  # churn: raise the noise level to σ̂ (EDM Alg. 2, lines 5-6)
                x = x + math.sqrt(hat.sigma**2 - sigma**2) * self.s_noise * rng.randn(x.shape[1:]).to(x.dtype)
            sigma_next = self.next_sigma(i)
            pred = self.predict(denoiser, x, y, hat)
            d = pred.eps
            x_next = x + (sigma_next - hat.sigma) * d
            if pred.renoise_eps is not None:  # CFG++'s Euler (Chung et al. 2024): x̂0^λ + σ_{i+1} ε_u
                x_next = pred.x0 + sigma_next * pred.renoise_eps
            if self.second_order and sigma_next > 0:  # Heun's correction (EDM Alg. 1, lines 9-11)
                d_next = self.eps(denoiser, x_next, y, self.second(i))
                x_next = x + (sigma_next - hat.sigma) * 0.5 * (d + d_next)
            x = x_next
        return x  # at σ = 0 the scaled variable is x_0 itself


class HeunSampler(EulerSampler):
    """EDM's 2nd-order sampler: two evaluations per step, Euler on the last step (to σ = 0)."""

    name = "heun"
    second_order = True


class EDM2HeunSampler(HeunSampler):
    """EDM2's sampler (Karras et al. 2024, edm2 generate_images.py `edm_sampler`): EDM's Heun (Alg. 2) on the ρ = 7
    grid with σ_max = 80, 32 steps, no churn, started from EDM's prior x̃ = σ_max n, n ~ N(0, I), and no clipping of
    x̂0. It differs from `heun` (the same update) only in these defaults and that prior: `heun` starts from ADM's
    VP prior x_T ~ N(0, I), x̃ = sqrt(1 + σ_0²) n (a factor 1.00008 at σ_0 = 80) and clips x̂0 by default. On a
    discrete VP model σ_max is clamped to the model's range and every grid σ snaps to a trained timestep (grid.py),
    as EDM's iDDPMPrecond does. On a continuous EDM network (DenoisingModel(parameterization="edm",
    noise_input="sigma") on ContinuousLevels) the grid's σ is used exactly and the chain equals edm2's
    `edm_sampler` to float tolerance (tests/test_reference_samplers.py): churn, CFG (w = edm2's guidance − 1),
    autoguidance (the weak network a second DenoisingModel) and EDM2's CFG presets (autoguidance whose weak model
    is the unconditional companion, declared with null_label=None and so called without labels).
    `heun` / `euler` (EDM Alg. 1 without the correction) take the same steps from ADM's prior; fed n' =
    n sqrt(1 + σ_0²)/σ_0 with clip_denoised=false they equal edm_sampler (the same test).
    Capabilities: classifier term in ε form; deterministic (churn off); no re-noising with a given ε."""

    name = "edm2_heun"

    def __init__(self, diffusion, respacing="edm32", clip_denoised: bool = False, **kw):
        super().__init__(diffusion, respacing, clip_denoised, **kw)

    def prior(self, x):
        return x * self.step_at(0).sigma
