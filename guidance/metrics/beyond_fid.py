"""Metrics beyond FID's family, each from features the evaluation already extracts.

- CMMD (Jayasumana et al. 2024, "Rethinking FID: Towards a Better Evaluation Metric for Image Generation"):
  MMD² between the sample and reference embeddings with a Gaussian RBF kernel k(x, y) = exp(−‖x − y‖²/(2σ²)),
  σ = 10, embeddings L2-normalised as CMMD does for CLIP, reported × 1000. We use the unbiased estimator
  (diagonals of the within-set kernels left out). The paper uses CLIP image embeddings; here it runs on whichever
  extractor the metrics use (documented in metrics.json by the extractor name).
- Vendi score (Friedman & Dieng 2023, "The Vendi Score: A Diversity Evaluation Metric for Machine Learning"):
  exp(−Σ λᵢ log λᵢ), λ the eigenvalues of K/n with the cosine-similarity kernel K = X̂X̂ᵀ (rows L2-normalised).
  Reference-free: the effective number of distinct samples, 1 for n copies, n for n orthogonal vectors.
- Class accuracy of the samples (the quantity guidance optimises), under the DATASET EVALUATOR's logits, never
  the guidance classifier (that would be circular): the fraction classified as their target label, and the mean
  probability of the target label.
"""

from __future__ import annotations

import numpy as np
import torch


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x).double()
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _kernel_sum(a: torch.Tensor, b: torch.Tensor, gamma: float, chunk: int) -> float:
    """Σ_ij exp(−γ‖a_i − b_j‖²) over row blocks (never the whole n x m matrix)."""
    total = 0.0
    for block in a.split(chunk):
        total += float(torch.exp(-gamma * torch.cdist(block, b).square()).sum())
    return total


def cmmd_reference_term(ref_feats, sigma: float = 10.0, chunk: int = 2048) -> float:
    """The reference set's within-set kernel mean (diagonal left out): constant across a sweep, so callers
    may compute it once and pass it to cmmd()."""
    y = _normalise(ref_feats)
    m = len(y)
    return (_kernel_sum(y, y, 1.0 / (2.0 * sigma**2), chunk) - m) / (m * (m - 1))  # the diagonal is exp(0) = 1


def cmmd(sample_feats, ref_feats, sigma: float = 10.0, scale: float = 1000.0, chunk: int = 2048,
         ref_term: float | None = None) -> float:
    """Unbiased MMD² with the RBF kernel on L2-normalised embeddings, × scale (Jayasumana et al. 2024)."""
    x, y = _normalise(sample_feats), _normalise(ref_feats)
    n, m, gamma = len(x), len(y), 1.0 / (2.0 * sigma**2)
    k_xx = (_kernel_sum(x, x, gamma, chunk) - n) / (n * (n - 1))
    k_yy = cmmd_reference_term(ref_feats, sigma, chunk) if ref_term is None else ref_term
    k_xy = _kernel_sum(x, y, gamma, chunk) / (n * m)
    return scale * (k_xx + k_yy - 2.0 * k_xy)


def vendi_score(feats) -> float:
    """exp(entropy of the eigenvalues of K/n), K the cosine-similarity kernel; via the d x d Gram matrix, whose
    non-zero eigenvalues are K's (so n = 50k costs a d x d eigendecomposition, not n x n)."""
    x = _normalise(feats)
    lam = torch.linalg.eigvalsh(x.T @ x / len(x)).clamp_min(0.0).numpy()
    lam = lam[lam > 1e-12]
    return float(np.exp(-(lam * np.log(lam)).sum()))


def class_fidelity(logits, labels) -> dict[str, torch.Tensor]:
    """Per-sample indicators: `class_acc` (argmax == target) and `class_target_prob` (softmax at the target)."""
    logits, labels = torch.as_tensor(logits).double(), torch.as_tensor(labels).long()
    probs = torch.softmax(logits, dim=1)
    return {"class_acc": (logits.argmax(1) == labels).double(),
            "class_target_prob": probs[torch.arange(len(labels)), labels]}
