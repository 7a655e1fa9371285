"""Labelled sample grids (torchvision's make_grid + the class label drawn in each cell), written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from guidance.io import atomic_write_bytes


def save_label_grid(images: torch.Tensor, labels: torch.Tensor, path: str | Path, nrow: int = 8,
                    max_images: int = 64) -> Path:
    """uint8 NCHW images, sorted by label (stable), first `max_images`, `nrow` per row -> PNG at `path`."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    images, labels = images[:max_images].cpu(), labels[:max_images].cpu()
    order = torch.argsort(labels, stable=True)
    images, labels = images[order], labels[order]
    zoom = max(1, 64 // images.shape[-1])  # small images get upscaled so the labels stay readable
    images = images.repeat_interleave(zoom, -1).repeat_interleave(zoom, -2)
    pad = 2
    grid = make_grid(images, nrow=nrow, padding=pad)  # uint8 [3, H, W]
    img = Image.fromarray(grid.permute(1, 2, 0).numpy())
    draw, side = ImageDraw.Draw(img), images.shape[-1] + pad
    for n, y in enumerate(labels.tolist()):
        x0, y0 = (n % nrow) * side + pad, (n // nrow) * side + pad
        draw.rectangle([x0, y0, x0 + 7 * len(str(y)) + 2, y0 + 11], fill=(0, 0, 0))
        draw.text((x0 + 1, y0), str(y), fill=(255, 255, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(buf.getvalue(), path)
