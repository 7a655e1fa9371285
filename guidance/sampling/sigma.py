"""What the σ-space samplers added with k-diffusion's and diffusers' names share (ancestral, SDE, UniPC, DEIS).

They step on EDM's scaled variable x̃ = x_t / sqrt(ᾱ_t) = x̂0 + σ ε, σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) (Karras et al. 2022,
sec. 2 and App. C.2), along the chain's σ_0 > ... > σ_{n−1}, then to σ_n = 0, where x̃ is x_0 itself. The denoiser
sees the VP input x̃ / sqrt(1 + σ²) at the step's original timestep; a classifier term enters through ε (ADM Alg. 2,
`Prediction.eps_form`), never through an ancestral mean, and no sampler here re-noises with a guider's own ε
(CFG++ refuses them). Random draws come from the per-image streams in chain order: x_T first, then one draw per
stochastic step (none on the last one, to σ = 0), so image i depends only on (seed, i).
"""

from __future__ import annotations

import math

import torch

from guidance.engine import GRAD_IN_EPS, Prediction, Step
from guidance.errors import GuidanceError
from guidance.sampling.base import Sampler


class SigmaSampler(Sampler):
    capabilities = frozenset({GRAD_IN_EPS})  # the classifier term through ε; no re-noising with a given ε

    def __init__(self, diffusion, respacing="edm20", clip_denoised: bool = True, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        self.check_finite_start()

    def sigma(self, i: int) -> float:
        """σ_i of the chain, with σ_n = 0 after the last step."""
        return self.step_at(i).sigma if i < self.steps else 0.0

    def prior(self, x: torch.Tensor) -> torch.Tensor:
        """ADM's prior x_T ~ N(0, I) seen in the scaled variable: x̃ = x_T sqrt(1 + σ_0²)."""
        return x * math.sqrt(1.0 + self.sigma(0) ** 2)

    def predict(self, denoiser, x: torch.Tensor, y, step: Step) -> Prediction:
        """ε and x̂0 at (x̃, σ of step); the ε is dx̃/dσ there (EDM eq. 3 with s = 1)."""
        x_vp = x / math.sqrt(1.0 + step.sigma**2)
        return denoiser(x_vp, y, step, clip=self.clip_denoised).eps_form(x_vp, step)

    @staticmethod
    def noise(rng, x: torch.Tensor) -> torch.Tensor:
        return rng.randn(x.shape[1:]).to(x.dtype)


def ancestral_split(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step σ -> σ': σ_up = min(σ', η sqrt(σ'² (σ² − σ'²) / σ²)),
    σ_down = sqrt(σ'² − σ_up²) (k-diffusion's get_ancestral_step). With η = 1 this is DDPM's posterior noise: the
    step equals DDIM with the same η (Song et al. 2021, eq. 16) written in σ (tests/test_samplers.py)."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


def check_eta(name: str, eta, s_noise) -> tuple[float, float]:
    eta, s_noise = float(eta), float(s_noise)
    if not (0.0 <= eta <= 1.0) or s_noise < 0:
        raise GuidanceError(f"{name}: eta must be in [0, 1] (0: the ODE, 1: the full SDE) and s_noise >= 0, "
                            f"got eta={eta}, s_noise={s_noise}")
    return eta, s_noise


class StochasticSigmaSampler(SigmaSampler):
    """A σ-sampler with k-diffusion's noise knobs: eta (0: the ODE, 1: the full SDE) and s_noise."""

    def __init__(self, diffusion, respacing="edm20", clip_denoised: bool = True, eta: float = 1.0,
                 s_noise: float = 1.0, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        self.eta, self.s_noise = check_eta(self.name, eta, s_noise)
        self.label = f"{self.name} eta={self.eta:g}"

    def info(self):
        return {**super().info(), "eta": self.eta, "s_noise": self.s_noise}
