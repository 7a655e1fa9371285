"""Sample batch -> metrics.json: the registry's metrics (guidance.metrics.registry) on one feature extractor.

Two levels, so other apps can chain evaluation in-process:
- `compute_metrics(sample_feats, ref_feats, cfg)`: features (dicts keyed by layer) -> metrics dict;
- `evaluate_folder(folder, cfg_metrics, data_cfg, reference_npz=None)`: reads `samples.npz` (ours or any ADM
  batch: arr_0 uint8 NHWC [+ arr_1 labels]), extracts features, writes this extractor's result into the
  `metrics.json` beside it (atomic), next to other extractors' results for the same samples.
IS / KID go through torch-fidelity's feature-level functions; FID, sFID, P&R, D&C, CMMD, Vendi are ours
(guidance.metrics.statistics), checked against torch-fidelity or closed forms in the tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from omegaconf import DictConfig, OmegaConf

from guidance.device import resolve_device
from guidance.errors import GuidanceError
from guidance.io import atomic_write_json
from guidance.metrics import extractors as ext
from guidance.metrics.adm_batch import read_precomputed_statistics, write_reference_batch
from guidance.metrics.features import extract_features
from guidance.metrics.fid import feature_statistics, frechet_distance
from guidance.metrics.prdc import manifold_indicators
from guidance.metrics.reference import cache_key, load_or_extract
from guidance.metrics.registry import METRICS, extractor_spec, metrics_for, results_by_extractor
from guidance.metrics.statistics import STATISTICS, Inputs
from guidance.settings import MetricsSettings, parse


def _as_dict(cfg) -> dict:
    if cfg is None:
        return {}
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


class MetricsConfig(dict):
    """A metrics config parsed by metrics_config (guidance.settings.MetricsSettings as a dict): not parsed again."""


def metrics_config(cfg) -> MetricsConfig:
    """A (partial) metrics node -> every option, typed and checked once (one line on a bad one)."""
    if isinstance(cfg, MetricsConfig):
        return cfg
    return MetricsConfig(dataclasses.asdict(parse(MetricsSettings, cfg, "metrics.")))


def check_labels_for(c: dict, labels) -> None:
    """Class metrics named in metrics.compute need the samples' labels: refused before any features are made,
    instead of a result without the one metric asked for (the default list simply has none for unlabelled ones)."""
    asked = [m for m in (c["compute"] or []) if METRICS[m].needs_class_logits]
    if labels is None and asked:
        raise GuidanceError(f"metrics.compute asks for {asked} but the samples have no labels (no arr_1): drop "
                            f"{', '.join(asked)} from metrics.compute or evaluate labelled samples")


# ---------------------------------------------------------------------------------------------- input files


def find_samples_npz(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "samples.npz"
    if not p.is_file():
        raise GuidanceError(f"no samples file at {p}: pass samples=<samples.npz or the sample job's folder>")
    return p


def _check_nhwc_uint8(arr: np.ndarray, path: Path, what: str) -> None:
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        hint = " (looks NCHW: transpose to NHWC)" if arr.ndim == 4 and arr.shape[1] in (1, 3) else ""
        raise GuidanceError(f"{what} {path}: arr_0 has shape {arr.shape}, expected NHWC with 1 or 3 channels{hint}")
    if arr.dtype != np.uint8:
        raise GuidanceError(f"{what} {path}: arr_0 is {arr.dtype}, expected uint8 in 0..255 "
                            f"(convert with guidance.data.to_uint8 before saving)")


def load_images_npz(path: str | Path, what: str = "samples", file=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ADM batch layout: arr_0 uint8 NHWC, optional arr_1 int labels -> (uint8 NCHW, int64 labels | None).
    `file`: read from this open binary file instead of `path` (named in messages)."""
    path = Path(path)
    try:
        z = np.load(file if file is not None else path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise GuidanceError(f"{what} {path} is not a readable .npz ({type(e).__name__}): expected arr_0 uint8 NHWC")
    with z:
        if not hasattr(z, "files") or "arr_0" not in z.files:
            raise GuidanceError(f"{what} {path} has no arr_0: expected an ADM-style npz (arr_0 uint8 NHWC [+ arr_1])")
        images = z["arr_0"]
        _check_nhwc_uint8(images, path, what)
        if len(images) == 0:
            raise GuidanceError(f"{what} {path} holds no images (arr_0 has shape {images.shape})")
        labels = z["arr_1"] if "arr_1" in z.files else None
    if labels is not None and (labels.ndim != 1 or len(labels) != len(images)):
        raise GuidanceError(f"{what} {path}: arr_1 has shape {labels.shape}, expected ({len(images)},) labels")
    if labels is not None and (not np.issubdtype(labels.dtype, np.integer) or (len(labels) and labels.min() < 0)):
        raise GuidanceError(f"{what} {path}: arr_1 must hold non-negative integer class labels, got {labels.dtype} "
                            f"{'with negative values' if np.issubdtype(labels.dtype, np.integer) else ''}".rstrip())
    images_t = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    labels_t = torch.from_numpy(labels.astype(np.int64)) if labels is not None else None
    return images_t, labels_t


def _npz_image_shape(path: Path) -> tuple[int, int, int]:
    """(C, H, W) of arr_0 from the .npy header alone, without reading the images."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(f)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as e:
        raise GuidanceError(f"reference {path} is not an npz with arr_0 ({type(e).__name__}): "
                            f"pass reference_npz=<ADM-style npz, arr_0 uint8 NHWC>")
    if len(shape) != 4 or shape[-1] not in (1, 3) or dtype != np.uint8:
        raise GuidanceError(f"reference {path}: arr_0 is {dtype} {shape}, expected uint8 NHWC with 1 or 3 channels")
    return shape[3], shape[1], shape[2]


# ---------------------------------------------------------------------------------------------- reference


def _weights_path(c: dict) -> str | None:
    p = c[extractor_spec(c["extractor"]).weights_option]
    return str(Path(p).expanduser()) if p else None


def reference_description(data_cfg, reference_npz, c: dict) -> tuple[str, str, str, tuple[int, int, int]]:
    """(name, identity key, split, expected C,H,W) of the reference set, cheaply (no images decoded)."""
    if reference_npz:
        p = Path(reference_npz)
        if not p.is_file():
            raise GuidanceError(f"reference_npz {p} not found: pass an existing ADM-style npz or drop it to use data")
        return str(p.name), f"npz:{ext.sha256_file(p)[:16]}", "npz", _npz_image_shape(p)
    d = _as_dict(data_cfg)
    if "name" not in d:
        raise GuidanceError("no reference: give a data config (data=fashion_mnist, ...) or reference_npz=<path>")
    from guidance.data import dataset_fingerprint  # the data module owns a dataset's identity

    shape = (int(d["channels"]), int(d["image_size"]), int(d["image_size"]))
    return d["name"], dataset_fingerprint(d, c["reference_split"]), c["reference_split"], shape


def _load_reference_images(data_cfg, reference_npz, c: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    if reference_npz:
        images, labels = load_images_npz(reference_npz, what="reference")
    else:
        from guidance.data import load_dataset  # owned by the data module; takes the whole data config

        images, labels = load_dataset(_as_dict(data_cfg), c["reference_split"])
    n = c["num_reference"]
    if n is not None:
        if n > len(images):
            raise GuidanceError(f"metrics.num_reference={n} but the reference has only {len(images)} images: "
                                f"lower it or set it to null (all)")
        # A fixed-seed subset (not the first n) keeps classes balanced; the seed is part of the cache key.
        idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n].sort().values
        images, labels = images[idx], (labels[idx] if labels is not None else None)
    return images, labels


# ---------------------------------------------------------------------------------------------- metrics


def _check_counts(n: int, what: str, c: dict, wanted: list[str]) -> None:
    k = max(c["k_prc"], c["k_dc"])
    if n < k + 1 and {"precision", "recall", "density", "coverage"} & set(wanted):
        raise GuidanceError(f"only {n} {what}: k-NN metrics need more than k={k} (metrics.k_prc/k_dc); "
                            f"use more images")
    if "kid" in wanted and n < c["kid_subset_size"]:
        raise GuidanceError(f"only {n} {what} but metrics.kid_subset_size={c['kid_subset_size']}: lower "
                            f"metrics.kid_subset_size or use more images")
    if "is" in wanted and what == "samples" and n < c["isc_splits"]:
        raise GuidanceError(f"only {n} {what} but metrics.isc_splits={c['isc_splits']}: lower it or use more images")
    if n < 2:
        raise GuidanceError(f"only {n} {what}: statistics need at least 2 images")


def _by_role(feats: dict[str, torch.Tensor], extractor: str, wanted: list[str], what: str) -> dict[str, torch.Tensor]:
    """Features keyed by layer -> keyed by the role each layer plays for this extractor (registry.EXTRACTORS)."""
    layers = extractor_spec(extractor).layers
    missing = sorted({layers[r] for m in wanted for r in METRICS[m].roles} - set(feats))
    if missing:
        raise GuidanceError(f"{what} features lack layers {missing} for extractor {extractor}")
    return {role: feats[layer] for role, layer in layers.items() if layer in feats}


def compute_metrics(sample_feats: dict[str, torch.Tensor], ref_feats: dict[str, torch.Tensor], cfg=None,
                    sample_labels: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None,
                    ref_stats: dict | None = None) -> dict:
    """The registry's metrics (metrics.compute, default: all the extractor supports) from features keyed by layer.
    `ref_stats` {"fid": {mu, sigma}, "sfid": {...}}: precomputed reference statistics (an ADM batch's)."""
    c = metrics_config(cfg)
    wanted = sorted(metrics_for(c["extractor"], c["compute"]), key=list(METRICS).index)
    samples = _by_role(sample_feats, c["extractor"], wanted, "samples")
    reference = _by_role(ref_feats, c["extractor"], wanted, "reference")
    n, m = len(samples["embedding"]), len(reference["embedding"])
    _check_counts(n, "samples", c, wanted)
    _check_counts(m, "reference images", c, wanted)
    inputs = Inputs(samples, reference, sample_labels, c, np.random.default_rng(c["seed"]), ref_stats)
    groups: dict[str, list[str]] = {}
    for name in wanted:  # registry order: statistics share one Generator, so the order is part of the result
        groups.setdefault(METRICS[name].statistic, []).append(name)
    out: dict = {"num_samples": n, "num_reference": m}
    for statistic, names in groups.items():
        out.update(STATISTICS[statistic](inputs, names))
    if c["per_class"]:
        out["per_class"] = per_class_metrics(samples, reference, sample_labels, ref_labels, c)
    return out


def per_class_metrics(sample_feats, ref_feats, sample_labels, ref_labels, c: dict) -> dict:
    """FID and P&R within each label (samples labelled y vs reference images of class y), features by role."""
    if sample_labels is None or ref_labels is None:
        which = "samples (arr_1)" if sample_labels is None else "reference"
        raise GuidanceError(f"per_class=true needs labels but the {which} has none: set metrics.per_class=false")
    k = c["k_prc"]
    out = {}
    for y in sorted(set(sample_labels.tolist())):
        s_mask, r_mask = sample_labels == y, ref_labels == y
        ns, nr = int(s_mask.sum()), int(r_mask.sum())
        row: dict = {"num_samples": ns, "num_reference": nr}
        if min(ns, nr) < k + 1:
            # Recorded, not hidden: a class the guided sampler rarely produced has no meaningful FID.
            row.update(fid=None, precision=None, recall=None, skipped=f"fewer than {k + 1} images")
        else:
            s, r = sample_feats["embedding"][s_mask], ref_feats["embedding"][r_mask]
            row["fid"] = frechet_distance(feature_statistics(s), feature_statistics(r))
            ind = manifold_indicators(s, r, k, k, c["knn_chunk"])
            row["precision"], row["recall"] = float(ind["precision"].double().mean()), float(ind["recall"].double().mean())
        out[str(y)] = row
    return out


# ---------------------------------------------------------------------------------------------- end to end


def evaluate_samples(images: torch.Tensor, labels: torch.Tensor | None, cfg_metrics, data_cfg,
                     reference_npz: str | Path | None = None) -> dict:
    """uint8 NCHW samples (+ labels) vs the reference set -> one extractor's result (nothing written but the cache)."""
    c = metrics_config(cfg_metrics)
    check_labels_for(c, labels)
    t0 = time.time()
    ref_name, ref_key, ref_split, ref_shape = reference_description(data_cfg, reference_npz, c)
    if tuple(images.shape[1:]) != ref_shape:
        raise GuidanceError(f"samples are {'x'.join(map(str, images.shape[1:]))} (CxHxW) but the reference "
                            f"({ref_name} {ref_split}) is {'x'.join(map(str, ref_shape))}: evaluate against the data "
                            f"config the samples were generated from")
    num_classes = _as_dict(data_cfg).get("num_classes")
    if labels is not None and num_classes and len(labels) and int(labels.max()) >= int(num_classes):
        raise GuidanceError(f"sample labels go up to {int(labels.max())} but {ref_name} has {num_classes} classes "
                            f"(0..{int(num_classes) - 1}): evaluate against the data the samples were generated for")
    layers = extractor_spec(c["extractor"]).layers
    feature_set = sorted(set(layers.values()))
    weights = _weights_path(c)
    sha = ext.weights_sha256_for(c["extractor"], weights)
    device = resolve_device(c["device"])
    extractor = None

    def get_extractor():
        nonlocal extractor
        if extractor is None:
            extractor = ext.create_extractor(c["extractor"], feature_set, weights, device)
        return extractor

    def extract_reference():
        ref_images, ref_labels = _load_reference_images(data_cfg, reference_npz, c)
        return extract_features(ref_images, get_extractor(), c["batch_size"], c["progress"]), ref_labels

    key = cache_key(ref_key, ref_split, c["num_reference"], c["extractor"], sha, feature_set)
    ref_feats, ref_labels, hit = load_or_extract(c["cache_dir"], key, extract_reference)
    sample_feats = extract_features(images, get_extractor(), c["batch_size"], c["progress"])
    if getattr(extractor, "weights_sha256", sha) != sha:
        raise GuidanceError("extractor weights changed while evaluating: rerun guidance-evaluate")

    ref_stats, stats_note = None, "recomputed from features"
    # ADM's statistics describe the whole batch (not a subset) in a space with a spatial (sFID) feature.
    if reference_npz and c["num_reference"] is None and "spatial" in layers:
        dims = {m: ref_feats[layers[METRICS[m].roles[0]]].shape[1] for m in ("fid", "sfid")}
        ref_stats, stats_note = read_precomputed_statistics(reference_npz, c["extractor"], sha, dims)
    out = compute_metrics(sample_feats, ref_feats, c, labels, ref_labels, ref_stats)
    out.update(
        extractor=c["extractor"],
        weights_sha256=sha,
        torch_fidelity_version=torch_fidelity.__version__,
        feature_layers=dict(layers),
        k_prc=c["k_prc"], k_dc=c["k_dc"], bootstrap=int(c["bootstrap"]),
        reference={"dataset": ref_name, "fingerprint": ref_key, "split": ref_split, "cache_hit": hit,
                   "statistics": stats_note,
                   **({"npz": str(reference_npz)} if reference_npz else {})},
        seconds=round(time.time() - t0, 2),
    )
    return out


def export_reference_batch(path: str | Path, cfg_metrics, data_cfg, reference_npz: str | Path | None = None) -> Path:
    """The reference set as an ADM-layout batch: its images and FID/sFID statistics in this extractor's space."""
    c = metrics_config(cfg_metrics)
    layers = extractor_spec(c["extractor"]).layers
    if "spatial" not in layers:
        raise GuidanceError(f"ADM reference batches hold FID and sFID statistics, and extractor {c['extractor']!r} "
                            f"has no spatial (sFID) feature: use metrics=evaluator or metrics=inception")
    weights = _weights_path(c)
    sha = ext.weights_sha256_for(c["extractor"], weights)
    images, _ = _load_reference_images(data_cfg, reference_npz, c)
    extractor = ext.create_extractor(c["extractor"], sorted({layers["embedding"], layers["spatial"]}), weights,
                                     resolve_device(c["device"]))
    feats = extract_features(images, extractor, c["batch_size"], c["progress"])
    stats = {m: feature_statistics(feats[layers[METRICS[m].roles[0]]]) for m in ("fid", "sfid")}
    return write_reference_batch(path, images, stats, c["extractor"], sha)


# ---------------------------------------------------------------------------------------------- metrics.json

METRICS_FORMAT = 2  # {"format": 2, "samples", "samples_sha256", "extractors": {name: result}}


def _results_of_same_samples(path: Path, samples_sha256: str) -> dict[str, dict]:
    """Other extractors' results worth keeping: only those of these very samples (by content)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("samples_sha256") != samples_sha256:
        return {}
    return results_by_extractor(data)


@contextlib.contextmanager
def open_samples(npz: Path):
    """(open file, sha256) of a samples file: hashed and later decoded from ONE open file, so a writer's rename
    in between cannot mix two files. In a sample job's folder (sample_info.json beside samples.npz) the file must
    be the one the info describes (size and sha256 recorded at writing): otherwise a sampling run is writing the
    folder or was killed between its two writes, and the report would pair these images with another run's count
    and settings, so it is refused in one line."""
    with open(npz, "rb") as f:
        digest = hashlib.sha256()
        while block := f.read(1 << 20):
            digest.update(block)
        size, sha = f.tell(), digest.hexdigest()
        info_path = npz.parent / "sample_info.json"
        if npz.name == "samples.npz" and info_path.exists():
            _check_described(npz, info_path, size, sha)
        f.seek(0)
        yield f, sha


def _check_described(npz: Path, info_path: Path, size: int, sha: str) -> None:
    try:
        recorded = json.loads(info_path.read_text()).get("samples_file") or {}
    except (OSError, ValueError, AttributeError):
        raise GuidanceError(f"{info_path} is unreadable: rerun guidance-sample for {npz.parent}") from None
    if recorded and (recorded.get("bytes"), recorded.get("sha256")) != (size, sha):
        raise GuidanceError(f"{npz} is not the file its sample_info.json describes (size or sha256 differ): a "
                            f"guidance-sample run is writing {npz.parent} or was killed before finishing it; wait "
                            "for it, or rerun guidance-sample there")


def evaluate_folder(folder: str | Path, cfg_metrics, data_cfg, reference_npz: str | Path | None = None) -> dict:
    """Evaluate `folder/samples.npz` (or a samples .npz path) and write this extractor's result into the
    `metrics.json` beside it; results of other extractors for the same samples are kept. A sample job's samples
    are evaluated only when they are the file its sample_info.json describes (open_samples)."""
    cfg_metrics = metrics_config(cfg_metrics)  # bad settings fail before any file is read
    npz = find_samples_npz(folder)
    with open_samples(npz) as (f, sha):
        return _evaluate_open(npz, f, sha, cfg_metrics, data_cfg, reference_npz)


def _evaluate_open(npz: Path, f, samples_sha: str, cfg_metrics, data_cfg, reference_npz) -> dict:
    images, labels = load_images_npz(npz, file=f)
    out = evaluate_samples(images, labels, cfg_metrics, data_cfg, reference_npz)
    out["samples"] = str(npz)
    path = npz.parent / "metrics.json"
    results = {**_results_of_same_samples(path, samples_sha), out["extractor"]: out}
    atomic_write_json({"format": METRICS_FORMAT, "samples": str(npz), "samples_sha256": samples_sha,
                       "extractors": results}, path)
    return out


# Settings that only change speed or where files go: they do not make metrics stale.
_NOT_PROVENANCE = ("progress", "device", "batch_size", "knn_chunk", "cache_dir")


def evaluation_settings(cfg_metrics, data_cfg, reference_npz: str | Path | None = None) -> dict:
    """What one extractor's result depends on: metrics config, reference (data split or npz), the weights' sha256."""
    c = {k: v for k, v in metrics_config(cfg_metrics).items() if k not in _NOT_PROVENANCE}
    data = _as_dict(data_cfg)
    c["reference"] = str(reference_npz) if reference_npz else {k: data.get(k) for k in ("name", "path", "image_size")}
    weights = _weights_path(c)
    if weights and Path(weights).is_file():
        c["weights_sha256"] = ext.sha256_file(weights)  # (a missing file fails in evaluate)
    return c


def evaluate_folder_if_stale(folder: str | Path, cfg_metrics, data_cfg,
                             reference_npz: str | Path | None = None) -> dict | None:
    """evaluate_folder, unless metrics.json already holds this extractor's result for these very samples (by
    content) made with the same settings (recorded in metrics_settings.json). None when the old result holds."""
    cfg_metrics = metrics_config(cfg_metrics)
    npz = find_samples_npz(folder)
    settings = json.loads(json.dumps(evaluation_settings(cfg_metrics, data_cfg, reference_npz)))
    metrics, used = npz.parent / "metrics.json", npz.parent / "metrics_settings.json"
    try:
        recorded = json.loads(used.read_text()) if used.is_file() else {}
    except (OSError, ValueError):
        recorded = {}
    with open_samples(npz) as (f, samples_sha):
        if (recorded.get("samples_sha256") == samples_sha and recorded.get(settings["extractor"]) == settings
                and settings["extractor"] in _results_of_same_samples(metrics, samples_sha)):
            return None
        out = _evaluate_open(npz, f, samples_sha, cfg_metrics, data_cfg, reference_npz)
    kept = recorded if recorded.get("samples_sha256") == samples_sha else {}
    atomic_write_json({**kept, "samples_sha256": samples_sha, settings["extractor"]: settings}, used)
    return out
