"""The step a sampler asks the guided denoiser about, and the prediction it gets back.

Every model the engine reaches is one family (Karras et al. 2022, sec. 2 and App. C): its x_t is a scaling of
x̃ = x_0 + σ n for the σ its noise level determines. The engine's common variable is the VP one,
x_t = x̃ / sqrt(1 + σ²) = sqrt(ᾱ) x_0 + sqrt(1 − ᾱ) ε with ᾱ = 1/(1 + σ²) (DDPM eq. 4); a model adapter
(guidance.engine.model) maps it to its network's own input (x̃ for EDM, x_f = x̃/(1 + σ) for flow models).
σ = ∞ (a flow model's t = 1, pure noise) is x_t = ε, ᾱ = 0. The conversions ε <-> x̂0 live here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from guidance.errors import GuidanceError


@dataclass(frozen=True)
class Step:
    """One denoiser evaluation point: the noise level and the chain step it belongs to (`index` of `count`, with
    that step's grid noise level `grid_sigma`). On a model with trained discrete levels: the ORIGINAL timestep t
    the networks see and its ᾱ_t (σ derived from ᾱ). On a continuous model: t = None and `level` = the grid's σ
    exactly (ᾱ = 1/(1 + σ²)). An evaluation off the grid (Heun's second one at σ_{i+1}, a churned σ̂) keeps
    index i and grid_sigma = σ_i of its step, so strategies that switch per step (interval guidance) treat both
    evaluations of a step alike, as the reference samplers do."""

    t: int | None
    alpha_bar: float
    index: int = 0
    count: int = 1
    grid_sigma: float | None = None
    level: float | None = None

    @staticmethod
    def at_sigma(sigma: float, index: int = 0, count: int = 1, grid_sigma: float | None = None) -> "Step":
        """A continuous model's step at exactly σ (σ = inf: pure noise, ᾱ = 0)."""
        sigma = float(sigma)
        return Step(None, 0.0 if math.isinf(sigma) else 1.0 / (1.0 + sigma * sigma), index, count, grid_sigma, sigma)

    @property
    def discrete(self) -> bool:
        return self.t is not None

    @property
    def sigma(self) -> float:
        """EDM noise level of this step: the grid's σ on a continuous model, else sqrt((1 − ᾱ_t)/ᾱ_t)."""
        if self.level is not None:
            return self.level
        return math.inf if self.alpha_bar == 0 else math.sqrt((1.0 - self.alpha_bar) / self.alpha_bar)

    @property
    def tau(self) -> float:
        """Flow time of this step: x_f = x̃/(1 + σ) = (1 − τ) x_0 + τ n, τ = σ/(1 + σ) (1 at σ = ∞)."""
        sigma = self.sigma
        return 1.0 if math.isinf(sigma) else sigma / (1.0 + sigma)

    def to_flow(self, x: torch.Tensor) -> torch.Tensor:
        """The VP variable x_t as the flow variable x_f = x_t sqrt(1 + σ²)/(1 + σ) (x_t itself at σ = ∞)."""
        if self.alpha_bar == 0:
            return x
        return x / (self.alpha_bar ** 0.5 * (1 + self.sigma))

    def from_flow(self, x_f: torch.Tensor) -> torch.Tensor:
        """The inverse of to_flow."""
        if self.alpha_bar == 0:
            return x_f
        return x_f * (self.alpha_bar ** 0.5 * (1 + self.sigma))

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
        if ab == 0:
            raise GuidanceError("at σ = ∞ (a flow model's t = 1, pure noise) ε = x_t determines no x̂0, so an ε "
                                "model or a combination in ε space is undefined there: start the grid below σ = ∞ "
                                "(sampler.respacing=edmN) or use a strategy that combines in x0 or v")
        x0 = math.sqrt(1.0 / ab) * x - math.sqrt(1.0 / ab - 1.0) * eps
        return Prediction(eps, x0, var_v, grad)

    @staticmethod
    def from_x0(x: torch.Tensor, step: Step, x0: torch.Tensor, var_v=None, grad=None) -> "Prediction":
        """ε = (x_t / sqrt(ᾱ_t) − x̂0) / σ_t: the inverse of from_eps (ε = x_t at σ = ∞)."""
        ab = step.alpha_bar
        if ab == 0:
            return Prediction(x, x0, var_v, grad)
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
