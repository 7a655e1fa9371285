"""Datasets -> in-memory uint8 tensors (NCHW) + int64 labels.

Every dataset is decoded once per process (functools.lru_cache) because training and evaluation both read
it. Models see floats in [-1, 1]: convert with `to_model_range` / `to_uint8` at the boundary.

Where the data comes from, in order (nothing is downloaded unless `download=True`):
  1. the configured `root` (torchvision layout, or a folder holding the IDX files, gzipped or not),
  2. the Debian package path (`apt-get install dataset-fashion-mnist` -> /usr/share/datasets/fashion-mnist),
  3. a torchvision download into `~/.cache/guidance/download` (reused afterwards).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from guidance.errors import GuidanceError
from guidance.io import atomic_write_stream, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    num_classes: int
    channels: int
    image_size: int


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, 28),
    "mnist": DatasetInfo("mnist", 10, 1, 28),
    "cifar10": DatasetInfo("cifar10", 10, 3, 32),
}
# npz / folder: their info is read from the files (see dataset_info).
FILE_DATASETS = ("npz", "folder")
SPLITS = ("train", "test")

# Debian packages ship the gzipped IDX files here; module-level so tests can point them elsewhere.
SYSTEM_DATASET_DIRS: dict[str, str] = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}
DEBIAN_PACKAGES = {"fashion_mnist": "dataset-fashion-mnist", "mnist": "dataset-mnist"}
_TORCHVISION_CLASS = {"fashion_mnist": "FashionMNIST", "mnist": "MNIST", "cifar10": "CIFAR10"}
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cache_dir() -> Path:
    """Where staged/decompressed and downloaded data live (GUIDANCE_CACHE_DIR overrides ~/.cache/guidance)."""
    return Path(os.environ.get("GUIDANCE_CACHE_DIR") or Path.home() / ".cache" / "guidance")


# ----------------------------------------------------------------------------------------------------------
# Range conversions


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255] (round to nearest, clamp out-of-range values)."""
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# Public entry points


