"""FID and sFID: Gaussian statistics of features, compared with torch-fidelity's Fréchet distance.

FID (Heusel et al. 2017): d² = ||μ₁ − μ₂||² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½) on Inception pool_3 (or evaluator
`pool`) features. sFID (Nash et al. 2021, as evaluated in ADM) is the same distance on spatial features
(`spatial`). Statistics are accumulated in float64 over row chunks, so 50k x 2048 float32 features never get
copied to float64 at once; the distance itself is torch-fidelity's `fid_statistics_to_metric`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric


def feature_statistics(feats: torch.Tensor | np.ndarray, chunk: int = 8192) -> dict[str, np.ndarray]:
    """Mean and unbiased covariance (np.cov's n-1 convention, as torch-fidelity/TTUR) in float64."""
    x = torch.as_tensor(feats)
    n, d = x.shape
    if n < 2:
        raise ValueError("need at least 2 feature vectors for a covariance")
    mu = torch.zeros(d, dtype=torch.float64)
    for block in x.split(chunk):
        mu += block.double().sum(0)
    mu /= n
    # Centre before the outer product: Σ (x-μ)(x-μ)ᵀ is far better conditioned than Σ xxᵀ − n μμᵀ.
    sigma = torch.zeros(d, d, dtype=torch.float64)
    for block in x.split(chunk):
        c = block.double() - mu
        sigma += c.T @ c
    sigma /= n - 1
    return {"mu": mu.numpy(), "sigma": sigma.numpy()}


def frechet_distance(stats_1: dict, stats_2: dict) -> float:
    """Fréchet distance between two Gaussians, via torch-fidelity."""
    return float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID])


def fid_from_features(sample_feats, ref_stats: dict) -> float:
    return frechet_distance(feature_statistics(sample_feats), ref_stats)


def bootstrap_fid_std(sample_feats, ref_stats: dict, num_bootstrap: int, generator: np.random.Generator,
                      progress=None) -> float:
    """Spread of FID over `num_bootstrap` resamples (with replacement) of the sample features.

    The reference statistics are held fixed: the spread answers "how much would FID move with another draw of
    the same number of samples", which is what error bars on a guidance sweep need.
    """
    x = torch.as_tensor(sample_feats)
    n = x.shape[0]
    values = []
    for _ in range(num_bootstrap):
        idx = torch.from_numpy(generator.integers(0, n, size=n))
        values.append(fid_from_features(x[idx], ref_stats))
        if progress is not None:
            progress.update(1)
    return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
