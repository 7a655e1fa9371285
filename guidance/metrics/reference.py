"""Reference-feature cache: extract a dataset's features once per (data, extractor weights, layers).

torch-fidelity has its own cache, but its key is (input name, extractor name, layer) and ignores the weights:
retraining the evaluator would silently reuse stale features. Our key hashes every field that changes the
features, including the sha256 of the weights file, and the cache stores the FEATURES (not only μ/Σ) because
precision/recall, density/coverage and KID need the points themselves. Files are npz, written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from guidance.io import atomic_save_npz


def cache_key(dataset: str, split: str, num_reference: int | None, extractor: str, weights_sha256: str,
              layers: list[str] | tuple[str, ...], subset_seed: int = 0) -> dict:
    return {"dataset": dataset, "split": split, "num_reference": num_reference, "extractor": extractor,
            "weights_sha256": weights_sha256, "layers": sorted(set(layers)), "subset_seed": subset_seed,
            "format": 2}  # 2: dataset is the data module's fingerprint (kind + content), not the kind


def cache_path(cache_dir: str | Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    n = key["num_reference"] if key["num_reference"] is not None else "all"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{key['dataset']}-{key['split']}")
    return Path(cache_dir) / f"{safe}-{n}-{key['extractor']}-{digest}.npz"


def load_or_extract(cache_dir: str | Path | None, key: dict,
                    extract: Callable[[], tuple[dict[str, torch.Tensor], torch.Tensor | None]],
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, bool]:
    """Return (features by layer, labels or None, hit) from the cache, or run `extract()` and store it.

    `extract()` returns (features by layer, labels or None).
    `cache_dir=None` disables caching. A file whose stored key differs (hash collision, hand edits) is treated
    as a miss and overwritten.
    """
    path = cache_path(cache_dir, key) if cache_dir else None
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                if json.loads(str(z["key"])) == key:
                    feats = {name: torch.from_numpy(z[f"feat_{name}"]) for name in key["layers"]}
                    labels = torch.from_numpy(z["labels"]) if "labels" in z.files else None
                    return feats, labels, True
        except Exception as e:  # truncated / corrupt / foreign file: rebuild it rather than fail or trust it
            print(f"reference-feature cache {path} is unreadable ({type(e).__name__}); rebuilding it")
    feats, labels = extract()
    if path is not None:
        arrays = {f"feat_{name}": feats[name].float().numpy() for name in key["layers"]}
        if labels is not None:
            arrays["labels"] = labels.numpy()
        atomic_save_npz(path, key=np.array(json.dumps(key, sort_keys=True)), **arrays)
    return feats, labels, False
