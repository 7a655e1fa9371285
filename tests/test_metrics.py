"""Metric math against closed forms and constructed point sets with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch_fidelity.metric_prc import calculate_precision_recall_full, calculate_precision_recall_part

from guidance.errors import GuidanceError
from guidance.metrics.evaluate import compute_metrics
from guidance.metrics.fid import bootstrap_fid_std, feature_statistics, frechet_distance
from guidance.metrics.prdc import (bootstrap_indicator_std, bootstrap_sample_coverage_std, kth_neighbour_radii,
                                   manifold_indicators, prdc)
from guidance.metrics.reference import cache_key, cache_path, load_or_extract

# ------------------------------------------------------------------------------------------------- FID


def test_feature_statistics_match_numpy_and_ignore_chunking():
    x = torch.randn(301, 7, generator=torch.Generator().manual_seed(0)) * 3 + 1
    xd = x.double().numpy()
    for chunk in (1, 50, 1000):
        st = feature_statistics(x, chunk=chunk)
        assert st["mu"].dtype == np.float64 and st["sigma"].dtype == np.float64
        np.testing.assert_allclose(st["mu"], xd.mean(0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(st["sigma"], np.cov(xd, rowvar=False), rtol=1e-12, atol=1e-12)


def test_fid_of_a_set_against_itself_is_zero():
    x = torch.randn(2000, 32, generator=torch.Generator().manual_seed(1))
    st = feature_statistics(x)
    # Only round-off remains: the matrix square root of Σ² is Σ up to ~1e-8 relative on Tr Σ = 32.
    assert abs(frechet_distance(st, st)) < 1e-6 * np.trace(st["sigma"])


def test_fid_closed_form_for_diagonal_gaussians():
    # FID between N(μ1, diag s1) and N(μ2, diag s2) = ||μ1−μ2||² + Σ_i (√s1_i − √s2_i)².
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 8.0])
    exact = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum())
    got = frechet_distance({"mu": mu1, "sigma": np.diag(s1)}, {"mu": mu2, "sigma": np.diag(s2)})
    assert got == pytest.approx(exact, rel=1e-10)

    # The same through sampled features: tolerance = 6 standard deviations of the estimator (delta method:
    # the mean term moves by 2Δμ·ε with Var ε = (s1+s2)/n; each variance term by (√s1−√s2)/√s1 · s1 √(2/n)),
    # plus the O(d/n) upward bias of the plug-in estimate.
    n = 20000
    g = torch.Generator().manual_seed(2)
    a = torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.from_numpy(np.sqrt(s1)) + torch.from_numpy(mu1)
    b = torch.randn(n, 4, generator=g, dtype=torch.float64) * torch.from_numpy(np.sqrt(s2)) + torch.from_numpy(mu2)
    dmu = mu1 - mu2
    var_mean = 4 * float((dmu**2 * (s1 + s2) / n).sum())
    var_cov = float(sum(((np.sqrt(x) - np.sqrt(y)) ** 2 / x * x**2 * 2 / n) + ((np.sqrt(y) - np.sqrt(x)) ** 2 / y * y**2 * 2 / n)
                        for x, y in zip(s1, s2)))
    tol = 6 * math.sqrt(var_mean + var_cov) + (s1 + s2).sum() * 4 / n
    est = frechet_distance(feature_statistics(a), feature_statistics(b))
    assert abs(est - exact) < tol


def test_bootstrap_fid_std_scales_like_one_over_sqrt_n():
    # For a mean shift Δ with unit covariance, FID ≈ |Δ|² + noise whose std is ≈ 2|Δ|/√n (delta method).
    g = torch.Generator().manual_seed(3)
    n, d = 4000, 2
    shift = torch.tensor([3.0, 0.0])
    ref = feature_statistics(torch.randn(200000, d, generator=g))
    x = torch.randn(n, d, generator=g) + shift
    std = bootstrap_fid_std(x, ref, 200, np.random.default_rng(0))
    expected = 2 * 3.0 / math.sqrt(n)
    # 200 resamples estimate a std to ~5%; the covariance terms add a little: allow 30%.
    assert std == pytest.approx(expected, rel=0.3)


# ------------------------------------------------------------------------------------------------- P&R, D&C


def ring(n: int, radius: float = 10.0, phase: float = 0.0, centre=(0.0, 0.0)) -> torch.Tensor:
    ang = 2 * math.pi * (torch.arange(n, dtype=torch.float64) + phase) / n
    return torch.stack([radius * ang.cos() + centre[0], radius * ang.sin() + centre[1]], 1).float()


# On a ring of n equally spaced points the m-th neighbours sit m steps away on both sides, so the k=3 radius
# is 2 steps and the k=5 radius is 3 steps. Points shifted by half a step fall 0.5, 1.5, 2.5 steps from
# the nearest ring points: inside 6 of the k=5 balls (density contribution 6/5), never on a boundary.
N = 64


def test_disjoint_clusters_give_zero():
    m = prdc(ring(N), ring(N, centre=(1000.0, 0.0)))
    assert m == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_identical_sets_give_one():
    x = torch.randn(300, 8, generator=torch.Generator().manual_seed(4))
    m = prdc(x, x)
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["coverage"] == 1.0


def test_half_step_shifted_ring():
    m = prdc(ring(N, phase=0.5), ring(N))
    assert m["precision"] == 1.0 and m["recall"] == 1.0 and m["coverage"] == 1.0
    assert m["density"] == pytest.approx(6 / 5)


def test_half_of_the_samples_off_manifold():
    samples = torch.cat([ring(N, phase=0.5), ring(N, centre=(1000.0, 0.0))])
    m = prdc(samples, ring(N))
    assert m["precision"] == 0.5 and m["recall"] == 1.0 and m["coverage"] == 1.0
    assert m["density"] == pytest.approx(0.5 * 6 / 5)


def test_samples_cover_half_of_the_reference():
    reference = torch.cat([ring(N), ring(N, centre=(1000.0, 0.0))])
    m = prdc(ring(N, phase=0.5), reference)
    assert m["precision"] == 1.0 and m["recall"] == 0.5 and m["coverage"] == 0.5
    assert m["density"] == pytest.approx(6 / 5)


def test_kth_neighbour_radii_on_a_ring():
    step = 2 * 10.0 * math.sin(math.pi / N)  # chord of one step
    r = kth_neighbour_radii(ring(N), [1, 3, 5], chunk=10)
    chord = lambda m: 2 * 10.0 * math.sin(math.pi * m / N)  # noqa: E731
    assert torch.allclose(r[1], torch.full((N,), chord(1)), atol=1e-4 * step)
    assert torch.allclose(r[3], torch.full((N,), chord(2)), atol=1e-4 * step)
    assert torch.allclose(r[5], torch.full((N,), chord(3)), atol=1e-4 * step)


def _random_sets(seed=5, n=600, m=500, d=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 1.1 + 0.2, torch.randn(m, d, generator=g)


def test_chunked_precision_recall_equals_torch_fidelity():
    s, r = _random_sets()
    ours = prdc(s, r, k_prc=3, chunk=128)
    # torch-fidelity convention: features_1 = generated, features_2 = real.
    for fn in (calculate_precision_recall_full, calculate_precision_recall_part):
        p, rec = fn(s, r, neighborhood=3, batch_size=10000)
        # torch-fidelity averages in float32; 1e-6 is still far below one indicator flip (1/500).
        assert ours["precision"] == pytest.approx(p, abs=1e-6)
        assert ours["recall"] == pytest.approx(rec, abs=1e-6)
    assert 0.05 < ours["precision"] < 0.999 and 0.05 < ours["recall"] < 0.999  # a non-trivial case


def test_chunk_size_does_not_change_results():
    s, r = _random_sets(seed=6)
    base, base_pairs = manifold_indicators(s, r, chunk=10000, return_pairs=True)
    base_std = bootstrap_sample_coverage_std(base_pairs, len(s), len(r), 20, np.random.default_rng(0))
    for chunk in (1, 7, 64, 333):
        other, pairs = manifold_indicators(s, r, chunk=chunk, return_pairs=True)
        for k in base:
            assert torch.equal(base[k], other[k]), (k, chunk)
        for k in base_pairs:
            assert all(np.array_equal(a, b) for a, b in zip(base_pairs[k], pairs[k])), (k, chunk)
        assert bootstrap_sample_coverage_std(pairs, len(s), len(r), 20, np.random.default_rng(0)) == base_std


def test_density_coverage_match_brute_force_definition():
    # Naeem et al. 2020, Eq. 5-6 (closed balls), written directly with full matrices (fine at this size).
    s, r = _random_sets(seed=7, n=200, m=150, d=5)
    k = 5
    d_rr = np.linalg.norm(r.numpy()[:, None] - r.numpy()[None], axis=-1)
    radii = np.sort(d_rr, axis=1)[:, k]
    d_rs = np.linalg.norm(r.numpy()[:, None] - s.numpy()[None], axis=-1)  # M x N
    inside = d_rs <= radii[:, None]
    density = inside.sum() / (k * s.shape[0])
    coverage = inside.any(axis=1).mean()
    m = prdc(s, r, k_dc=k)
    assert m["density"] == pytest.approx(density, abs=1e-6)
    assert m["coverage"] == pytest.approx(coverage, abs=1e-12)


def test_indicator_bootstrap_matches_binomial_std():
    p, n = 0.3, 2000
    ind = {"precision": torch.from_numpy(np.random.default_rng(0).random(n) < p)}
    std = bootstrap_indicator_std(ind, 500, np.random.default_rng(1))["precision"]
    phat = ind["precision"].double().mean().item()
    # Std of a bootstrap std from B=500 resamples is ~1/sqrt(2B) = 3% relative: allow 15%.
    assert std == pytest.approx(math.sqrt(phat * (1 - phat) / n), rel=0.15)


def _dense_sample_bootstrap(s, r, k_prc, k_dc, draws):
    """Recall / coverage of each resample of the samples, from full distance matrices (fine at this size).

    As in bootstrap_sample_coverage_std, sample radii r_i are those of the full sample set."""
    s, r = s.double().numpy(), r.double().numpy()
    d_ss = np.linalg.norm(s[:, None] - s[None], axis=-1)
    d_rr = np.linalg.norm(r[:, None] - r[None], axis=-1)
    d_rs = np.linalg.norm(r[:, None] - s[None], axis=-1)  # M x N
    s_radii, r_radii = np.sort(d_ss, axis=1)[:, k_prc], np.sort(d_rr, axis=1)[:, k_dc]
    recall, coverage = [], []
    for draw in draws:
        d = d_rs[:, draw]  # duplicates are harmless for "is any drawn sample close enough"
        recall.append((d <= s_radii[draw][None]).any(axis=1).mean())
        coverage.append((d <= r_radii[:, None]).any(axis=1).mean())
    return {"recall": np.array(recall), "coverage": np.array(coverage)}


def test_sample_bootstrap_equals_dense_brute_force_for_the_same_draws():
    s, r = _random_sets(seed=8, n=120, m=150, d=4)
    B, k_prc, k_dc = 200, 3, 5
    _, pairs = manifold_indicators(s, r, k_prc, k_dc, chunk=50, return_pairs=True)
    got = bootstrap_sample_coverage_std(pairs, len(s), len(r), B, np.random.default_rng(3))
    # The documented draw: one [B, N] array of sample indices from the generator, shared by both metrics.
    dense = _dense_sample_bootstrap(s, r, k_prc, k_dc, np.random.default_rng(3).integers(0, len(s), size=(B, len(s))))
    for name in ("recall", "coverage"):
        assert 0 < dense[name].std() and got[name] == pytest.approx(dense[name].std(ddof=1), rel=1e-12), name


def test_recall_spread_resamples_the_samples():
    # References: two far-apart clusters of 200. Samples: 300 in cluster A, only 5 in cluster B, so recall on
    # B hinges on whether those 5 are drawn. Resampling the per-reference indicators (samples held fixed)
    # misses that; resampling the samples must match a brute-force bootstrap with its own independent draws.
    g = torch.Generator().manual_seed(10)
    far = torch.tensor([100.0, 0.0])
    r = torch.cat([torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + far])
    s = torch.cat([torch.randn(300, 2, generator=g), torch.randn(5, 2, generator=g) + far])
    ind, pairs = manifold_indicators(s, r, return_pairs=True)
    assert 0.6 < ind["recall"].double().mean() < 0.9  # A fully recalled, B partly
    B = 1000
    std = bootstrap_sample_coverage_std(pairs, len(s), len(r), B, np.random.default_rng(0))["recall"]
    held_fixed = bootstrap_indicator_std({"recall": ind["recall"]}, B, np.random.default_rng(0))["recall"]
    dense = _dense_sample_bootstrap(s, r, 3, 5, np.random.default_rng(1).integers(0, len(s), size=(B, len(s))))
    assert std > 2 * held_fixed
    # Two independent B=1000 estimates of one std: ~2-3% apart for this skewed statistic; allow 15%.
    assert std == pytest.approx(dense["recall"].std(ddof=1), rel=0.15)


# ------------------------------------------------------------------------------------------------- compute_metrics

CFG = {"extractor": "evaluator", "kid_subsets": 10, "kid_subset_size": 100, "isc_splits": 5, "bootstrap": 5,
       "progress": False}


def _feats(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return {"pool": torch.randn(n, 8, generator=g) + shift, "spatial": torch.randn(n, 12, generator=g) + shift,
            "logits": torch.randn(n, 10, generator=g) * 3}


def test_compute_metrics_keys_and_known_extremes():
    same = _feats(400, 0)
    out = compute_metrics(same, same, CFG)
    for key in ("fid", "sfid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "density",
                "coverage", "fid_std", "sfid_std", "precision_std", "recall_std", "density_std", "coverage_std",
                "num_samples", "num_reference"):
        assert key in out, key
    assert abs(out["fid"]) < 1e-6 and abs(out["sfid"]) < 1e-6
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0
    # Identical subsets of one set: unbiased MMD² is not exactly 0, but far below a shifted set's.
    far = compute_metrics(_feats(400, 1, shift=3.0), same, CFG)
    # Unit covariances, mean shifted by 3 in each of the 8 pool dims: FID ≈ |Δμ|² = 72; sampling noise
    # 2Δμ·ε has std ≈ sqrt(4 · 72 · 2/400) ≈ 1.2, plus an O(d²/n) covariance bias: 8 is ample.
    assert far["fid"] == pytest.approx(8 * 9.0, abs=8)
    assert far["kid_mean"] > 100 * abs(out["kid_mean"])
    assert far["precision"] < 0.05 and far["recall"] < 0.05


def test_compute_metrics_rejects_too_few_samples():
    with pytest.raises(GuidanceError, match="k=5") as e:
        compute_metrics(_feats(5, 0), _feats(400, 1), {**CFG, "kid_subset_size": 2})
    assert "\n" not in str(e.value)
    with pytest.raises(GuidanceError, match="kid_subset_size=100") as e:
        compute_metrics(_feats(50, 0), _feats(400, 1), CFG)
    assert "\n" not in str(e.value)


def test_per_class_needs_labels():
    f = _feats(400, 0)
    with pytest.raises(GuidanceError, match="per_class"):
        compute_metrics(f, f, {**CFG, "per_class": True})
    labels = torch.arange(400) % 4
    out = compute_metrics(f, f, {**CFG, "per_class": True, "bootstrap": 0}, labels, labels)
    assert set(out["per_class"]) == {"0", "1", "2", "3"}
    assert all(row["precision"] == 1.0 and abs(row["fid"]) < 1e-6 for row in out["per_class"].values())


# ------------------------------------------------------------------------------------------------- cache


def test_reference_cache_hits_and_invalidates_on_weights(tmp_path):
    calls = []

    def extract():
        calls.append(1)
        return {"pool": torch.randn(10, 3), "spatial": torch.randn(10, 4)}, torch.arange(10)

    key = cache_key("fashion_mnist", "train", None, "evaluator", "a" * 64, ["pool", "spatial"])
    f1, l1, hit1 = load_or_extract(tmp_path, key, extract)
    f2, l2, hit2 = load_or_extract(tmp_path, key, extract)
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert torch.equal(f1["pool"], f2["pool"]) and torch.equal(l1, l2)
    new_key = cache_key("fashion_mnist", "train", None, "evaluator", "b" * 64, ["pool", "spatial"])
    assert cache_path(tmp_path, new_key) != cache_path(tmp_path, key)
    _, _, hit3 = load_or_extract(tmp_path, new_key, extract)
    assert not hit3 and len(calls) == 2
    assert not list(tmp_path.glob("*.tmp"))


# ------------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_real_fashion_mnist_fid_orders_degradations(tmp_path):
    """Real test vs real train: small FID; blurred / noised test images: clearly larger FID, lower precision."""
    from pathlib import Path

    import torch.nn.functional as F

    from guidance.data import load_images
    from guidance.metrics.evaluate import evaluate_samples

    ckpt = Path(__file__).resolve().parents[1] / "pretrained/fashion_mnist/cpu/evaluator.pt"  # the shipped one
    if not ckpt.is_file():
        pytest.skip(f"{ckpt} missing: train one with guidance-train-evaluator and copy it there")
    test_images, test_labels = load_images("fashion_mnist", "test")
    cfg = {"extractor": "evaluator", "evaluator_checkpoint": str(ckpt), "cache_dir": str(tmp_path), "bootstrap": 0,
           "num_reference": 20000,  # a fixed-seed 20k subset of train keeps the k-NN passes to ~a minute
           "progress": False}
    data = {"name": "fashion_mnist", "root": None, "download": False, "path": None, "image_size": 28, "channels": 1}

    x = test_images.float()
    kernel = torch.ones(1, 1, 5, 5) / 25
    blurred = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), kernel).round().clamp(0, 255).to(torch.uint8)
    noised = (x + 40 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).round().clamp(0, 255)
    noised = noised.to(torch.uint8)

    real = evaluate_samples(test_images, test_labels, cfg, data)
    blur = evaluate_samples(blurred, test_labels, cfg, data)
    noise = evaluate_samples(noised, test_labels, cfg, data)
    print({name: {k: round(m[k], 4) for k in ("fid", "sfid", "precision", "recall", "density", "coverage",
                                               "is_mean", "kid_mean", "cmmd", "vendi", "class_acc",
                                               "class_target_prob")}
           for name, m in (("real", real), ("blur", blur), ("noise", noise))})
    for bad in (blur, noise):
        assert bad["fid"] > 5 * real["fid"]
        assert bad["precision"] < real["precision"] - 0.05
        assert bad["cmmd"] > 5 * max(real["cmmd"], 1e-3) and bad["class_acc"] < real["class_acc"] - 0.05
    assert real["precision"] > 0.6 and real["recall"] > 0.6


@pytest.mark.parametrize("n,d", [(500, 64), (40, 64)])  # full rank, and singular covariances (n < d)
def test_frechet_distance_equals_torch_fidelity(n, d):
    """Our eigh-based trace term against torch-fidelity's sqrtm-based FID on the same statistics."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    g = torch.Generator().manual_seed(d + n)
    mix = torch.randn(d, d, generator=g) / d ** 0.5
    a = torch.randn(n, d, generator=g) @ mix
    b = torch.randn(n, d, generator=g) @ (mix + 0.3 * torch.randn(d, d, generator=g) / d ** 0.5) + 0.2
    sa, sb = feature_statistics(a), feature_statistics(b)
    want = float(fid_statistics_to_metric(sa, sb, verbose=False)[KEY_METRIC_FID])
    assert frechet_distance(sa, sb) == pytest.approx(want, rel=1e-6, abs=1e-8)
    assert frechet_distance(sb, sa) == pytest.approx(want, rel=1e-6, abs=1e-8)  # symmetric


