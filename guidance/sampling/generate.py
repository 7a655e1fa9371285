"""Generate N seeded samples with a sampler and a guided denoiser, and write them as an ADM-format sample folder.

Sample i's initial noise, label and every noise draw come from (seed, i) alone (PerImageRNG), so the samples do not
depend on the batch size and are paired across the points of a scale sweep. The cost per sample is what the
denoiser counted while sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from guidance.data import to_uint8
from guidance.grids import save_label_grid
from guidance.io import atomic_save_npz, atomic_write_json, sha256_file
from guidance.sampling.rng import PerImageRNG


def generate(sampler, denoiser, shape, num_samples: int, seed: int, num_classes: int, labels: str = "uniform",
             batch_size: int = 250, device="cpu", progress: bool = True, desc: str = "sample"):
    """(images uint8 [N, C, H, W], labels int64 [N]) on the CPU; shape = (C, H, W) of one image."""
    images, ys = [], []
    with tqdm(total=num_samples, desc=desc, unit="img", disable=not progress) as bar:
        for start in range(0, num_samples, batch_size):
            rng = PerImageRNG(seed, range(start, min(start + batch_size, num_samples)), device=device)
            y = rng.labels(num_classes, labels)
            x = sampler.sample(denoiser, (len(rng), *shape), y, rng)
            images.append(to_uint8(x).cpu())
            ys.append(y.cpu())
            bar.update(len(rng))
    return torch.cat(images), torch.cat(ys)


def finished_samples(out_dir: Path, info: dict, match_keys) -> bool:
    """Whether out_dir already holds samples made with these settings: its sample_info agrees on match_keys AND
    the samples.npz beside it is the very file that info describes (size and sha256 recorded at writing), so a
    truncated or swapped npz, or one left by a crash between the two writes, is never taken as finished."""
    npz, info_path = out_dir / "samples.npz", out_dir / "sample_info.json"
    if not (npz.exists() and info_path.exists()):
        return False
    try:
        old = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return False
    if not all(old.get(k) == info.get(k) for k in match_keys):
        return False
    recorded = old.get("samples_file") or {}
    return recorded.get("bytes") == npz.stat().st_size and recorded.get("sha256") == sha256_file(npz)


def save_samples(out_dir: Path, images: torch.Tensor, labels: torch.Tensor, info: dict) -> Path:
    """samples.npz (arr_0 uint8 NHWC, arr_1 labels: ADM's format), grid.png, then sample_info.json LAST: its
    presence marks a finished folder, and it records the npz's size and sha256 (`samples_file`), so a reader can
    tell that the two belong together. Every file is written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_label_grid(images[:, :3], labels, out_dir / "grid.png")  # make_grid turns 1 channel into RGB
    npz = atomic_save_npz(out_dir / "samples.npz", arr_0=images.permute(0, 2, 3, 1).numpy(),
                          arr_1=labels.numpy().astype(np.int64))
    info = {**info, "samples_file": {"bytes": npz.stat().st_size, "sha256": sha256_file(npz),
                                     "num_images": int(len(images))}}
    atomic_write_json(info, out_dir / "sample_info.json")
    return npz
