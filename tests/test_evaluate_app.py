"""guidance-evaluate end to end on tiny npz files with an untrained tiny evaluator; its one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guidance.errors import GuidanceError
from guidance.metrics.evaluate import evaluate_folder
from guidance.nn.evaluator import EvaluatorNet

SIZE = 12
EVAL_CFG = {"_target_": "guidance.nn.evaluator.EvaluatorNet", "image_size": SIZE, "in_channels": 1, "num_classes": 4,
            "channels": [4, 8, 8], "feature_dim": 6, "spatial_channels": 2, "dropout": 0.0}
DATA = {"name": "fashion_mnist", "root": None, "download": False, "path": None, "image_size": 28, "channels": 1,
        "num_classes": 10}
KEYS = ("fid", "sfid", "is_mean", "is_std", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
        "fid_std", "sfid_std", "precision_std", "recall_std", "density_std", "coverage_std", "num_samples",
        "num_reference", "extractor", "weights_sha256", "torch_fidelity_version", "cmmd", "vendi", "class_acc",
        "class_acc_std", "class_target_prob")


def save_evaluator(path: Path, seed: int = 0) -> Path:
    from guidance.checkpoint import save_snapshot

    torch.manual_seed(seed)
    net = EvaluatorNet(**{k: v for k, v in EVAL_CFG.items() if k != "_target_"})
    return save_snapshot(path, "evaluator", net, EVAL_CFG, step=0)


def save_batch(path: Path, n: int, seed: int, labels: bool = True, **override) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"arr_0": rng.integers(0, 256, size=(n, SIZE, SIZE, 1), dtype=np.uint8)}
    if labels:
        arrays["arr_1"] = rng.integers(0, 4, size=n)
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def setup(tmp_path):
    ckpt = save_evaluator(tmp_path / "evaluator.pt")
    samples = save_batch(tmp_path / "job" / "samples.npz", 40, seed=1)
    ref = save_batch(tmp_path / "ref.npz", 50, seed=2)
    cfg = {"extractor": "evaluator", "evaluator_checkpoint": str(ckpt), "cache_dir": str(tmp_path / "cache"),
           "kid_subsets": 5, "kid_subset_size": 20, "isc_splits": 2, "bootstrap": 3, "progress": False}
    return tmp_path, samples, ref, cfg


def test_app_writes_metrics_json(setup):
    tmp, samples, ref, cfg = setup
    cmd = [sys.executable, "-m", "guidance.apps.evaluate", f"samples={samples.parent}", f"reference_npz={ref}",
           f"metrics.evaluator_checkpoint={cfg['evaluator_checkpoint']}", f"metrics.cache_dir={cfg['cache_dir']}",
           "metrics.kid_subsets=5", "metrics.kid_subset_size=20", "metrics.isc_splits=2", "metrics.bootstrap=3",
           "metrics.per_class=true", "metrics.progress=false", "logger=none", f"hydra.run.dir={tmp / 'hydra'}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    written = json.loads((samples.parent / "metrics.json").read_text())
    assert written["format"] == 2 and set(written["extractors"]) == {"evaluator"}
    out = written["extractors"]["evaluator"]
    for key in KEYS:
        assert key in out, key
    assert out["num_samples"] == 40 and out["num_reference"] == 50 and out["extractor"] == "evaluator"
    assert set(out["per_class"]) <= {"0", "1", "2", "3"}
    assert 0 <= out["precision"] <= 1 and out["is_mean"] >= 1.0 - 1e-9
    assert not list(samples.parent.glob("*.tmp"))


def test_cache_is_reused_and_invalidated_by_new_evaluator_weights(setup):
    tmp, samples, ref, cfg = setup
    first = evaluate_folder(samples, cfg, DATA, ref)
    again = evaluate_folder(samples, cfg, DATA, ref)
    assert not first["reference"]["cache_hit"] and again["reference"]["cache_hit"]
    assert again["fid"] == first["fid"]
    save_evaluator(Path(cfg["evaluator_checkpoint"]), seed=1)  # "retrained" evaluator, same path
    retrained = evaluate_folder(samples, cfg, DATA, ref)
    assert not retrained["reference"]["cache_hit"]
    assert retrained["weights_sha256"] != first["weights_sha256"] and retrained["fid"] != first["fid"]


def test_identical_batches_score_perfectly(setup):
    tmp, samples, ref, cfg = setup
    out = evaluate_folder(samples, {**cfg, "bootstrap": 0}, DATA, samples)
    assert abs(out["fid"]) < 1e-5 and out["precision"] == 1.0 and out["recall"] == 1.0 and out["coverage"] == 1.0


def _one_line_error(fn, *args, match: str):
    with pytest.raises(GuidanceError, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_sample_files_are_one_line_errors(setup):
    tmp, _, ref, cfg = setup
    bad = tmp / "bad"
    rng = np.random.default_rng(0)
    cases = {
        "float.npz": ({"arr_0": rng.random((40, SIZE, SIZE, 1)).astype(np.float32)}, "expected uint8"),
        "nchw.npz": ({"arr_0": rng.integers(0, 256, (40, 1, SIZE, SIZE), dtype=np.uint8)}, "transpose to NHWC"),
        "two_channels.npz": ({"arr_0": rng.integers(0, 256, (40, SIZE, SIZE, 2), dtype=np.uint8)}, "1 or 3 channels"),
        "no_arr0.npz": ({"images": rng.integers(0, 256, (40, SIZE, SIZE, 1), dtype=np.uint8)}, "no arr_0"),
        "labels.npz": ({"arr_0": rng.integers(0, 256, (40, SIZE, SIZE, 1), dtype=np.uint8),
                        "arr_1": np.zeros(3, dtype=np.int64)}, "arr_1 has shape"),
        # issue 11: float, negative and out-of-range labels used to be accepted
        "float_labels.npz": ({"arr_0": rng.integers(0, 256, (40, SIZE, SIZE, 1), dtype=np.uint8),
                              "arr_1": np.full(40, 1.5)}, "non-negative integer class labels"),
        "negative_labels.npz": ({"arr_0": rng.integers(0, 256, (40, SIZE, SIZE, 1), dtype=np.uint8),
                                 "arr_1": np.full(40, -1)}, "non-negative integer class labels"),
        "label_range.npz": ({"arr_0": rng.integers(0, 256, (40, SIZE, SIZE, 1), dtype=np.uint8),
                             "arr_1": np.full(40, 12)}, "labels go up to 12 but .* has 10 classes"),
    }
    for name, (arrays, match) in cases.items():
        bad.mkdir(exist_ok=True)
        np.savez(bad / name, **arrays)
        _one_line_error(evaluate_folder, bad / name, cfg, DATA, ref, match=match)
    (bad / "junk.npz").write_text("not a zip")
    _one_line_error(evaluate_folder, bad / "junk.npz", cfg, DATA, ref, match="not a readable .npz")
    _one_line_error(evaluate_folder, tmp / "nowhere", cfg, DATA, ref, match="no samples file")


def test_counts_shapes_and_checkpoint_errors(setup):
    tmp, samples, ref, cfg = setup
    few = save_batch(tmp / "few" / "samples.npz", 5, seed=3)
    _one_line_error(evaluate_folder, few, {**cfg, "kid_subset_size": 2}, DATA, ref, match="more than k=5")
    _one_line_error(evaluate_folder, save_batch(tmp / "f2" / "samples.npz", 15, seed=3), cfg, DATA, ref,
                    match="kid_subset_size=20")
    big = tmp / "big" / "samples.npz"
    big.parent.mkdir()
    np.savez(big, arr_0=np.zeros((40, 16, 16, 3), np.uint8))
    _one_line_error(evaluate_folder, big, cfg, DATA, ref, match="3x16x16 .* is 1x12x12")
    # Against the data split (1x28x28 for fashion_mnist), checked before any image is read.
    _one_line_error(evaluate_folder, samples, cfg, DATA, None, match="reference \\(fashion_mnist train\\) is 1x28x28")
    missing = {**cfg, "evaluator_checkpoint": str(tmp / "no" / "evaluator.pt")}
    _one_line_error(evaluate_folder, samples, missing, DATA, ref, match="run guidance-train-evaluator first")


def test_app_error_is_a_single_line_with_exit_status_2(setup):
    tmp, samples, ref, cfg = setup
    cmd = [sys.executable, "-m", "guidance.apps.evaluate", f"samples={samples}", f"reference_npz={ref}",
           f"metrics.evaluator_checkpoint={tmp / 'missing.pt'}", "logger=none", f"hydra.run.dir={tmp / 'hydra'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, env={**os.environ, "WANDB_MODE": "disabled"},
                         timeout=300)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "guidance-train-evaluator" in lines[0]


def test_train_evaluator_then_evaluate_against_the_data_split(fake_fashion_mnist, tmp_path):
    """guidance-train-evaluator on the fake IDX fixture -> snapshot with accuracy; evaluate its test images."""
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR
    from guidance.training.evaluator import train_evaluator
    from guidance.checkpoint import load_snapshot

    overrides = [f"data.root={fake_fashion_mnist.root}", "logger=none", f"out_dir={tmp_path / 'ev'}", "epochs=2",
                 "batch_size=16", "evaluator.channels=[4,8,8]", "evaluator.feature_dim=8", "log_every=1"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train_evaluator", overrides=overrides)
        mcfg = compose("evaluate", overrides=[f"data.root={fake_fashion_mnist.root}", "samples=unused"])
    info = train_evaluator(cfg)
    net, meta = load_snapshot(info["path"], role="evaluator")
    assert meta["extra"]["test_accuracy"] == info["test_accuracy"] and 0.0 <= info["test_accuracy"] <= 1.0

    images = torch.from_numpy(fake_fashion_mnist.test_images[:, None])
    np.savez(tmp_path / "samples.npz", arr_0=images.permute(0, 2, 3, 1).numpy(),
             arr_1=fake_fashion_mnist.test_labels.astype(np.int64))
    metrics = {**mcfg.metrics, "evaluator_checkpoint": info["path"], "cache_dir": str(tmp_path / "cache"),
               "kid_subsets": 5, "kid_subset_size": 16, "isc_splits": 2, "bootstrap": 0, "progress": False}
    out = evaluate_folder(tmp_path, metrics, dict(mcfg.data))
    assert out["num_samples"] == 32 and out["num_reference"] == 64
    assert out["reference"]["dataset"] == "fashion_mnist" and out["reference"]["split"] == "train"
    assert (tmp_path / "metrics.json").is_file()


# ---- evaluation v2 fixes (issue 9): each test fails on the code before its fix ----

def test_folder_reference_gets_the_whole_data_config(tmp_path):
    """data=folder with data.image_size set: the size reaches the loader (it was dropped on the way)."""
    from PIL import Image

    from guidance.metrics.evaluate import _load_reference_images, metrics_config

    for k, cls in enumerate(["a", "b"]):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 16), color=(100 * k, 50, 200)).save(tmp_path / "imgs" / cls / f"{i}.png")
    data_cfg = {"name": "folder", "root": None, "download": False, "path": str(tmp_path / "imgs"), "image_size": SIZE,
                "channels": 3, "num_classes": 2}
    images, labels = _load_reference_images(data_cfg, None, metrics_config({"reference_split": "train"}))
    assert images.shape == (6, 3, SIZE, SIZE) and labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_two_npz_datasets_never_share_cached_reference_features(setup):
    """The cache key is the data module's fingerprint (content), not the dataset kind "npz"."""
    from guidance.data import dataset_fingerprint
    from guidance.metrics.evaluate import evaluate_samples, load_images_npz

    tmp, samples, _, cfg = setup
    a, b = save_batch(tmp / "a.npz", 50, seed=5), save_batch(tmp / "b.npz", 50, seed=6)
    data = lambda p: {"name": "npz", "root": None, "download": False, "path": str(p), "image_size": SIZE,
                      "channels": 1, "num_classes": 4}
    assert dataset_fingerprint(data(a)) != dataset_fingerprint(data(b))
    assert dataset_fingerprint(data(a)) == dataset_fingerprint(data(a))
    images, labels = load_images_npz(samples)
    first = evaluate_samples(images, labels, cfg, data(a))
    second = evaluate_samples(images, labels, cfg, data(b))
    assert not second["reference"]["cache_hit"] and second["fid"] != first["fid"]
    assert evaluate_samples(images, labels, cfg, data(a))["reference"]["cache_hit"]  # same data: reused
    save_batch(tmp / "a.npz", 50, seed=7)  # the same path with new content is another dataset
    assert not evaluate_samples(images, labels, cfg, data(a))["reference"]["cache_hit"]


