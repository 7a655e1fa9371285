"""Analytic test bed: class-conditional Gaussian data, where every diffusion quantity has a closed form.

Class k has weight π_k and data x_0 | y=k ~ N(μ_k, σ_k² I) in d dims, laid out as [B, d, 1, 1] "images".
Under q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 − ᾱ_t) I) (DDPM eq. 4):
  x_t | y=k ~ N(sqrt(ᾱ_t) μ_k, v_k(t) I),  v_k(t) = ᾱ_t σ_k² + 1 − ᾱ_t
  exact conditional ε:   ε(x_t, t, k) = −sqrt(1 − ᾱ_t) ∇log p(x_t|k) = sqrt(1 − ᾱ_t)(x_t − sqrt(ᾱ_t) μ_k)/v_k
  exact unconditional ε: Σ_k p(k|x_t) ε(x_t, t, k)  (the score of the mixture is the posterior-weighted score)
  exact classifier:      log p(k|x_t) = log π_k + log N(x_t; sqrt(ᾱ_t) μ_k, v_k I) − logsumexp over k (Bayes)
  exact x̂0 (Tweedie):     E[x_0 | x_t, k] = μ_k + sqrt(ᾱ_t) σ_k² (x_t − sqrt(ᾱ_t) μ_k)/v_k, posterior-weighted alike
`model(x, t_orig, y)` (y == num_classes -> unconditional) and `classifier(x, t_orig)` have the networks'
signatures and take ORIGINAL timesteps of the base schedule, so samplers, guiders and respacing can be tested
against known distributions without training. Only per-sample elementwise ops and reductions are used, so
results do not depend on the batch size. Run `python -m guidance.testbed` for a toy guidance sweep.

Every parameterization of the same mixture (`mixture_model`, guidance.engine.model): the exact network of an ε,
x̂0, v, flow-velocity or EDM model, on trained discrete levels or on continuous σ, taking its OWN input variable
and noise input (x_t, x̃ = x_t sqrt(1 + σ²), x_f = x̃/(1 + σ); integer t, σ, c_noise = ln σ / 4, flow time), and
returning its own output from the same (ε, x̂0):
  v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x̂0 (Salimans & Ho 2022),  u = ε − x̂0 (flow velocity),  D(x̃; σ) = x̂0 (EDM).
At σ = ∞ (ᾱ = 0, a flow model's τ = 1): x_t = ε exactly and x̂0 = E[x_0 | y] (the prior mean), both finite.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from guidance.errors import GuidanceError


class GaussianMixture:
    def __init__(self, means, stds, weights=None):
        self.means = torch.as_tensor(means, dtype=torch.float64)           # [K, d]
        self.stds = torch.as_tensor(stds, dtype=torch.float64).reshape(-1)  # [K]
        K = self.means.shape[0]
        w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.means.ndim != 2 or self.stds.shape != (K,) or w.shape != (K,) or (self.stds <= 0).any() or (w <= 0).any():
            raise GuidanceError("GaussianMixture needs means [K, d], K positive stds and K positive weights")
        self.weights = w / w.sum()
        self.num_classes, self.dim = K, self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None, y: torch.Tensor | None = None):
        """n exact data samples: (x0 [n, d, 1, 1] float32, labels [n])."""
        if y is None:
            y = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[y] + self.stds[y, None] * z
        return x.float()[:, :, None, None], y

    def log_joint(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(x; sqrt(ᾱ) μ_k, v_k I) for every k: [B, K] (float64). alpha_bar: [B]."""
        x = x.reshape(len(x), -1).double()                                   # [B, d]
        ab = alpha_bar.double().reshape(-1, 1)                               # [B, 1]
        var = ab * self.stds[None] ** 2 + (1 - ab)                           # [B, K]
        sq = ((x[:, None, :] - ab.sqrt()[:, :, None] * self.means[None]) ** 2).sum(-1)  # [B, K]
        return self.weights.log()[None] - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)

    def posterior_logits(self, x: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
        """log p(k | x_t) (normalised), [B, K]; alpha_bar = 1 gives the data posterior used to classify samples."""
        lj = self.log_joint(x, alpha_bar)
        return lj - torch.logsumexp(lj, dim=1, keepdim=True)

    def eps(self, x: torch.Tensor, alpha_bar: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact ε for target y (y == K: unconditional), same shape/dtype as x."""
        B = len(x)
        xf = x.reshape(B, -1).double()
        ab = alpha_bar.double().reshape(-1, 1, 1)                            # [B, 1, 1]
        var = ab * self.stds[None, :, None] ** 2 + (1 - ab)                  # [B, K, 1]
        eps_k = (1 - ab).sqrt() * (xf[:, None] - ab.sqrt() * self.means[None]) / var  # [B, K, d]
        probs = self.posterior_logits(x, alpha_bar.reshape(-1)).exp()        # [B, K]
        uncond = (probs[:, :, None] * eps_k).sum(1)
        cond = eps_k[torch.arange(B), y.clamp(max=self.num_classes - 1)]
        out = torch.where((y == self.num_classes)[:, None], uncond, cond)
        return out.to(x.dtype).reshape(x.shape)

    def denoise(self, x: torch.Tensor, alpha_bar: torch.Tensor, y: torch.Tensor):
        """Exact (ε, x̂0) at the VP x_t for target y (y == K: unconditional), float64 [B, d]; any ᾱ in [0, 1]
        (ᾱ = 0: ε = x_t, x̂0 = the prior mean). Both are posterior-weighted per-class expectations, computed
        directly (not one from the other), so they stay consistent where ε ↔ x̂0 is ill-conditioned."""
        B = len(x)
        xf = x.reshape(B, -1).double()
        ab = alpha_bar.double().reshape(-1, 1, 1)                            # [B, 1, 1]
        var = ab * self.stds[None, :, None] ** 2 + (1 - ab)                  # [B, K, 1]
        resid = (xf[:, None] - ab.sqrt() * self.means[None]) / var           # [B, K, d]: −∇log p(x_t | k)
        eps_k = (1 - ab).sqrt() * resid
        x0_k = self.means[None] + ab.sqrt() * self.stds[None, :, None] ** 2 * resid
        probs = self.posterior_logits(x, alpha_bar.reshape(-1)).exp()[:, :, None]  # [B, K, 1]
        pick = torch.arange(B), y.clamp(max=self.num_classes - 1)
        uncond = (y == self.num_classes)[:, None]
        return (torch.where(uncond, (probs * eps_k).sum(1), eps_k[pick]),
                torch.where(uncond, (probs * x0_k).sum(1), x0_k[pick]))


class _OnSchedule(nn.Module):
    """Holds the base schedule's ᾱ so callers pass ORIGINAL timesteps, exactly like the real networks."""

    def __init__(self, mixture: GaussianMixture, alphas_cumprod):
        super().__init__()
        self.mixture = mixture
        self.register_buffer("alphas_cumprod", torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64))
        self.num_classes, self.image_size, self.in_channels = mixture.num_classes, 1, mixture.dim

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        if t.dtype != torch.long or (t < 0).any() or (t >= len(self.alphas_cumprod)).any():
            raise GuidanceError("testbed expects integer ORIGINAL timesteps in [0, T)")
        return self.alphas_cumprod.to(t.device)[t]


class MixtureEpsModel(_OnSchedule):
    """The exact ε-prediction network: forward(x, t, y) -> ε; y == num_classes is the null label."""

    learn_sigma = False

    def forward(self, x, t, y=None):
        if y is None:
            y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        return self.mixture.eps(x, self.alpha_bar(t), y)


class MixtureClassifier(_OnSchedule):
    """The exact noise-aware classifier: forward(x, t) -> log p(k | x_t) as logits."""

    def forward(self, x, t):
        return self.mixture.posterior_logits(x, self.alpha_bar(t)).to(x.dtype)


class MixtureNetwork(nn.Module):
    """The exact network of a `parameterization` model of the mixture (guidance.engine.model's contract):
    forward(x_in, noise_in, y) with x_in in the network's own variable and noise_in its own noise input
    (`noise_input`, `time_scale`; "timestep" reads ᾱ from `alphas_cumprod`), returning its own output."""

    learn_sigma = False

    def __init__(self, mixture: GaussianMixture, parameterization: str, noise_input: str, time_scale: float = 1.0,
                 alphas_cumprod=None):
        super().__init__()
        self.mixture, self.parameterization, self.noise_input = mixture, parameterization, noise_input
        self.time_scale = float(time_scale)
        self.num_classes, self.image_size, self.in_channels = mixture.num_classes, 1, mixture.dim
        self.alphas_cumprod = (None if alphas_cumprod is None
                               else torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64))

    def sigma(self, noise: torch.Tensor) -> torch.Tensor:
        """σ of each row from the network's noise input (inf at a flow time of 1)."""
        if self.noise_input == "timestep":
            if noise.dtype != torch.long or self.alphas_cumprod is None:
                raise GuidanceError("testbed: a timestep network takes integer ORIGINAL timesteps of its schedule")
            ab = self.alphas_cumprod.to(noise.device)[noise]
            return ((1 - ab) / ab).sqrt()
        noise = noise.double()
        if self.noise_input == "sigma":
            return noise
        if self.noise_input == "c_noise":
            return torch.exp(4 * noise)  # c_noise = ln σ / 4
        tau = noise / self.time_scale if self.noise_input == "flow_time" else 1 - noise / self.time_scale
        return torch.where(tau >= 1, torch.full_like(tau, math.inf), tau / (1 - tau).clamp_min(1e-300))

    def forward(self, x, noise, y=None):
        if y is None:
            y = torch.full((len(x),), self.num_classes, dtype=torch.long, device=x.device)
        sigma = self.sigma(noise).reshape(-1, *([1] * (x.ndim - 1)))
        finite = torch.isfinite(sigma)
        ab = torch.where(finite, 1 / (1 + sigma.clamp(max=1e150) ** 2), torch.zeros_like(sigma))
        p, xd = self.parameterization, x.double()
        if p == "edm":  # x̃ = x_0 + σ n -> x_t = x̃ sqrt(ᾱ)
            x_t = xd * ab.sqrt()
        elif p == "flow":  # x_f = x̃/(1 + σ) -> x_t = x_f (1 + σ) sqrt(ᾱ)  (x_f itself at σ = ∞)
            x_t = torch.where(finite, xd * (1 + sigma.clamp(max=1e150)) * ab.sqrt(), xd)
        else:
            x_t = xd
        eps, x0 = (t.reshape(x.shape) for t in self.mixture.denoise(x_t, ab.reshape(-1), y))
        if p == "eps":
            out = eps
        elif p in ("x0", "edm"):
            out = x0
        elif p == "v":
            out = ab.sqrt() * eps - (1 - ab).sqrt() * x0
        else:
            out = eps - x0
        return out.to(x.dtype)


