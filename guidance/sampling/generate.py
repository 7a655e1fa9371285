"""Generate N seeded samples with a sampler and a guided denoiser, and write them as an ADM-format sample folder.

Sample i's initial noise, label and every noise draw come from (seed, i) alone (PerImageRNG), so the samples do not
depend on the batch size or on which process made them, and are paired across the points of a scale sweep. Each
finished batch is a file (`generate_parts`) holding its images and the network passes it cost, so a killed run
resumes at its first missing batch and torchrun ranks can share a point; `merge_parts` joins them in index order.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from guidance.data import to_uint8
from guidance.errors import GuidanceError
from guidance.grids import save_label_grid
from guidance.io import (atomic_save_npz, atomic_write_bytes, atomic_write_json, exclusive_writer, npz_bytes,
                         sha256_bytes, sha256_file)
from guidance.sampling.rng import PerImageRNG


def batch_ranges(num_samples: int, batch_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + batch_size, num_samples)) for s in range(0, num_samples, batch_size)]


def sample_batch(sampler, denoiser, shape, start, end, seed, num_classes, labels, device):
    """Images start..end-1, from their own seeds: the same at any batch size, on any rank. `shape`: what the
    sampler samples (a latent model's latent shape; the denoiser decodes the finished latents into images)."""
    rng = PerImageRNG(seed, range(start, end), device=device)
    y = rng.labels(num_classes, labels)
    x = sampler.sample(denoiser, (len(rng), *shape), y, rng)
    return to_uint8(denoiser.decode(x)).cpu(), y.cpu()


def part_path(parts_dir: Path, start: int, end: int) -> Path:
    return parts_dir / f"images_{start:09d}_{end:09d}.npz"


def _read_part(path: Path):
    """(images, labels, counts) of a finished batch, or None when missing or unreadable (a crash mid-write)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return torch.from_numpy(z["images"]), torch.from_numpy(z["labels"]), json.loads(str(z["counts"]))
    except Exception:
        return None


def generate_parts(sampler, denoiser, shape, num_samples: int, seed: int, num_classes: int, parts_dir: Path,
                   labels: str = "uniform", batch_size: int = 250, device="cpu", rank: int = 0, world: int = 1,
                   progress: bool = True, desc: str = "sample") -> int:
    """Sample this rank's batches (every `world`-th, from `rank`) into parts_dir, one file per batch with the
    network passes it cost; batches already there are skipped, so a killed run loses one batch, not the point.
    Returns how many batches this call sampled."""
    sampler.check_strategy(denoiser)  # Sampler.sample checks it too; here before any folder is made
    parts_dir.mkdir(parents=True, exist_ok=True)
    mine = batch_ranges(num_samples, batch_size)[rank::world]
    done = 0
    with tqdm(total=sum(e - s for s, e in mine), desc=desc, unit="img", disable=not progress) as bar:
        for start, end in mine:
            path = part_path(parts_dir, start, end)
            if _read_part(path) is None:
                before, images_before = dict(denoiser.counts), denoiser.images
                x, y = sample_batch(sampler, denoiser, shape, start, end, seed, num_classes, labels, device)
                counts = {k: v - before.get(k, 0) for k, v in denoiser.counts.items()}
                counts["images"] = denoiser.images - images_before
                atomic_save_npz(path, images=x.numpy(), labels=y.numpy(), counts=np.array(json.dumps(counts)))
                done += 1
            bar.update(end - start)
    return done


def merge_parts(parts_dir: Path, num_samples: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """All batches in index order + the summed counts of the passes that made them."""
    images, ys, total = [], [], {}
    for start, end in batch_ranges(num_samples, batch_size):
        part = _read_part(part_path(parts_dir, start, end))
        if part is None:
            raise GuidanceError(f"batch {start}..{end - 1} is missing from {parts_dir}: rerun to sample it")
        images.append(part[0])
        ys.append(part[1])
        for k, v in part[2].items():
            total[k] = total.get(k, 0) + v
    return torch.cat(images), torch.cat(ys), total


# Fields that points sampled before them do not record, with what those points were made at: every model before
# the adapters (engine v3) was an ε network on its trained timesteps (its null label: from its snapshot's content).
UNRECORDED = {"model": {"parameterization": "eps", "noise_input": "timestep", "time_scale": 1.0,
                        "levels": {"kind": "discrete"}}}


def same_setting(key: str, old, new, match_keys) -> bool:
    """One sample_info field agrees. The strategy's config ("guider") is compared without its top-level class path
    and preset name when "strategy" (which names both) is matched too: a point sampled by a class that became a
    preset of another (cfg_interval, cfg_schedule, classifier_schedule: same fields, same samples) is recognised.
    A field an older point lacks (UNRECORDED) agrees with the value it was made at."""
    if old is None and key in UNRECORDED and isinstance(new, dict):
        return all(new.get(k) == v for k, v in UNRECORDED[key].items())
    if key == "guider" and "strategy" in match_keys and isinstance(old, dict) and isinstance(new, dict):
        fields = lambda cfg: {k: v for k, v in cfg.items() if k not in ("_target_", "preset")}
        return fields(old) == fields(new)
    return old == new


def finished_samples(out_dir: Path, info: dict, match_keys) -> dict | None:
    """The sample_info of out_dir when it already holds samples made with these settings (None otherwise): its
    info agrees on match_keys AND the samples.npz beside it is the very file that info describes (size and sha256
    recorded at writing), so a truncated or swapped npz, or one left by a crash between the two writes, is never
    taken as finished. The numerics (batch size, threads: float rounding only) are not match keys; see reuse_line."""
    npz, info_path = out_dir / "samples.npz", out_dir / "sample_info.json"
    if not (npz.exists() and info_path.exists()):
        return None
    try:
        old = json.loads(info_path.read_text())
    except (OSError, ValueError):
        return None
    if not all(same_setting(k, old.get(k), info.get(k), match_keys) for k in match_keys):
        return None
    recorded = old.get("samples_file") or {}
    same = recorded.get("bytes") == npz.stat().st_size and recorded.get("sha256") == sha256_file(npz)
    return old if same else None


def reuse_line(out_dir: Path, old: dict, info: dict) -> str:
    """What a reused point says: its samples were made under the numerics it records, named when this run's differ
    (another batch size or thread count gives the same samples to float rounding, not necessarily bitwise:
    README "Reproducibility")."""
    line = f"{out_dir / 'samples.npz'} already holds these samples; skipping"
    was, now = old.get("numerics"), info.get("numerics") or {}
    if was is None:
        return line + " (its batch size and thread count were not recorded: equal to float rounding, maybe bitwise)"
    differ = {k: (was.get(k), v) for k, v in now.items() if was.get(k) != v}
    if differ:
        line += (" (made with " + ", ".join(f"{k}={a}" for k, (a, _) in differ.items()) + "; this run: "
                 + ", ".join(f"{k}={b}" for k, (_, b) in differ.items())
                 + ": equal to float rounding, not necessarily bitwise)")
    return line


def point_writer(out_dir: Path):
    """The point folder's writer lock, held from the reuse check to the last write: two runs writing one folder
    (two scales with one hydra.run.dir) would leave one run's sample_info over the other's samples. The second is
    refused with one line; a killed writer's lock is dropped by the kernel (guidance.io.exclusive_writer)."""
    return exclusive_writer(out_dir, "wait for it to finish, or give this run its own folder (hydra.run.dir=...)")


def save_samples(out_dir: Path, images: torch.Tensor, labels: torch.Tensor, info: dict) -> Path:
    """samples.npz (arr_0 uint8 NHWC, arr_1 labels: ADM's format), grid.png, then sample_info.json LAST: its
    presence marks a finished folder, and it records the size and sha256 of the bytes THIS call wrote
    (`samples_file`; hashing the file on disk after the rename could describe another writer's npz), so a reader
    can tell that the two belong together. Every file is written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    save_label_grid(images[:, :3], labels, out_dir / "grid.png")  # make_grid turns 1 channel into RGB
    data = npz_bytes(arr_0=images.permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy().astype(np.int64))
    npz = atomic_write_bytes(data, out_dir / "samples.npz")
    info = {**info, "samples_file": {"bytes": len(data), "sha256": sha256_bytes(data),
                                     "num_images": int(len(images))}}
    atomic_write_json(info, out_dir / "sample_info.json")
    return npz