def load_images(name: str, split: str = "train", root: str | os.PathLike | None = None, download: bool = False,
                path: str | os.PathLike | None = None, image_size: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (uint8 NCHW images, int64 labels) of a dataset split. The tensors are shared (cached): don't modify.

    `path` is the .npz file (npz) or image folder (folder); `image_size` resizes `folder` images.
    """
    if name not in DATASETS and name not in FILE_DATASETS:
        known = ", ".join([*DATASETS, *FILE_DATASETS])
        raise GuidanceError(f"unknown dataset {name!r}; choose data=<name> from: {known}")
    if split not in SPLITS:
        raise GuidanceError(f"unknown split {split!r} for dataset {name}; use one of: {', '.join(SPLITS)}")
    return _load_cached(name, split, _str_or_none(root), bool(download), _str_or_none(path),
                        None if image_size is None else int(image_size))


def load_dataset(data_cfg: Mapping[str, Any], split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Load from a `conf/data/*.yaml` config and check the images match its image_size / channels."""
    name = data_cfg["name"]
    images, labels = load_images(name, split, root=data_cfg.get("root"), download=data_cfg.get("download", False),
                                 path=data_cfg.get("path"), image_size=data_cfg.get("image_size"))
    _, c, h, w = images.shape
    want_size, want_c = data_cfg.get("image_size"), data_cfg.get("channels")
    if want_size is not None and (h, w) != (want_size, want_size):
        raise GuidanceError(f"dataset {name} has {h}x{w} images but data.image_size={want_size}; set data.image_size={h}")
    if want_c is not None and c != want_c:
        raise GuidanceError(f"dataset {name} has {c} channels but data.channels={want_c}; set data.channels={c}")
    want_k = data_cfg.get("num_classes")
    if want_k is not None and len(labels) and int(labels.max()) >= want_k:
        raise GuidanceError(f"dataset {name} has label {int(labels.max())} >= data.num_classes={want_k}; "
                            f"set data.num_classes={int(labels.max()) + 1}")
    return images, labels


def dataset_fingerprint(data_cfg: Mapping[str, Any], split: str = "train") -> str:
    """The identity of a dataset split as a data config reads it, for cache keys: "<kind>:<16 hex>".

    Hashes the kind, split and preprocessing (image_size, channels); for file datasets also the resolved path
    and the content: npz, the sha256 of the file; folder, every file's relative path, size and mtime. Two
    different npz files never share a key, and editing a folder changes its key. Named datasets (fashion_mnist,
    mnist, cifar10) are fixed public sets: their name is their identity.
    """
    name = data_cfg["name"]
    parts = {"kind": name, "split": split, "image_size": data_cfg.get("image_size"),
             "channels": data_cfg.get("channels")}
    if name in FILE_DATASETS:
        if data_cfg.get("path") in (None, ""):
            raise GuidanceError(f"data={name} needs data.path=<{'file.npz' if name == 'npz' else 'image folder'}>")
        path = Path(str(data_cfg["path"])).expanduser().resolve()
        if not path.exists():
            raise GuidanceError(f"data.path={path} does not exist; point data.path at the {name} dataset")
        parts["path"] = str(path)
        parts["content"] = _content_digest(str(path), *_stat_key(path))
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    return f"{name}:{digest}"


def _stat_key(path: Path) -> tuple[int, int]:
    if path.is_file():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    return 0, max((p.stat().st_mtime_ns for p in path.rglob("*")), default=0)


@functools.lru_cache(maxsize=32)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, or of a folder's (relative path, size, mtime) listing; cached per (path, size, mtime)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    listing = sorted((str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in p.rglob("*") if f.is_file())
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def dataset_info(name: str, split: str = "train", root=None, download: bool = False, path=None,
                 image_size: int | None = None) -> DatasetInfo:
    """Info of a named dataset; for npz / folder it is read from the files (loads them, which is cached)."""
    if name in DATASETS:
        return DATASETS[name]
    images, labels = load_images(name, split, root=root, download=download, path=path, image_size=image_size)
    return DatasetInfo(name, int(labels.max()) + 1 if len(labels) else 0, images.shape[1], images.shape[2])


# ----------------------------------------------------------------------------------------------------------
# Loaders


def _str_or_none(x) -> str | None:
    return None if x in (None, "") else str(Path(x).expanduser())


@functools.lru_cache(maxsize=8)
def _load_cached(name, split, root, download, path, image_size):
    if name in ("fashion_mnist", "mnist"):
        images, labels = _load_idx_dataset(name, split, root, download)
    elif name == "cifar10":
        images, labels = _load_cifar10(split, root, download)
    elif name == "npz":
        images, labels = _load_npz(path)
    else:
        images, labels = _load_folder(path, split, image_size)
    images, labels = images.contiguous(), labels.to(torch.int64)
    log.info("loaded %s/%s: %d images %s", name, split, len(images), tuple(images.shape[1:]))
    return images, labels


def _load_idx_dataset(name: str, split: str, root: str | None, download: bool):
    """Fashion-MNIST / MNIST through torchvision, from root, then the Debian path, then a download."""
    import torchvision

    cls = getattr(torchvision.datasets, _TORCHVISION_CLASS[name])
    tv_root = None
    system = Path(SYSTEM_DATASET_DIRS.get(name, "/nonexistent"))
    if root is not None:
        tv_root = _torchvision_root_for(name, Path(root))
        if tv_root is None and not download:  # an explicit root is never swapped for another copy
            system_way = (f"`apt-get install {DEBIAN_PACKAGES[name]}` and drop data.root (reads {system})"
                          if name in DEBIAN_PACKAGES else "drop data.root")
            raise GuidanceError(f"{name}: no IDX files in data.root={root} (an explicit root is not swapped for "
                                f"another copy); point data.root to the folder holding them, or {system_way}, "
                                "or add data.download=true")
    if tv_root is None and root is None and system.is_dir():
        tv_root = _torchvision_root_for(name, system)
    download_root = cache_dir() / "download"
    if tv_root is None and (download or _has_idx_files(download_root / cls.__name__ / "raw")):
        tv_root = download_root
    if tv_root is None:
        ways = [f"data.root=<folder with the IDX files>"]
        if name in DEBIAN_PACKAGES:
            ways.append(f"`apt-get install {DEBIAN_PACKAGES[name]}` (reads {system})")
        ways.append("data.download=true")
        where = f" (looked in root={root})" if root else ""
        raise GuidanceError(f"{name} not found{where}; use one of: " + ", or ".join(ways))
    log.info("%s: reading from %s", name, tv_root)
    try:
        ds = cls(root=str(tv_root), train=split == "train", download=download and tv_root == download_root)
    except RuntimeError as e:  # torchvision: failed download or unreadable files
        raise GuidanceError(f"{name}: torchvision could not read or download it into {tv_root} ({e}); "
                            f"set data.root=<folder with the IDX files> or check the network") from e
    return ds.data.unsqueeze(1), torch.as_tensor(ds.targets)


def _has_idx_files(folder: Path) -> bool:
    return all((folder / f).exists() for files in _IDX_FILES.values() for f in files)


def _find_idx(folder: Path, base: str) -> Path | None:
    for p in (folder / base, folder / f"{base}.gz"):
        if p.is_file():
            return p
    return None


def _torchvision_root_for(name: str, folder: Path) -> Path | None:
    """A root torchvision can read for `folder`: itself if already laid out, else a staged copy in the cache.

    Staging decompresses the (Debian-style, gzipped) IDX files into <cache>/<name>-<hash>/<Class>/raw, the
    layout torchvision's MNIST-family datasets read; it is redone only when the source files are newer.
    """
    cls_name = _TORCHVISION_CLASS[name]
    if _has_idx_files(folder / cls_name / "raw"):
        return folder
    sources = {base: _find_idx(folder, base) for files in _IDX_FILES.values() for base in files}
    if any(p is None for p in sources.values()):
        return None
    key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:10]
    staged_root = cache_dir() / f"{name}-{key}"
    raw = staged_root / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for base, src in sources.items():
        dst = raw / base
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        # Several processes (torchrun ranks) may stage at once: each writes its own temp file and renames it
        # into place atomically, so a reader never sees a half-written IDX file.
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin:
            atomic_write_stream(fin, dst)
    return staged_root


