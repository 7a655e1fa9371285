"""Feature extractors: Inception's sFID layout (random weights, no download), the evaluator, error lines."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from guidance.errors import GuidanceError
from guidance.metrics.extractors import SFID_DIM, create_extractor, sha256_file
from guidance.nn.evaluator import EvaluatorNet

CPU = torch.device("cpu")


def _images(n=2, c=1, size=28, seed=0):
    return torch.randint(0, 256, (n, c, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_extractors_are_registered_with_torch_fidelity():
    assert "inception" in FEATURE_EXTRACTORS_REGISTRY and "evaluator" in FEATURE_EXTRACTORS_REGISTRY


def test_inception_sfid_feature_is_adm_mixed_6d_branch1x1_first_7_channels(random_inception_weights):
    # One image per forward: Inception at 299x299 is the slow part of this file on a CPU.
    ext = create_extractor("inception", ["2048", "logits_unbiased", "spatial"], str(random_inception_weights), CPU)
    assert ext.weights_sha256 == sha256_file(random_inception_weights)
    seen = {}
    ext.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: seen.setdefault("map", o.clone()))
    x = _images(n=1)
    pool, logits, spatial = ext(x)
    assert pool.shape == (1, 2048) and logits.shape == (1, 1008)
    assert SFID_DIM == 2023 and spatial.shape == (1, 2023)
    assert seen["map"].shape == (1, 192, 17, 17)  # 299x299 input -> the 17x17 grid of the Mixed_6 blocks
    # ADM flattens mixed_6/conv[..., :7] channel-last.
    assert torch.equal(spatial, seen["map"][:, :7].permute(0, 2, 3, 1).reshape(1, -1))

    # Asking for `spatial` alone must still run the network through Mixed_6d (torch-fidelity stops early
    # after the last requested layer); an RGB copy of the grayscale image gives the same features.
    only = create_extractor("inception", ["spatial"], str(random_inception_weights), CPU)
    (spatial_rgb,) = only(x.repeat(1, 3, 1, 1))
    assert torch.equal(spatial, spatial_rgb)


def test_inception_offline_without_weights_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(GuidanceError) as e:
        create_extractor("inception", ["2048"], None, CPU)
    msg = str(e.value)
    assert "\n" not in msg and "metrics.inception_weights=" in msg and "metrics=evaluator" in msg
    with pytest.raises(GuidanceError, match="metrics.inception_weights"):
        create_extractor("inception", ["2048"], str(tmp_path / "missing.pth"), CPU)


@pytest.fixture
def tiny_evaluator(tmp_path):
    from guidance.checkpoint import save_snapshot

    cfg = {"_target_": "guidance.nn.evaluator.EvaluatorNet", "image_size": 12, "in_channels": 1, "num_classes": 4,
           "channels": [4, 8, 8], "feature_dim": 6, "spatial_channels": 2, "dropout": 0.0}
    torch.manual_seed(0)
    net = EvaluatorNet(**{k: v for k, v in cfg.items() if k != "_target_"})
    path = tmp_path / "evaluator.pt"
    save_snapshot(path, "evaluator", net, cfg, step=0)
    return path, net.eval()


def test_evaluator_net_feature_layout():
    net = EvaluatorNet(image_size=28, in_channels=1, num_classes=10).eval()
    f = net.features(torch.zeros(3, 1, 28, 28))
    assert f["pool"].shape == (3, 128) and f["logits"].shape == (3, 10)
    assert f["spatial"].shape == (3, 8 * 7 * 7) == (3, net.spatial_dim)
    assert torch.equal(net(torch.zeros(3, 1, 28, 28)), f["logits"])


def test_evaluator_extractor_matches_the_network(tiny_evaluator):
    path, net = tiny_evaluator
    ext = create_extractor("evaluator", ["pool", "spatial", "logits"], str(path), CPU)
    assert ext.weights_sha256 == sha256_file(path)
    x = _images(n=5, size=12)
    pool, spatial, logits = ext(x)
    want = net.features(x.float() / 127.5 - 1)
    assert spatial.shape == (5, 2 * 3 * 3)
    assert torch.allclose(pool, want["pool"]) and torch.allclose(spatial, want["spatial"])
    assert torch.allclose(logits, want["logits"])
    with pytest.raises(GuidanceError, match="trained on 1x12x12"):
        ext(_images(n=2, size=28))


def test_evaluator_missing_checkpoint_says_what_to_run(tmp_path):
    with pytest.raises(GuidanceError, match="run guidance-train-evaluator first") as e:
        create_extractor("evaluator", ["pool"], str(tmp_path / "nope.pt"), CPU)
    assert "\n" not in str(e.value)


def test_unknown_extractor_name():
    with pytest.raises(GuidanceError, match="metrics.extractor"):
        create_extractor("vgg16", ["pool"], None, CPU)
