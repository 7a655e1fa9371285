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
The per-point indicators are returned too, so bootstrap spreads can resample them; optionally also the sparse
list of covering (reference, sample) pairs behind recall and coverage, so their spreads can resample the samples.
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
                        progress=None, return_pairs: bool = False):
    """Per-point indicators behind P&R and D&C.

    Returns precision [N] (sample inside reference manifold), density [N] (number of reference k_dc-balls
    holding the sample, divided by k_dc), recall [M] (reference inside sample manifold), coverage [M]
    (reference k_dc-ball holds at least one sample).
    With return_pairs, returns (indicators, pairs): pairs["recall"] / pairs["coverage"] = (ref_idx, sample_idx)
    int64 arrays listing every sample i that covers reference j (d <= r_i, resp. d <= R_j). They are sparse:
    about k_prc * M and density * k_dc * N entries for sample and reference sets from similar distributions.
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
    pairs = {"recall": [], "coverage": []}  # per block: (sample_idx, ref_idx) of each covering pair
    for start in range(0, s.shape[0], chunk):
        block = s[start:start + chunk]
        d = torch.cdist(block, r)  # chunk x M, never N x M
        in_ref_dc = d <= r_dc
        in_sample_prc = d <= s_prc[start:start + chunk, None]
        precision.append((d <= r_prc).any(dim=1))
        density.append(in_ref_dc.sum(dim=1).double() / k_dc)  # float64, as every other statistic
        recall |= in_sample_prc.any(dim=0)
        nearest_sample = torch.minimum(nearest_sample, d.min(dim=0).values)
        if return_pairs:
            for name, inside in (("recall", in_sample_prc), ("coverage", in_ref_dc)):
                i, j = inside.nonzero(as_tuple=True)
                pairs[name].append((i + start, j))
        if progress is not None:
            progress.update(block.shape[0])
    ind = {
        "precision": torch.cat(precision),
        "density": torch.cat(density),
        "recall": recall,
        "coverage": nearest_sample <= r_dc,
    }
    if not return_pairs:
        return ind
    return ind, {name: (torch.cat([j for _, j in v]).numpy(), torch.cat([i for i, _ in v]).numpy())
                 for name, v in pairs.items()}


def prdc(sample_feats, ref_feats, k_prc: int = 3, k_dc: int = 5, chunk: int = 1024, progress=None,
         ) -> dict[str, float]:
    ind = manifold_indicators(sample_feats, ref_feats, k_prc, k_dc, chunk, progress)
    return {name: float(v.double().mean()) for name, v in ind.items()}


def bootstrap_indicator_std(indicators: dict[str, torch.Tensor], num_bootstrap: int,
                            generator: np.random.Generator) -> dict[str, float]:
    """Std of each metric's mean over resamples of its own indicators, the manifolds held fixed.

    Right for precision/density, whose indicators are per sample. For recall/coverage use
    bootstrap_sample_coverage_std: resampling their per-reference indicators ignores the variability with
    respect to the samples, which is what differs between sweep points, and reports a far too small spread."""
    out = {}
    for name, v in indicators.items():
        x = v.double().numpy()
        idx = generator.integers(0, len(x), size=(num_bootstrap, len(x)))
        out[name] = float(x[idx].mean(axis=1).std(ddof=1)) if num_bootstrap > 1 else float("nan")
    return out


def bootstrap_sample_coverage_std(pairs: dict[str, tuple[np.ndarray, np.ndarray]], num_samples: int,
                                  num_reference: int, num_bootstrap: int,
                                  generator: np.random.Generator) -> dict[str, float]:
    """Std of recall and coverage over resamples of the SAMPLES, from manifold_indicators' covering pairs.

    One draw of shape [num_bootstrap, num_samples] (sample indices with replacement) is shared by both metrics;
    in replicate b, reference j counts as covered iff at least one of its covering samples was drawn.
    Coverage is then exactly the bootstrap (its radii R_j come from the references). For recall each sample
    keeps its k-NN radius r_i from the full sample set: an approximation, since recomputing radii on a resample
    would give every duplicated point radius 0 (its copy is its nearest neighbour) and shrink the manifold.
    """
    if num_bootstrap < 2:
        return {name: float("nan") for name in pairs}
    draws = generator.integers(0, num_samples, size=(num_bootstrap, num_samples))
    values = {name: [] for name in pairs}
    for draw in draws:
        drawn = np.bincount(draw, minlength=num_samples) > 0
        for name, (ref_idx, sample_idx) in pairs.items():
            covered = np.bincount(ref_idx, weights=drawn[sample_idx], minlength=num_reference) > 0
            values[name].append(covered.mean())
    return {name: float(np.std(v, ddof=1)) for name, v in values.items()}
