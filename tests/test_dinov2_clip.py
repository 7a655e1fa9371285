"""DINOv2 (FD-DINOv2) and CLIP (CMMD) extractors: the DINOv2 port against Meta's own code, torch-fidelity's
preprocessing, random-weight files of the real architectures, offline one-line errors, metrics end to end."""

from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch_fidelity.feature_extractor_clip import CLIPVisual, FeatureExtractorCLIP
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

from guidance.errors import GuidanceError
from guidance.metrics.dinov2 import DinoV2ViT
from guidance.metrics.evaluate import compute_metrics
from guidance.metrics.extractors import create_extractor, sha256_file
from guidance.metrics.registry import metric_label, metrics_for

CPU = torch.device("cpu")
REFERENCE = Path(__file__).parent / "data" / "dinov2_tiny_reference.pt"


def _images(n=3, c=1, size=28, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_dinov2_port_equals_metas_code():
    """tests/data/make_dinov2_tiny_reference.py ran facebookresearch/dinov2's DinoVisionTransformer (LayerScale,
    MemEffAttention without xFormers, offset-0.1 bicubic position interpolation) on random weights; our port
    loads the same state dict (strict) and must give the same class-token features, interpolated grid included."""
    ref = torch.load(REFERENCE, weights_only=True)
    net = DinoV2ViT(**ref["config"]).eval()
    net.load_state_dict(ref["state_dict"], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(net(ref["x"]), ref["y"], rtol=0, atol=1e-5)  # 5x5 patches from a 4x4 grid
        torch.testing.assert_close(net(ref["x_native"]), ref["y_native"], rtol=0, atol=1e-5)


@pytest.fixture
def dinov2_weights(tmp_path):
    torch.manual_seed(0)
    net = DinoV2ViT(embed_dim=128, depth=2, num_heads=2, patch_size=14, img_size=56)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(net.state_dict(), path)
    return path, net.eval()


def test_dinov2_extractor_preprocesses_like_torch_fidelity(dinov2_weights):
    path, net = dinov2_weights
    ext = create_extractor("dinov2", ["dinov2"], str(path), CPU)
    assert ext.weights_sha256 == sha256_file(path)
    x = _images()
    (feats,) = ext(x)
    # torch-fidelity's FeatureExtractorDinoV2.forward, by hand: RGB, TF1 bilinear to 224, ImageNet mean/std x 255.
    rgb = interpolate_bilinear_2d_like_tensorflow1x(x.repeat(1, 3, 1, 1).float(), size=(224, 224), align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    with torch.no_grad():
        torch.testing.assert_close(feats, net((rgb - mean) / std), rtol=1e-5, atol=1e-5)
    assert feats.shape == (3, 128)


def _clip_file(path: Path) -> Path:
    """A TorchScript file in OpenAI's layout (visual.* + text_projection) with a tiny random ViT."""
    torch.manual_seed(0)
    visual = CLIPVisual(embed_dim=16, image_resolution=28, vision_layers=1, vision_width=64, vision_patch_size=14)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual, self.text_projection = visual.visual, nn.Parameter(torch.randn(32, 16))

        def forward(self, x):
            return x + self.text_projection.sum()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(Holder(), torch.zeros(1)), str(path))
    return path


def test_clip_extractor_is_torch_fidelitys_clip_on_a_local_file(tmp_path):
    path = _clip_file(tmp_path / "clip_tiny.pt")
    ext = create_extractor("clip", ["clip"], str(path), CPU)
    x = _images()
    (feats,) = ext(x)
    theirs = FeatureExtractorCLIP("clip-vit-l-14-336px", ["clip"], feature_extractor_weights_path=str(path))
    (expected,) = theirs(x.repeat(1, 3, 1, 1))  # grayscale replicated to RGB first
    torch.testing.assert_close(feats, expected)
    assert feats.shape == (3, 16) and ext.weights_sha256 == sha256_file(path)


@pytest.mark.parametrize("name,option", [("dinov2", "dinov2_weights"), ("clip", "clip_weights")])
def test_offline_without_weights_is_one_line(name, option, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(GuidanceError) as e:
        create_extractor(name, [name], None, CPU)
    assert "\n" not in str(e.value) and f"metrics.{option}=" in str(e.value) and "metrics=evaluator" in str(e.value)
    with pytest.raises(GuidanceError, match=f"metrics.{option}"):
        create_extractor(name, [name], str(tmp_path / "missing.pth"), CPU)
    bad = tmp_path / "not_weights.pth"
    bad.write_bytes(b"truncated")
    with pytest.raises(GuidanceError, match=f"metrics.{option}") as e:
        create_extractor(name, [name], str(bad), CPU)
    assert "\n" not in str(e.value)


def test_embedding_only_extractors_get_the_embedding_metrics(dinov2_weights):
    """DINOv2 has no spatial map or class logits: FD, KID, P&R, D&C, CMMD, Vendi; FID is reported as FD_DINOv2."""
    assert metrics_for("dinov2") == ["fid", "kid", "precision", "recall", "density", "coverage", "cmmd", "vendi"]
    assert metric_label("fid", "dinov2", qualify=False) == "FD_DINOv2" and metric_label("cmmd", "clip", True) == "CMMD"
    with pytest.raises(GuidanceError, match="provides only"):
        metrics_for("dinov2", ["sfid"])
    path, _ = dinov2_weights
    ext = create_extractor("dinov2", ["dinov2"], str(path), CPU)
    (s,), (r,) = ext(_images(12, seed=1)), ext(_images(12, seed=2))
    cfg = {"extractor": "dinov2", "kid_subset_size": 6, "kid_subsets": 3, "bootstrap": 0, "progress": False}
    out = compute_metrics({"dinov2": s}, {"dinov2": r}, cfg)
    assert {"fid", "kid_mean", "precision", "recall", "density", "coverage", "cmmd", "vendi"} <= set(out)
    assert "sfid" not in out and "is_mean" not in out
    same = compute_metrics({"dinov2": r}, {"dinov2": r}, cfg)
    assert abs(same["fid"]) < 1e-6 and same["precision"] == same["recall"] == 1.0
