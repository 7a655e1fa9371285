"""Read a sweep: one record per point folder (sample_info.json and/or metrics.json), failures kept as rows.

A sweep root is a Hydra multirun folder (runs/sweeps/NAME with one sub-folder per job) or any tree of folders.
A point is a folder holding sample_info.json or metrics.json, or a Hydra job folder (`.hydra/`) that wrote
neither (the job failed). Nothing is dropped silently: a point without metrics, with an unreadable file or from
a failed job becomes a record with missing values and a `status` saying why.

How a point is shown (its table, key cells and curve) is the strategy's business: the caller passes its describe
function (`guidance.guiders.describe_point`), so this package reads data and imports no strategy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from tqdm import tqdm

from guidance.description import Description
from guidance.errors import GuidanceError
from guidance.metrics.registry import METRICS, extractor_order, results_by_extractor

MODEL_ORDER = {False: 0, True: 1, None: 2}  # ADM Table 4 lists the unconditional model first
Describe = Callable[[dict], "Description | None"]  # a point's sample_info -> how to show it (None: unknown strategy)


OK = "ok"
MISSING_METRICS = "missing metrics"


@dataclass
class Point:
    """One sweep point. Fields are None where the files did not say (status tells why)."""

    name: str                        # folder relative to the sweep root ("." for the root itself)
    folder: Path
    status: str = OK
    strategy: str | None = None
    scale: float | None = None
    conditional: bool | None = None
    sampler: str | None = None
    steps: int | None = None
    num_samples: int | None = None
    seed: int | None = None
    nfe: float | None = None               # per sample (all steps), as recorded by sampling
    classifier_forward: float | None = None
    classifier_backward: float | None = None
    gflop: float | None = None             # per sample: Σ rows × measured FLOPs (None in records made before)
    desc: Description | None = None        # how the strategy wants the point shown (guiders' describe)
    info: dict = field(default_factory=dict)
    results: dict[str, dict] = field(default_factory=dict)  # extractor -> its metrics.json result

    @property
    def metrics(self) -> dict:
        """The result of the point's leading extractor (registry order), {} when none."""
        return self.results[min(self.results, key=extractor_order)] if self.results else {}

    def _result(self, extractor: str | None) -> dict:
        return self.metrics if extractor is None else self.results.get(extractor, {})

    def value(self, metric: str, extractor: str | None = None) -> float | None:
        return _number(self._result(extractor).get(METRICS[metric].key))

    def spread(self, metric: str, extractor: str | None = None) -> float | None:
        return _number(self._result(extractor).get(METRICS[metric].std_key))

    @property
    def baseline(self) -> bool:
        """An unguided model point (strategy `none`): it heads the tables that list its model."""
        return self.desc is not None and self.desc.table is None

    @property
    def x(self) -> float | None:
        """The swept value in its paper's unit (s, w, ...), as the strategy describes it."""
        return self.desc.x if self.desc else self.scale

    @property
    def grid(self) -> Path | None:
        path = self.folder / "grid.png"
        return path if path.is_file() else None

    @property
    def model(self) -> str:
        return {True: "conditional", False: "unconditional"}.get(self.conditional, "?")


@dataclass
class Sweep:
    root: Path
    points: list[Point]
    name: str                      # wandb group: sweep_name from multirun.yaml, else the folder name
    extractors: dict[str, str]     # extractor -> weights sha256, leading extractor first (registry order)

    @property
    def extractor(self) -> str | None:
        return next(iter(self.extractors), None)

    @property
    def weights_sha256(self) -> str | None:
        return self.extractors.get(self.extractor) if self.extractor else None


def _number(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x)


def _read_json(path: Path) -> tuple[dict | None, str | None]:
    """(content, None) or (None, reason) — an unreadable file becomes a status, not a crash."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"failed: unreadable {path.name} ({str(e).splitlines()[0][:80]})"
    if not isinstance(data, dict):
        return None, f"failed: unreadable {path.name} (not a JSON object)"
    return data, None


def _hydra_overrides(folder: Path) -> dict[str, str]:
    """key=value overrides of a Hydra job, so a failed job still lands in the right table row."""
    path = folder / ".hydra" / "overrides.yaml"
    try:
        items = yaml.safe_load(path.read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for item in items:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _failure_reason(folder: Path) -> str:
    """Last error-looking line of the job's own log files (Hydra's <job>.log, launcher .err files)."""
    for log in sorted(folder.glob("*.log")) + sorted(folder.glob("*.err")):
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in reversed(lines):
            if any(w in line for w in ("error", "Error", "Exception", "Traceback")):
                line = line.strip()
                return (line[len("error:"):].strip() if line.startswith("error:") else line)[:120]
    return "job wrote no sample_info.json or metrics.json"


def _fill_from_info(p: Point, info: dict) -> None:
    p.info = info
    p.strategy = info.get("strategy")
    p.scale = _number(info.get("scale"))
    cond = info.get("conditional")
    p.conditional = cond if isinstance(cond, bool) else None
    p.sampler = info.get("sampler")
    p.steps = info.get("steps")
    p.num_samples = info.get("num_samples")
    p.seed = info.get("seed")
    per_sample = info.get("cost_per_sample") or {}
    p.nfe = _number(per_sample.get("nfe"))
    p.classifier_forward = _number(per_sample.get("classifier_forward"))
    p.classifier_backward = _number(per_sample.get("classifier_backward"))
    p.gflop = _number(per_sample.get("gflop"))


def _override_value(text: str):
    """An override's value as sample_info would record it: a float where it reads as a number (Hydra's "1e-3"
    too), else its YAML value ("true", "[middle]"), else the text."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _strategy_fields(overrides: dict[str, str]) -> dict:
    """The `guidance.<field>=<value>` overrides of a job as strategy fields (what a failed job's row can tell)."""
    return {k[len("guidance."):]: _override_value(v) for k, v in overrides.items() if k.startswith("guidance.")}