def _load_cifar10(split: str, root: str | None, download: bool):
    import torchvision

    download_root = cache_dir() / "download"
    candidates = [Path(root)] if root else []
    candidates.append(download_root)
    for cand in candidates:
        if (cand / "cifar-10-batches-py").is_dir():
            tv_root = cand
            break
    else:
        if not download:
            where = f" (looked in root={root} and {download_root})" if root else f" (looked in {download_root})"
            raise GuidanceError(f"cifar10 not found{where}; set data.root=<folder holding cifar-10-batches-py> "
                                "or data.download=true")
        tv_root = Path(root) if root else download_root
    try:
        ds = torchvision.datasets.CIFAR10(root=str(tv_root), train=split == "train", download=download)
    except RuntimeError as e:
        raise GuidanceError(f"cifar10: torchvision could not read or download it into {tv_root} ({e}); "
                            "set data.root=<folder holding cifar-10-batches-py> or check the network") from e
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2)  # NHWC -> NCHW
    return images, torch.as_tensor(ds.targets)


def _load_npz(path: str | None):
    """ADM-style batch: arr_0 uint8 NHWC (or NHW) + arr_1 labels. Also reads the downsampled-ImageNet
    release format (`data` rows of CHW-flattened pixels, `labels` 1..1000)."""
    if path is None:
        raise GuidanceError("data=npz needs data.path=<file.npz with arr_0 uint8 NHWC images and arr_1 labels>")
    if not Path(path).is_file():
        raise GuidanceError(f"no npz file at {path}; set data.path=<file.npz with arr_0 images and arr_1 labels>")
    with np.load(path) as f:
        keys = set(f.files)
        if {"arr_0", "arr_1"} <= keys:
            arr, labels = f["arr_0"], f["arr_1"]
            if arr.ndim == 3:
                arr = arr[..., None]
            images = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
        elif {"data", "labels"} <= keys:
            data, labels = f["data"], np.asarray(f["labels"]) - 1  # labels are 1-based in that release
            side = int(round((data.shape[1] / 3) ** 0.5))
            images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, side, side)))
        else:
            raise GuidanceError(f"{path} has arrays {sorted(keys)}; expected arr_0 (uint8 NHWC images) and arr_1 "
                                "(labels), as in ADM sample batches")
    if images.dtype != torch.uint8:
        raise GuidanceError(f"{path}: images are {images.dtype}, expected uint8 in [0, 255]; convert before loading")
    if len(labels) != len(images):
        raise GuidanceError(f"{path}: {len(images)} images but {len(labels)} labels; arr_1 must label every image")
    return images, torch.from_numpy(np.asarray(labels).astype(np.int64))


def _load_folder(path: str | None, split: str, image_size: int | None):
    """torchvision ImageFolder (one sub-folder per class), resized + center-cropped to image_size.

    If `path/<split>` exists it is used, so a folder with train/ and test/ sub-folders works for both splits.
    """
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder
    from tqdm import tqdm

    if path is None or not Path(path).is_dir():
        raise GuidanceError(f"no image folder at {path}; set data.path=<folder with one sub-folder per class>")
    if image_size is None:
        raise GuidanceError("data=folder needs data.image_size=<side length to resize images to>")
    folder = Path(path) / split if (Path(path) / split).is_dir() else Path(path)
    tf = T.Compose([T.Resize(image_size), T.CenterCrop(image_size), T.PILToTensor()])
    try:
        ds = ImageFolder(str(folder), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise GuidanceError(f"{folder}: {e}; it needs one sub-folder of images per class") from e
    images = torch.empty(len(ds), 3, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(len(ds), dtype=torch.int64)
    for i in tqdm(range(len(ds)), desc=f"decoding {folder.name}", unit="img", disable=len(ds) < 1000):
        images[i], labels[i] = ds[i]
    return images, labels
