"""EvaluatorNet: a small CNN classifier whose features stand in for Inception-v3 on small datasets.

Inception-v3 features are the standard for FID, but they were learned on 299x299 ImageNet photos and need a
download; on 28x28 Fashion-MNIST a classifier trained on the dataset itself gives features that are both
offline and more sensitive to what matters there. It plays Inception's three roles:

- `pool`    : the penultimate vector (global average pool -> linear -> ReLU), for FID / KID / P&R / D&C
              (the analogue of Inception's 2048-d pool_3);
- `spatial` : the first `spatial_channels` channels of the last conv stage's map (image_size/4 square,
              7x7 for 28x28), flattened channel-last like ADM does for `mixed_6/conv` -> sFID
              (8 x 7 x 7 = 392-d by default);
- `logits`  : class logits, for the Inception Score.

Input: float NCHW in [-1, 1] (the toolkit's model range); the metrics extractor converts uint8 first.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class EvaluatorNet(nn.Module):
    def __init__(self, image_size: int = 28, in_channels: int = 1, num_classes: int = 10,
                 channels: tuple[int, ...] | list[int] = (32, 64, 128), feature_dim: int = 128,
                 spatial_channels: int = 8, dropout: float = 0.2):
        super().__init__()
        c1, c2, c3 = channels
        if spatial_channels > c3:
            raise ValueError(f"spatial_channels={spatial_channels} exceeds the last stage's {c3} channels")
        self.image_size, self.in_channels, self.num_classes = image_size, in_channels, num_classes
        self.spatial_channels = spatial_channels
        # Two stride-2 pools: 28 -> 14 -> 7 (32 -> 16 -> 8); the last stage keeps its resolution so the
        # spatial map still carries layout, which is what sFID is meant to see.
        self.stage1 = nn.Sequential(_conv_bn_relu(in_channels, c1), _conv_bn_relu(c1, c1), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(_conv_bn_relu(c1, c2), _conv_bn_relu(c2, c2), nn.MaxPool2d(2))
        self.stage3 = nn.Sequential(_conv_bn_relu(c2, c3), _conv_bn_relu(c3, c3))
        self.fc = nn.Linear(c3, feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def spatial_dim(self) -> int:
        return self.spatial_channels * (self.image_size // 4) ** 2

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.stage3(self.stage2(self.stage1(x)))
        # Channel-last flatten of the first channels, as ADM flattens mixed_6/conv[..., :7].
        spatial = h[:, : self.spatial_channels].permute(0, 2, 3, 1).flatten(1)
        pool = F.relu(self.fc(h.mean(dim=(2, 3))))
        logits = self.head(self.dropout(pool))
        return {"pool": pool, "spatial": spatial, "logits": logits}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]
