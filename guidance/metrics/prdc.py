"""Chunked k-NN manifold metrics: improved precision/recall and density/coverage.

- Precision / recall (Kynkäänniemi et al. 2019, Eq. 1-2; k = 3), with ADM's convention: precision = fraction of
  samples inside the reference manifold (union of reference balls of radius NND_k), recall = fraction of
  reference points inside the sample manifold. Ball membership is `d <= r`, as in ADM and torch-fidelity.
- Density / coverage (Naeem et al. 2020, Eq. 5-6; k = 5), balls around reference points only:
  density = 1/(kM) Σ_j Σ_i 1[Y_j ∈ B(X_i, NND_k(X_i))], coverage = 1/N Σ_i 1[∃ j: Y_j ∈ B(X_i, NND_k(X_i))],
  with `d <= r` like P&R (Naeem et al.'s code uses `<`; the two differ only on exact ties, e.g. duplicated
  feature vectors whose k-NN radius is 0, which `<` would wrongly leave uncovered).

No N x M (or N x N) distance matrix is ever built: rows are processed in blocks of `chunk` against the other set,
keeping only k-th neighbour radii and per-point indicators, so 50k samples vs 50k references fit in a few hundred
MB. Everything needs three passes: reference self-distances (radii for k_prc and k_dc in one top-k), sample
self-distances (radii for recall), and one sample-vs-reference pass that yields all four metrics.
The per-point indicators are returned too, so bootstrap spreads can resample them.
"""

from __future__ import annotations

import numpy as np
import torch


def kth_neighbour_radii(x: torch.Tensor, ks: list[int], chunk: int = 1024, progress=None) -> dict[int, torch.Tensor]:
    """Distance from each row of x to its k-th nearest *other* row, for each k in ks (self is at distance 0)."""
    kmax = max(ks)
    if x.shape[0] < kmax + 1:
        raise ValueError(f"need more than k={kmax} points for k-NN radii, got {x.shape[0]}")
    out = {k: [] for k in ks}
    for block in x.split(chunk):
        d = torch.cdist(block, x)  # chunk x N
        # topk sorted ascending: column 0 is the point itself, column k is its k-th neighbour.
        nearest = d.topk(kmax + 1, dim=1, largest=False).values
        for k in ks:
            out[k].append(nearest[:, k])
        if progress is not None:
            progress.update(block.shape[0])
    return {k: torch.cat(v) for k, v in out.items()}


def manifold_indicators(sample_feats, ref_feats, k_prc: int = 3, k_dc: int = 5, chunk: int = 1024,
                        progress=None) -> dict[str, torch.Tensor]:
    """Per-point indicators behind P&R and D&C.

    Returns precision [N] (sample inside reference manifold), density [N] (number of reference k_dc-balls
    holding the sample, divided by k_dc), recall [M] (reference inside sample manifold), coverage [M]
    (reference k_dc-ball holds at least one sample).
    """
    s = torch.as_tensor(sample_feats).float()
    r = torch.as_tensor(ref_feats).float()
    if s.shape[1] != r.shape[1]:
        raise ValueError(f"feature dims differ: samples {s.shape[1]}, reference {r.shape[1]}")
    ref_radii = kth_neighbour_radii(r, sorted({k_prc, k_dc}), chunk, progress)
    r_prc, r_dc = ref_radii[k_prc], ref_radii[k_dc]
    s_prc = kth_neighbour_radii(s, [k_prc], chunk, progress)[k_prc]

    precision, density = [], []
    recall = torch.zeros(r.shape[0], dtype=torch.bool)
    nearest_sample = torch.full((r.shape[0],), float("inf"))
    for start in range(0, s.shape[0], chunk):
        block = s[start:start + chunk]
        d = torch.cdist(block, r)  # chunk x M, never N x M
        precision.append((d <= r_prc).any(dim=1))
        density.append((d <= r_dc).sum(dim=1).float() / k_dc)
        recall |= (d <= s_prc[start:start + chunk, None]).any(dim=0)
        nearest_sample = torch.minimum(nearest_sample, d.min(dim=0).values)
        if progress is not None:
            progress.update(block.shape[0])
    return {
        "precision": torch.cat(precision),
        "density": torch.cat(density),
        "recall": recall,
        "coverage": nearest_sample <= r_dc,
    }


def prdc(sample_feats, ref_feats, k_prc: int = 3, k_dc: int = 5, chunk: int = 1024, progress=None,
         ) -> dict[str, float]:
    ind = manifold_indicators(sample_feats, ref_feats, k_prc, k_dc, chunk, progress)
    return {name: float(v.double().mean()) for name, v in ind.items()}


def bootstrap_indicator_std(indicators: dict[str, torch.Tensor], num_bootstrap: int,
                            generator: np.random.Generator) -> dict[str, float]:
    """Std of each metric's mean over resamples of its own indicators (samples for precision/density,
    reference points for recall/coverage); the manifolds themselves are held fixed."""
    out = {}
    for name, v in indicators.items():
        x = v.double().numpy()
        idx = generator.integers(0, len(x), size=(num_bootstrap, len(x)))
        out[name] = float(x[idx].mean(axis=1).std(ddof=1)) if num_bootstrap > 1 else float("nan")
    return out
