"""Shared fixtures: tiny Fashion-MNIST-format IDX files, so data, training and evaluation tests run through the
real loaders (`data.root=<fixture>`) without the real dataset."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

IMAGE_SIZE, NUM_CLASSES = 28, 10


@dataclass
class FakeIDX:
    root: Path               # pass as data.root
    train_images: np.ndarray  # uint8 [N, 28, 28]
    train_labels: np.ndarray  # uint8 [N]
    test_images: np.ndarray
    test_labels: np.ndarray


def make_class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Structured content per class: class k is a bright horizontal bar at rows 2k+3..2k+6 over dim noise,
    so a classifier can tell classes apart and samples have visible structure."""
    images = rng.integers(0, 40, size=(len(labels), IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for i, k in enumerate(labels):
        images[i, 2 * k + 3: 2 * k + 7, 4:24] = 200 + rng.integers(0, 56)
    return images


def write_idx_images(path: Path, images: np.ndarray) -> None:
    # IDX format: big-endian magic 0x00000803 (uint8, 3 dims), then the dims, then the raw bytes.
    header = struct.pack(">IIII", 0x0803, *images.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", 0x0801, len(labels)) + labels.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> FakeIDX:
    """Gzipped IDX files named as in the Debian package (train-images-idx3-ubyte.gz, t10k-..., ...)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        labels = np.arange(n) % NUM_CLASSES  # every class present, balanced
        rng.shuffle(labels)
        images = make_class_images(labels, rng)
        write_idx_images(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_labels(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels.astype(np.uint8)
    return FakeIDX(root=root, **arrays)


@pytest.fixture(scope="session")
def fake_fashion_mnist(tmp_path_factory) -> FakeIDX:
    """64 train + 32 test images in Fashion-MNIST's gzipped IDX format."""
    return write_fake_fashion_mnist(tmp_path_factory.mktemp("fake_fashion_mnist"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """Staged/downloaded data go to a per-session temp cache (not ~/.cache); wandb stays off.
    Subprocesses inherit both through the environment."""
    monkeypatch.setenv("GUIDANCE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "guidance_cache"))
    monkeypatch.setenv("WANDB_MODE", "disabled")


# In-process numerical test modules run their tiny networks on one intra-op thread: with two OpenMP threads on a
# 2-core machine that is also running another process (a subprocess test, a compile worker), spin-waiting made
# a 5-step chain of the engine matrix take 14-43 s instead of 1 s. Their assertions hold at any thread count.
ONE_THREAD_MODULES = {"test_engine_matrix", "test_engine_contract", "test_samplers", "test_sampler_peers",
                      "test_guiders", "test_guiders_modern", "test_guiders_peers", "test_guider_schedule",
                      "test_new_guiders_schedule", "test_guider_apg", "test_diffusion", "test_respace"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread_for_numerical_modules(request):
    if request.module.__name__.rsplit(".", 1)[-1] not in ONE_THREAD_MODULES:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory) -> Path:
    """A state dict for torch-fidelity's Inception built from random init: its constructor always loads
    weights, so loading is stubbed out once to get the architecture's own (random) parameters."""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    with mock.patch.object(tf_inception, "load_state_dict_from_url", return_value=None), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        net = tf_inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(net.state_dict(), path)
    return path