# ---- metrics beyond FID (issue 9): small cases with known answers ----

def test_vendi_of_copies_is_one_and_of_orthogonal_vectors_is_n():
    from guidance.metrics.beyond_fid import vendi_score

    assert vendi_score(torch.ones(50, 8) * torch.randn(1, 8)) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(torch.eye(16) * 3.0) == pytest.approx(16.0, rel=1e-9)
    two = torch.cat([torch.eye(4)[:1].repeat(30, 1), torch.eye(4)[1:2].repeat(10, 1)])  # weights 3/4, 1/4
    assert vendi_score(two) == pytest.approx(math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))), rel=1e-9)


def test_cmmd_is_the_unbiased_rbf_mmd_by_hand():
    from guidance.metrics.beyond_fid import cmmd

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 5, generator=g), torch.randn(40, 5, generator=g) + 0.5
    xn, yn = x / x.norm(dim=1, keepdim=True), y / y.norm(dim=1, keepdim=True)
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * 10.0**2))
    kxx = sum(k(xn[i], xn[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    kyy = sum(k(yn[i], yn[j]) for i in range(40) for j in range(40) if i != j) / (40 * 39)
    kxy = sum(k(a, b) for a in xn for b in yn) / (30 * 40)
    assert cmmd(x, y, chunk=7) == pytest.approx(1000 * (kxx + kyy - 2 * kxy), rel=1e-6)
    # A set against itself: the unbiased estimate is 2 (mean off-diagonal − mean of all) = 2 (m_off − 1)/n <= 0.
    assert cmmd(x, x) == pytest.approx(1000 * 2 * (kxx - 1) / 30, rel=1e-6)  # 2 (mean off-diagonal - mean of all)
    assert cmmd(x, y) > 0


def test_class_fidelity_indicators():
    from guidance.metrics.beyond_fid import class_fidelity

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 0.0, 0.0]])
    out = class_fidelity(logits, torch.tensor([0, 1, 0, 2]))
    assert out["class_acc"].tolist() == [1.0, 1.0, 0.0, 0.0]
    p = torch.softmax(logits.double(), 1)
    torch.testing.assert_close(out["class_target_prob"], p[[0, 1, 2, 3], [0, 1, 0, 2]])


def test_cmmd_with_a_precomputed_reference_term_is_the_same():
    from guidance.metrics.beyond_fid import cmmd, cmmd_reference_term

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g), torch.randn(25, 4, generator=g) * 2
    assert cmmd(x, y, ref_term=cmmd_reference_term(y)) == pytest.approx(cmmd(x, y), rel=1e-12)
    assert cmmd(x, y, ref_term=cmmd_reference_term(y) + 0.001) == pytest.approx(cmmd(x, y) + 1.0, rel=1e-9)
