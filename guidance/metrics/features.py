"""Run a registered extractor over in-memory uint8 images through torch-fidelity's batching loop."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.utils import get_featuresdict_from_dataset


class Uint8Images(Dataset):
    """uint8 NCHW tensor as the Dataset torch-fidelity iterates (one image per item)."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def extract_features(images: torch.Tensor, extractor: FeatureExtractorBase, batch_size: int = 256,
                     progress: bool = True) -> dict[str, torch.Tensor]:
    """Features on CPU, float32, keyed by layer name. `extractor` already sits on its device."""
    cuda = next(extractor.parameters()).is_cuda
    # save_cpu_ram=True -> no DataLoader worker processes: the images are already in memory.
    return get_featuresdict_from_dataset(Uint8Images(images), extractor, batch_size, cuda, True, progress)