def _fill_from_overrides(p: Point, overrides: dict[str, str]) -> None:
    p.strategy = p.strategy or overrides.get("guidance")
    if p.scale is None:
        p.scale = _number(_strategy_fields(overrides).get("scale"))
    if p.conditional is None:
        for key, value in overrides.items():
            if key.endswith("conditional") and value.lower() in ("true", "false"):
                p.conditional = value.lower() == "true"


def read_point(folder: Path, root: Path, describe: Describe) -> Point:
    name = str(folder.relative_to(root)) if folder != root else "."
    p = Point(name=name, folder=folder)
    info_path, metrics_path = folder / "sample_info.json", folder / "metrics.json"
    problems = []
    if info_path.exists():
        info, err = _read_json(info_path)
        if err:
            problems.append(err)
        else:
            _fill_from_info(p, info)
    if metrics_path.exists():
        metrics, err = _read_json(metrics_path)
        if err:
            problems.append(err)
        else:
            p.results = results_by_extractor(metrics)
            p.num_samples = p.num_samples or p.metrics.get("num_samples")
    overrides = _hydra_overrides(folder)
    _fill_from_overrides(p, overrides)
    if problems:
        p.status = "; ".join(problems)
    elif not info_path.exists() and not metrics_path.exists():
        p.status = f"failed: {_failure_reason(folder)}"
    elif not metrics_path.exists():
        p.status = MISSING_METRICS
    elif not info_path.exists():
        p.status = "missing sample_info.json"
    if p.strategy is not None:
        fields = {**_strategy_fields(overrides), "conditional": p.conditional, "scale": p.scale}
        info = {**p.info, "strategy": p.strategy, **{k: v for k, v in fields.items() if k not in p.info}}
        p.desc = describe(info)
        if p.desc is None and p.status == OK:
            p.status = f"unknown strategy {p.strategy!r}"
        if p.conditional is None and p.desc is not None and p.desc.table is not None and \
                "unconditional" not in p.desc.table.baseline_models:
            p.conditional = True  # tables of conditional-only strategies (CFG) always run the conditional model
    return p


# Folders that never hold points: Hydra/wandb/launcher bookkeeping.
_SKIP_DIRS = {".hydra", "wandb", ".submitit", "__pycache__", ".git"}


def find_point_folders(root: Path, exclude: list[Path] = ()) -> list[Path]:
    exclude = {Path(e).resolve() for e in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and (here / d).resolve() not in exclude)
        has_results = "sample_info.json" in filenames or "metrics.json" in filenames
        is_hydra_job = (here / ".hydra").is_dir()
        if has_results or is_hydra_job:
            found.append(here)
    return found


def _sweep_name(root: Path) -> str:
    try:
        name = (yaml.safe_load((root / "multirun.yaml").read_text()) or {}).get("sweep_name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return name if isinstance(name, str) and "${" not in name else root.resolve().name


def collect_sweep(sweep_dir: str | os.PathLike, describe: Describe, exclude: list[str | os.PathLike] = (),
                  progress: bool = True) -> Sweep:
    """Read every point below `sweep_dir`, each shown as `describe(sample_info)` says (e.g.
    guidance.guiders.describe_point). Raises GuidanceError for a missing folder, no points, mixed extractors."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise GuidanceError(f"sweep_dir {str(root)!r} is not a folder: pass sweep_dir=<a sweep output folder, e.g. runs/sweeps/NAME>")
    folders = find_point_folders(root, [Path(e) for e in exclude])
    if not folders:
        raise GuidanceError(f"no sweep points under {str(root)!r} (no sample_info.json, metrics.json or Hydra job folder): "
                            "run guidance-sample -m (and guidance-evaluate) into it first")
    points = [read_point(f, root, describe) for f in tqdm(folders, desc="reading sweep", disable=not progress)]

    return Sweep(root=root, points=points, name=_sweep_name(root), extractors=_feature_spaces(points))


def _feature_spaces(points: list[Point]) -> dict[str, str]:
    """extractor -> weights sha256 over the sweep. One extractor with two sets of weights is two feature spaces,
    whose numbers cannot share a column: refused. Several extractors give several columns."""
    spaces: dict[str, dict[str, list[str]]] = {}
    for p in points:
        for extractor, result in p.results.items():
            spaces.setdefault(extractor, {}).setdefault(str(result.get("weights_sha256")), []).append(p.name)
    for extractor, by_sha in spaces.items():
        if len(by_sha) > 1:
            desc = "; ".join(f"weights {sha[:8]} in {', '.join(names[:2])}{' ...' if len(names) > 2 else ''}"
                             for sha, names in by_sha.items())
            raise GuidanceError(f"sweep mixes two sets of {extractor} weights ({desc}): metrics from different "
                                "feature spaces cannot share a column; re-evaluate every point with one metrics "
                                "config or report the sweeps separately")
    return {e: next(iter(spaces[e])) for e in sorted(spaces, key=extractor_order)}


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