DEFAULT_NOISE_INPUT = {"eps": "sigma", "x0": "sigma", "v": "sigma", "edm": "sigma", "flow": "flow_time"}


def mixture_model(mixture: GaussianMixture, parameterization: str, levels, noise_input: str | None = None,
                  time_scale: float | None = None):
    """The exact model of `mixture` as a DenoisingModel of this parameterization (eps | x0 | v | flow | edm) on
    `levels`: a GaussianDiffusion (trained discrete levels; eps/x0/v default to integer timesteps) or
    ContinuousLevels. noise_input default: timestep (discrete eps/x0/v), sigma (continuous eps/x0/v, edm),
    flow_time with time_scale 1000 (flow). The null label is K (trained)."""
    from guidance.engine.model import DenoisingModel, is_continuous

    discrete = not is_continuous(levels)
    if noise_input is None:
        noise_input = "timestep" if discrete and parameterization in ("eps", "x0", "v") else \
            DEFAULT_NOISE_INPUT.get(parameterization, "sigma")
    if time_scale is None:
        time_scale = 1000.0 if noise_input.startswith("flow_time") else 1.0
    network = MixtureNetwork(mixture, parameterization, noise_input, time_scale,
                             levels.alphas_cumprod if discrete else None)
    return DenoisingModel(network, parameterization, levels, noise_input=noise_input, time_scale=time_scale,
                          null_label=mixture.num_classes, name=f"mixture-{parameterization}")


