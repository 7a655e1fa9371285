"""guidance.data on the fake IDX fixture (real loaders, tiny files) and on small npz / image folders."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from guidance import data
from guidance.errors import GuidanceError


def test_fashion_mnist_from_root_matches_files(fake_fashion_mnist):
    images, labels = data.load_images("fashion_mnist", "train", root=fake_fashion_mnist.root)
    assert images.shape == (64, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (64,) and labels.dtype == torch.int64
    assert torch.equal(images[:, 0], torch.from_numpy(fake_fashion_mnist.train_images))
    assert torch.equal(labels, torch.from_numpy(fake_fashion_mnist.train_labels).long())
    test_images, test_labels = data.load_images("fashion_mnist", "test", root=fake_fashion_mnist.root)
    assert test_images.shape == (32, 1, 28, 28)
    assert torch.equal(test_labels, torch.from_numpy(fake_fashion_mnist.test_labels).long())
    assert set(labels.tolist()) == set(range(10))


def test_decoded_arrays_are_cached_per_process(fake_fashion_mnist):
    a = data.load_images("fashion_mnist", "train", root=fake_fashion_mnist.root)
    b = data.load_images("fashion_mnist", "train", root=str(fake_fashion_mnist.root))
    assert a[0] is b[0] and a[1] is b[1]


def test_torchvision_layout_root_is_used_directly(fake_fashion_mnist, tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in fake_fashion_mnist.root.glob("*.gz"):
        with gzip.open(gz, "rb") as fin, open(raw / gz.stem, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    images, labels = data.load_images("fashion_mnist", "test", root=tmp_path)
    assert torch.equal(images[:, 0], torch.from_numpy(fake_fashion_mnist.test_images))


def test_load_dataset_checks_config(fake_fashion_mnist):
    cfg = {"name": "fashion_mnist", "root": str(fake_fashion_mnist.root), "download": False, "path": None,
           "image_size": 28, "channels": 1, "num_classes": 10}
    images, _ = data.load_dataset(cfg)
    assert images.shape[1:] == (1, 28, 28)
    with pytest.raises(GuidanceError, match="data.image_size=28"):
        data.load_dataset({**cfg, "image_size": 32})
    with pytest.raises(GuidanceError, match="data.channels=1"):
        data.load_dataset({**cfg, "channels": 3})
    with pytest.raises(GuidanceError, match="data.num_classes=10"):
        data.load_dataset({**cfg, "num_classes": 5})


def test_range_conversions_are_exact_inverses():
    u = torch.arange(256, dtype=torch.uint8)
    x = data.to_model_range(u)
    assert x.dtype == torch.float32 and x.min() == -1.0 and x.max() == 1.0
    assert torch.allclose(x[1:] - x[:-1], torch.full((255,), 2 / 255))  # evenly spaced steps of 2/255
    assert torch.equal(data.to_uint8(x), u)
    # Out of range values clamp; half a level rounds to the nearest level.
    assert data.to_uint8(torch.tensor([-3.0, 3.0, -1 + 2 / 255 * 0.4, -1 + 2 / 255 * 0.6])).tolist() == [0, 255, 0, 1]


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(GuidanceError) as e:
        data.load_images("imagenet_full")
    msg = str(e.value)
    assert "\n" not in msg
    for name in ("fashion_mnist", "mnist", "cifar10", "npz", "folder"):
        assert name in msg


def test_missing_fashion_mnist_names_all_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "SYSTEM_DATASET_DIRS", {"fashion_mnist": str(tmp_path / "no-debian")})
    monkeypatch.setenv("GUIDANCE_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GuidanceError) as e:
        data.load_images("fashion_mnist", "train", root=empty)
    msg = str(e.value)
    assert "\n" not in msg
    assert "data.root=" in msg and "apt-get install dataset-fashion-mnist" in msg and "data.download=true" in msg
    assert str(empty) in msg


def test_missing_cifar10_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("GUIDANCE_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(GuidanceError, match=r"data\.root=.*data\.download=true"):
        data.load_images("cifar10", "train", root=tmp_path)


def test_npz_nhwc_to_nchw(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=(5, 6, 6, 3), dtype=np.uint8)
    lab = np.array([0, 3, 1, 2, 3])
    np.savez(tmp_path / "batch.npz", arr, lab)  # positional -> arr_0, arr_1 (ADM's convention)
    images, labels = data.load_images("npz", path=tmp_path / "batch.npz")
    assert images.shape == (5, 3, 6, 6)
    assert torch.equal(images.permute(0, 2, 3, 1), torch.from_numpy(arr))
    assert labels.tolist() == lab.tolist() and labels.dtype == torch.int64
    info = data.dataset_info("npz", path=tmp_path / "batch.npz")
    assert (info.num_classes, info.channels, info.image_size) == (4, 3, 6)


def test_npz_errors(tmp_path):
    with pytest.raises(GuidanceError, match="data.path"):
        data.load_images("npz", path=tmp_path / "missing.npz")
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(GuidanceError, match="arr_0"):
        data.load_images("npz", path=tmp_path / "bad.npz")


def test_folder_resizes_to_image_size(tmp_path):
    from PIL import Image

    for k, cls in enumerate(["cat", "dog"]):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (20, 16), color=(100 * k, 50, 200)).save(tmp_path / cls / f"{i}.png")
    images, labels = data.load_images("folder", path=tmp_path, image_size=8)
    assert images.shape == (6, 3, 8, 8) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # ImageFolder: classes sorted by folder name
    assert images[:3, 0].unique().tolist() == [0] and images[3:, 0].unique().tolist() == [100]


@pytest.mark.skipif(not Path(data.SYSTEM_DATASET_DIRS["fashion_mnist"]).is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_package_path_is_found():
    images, labels = data.load_images("fashion_mnist", "test")
    assert images.shape == (10000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [1000] * 10  # Fashion-MNIST's test split is balanced


def test_explicit_root_without_the_data_stops_instead_of_using_the_system_copy(fake_fashion_mnist, tmp_path,
                                                                                monkeypatch):
    """Issue 11: data.root=<empty folder> used to fall back to the Debian copy silently."""
    monkeypatch.setattr(data, "SYSTEM_DATASET_DIRS", {"fashion_mnist": str(fake_fashion_mnist.root)})
    monkeypatch.setenv("GUIDANCE_CACHE_DIR", str(tmp_path / "cache"))
    data._load_cached.cache_clear() if hasattr(data._load_cached, "cache_clear") else None
    images, _ = data.load_images("fashion_mnist", "train")  # no root: the system copy is fine
    assert len(images) == len(fake_fashion_mnist.train_images)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GuidanceError, match="no IDX files in data.root=.*not swapped"):
        data.load_images("fashion_mnist", "train", root=empty)
