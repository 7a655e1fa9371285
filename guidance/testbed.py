"""Analytic test bed: class-conditional Gaussian data, where every diffusion quantity has a closed form.

Class k has weight π_k and data x_0 | y=k ~ N(μ_k, σ_k² I) in d dims, laid out as [B, d, 1, 1] "images".
Under q(x_t | x_0) = N(sqrt(ᾱ_t) x_0, (1 − ᾱ_t) I) (DDPM eq. 4):
  x_t | y=k ~ N(sqrt(ᾱ_t) μ_k, v_k(t) I),  v_k(t) = ᾱ_t σ_k² + 1 − ᾱ_t
  exact conditional ε:   ε(x_t, t, k) = −sqrt(1 − ᾱ_t) ∇log p(x_t|k) = sqrt(1 − ᾱ_t)(x_t − sqrt(ᾱ_t) μ_k)/v_k
  exact unconditional ε: Σ_k p(k|x_t) ε(x_t, t, k)  (the score of the mixture is the posterior-weighted score)
  exact classifier:      log p(k|x_t) = log π_k + log N(x_t; sqrt(ᾱ_t) μ_k, v_k I) − logsumexp over k (Bayes)
`model(x, t_orig, y)` (y == num_classes -> unconditional) and `classifier(x, t_orig)` have the networks'
signatures and take ORIGINAL timesteps of the base schedule, so samplers, guiders and respacing can be tested
against known distributions without training. Only per-sample elementwise ops and reductions are used, so
results do not depend on the batch size. Run `python -m guidance.testbed` for a toy guidance sweep.
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
