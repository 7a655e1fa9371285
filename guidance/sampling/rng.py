"""Per-image random streams (the idea of edm2's StackedRandomGenerator).

Image i gets its own torch.Generator seeded from (seed, i) only, and draws happen in a fixed order (initial
noise, then each step's noise), so sample i is bitwise the same at every batch size, on every process, and at
every point of a scale sweep (paired comparisons). Labels use a separate generator per image, so the label mode
never shifts the noise stream.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from guidance.errors import GuidanceError

LABEL_MODES = ("uniform", "balanced")


def mixed_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, so (0, 1) and (1, 0) never collide."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def image_seed(seed: int, index: int, stream: int = 0) -> int:
    """Image `index`'s seed for one stream (noise, labels) of a run seeded `seed`."""
    return mixed_seed(seed, index, stream)


class PerImageRNG:
    """One generator per image: `randn(shape)` -> [B, *shape], `labels(num_classes, mode)` -> [B] int64."""

    def __init__(self, seed: int, indices: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu",
                 stream: int = 0):
        self.seed = int(seed)
        self.indices = [int(i) for i in indices]
        if any(i < 0 for i in self.indices):
            raise GuidanceError("PerImageRNG indices must be non-negative sample numbers")
        self.device = torch.device(device)
        # Generators live on the CPU: CPU draws are identical on every machine; the result is then moved.
        self.generators = [torch.Generator().manual_seed(image_seed(self.seed, i, stream)) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def stream(self, k: int) -> "PerImageRNG":
        """The same images' stream k (0: noise, 1: labels, 2+: strategies' own draws, e.g. ICG's labels)."""
        return PerImageRNG(self.seed, self.indices, self.device, stream=k)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.stack([torch.randn(tuple(shape), generator=g) for g in self.generators]).to(self.device)

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per image, from its stream."""
        return torch.cat([torch.randint(high, (1,), generator=g) for g in self.generators]).to(self.device)

    def labels(self, num_classes: int, mode: str = "uniform") -> torch.Tensor:
        """Uniform over classes from each image's own label stream, or `balanced`: i % num_classes."""
        if mode == "balanced":
            y = [i % num_classes for i in self.indices]
        elif mode == "uniform":
            y = [int(torch.randint(num_classes, (1,), generator=torch.Generator().manual_seed(
                image_seed(self.seed, i, stream=1)))) for i in self.indices]
        else:
            raise GuidanceError(f"unknown labels mode {mode!r}; use one of {', '.join(LABEL_MODES)}")
        return torch.tensor(y, dtype=torch.long, device=self.device)


class BatchRNG:
    """One generator for the whole batch: fast, but draws depend on batch composition.

    For statistical tests and toys with thousands of samples, where per-image streams are not needed.
    """

    def __init__(self, seed: int, batch_size: int, device: torch.device | str = "cpu"):
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.batch_size

    def stream(self, k: int) -> "BatchRNG":
        return BatchRNG(mixed_seed(self.generator.initial_seed(), k), self.batch_size, self.device)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn((self.batch_size, *shape), generator=self.generator).to(self.device)

    def randint(self, high: int) -> torch.Tensor:
        return torch.randint(high, (self.batch_size,), generator=self.generator).to(self.device)

    def labels(self, num_classes: int, mode: str = "uniform") -> torch.Tensor:
        if mode == "balanced":
            return torch.arange(self.batch_size, device=self.device) % num_classes
        if mode != "uniform":
            raise GuidanceError(f"unknown labels mode {mode!r}; use one of {', '.join(LABEL_MODES)}")
        return torch.randint(num_classes, (self.batch_size,), generator=self.generator).to(self.device)
