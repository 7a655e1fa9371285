"""ADM reference batches: use their precomputed statistics, and write ours in the same layout.

guided-diffusion's evaluator (evaluations/evaluator.py) reads one .npz per reference set: `arr_0` (uint8 NHWC
reference images) and, when present, `mu`/`sigma` (Inception pool_3, 2048-d) and `mu_s`/`sigma_s` (the spatial
feature mixed_6/conv, first 7 channels, 2023-d), which it then uses instead of recomputing them. We do the same
for FID and sFID; every other metric (KID, P&R, density/coverage, CMMD) needs the reference points and comes
from the images' features. Files we write carry two more keys, `extractor` and `weights_sha256`, so statistics of
another feature space are never used by mistake; a file without them (ADM's own) is taken to hold Inception's.

What differs from ADM's TensorFlow evaluator: the network is torch-fidelity's port of the same TF Inception graph
(weights pt_inception-2015-12-05), images are resized to 299 with torch-fidelity's re-implementation of TF1's
bilinear resize (ADM feeds them to the TF graph, which resizes inside), and grayscale is replicated to RGB. FID
values from precomputed ADM statistics and our sample features therefore mix two implementations of one
network: expect agreement to within float-level differences of the resize, not bit-identical numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from guidance.io import atomic_save_npz

STAT_KEYS = {"fid": ("mu", "sigma"), "sfid": ("mu_s", "sigma_s")}


def read_precomputed_statistics(path: str | Path, extractor: str, weights_sha256: str,
                                dims: dict[str, int]) -> tuple[dict | None, str]:
    """({"fid": {mu, sigma}, "sfid": {...}}, why) from an ADM-layout npz, or (None, why not)."""
    with np.load(path, allow_pickle=False) as z:
        if not all(k in z.files for keys in STAT_KEYS.values() for k in keys):
            return None, "recomputed from features (the file holds no mu/sigma/mu_s/sigma_s)"
        if "extractor" in z.files:
            made_by = (str(z["extractor"]), str(z["weights_sha256"]) if "weights_sha256" in z.files else "")
            if made_by != (extractor, weights_sha256):
                return None, (f"recomputed from features (the file's statistics come from {made_by[0]} weights "
                              f"{made_by[1][:8]}, not {extractor} {weights_sha256[:8]})")
        elif extractor != "inception":
            return None, f"recomputed from features (ADM's statistics are Inception's, extractor={extractor})"
        stats = {m: {"mu": z[mu].astype(np.float64), "sigma": z[sigma].astype(np.float64)}
                 for m, (mu, sigma) in STAT_KEYS.items()}
    for m, s in stats.items():
        if s["mu"].shape != (dims[m],) or s["sigma"].shape != (dims[m], dims[m]):
            return None, f"recomputed from features ({m} statistics are {s['mu'].shape[0]}-d, features {dims[m]}-d)"
    return stats, "precomputed in reference_npz (mu/sigma, mu_s/sigma_s)"


def write_reference_batch(path: str | Path, images: torch.Tensor, stats: dict[str, dict], extractor: str,
                          weights_sha256: str) -> Path:
    """images uint8 NCHW + {"fid": {mu, sigma}, "sfid": {mu, sigma}} -> ADM's layout (+ extractor, weights_sha256)."""
    arrays = {"arr_0": images.permute(0, 2, 3, 1).contiguous().numpy()}
    for m, (mu, sigma) in STAT_KEYS.items():
        arrays[mu], arrays[sigma] = np.asarray(stats[m]["mu"]), np.asarray(stats[m]["sigma"])
    return atomic_save_npz(path, extractor=np.array(extractor), weights_sha256=np.array(weights_sha256), **arrays)
