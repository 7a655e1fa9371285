"""Likelihood terms of the variational bound, in nats, elementwise (callers average and convert to bits)."""

from __future__ import annotations

import torch


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension except the batch one: per-example values."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats.

    Closed form for two Gaussians; arguments broadcast, so a scalar log-variance is fine.
    """
    mean1, logvar1, mean2, logvar2 = (torch.as_tensor(a) for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """log p(x) of 8-bit data x in [-1, 1] under N(means, e^(2 log_scales)) integrated over each pixel's bin.

    This is the decoder term L_0 of DDPM (Ho et al. 2020, eq. 13): bins have width 2/255 and the two edge
    bins extend to ±∞, so the probabilities of the 256 values sum to one. We use the exact normal CDF
    (log_ndtr in the tails, where 1 − Φ would round to zero) rather than a tanh approximation.
    """
    if x.shape != means.shape:
        raise ValueError(f"x {tuple(x.shape)} and means {tuple(means.shape)} must have the same shape")
    inv_std = torch.exp(-log_scales)
    centered = x - means
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = torch.special.log_ndtr(upper)  # edge bin at x = -1: P(X < x + 1/255)
    log_sf_lower = torch.special.log_ndtr(-lower)  # edge bin at x = +1: P(X > x - 1/255)
    bin_prob = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    log_bin = torch.log(bin_prob.clamp(min=1e-12))  # the floor keeps log finite when a bin is far in a tail
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, log_bin))