def test_density_is_float64():
    from guidance.metrics.prdc import manifold_indicators

    g = torch.Generator().manual_seed(0)
    s, r = torch.randn(300, 4, generator=g), torch.randn(400, 4, generator=g)
    ind = manifold_indicators(s, r, k_prc=3, k_dc=7)
    assert ind["density"].dtype == torch.float64
    counts = torch.round(ind["density"] * 7)
    torch.testing.assert_close(ind["density"], counts / 7, rtol=0, atol=1e-15)  # exact k-ths, no float32 rounding


# ---- ADM reference batches (issue 9) ----

def test_reference_batch_statistics_are_written_and_used(setup):
    """export -> ADM layout with our statistics; evaluating against it uses mu/sigma (a shifted mu changes FID by
    exactly ||shift||²), while statistics from another feature space are ignored, with the reason recorded."""
    from guidance.metrics.evaluate import evaluate_samples, export_reference_batch, load_images_npz
    from guidance.metrics.fid import feature_statistics, frechet_distance

    tmp, samples, ref, cfg = setup
    out = export_reference_batch(tmp / "ref_adm.npz", cfg, None, reference_npz=ref)
    with np.load(out) as z:
        assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s", "extractor", "weights_sha256"} <= set(z.files)
        assert z["arr_0"].shape == (50, SIZE, SIZE, 1) and z["mu"].shape == (6,)  # pool: feature_dim 6
        assert z["sigma_s"].shape == (z["mu_s"].shape[0],) * 2
        arrays = {k: z[k] for k in z.files}
    images, labels = load_images_npz(samples)
    base = evaluate_samples(images, labels, cfg, None, reference_npz=out)
    assert base["reference"]["statistics"].startswith("precomputed")
    recomputed = evaluate_samples(images, labels, cfg, None, reference_npz=ref)
    assert recomputed["reference"]["statistics"].startswith("recomputed")
    assert base["fid"] == pytest.approx(recomputed["fid"], rel=1e-9)  # same statistics, either way
    shift = np.full(6, 0.5)
    np.savez(tmp / "shifted.npz", **{**arrays, "mu": arrays["mu"] + shift})
    shifted = evaluate_samples(images, labels, cfg, None, reference_npz=tmp / "shifted.npz")
    from guidance.metrics import extractors as ext
    from guidance.metrics.features import extract_features

    net = ext.create_extractor("evaluator", ["pool"], cfg["evaluator_checkpoint"], torch.device("cpu"))
    sample_stats = feature_statistics(extract_features(images, net, 64, False)["pool"])
    want = frechet_distance(sample_stats, {"mu": arrays["mu"] + shift, "sigma": arrays["sigma"]})
    assert shifted["fid"] == pytest.approx(want, rel=1e-6) and abs(shifted["fid"] - base["fid"]) > 1e-3
    np.savez(tmp / "foreign.npz", **{**arrays, "extractor": np.array("inception")})
    foreign = evaluate_samples(images, labels, cfg, None, reference_npz=tmp / "foreign.npz")
    assert "inception" in foreign["reference"]["statistics"] and foreign["fid"] == pytest.approx(base["fid"], rel=1e-9)
    adm_style = {k: v for k, v in arrays.items() if k not in ("extractor", "weights_sha256")}
    np.savez(tmp / "adm.npz", **adm_style)  # ADM's own files carry Inception statistics: not for the evaluator
    assert "Inception" in evaluate_samples(images, labels, cfg, None, reference_npz=tmp / "adm.npz")["reference"]["statistics"]


