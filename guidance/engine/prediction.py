"""The step a sampler asks the guided denoiser about, and the prediction it gets back.

The VP model: x_t = sqrt(ᾱ_t) x_0 + sqrt(1 − ᾱ_t) ε (DDPM eq. 4). EDM's view of the same model uses the scaled
variable x_t / sqrt(ᾱ_t) = x_0 + σ ε with σ_t = sqrt((1 − ᾱ_t)/ᾱ_t) (Karras et al. 2022, sec. 2 and App. C.2).
The conversions ε <-> x̂0 live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Step:
    """One denoiser evaluation point: the ORIGINAL timestep t the networks see, its ᾱ_t, and the chain step it
    belongs to (`index` of `count`, with that step's grid noise level `grid_sigma`). An evaluation off the grid
    (Heun's second one at σ_{i+1}, a churned σ̂) keeps index i and grid_sigma = σ_i of its step, so strategies that
    switch per step (interval guidance) treat both evaluations of a step alike, as the reference samplers do."""

    t: int
    alpha_bar: float
    index: int = 0
    count: int = 1
    grid_sigma: float | None = None

    @property
    def sigma(self) -> float:
        """EDM noise level of this step: sqrt((1 − ᾱ_t)/ᾱ_t)."""
        return math.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)

    @property
    def step_sigma(self) -> float:
        """σ_i of the chain step this evaluation belongs to (its own σ for an on-grid evaluation)."""
        return self.sigma if self.grid_sigma is None else self.grid_sigma

    @property
    def progress(self) -> float:
        """i / n: 0 at the first step of a chain, towards 1 at the last."""
        return self.index / max(self.count, 1)


@dataclass(frozen=True)
class Prediction:
    """ε and x̂0 at one step, always consistent with each other for the x they were made at.

    var_v: the learned-range variance output v in [-1, 1] (Improved DDPM eq. 15), None for fixed variances.
    grad:  s ∇_{x_t} log p_φ(y | x_t), already scaled, for classifier-based strategies: an ancestral sampler
           adds Σ·grad to its mean (ADM Alg. 1), every other sampler calls `eps_form` (ADM Alg. 2).
    renoise_eps: the ε a deterministic step re-noises x̂0 with, when it is not `eps` (CFG++: the unconditional
           ε, Chung et al. 2024); None for every other strategy. A strategy that sets it needs a sampler with the
           capability RENOISE_EPS (guidance.engine.capabilities).
    """

    eps: torch.Tensor
    x0: torch.Tensor
    var_v: torch.Tensor | None = None
    grad: torch.Tensor | None = None
    renoise_eps: torch.Tensor | None = None

    @property
    def noise_eps(self) -> torch.Tensor:
        return self.eps if self.renoise_eps is None else self.renoise_eps

    @staticmethod
    def from_eps(x: torch.Tensor, step: Step, eps: torch.Tensor, var_v=None, grad=None) -> "Prediction":
        """x̂0 = (x_t − sqrt(1 − ᾱ_t) ε) / sqrt(ᾱ_t)."""
        ab = step.alpha_bar
        x0 = math.sqrt(1.0 / ab) * x - math.sqrt(1.0 / ab - 1.0) * eps
        return Prediction(eps, x0, var_v, grad)

    @staticmethod
    def from_x0(x: torch.Tensor, step: Step, x0: torch.Tensor, var_v=None, grad=None) -> "Prediction":
        """ε = (x_t / sqrt(ᾱ_t) − x̂0) / σ_t: the inverse of from_eps."""
        ab = step.alpha_bar
        eps = (math.sqrt(1.0 / ab) * x - x0) / math.sqrt(1.0 / ab - 1.0)
        return Prediction(eps, x0, var_v, grad)

    def with_x0(self, x: torch.Tensor, step: Step, x0: torch.Tensor) -> "Prediction":
        """A new x̂0 (ε re-derived from it), everything else kept."""
        return replace(self, x0=x0, eps=Prediction.from_x0(x, step, x0).eps)

    def clipped(self, x: torch.Tensor, step: Step) -> "Prediction":
        """x̂0 clipped to the data range [-1, 1] and ε re-derived from it (ADM's clip_denoised)."""
        return self.with_x0(x, step, self.x0.clamp(-1.0, 1.0))

    def with_grad(self, grad: torch.Tensor | None) -> "Prediction":
        return replace(self, grad=grad)

    def eps_form(self, x: torch.Tensor, step: Step) -> "Prediction":
        """The classifier term applied to ε (ADM Alg. 2, `condition_score`): ε' = ε − sqrt(1 − ᾱ_t) grad, and x̂0
        re-derived from ε' WITHOUT clipping again, as ADM does. A prediction without grad is returned as is."""
        if self.grad is None:
            return self
        eps = self.eps - math.sqrt(1.0 - step.alpha_bar) * self.grad
        return Prediction.from_eps(x, step, eps, self.var_v)
