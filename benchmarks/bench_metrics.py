"""Time our FID + sFID + P&R + density/coverage against torch-fidelity's own precision/recall, same features.

    python -m benchmarks.bench_metrics                 # 10k vs 10k, evaluator and Inception feature sizes
    python -m benchmarks.bench_metrics --n 50000       # 50k vs 50k (torch-fidelity's P&R skipped: 3 N x N matrices)
    python -m benchmarks.bench_metrics --n 2000 --sets evaluator

Prints, per feature size, seconds for each part and the ratios
  (FID + sFID + P&R + D&C, ours) / (P&R, torch-fidelity prc_features_to_metric)
  (FID distance, ours: symmetric eigh) / (torch-fidelity fid_statistics_to_metric: scipy sqrtm), same statistics
measured in the same run on the same random features. Our k-NN pass never holds an N x M matrix
(chunked rows), torch-fidelity's default path holds three full ones. Also printed: feature extraction throughput
of the shipped evaluator network (uint8 images -> pool/spatial/logits features), and the process's peak RSS
(run one size per process to read the peak of that size).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
from torch_fidelity.metric_prc import prc_features_to_metric

import numpy as np

from guidance.metrics.fid import bootstrap_fid_std, feature_statistics, frechet_distance
from guidance.metrics.prdc import manifold_indicators

# (pool dim, spatial dim) of each extractor: EvaluatorNet defaults on 28x28, Inception-v3 pool_3 / ADM sFID.
SETS = {"evaluator": (128, 392), "inception": (2048, 2023)}


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def extraction_rate(n: int = 10000) -> float:
    """Images/s of the shipped evaluator network through guidance.metrics.features (the metrics' own path)."""
    from benchmarks.common import SNAPSHOTS
    from guidance.metrics import extractors
    from guidance.metrics.features import extract_features
    from guidance.metrics.registry import extractor_spec

    layers = sorted(set(extractor_spec("evaluator").layers.values()))
    extractor = extractors.create_extractor("evaluator", layers, str(SNAPSHOTS / "evaluator.pt"), torch.device("cpu"))
    images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    _, seconds = timed(lambda: extract_features(images, extractor, 256, False))
    return n / seconds


def bench(n: int, pool_dim: int, spatial_dim: int, chunk: int, peer: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    s_pool, r_pool = torch.randn(n, pool_dim, generator=g) + 0.1, torch.randn(n, pool_dim, generator=g)
    s_sp, r_sp = torch.randn(n, spatial_dim, generator=g), torch.randn(n, spatial_dim, generator=g)

    stats = (feature_statistics(s_pool), feature_statistics(r_pool))
    _, t_dist = timed(lambda: frechet_distance(*stats))
    tf_fid, t_tf_dist = timed(lambda: fid_statistics_to_metric(*stats, verbose=False)[KEY_METRIC_FID])
    fid, t_fid = timed(lambda: frechet_distance(feature_statistics(s_pool), feature_statistics(r_pool)))
    assert abs(fid - tf_fid) <= 1e-6 * max(1.0, abs(tf_fid)), "FID disagrees with torch-fidelity"
    sfid, t_sfid = timed(lambda: frechet_distance(feature_statistics(s_sp), feature_statistics(r_sp)))
    ind, t_knn = timed(lambda: manifold_indicators(s_pool, r_pool, 3, 5, chunk))
    tf, t_tf = timed(lambda: prc_features_to_metric(s_pool, r_pool, prc_neighborhood=3, verbose=False)) if peer \
        else ({"precision": float("nan"), "recall": float("nan")}, float("nan"))
    ours = t_fid + t_sfid + t_knn
    # The FID spread: B resamples of the samples against the fixed reference (ours reuses the reference's Σ^½).
    B = 10
    _, t_boot = timed(lambda: bootstrap_fid_std(s_pool, stats[1], B, np.random.default_rng(0)))
    def tf_boot():
        rng = np.random.default_rng(0)
        for _ in range(B):
            idx = torch.from_numpy(rng.integers(0, n, size=n))
            fid_statistics_to_metric(feature_statistics(s_pool[idx]), stats[1], verbose=False)
    _, t_tf_boot = timed(tf_boot)
    prec, rec = ind["precision"].double().mean().item(), ind["recall"].double().mean().item()
    if peer:
        assert abs(prec - tf["precision"]) < 1e-6 and abs(rec - tf["recall"]) < 1e-6, "P&R disagree with torch-fidelity"
    return {"fid_s": t_fid, "sfid_s": t_sfid, "prdc_s": t_knn, "ours_total_s": ours, "tf_prc_s": t_tf,
            "ratio": ours / t_tf, "fid": fid, "sfid": sfid, "precision": prec, "recall": rec,
            "dist_s": t_dist, "tf_dist_s": t_tf_dist, "boot_s": t_boot, "tf_boot_s": t_tf_boot}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="samples and reference points each")
    ap.add_argument("--sets", default="evaluator,inception", help=f"comma list of {sorted(SETS)}")
    ap.add_argument("--chunk", type=int, default=1024, help="k-NN row block")
    ap.add_argument("--peer", choices=["auto", "on", "off"], default="auto",
                    help="torch-fidelity's P&R beside ours (auto: up to n = 20000; it holds three n x n matrices)")
    args = ap.parse_args()
    peer = args.peer == "on" or (args.peer == "auto" and args.n <= 20000)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, n = {args.n} vs {args.n}")
    print(f"feature extraction, shipped evaluator network: {extraction_rate():.0f} images/s")
    for name in args.sets.split(","):
        pool_dim, spatial_dim = SETS[name]
        r = bench(args.n, pool_dim, spatial_dim, args.chunk, peer)
        print(f"{name:9s} (pool {pool_dim}-d, spatial {spatial_dim}-d): FID {r['fid_s']:.2f}s  sFID {r['sfid_s']:.2f}s  "
              f"P&R+D&C {r['prdc_s']:.2f}s  = ours {r['ours_total_s']:.2f}s  vs torch-fidelity prc "
              f"{r['tf_prc_s']:.2f}s  -> ratio {r['ratio']:.2f}x  (precision {r['precision']:.4f}, "
              f"recall {r['recall']:.4f}, " + ("both equal to torch-fidelity's)" if peer else
                                               "torch-fidelity's P&R skipped: it holds three n x n matrices)"))
        print(f"{'':9s} Fréchet distance alone: ours {r['dist_s']:.2f}s vs torch-fidelity {r['tf_dist_s']:.2f}s "
              f"-> ratio {r['dist_s'] / r['tf_dist_s']:.2f}x (same value to 1e-6); 10-resample FID spread: ours "
              f"{r['boot_s']:.2f}s vs with torch-fidelity's distance {r['tf_boot_s']:.2f}s -> ratio "
              f"{r['boot_s'] / r['tf_boot_s']:.2f}x")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