def default_mixture() -> GaussianMixture:
    """Three well-separated 2-d classes with unequal weights and spreads (misclassification < 1e-3)."""
    return GaussianMixture(means=[[-1.5, 0.0], [1.5, 0.0], [0.0, 1.8]], stds=[0.3, 0.2, 0.25], weights=[0.5, 0.3, 0.2])


def make_testbed(diffusion, mixture: GaussianMixture | None = None):
    """(mixture, model, classifier) on `diffusion`'s BASE schedule (pass the un-respaced diffusion)."""
    mixture = mixture or default_mixture()
    return mixture, MixtureEpsModel(mixture, diffusion.alphas_cumprod), MixtureClassifier(mixture, diffusion.alphas_cumprod)


def main() -> None:  # a toy: guidance scale vs. distance to the class mean
    from guidance.diffusion import create_diffusion
    from guidance.guiders import ClassifierFreeGuidance, ClassifierGuidance
    from guidance.sampling import BatchRNG, DDIMSampler, GuidedDenoiser

    base = create_diffusion(1000)
    mixture, model, classifier = make_testbed(base)
    sampler = DDIMSampler(base, "ddim50", clip_denoised=False)
    n, K = 2000, mixture.num_classes
    y = torch.arange(n) % K
    print(f"{'guider':>28}  mean |x - mu_y| / sigma_y   (exact data: {math.sqrt(math.pi / 2):.3f} in 2-d)")
    for guider in [ClassifierGuidance(s, conditional=False) for s in (0, 1, 2, 4)] + \
                  [ClassifierFreeGuidance(w) for w in (0, 1, 2, 4)]:
        denoiser = GuidedDenoiser(guider, {"unet": model, "classifier": classifier}, null_label=K)
        x = sampler.sample(denoiser, (n, mixture.dim, 1, 1), y, BatchRNG(0, n)).reshape(n, -1).double()
        dist = ((x - mixture.means[y]).norm(dim=1) / mixture.stds[y]).mean()
        print(f"{guider!r:>28}  {dist:.3f}")


if __name__ == "__main__":
    main()