def test_app_exports_a_reference_batch_without_samples_and_needs_one_of_them(setup):
    tmp, _, ref, cfg = setup
    base = [sys.executable, "-m", "guidance.apps.evaluate", f"reference_npz={ref}", "logger=none",
            f"metrics.evaluator_checkpoint={cfg['evaluator_checkpoint']}", "metrics.progress=false",
            f"hydra.run.dir={tmp / 'hydra'}"]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    res = subprocess.run(base + [f"write_reference={tmp / 'exported.npz'}"], capture_output=True, text=True,
                         cwd=tmp, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(tmp / "exported.npz") as z:
        assert str(z["extractor"]) == "evaluator" and z["arr_0"].shape[0] == 50
    res = subprocess.run(base, capture_output=True, text=True, cwd=tmp, env=env, timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1].startswith("error: pass samples=")


def test_metrics_json_keeps_one_result_per_extractor_of_the_same_samples(setup, tmp_path):
    """Evaluating a point with a second extractor adds its result; new samples (by content) drop the old ones;
    evaluate_folder_if_stale reuses a result only for the same samples, settings and extractor."""
    from guidance.metrics.dinov2 import DinoV2ViT
    from guidance.metrics.evaluate import evaluate_folder_if_stale

    _, samples, ref, cfg = setup
    torch.manual_seed(0)
    torch.save(DinoV2ViT(embed_dim=64, depth=1, num_heads=1, patch_size=14, img_size=28).state_dict(),
               tmp_path / "dino.pth")
    dino = {**cfg, "extractor": "dinov2", "dinov2_weights": str(tmp_path / "dino.pth")}
    assert evaluate_folder_if_stale(samples, cfg, DATA, ref) is not None
    assert evaluate_folder_if_stale(samples, dino, DATA, ref) is not None
    written = json.loads((samples.parent / "metrics.json").read_text())
    assert set(written["extractors"]) == {"evaluator", "dinov2"}
    assert "sfid" in written["extractors"]["evaluator"] and "sfid" not in written["extractors"]["dinov2"]
    assert evaluate_folder_if_stale(samples, cfg, DATA, ref) is None  # both still hold
    assert evaluate_folder_if_stale(samples, dino, DATA, ref) is None
    assert evaluate_folder_if_stale(samples, {**dino, "k_prc": 4}, DATA, ref) is not None  # settings changed
    save_batch(samples, 40, seed=7)  # new samples at the same path, same size
    evaluate_folder(samples, cfg, DATA, ref)
    assert set(json.loads((samples.parent / "metrics.json").read_text())["extractors"]) == {"evaluator"}
    assert evaluate_folder_if_stale(samples, dino, DATA, ref) is not None


def test_corrupt_reference_cache_is_rebuilt_and_an_empty_npz_is_one_line(setup, capsys):
    """Issue 11: a corrupt cache file was a traceback; an npz with no images too."""
    tmp, samples, ref, cfg = setup
    first = evaluate_folder(samples, cfg, DATA, ref)
    (cache,) = Path(cfg["cache_dir"]).glob("*.npz")
    cache.write_bytes(b"PK\x03\x04 truncated")
    again = evaluate_folder(samples, cfg, DATA, ref)
    assert "unreadable" in capsys.readouterr().out and not again["reference"]["cache_hit"]
    assert again["fid"] == first["fid"]
    np.load(cache)  # rewritten whole
    empty = save_batch(tmp / "empty" / "samples.npz", 0, seed=3)
    _one_line_error(evaluate_folder, empty, cfg, DATA, ref, match="holds no images")
