"""Typed settings, parsed once at the boundary: a wrong type, value or unknown option is one line before any work.

Each dataclass below is the schema of one config node (an app's own options, or a group such as `metrics`); its
defaults are the values a partial node gets (library callers pass partial dicts). `parse(Schema, node, where)`
checks every field's type against its annotation, then the schema's `check()` for values, and returns the
dataclass; conf/*.yaml keep the documented defaults users read.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from guidance.errors import GuidanceError


def _plain(node) -> dict:
    if node is None:
        return {}
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    return dict(node)


def _type_ok(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is typing.Union:  # Optional[X]
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is list or annotation is list:
        return isinstance(value, (list, tuple))
    return True


_NAMES = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", list: "a list"}


def _type_name(annotation) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union:
        return " or ".join(_type_name(a) for a in args) + " (or null)"
    return _NAMES.get(typing.get_origin(annotation) or annotation, str(annotation))


T = typing.TypeVar("T")


def parse(schema: type[T], node, where: str = "") -> T:
    """node (DictConfig, dict, or an instance already) -> schema instance; one GuidanceError line otherwise.
    `where`: the node's path for messages ("metrics." -> "metrics.batch_size=...")."""
    if isinstance(node, schema):
        return node
    values = _plain(node)
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise GuidanceError(f"unknown option(s) {', '.join(where + k for k in unknown)}: known are "
                            f"{', '.join(names)}")
    for name, value in values.items():
        if not _type_ok(value, hints[name]):
            raise GuidanceError(f"{where}{name}={value!r} must be {_type_name(hints[name])}")
    out = schema(**values)
    out.check(where)  # type: ignore[attr-defined]
    return out


def _positive(obj, where: str, *names: str) -> None:
    for n in names:
        if getattr(obj, n) < 1:
            raise GuidanceError(f"{where}{n}={getattr(obj, n)} must be a positive integer")


@dataclass
class MetricsSettings:
    """conf/metrics/*.yaml (documented there)."""

    extractor: str = "evaluator"
    evaluator_checkpoint: Optional[str] = None
    inception_weights: Optional[str] = None
    dinov2_weights: Optional[str] = None
    clip_weights: Optional[str] = None
    compute: Optional[list] = None
    reference_split: str = "train"
    num_reference: Optional[int] = None
    batch_size: int = 256
    device: str = "auto"
    cache_dir: Optional[str] = "runs/cache/reference"
    k_prc: int = 3
    k_dc: int = 5
    knn_chunk: int = 1024
    isc_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    bootstrap: int = 10
    seed: int = 0
    per_class: bool = False
    cmmd_sigma: float = 10.0
    progress: bool = True

    def check(self, where: str = "metrics.") -> None:
        from guidance.metrics.registry import metrics_for

        _positive(self, where, "batch_size", "k_prc", "k_dc", "knn_chunk", "isc_splits", "kid_subsets",
                  "kid_subset_size")
        if self.num_reference is not None:
            _positive(self, where, "num_reference")
        if self.bootstrap < 0 or self.seed < 0:
            raise GuidanceError(f"{where}bootstrap={self.bootstrap} and {where}seed={self.seed} must be >= 0")
        if self.cmmd_sigma <= 0:
            raise GuidanceError(f"{where}cmmd_sigma={self.cmmd_sigma} must be > 0 (an RBF bandwidth)")
        if self.compute is not None and len(self.compute) == 0:
            raise GuidanceError(f"{where}compute=[] asks for no metric: list some (e.g. {where}compute=[fid,precision]) "
                                f"or set {where}compute=null for every metric the extractor supports")
        metrics_for(self.extractor, self.compute)  # the extractor and the metric names


# The options of conf/sample.yaml that change the samples; every other option (and every data/metrics/logger
# setting) is left out of a multirun job's folder name (hydra.job.config.override_dirname.exclude_keys).
SAMPLE_CHANGING = ("guidance", "sampler", "num_samples", "seed", "labels", "use_ema", "precision", "channels_last")


@dataclass
class SampleSettings:
    """conf/sample.yaml's own options (the groups guidance, sampler, data, metrics, logger are parsed by theirs)."""

    unet_ckpt: str = "runs/train/fashion_mnist-default/unet.pt"
    classifier_ckpt: Optional[str] = None
    weak_ckpt: Optional[str] = None
    vae: Optional[str] = None
    unet_model: Any = None        # a `_target_` config returning a DenoisingModel (instead of unet_ckpt)
    weak_model: Any = None        # autoguidance's weak model likewise (instead of weak_ckpt)
    sample_shape: Optional[list] = None   # [C, H, W] of a unet_model's samples
    num_classes: Optional[int] = None     # a unet_model's classes (null: its null_label)
    num_samples: int = 1000
    batch_size: int = 250
    batching: str = "auto"
    precision: str = "auto"
    channels_last: Any = "auto"   # true | false | auto (guidance.sampling.runtime checks it)
    compile: Any = False          # (guidance.sampling.runtime checks it)
    seed: int = 0
    labels: str = "uniform"
    use_ema: bool = True
    device: str = "auto"
    sweep_name: str = "sample"
    evaluate: bool = False
    reference_npz: Optional[str] = None

    def check(self, where: str = "") -> None:
        from guidance.sampling.rng import LABEL_MODES

        if self.labels not in LABEL_MODES:
            raise GuidanceError(f"labels={self.labels} is unknown; use one of {', '.join(LABEL_MODES)}")
        _positive(self, where, "num_samples", "batch_size")
        if self.seed < 0:
            raise GuidanceError(f"seed={self.seed} must be a non-negative integer (image i's noise comes from "
                                "(seed, i))")
        for key in ("unet_model", "weak_model"):
            node = getattr(self, key)
            if node is not None and not (isinstance(node, dict) and node.get("_target_")):
                raise GuidanceError(f"{key}={node!r} must be a config with _target_ (a function or class returning a "
                                    f"guidance.engine.model.DenoisingModel), e.g. '{key}={{_target_: mymodels.build}}'")
        shape = self.sample_shape
        if shape is not None and not (len(shape) == 3 and all(isinstance(n, int) and not isinstance(n, bool)
                                                              and n > 0 for n in shape)):
            raise GuidanceError(f"sample_shape={shape} must be [C, H, W], three positive integers (e.g. [1,28,28])")
        if self.num_classes is not None:
            _positive(self, where, "num_classes")


SAMPLE_GROUPS = ("guidance", "sampler", "data", "metrics", "logger", "experiment")


def sample_settings(cfg) -> SampleSettings:
    """The sample config's own options, typed (its groups are left to their own parsers)."""
    return parse(SampleSettings, {k: v for k, v in _plain(cfg).items() if k not in SAMPLE_GROUPS})


def sweep_dirname_excludes() -> list[str]:
    """conf/sample.yaml's hydra.job.config.override_dirname.exclude_keys: every override that does not change the
    samples (hydra matches whole keys, so each metrics option is listed)."""
    own = [f.name for f in dataclasses.fields(SampleSettings) if f.name not in SAMPLE_CHANGING]
    metrics = [f"metrics.{f.name}" for f in dataclasses.fields(MetricsSettings)]
    return ["experiment", "logger", "data", "data.root", "data.download", "metrics", "hydra.launcher",
            "hydra/launcher", "hydra.sweep.dir", *own, *metrics]


@dataclass
class TrainEvaluatorSettings:
    """conf/train_evaluator.yaml's own options."""

    epochs: int = 3
    batch_size: int = 128
    lr: float = 2.0e-3
    weight_decay: float = 1.0e-4
    seed: int = 0
    device: str = "auto"
    min_accuracy: Optional[float] = None
    log_every: int = 50
    out_dir: str = "runs/evaluator"
    subset: Optional[int] = None   # the first n images of the train and test splits (the debug study); null: all

    def check(self, where: str = "") -> None:
        _positive(self, where, "epochs", "batch_size", "log_every")
        if self.subset is not None:
            _positive(self, where, "subset")
        if self.lr <= 0 or self.weight_decay < 0:
            raise GuidanceError(f"lr={self.lr} must be > 0 and weight_decay={self.weight_decay} >= 0 "
                                "(Adam; e.g. lr=2e-3)")
        if self.seed < 0:
            raise GuidanceError(f"seed={self.seed} must be a non-negative integer")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise GuidanceError(f"min_accuracy={self.min_accuracy} must be in [0, 1] (a test accuracy) or null")


@dataclass
class StudySettings:
    """conf/study/*.yaml: the main job's study."""

    name: str = "cpu"
    train_steps: int = 6000
    evaluator_epochs: int = 3
    evaluator_subset: Optional[int] = None   # the evaluator learns and is scored on the first n images (debug)
    num_samples: int = 2000
    batch_size: int = 250
    seed: int = 0
    labels: str = "balanced"
    sampler: str = "dpmpp_2m"
    respacing: str = "ddim10"
    precision: str = "auto"
    compile: bool = False
    weak_ckpt: Optional[str] = None
    sweep: list = field(default_factory=list)

    def check(self, where: str = "study.") -> None:
        from guidance.sampling.rng import LABEL_MODES

        _positive(self, where, "train_steps", "evaluator_epochs", "num_samples", "batch_size")
        if self.evaluator_subset is not None:
            _positive(self, where, "evaluator_subset")
        if self.seed < 0:
            raise GuidanceError(f"{where}seed={self.seed} must be a non-negative integer")
        if self.labels not in LABEL_MODES:
            raise GuidanceError(f"{where}labels={self.labels} is unknown; use one of {', '.join(LABEL_MODES)}")
        if not self.sweep:
            raise GuidanceError(f"{where}sweep is empty: list at least one {{guidance, scales}} entry")


@dataclass
class TrainingSettings:
    """conf/training/*.yaml (documented there)."""

    batch_size: int = 128
    total_steps: int = 50000
    seed: int = 0
    train_unet: bool = True
    train_classifier: bool = True
    p_uncond: float = 0.1
    unet_lr: float = 2.0e-4
    classifier_lr: float = 3.0e-4
    unet_weight_decay: float = 0.0
    classifier_weight_decay: float = 0.05
    grad_clip: Optional[float] = 1.0
    ema_rate: Optional[float] = 0.9999
    ema_warmup: bool = True
    classifier_ema_rate: Optional[float] = None
    log_every: int = 100
    checkpoint_every: int = 2000
    sample_every: int = 5000
    sample_respacing: str = "ddim20"
    sample_per_class: int = 8
    progress: bool = True

    def check(self, where: str = "training.") -> None:
        if not (self.train_unet or self.train_classifier):
            raise GuidanceError(f"{where}train_unet and {where}train_classifier are both false; enable one")
        _positive(self, where, "batch_size", "total_steps", "log_every")
        if self.seed < 0:
            raise GuidanceError(f"{where}seed={self.seed} must be a non-negative integer")
        if min(self.sample_every, self.sample_per_class, self.checkpoint_every) < 0:
            raise GuidanceError(f"{where}sample_every={self.sample_every}, {where}sample_per_class="
                                f"{self.sample_per_class} and {where}checkpoint_every={self.checkpoint_every} must be "
                                ">= 0 (0: no sample grids / a state only at the end)")
        if not 0.0 <= self.p_uncond < 1.0:
            raise GuidanceError(f"{where}p_uncond={self.p_uncond} must be in [0, 1) (0.1 in Ho & Salimans 2022)")
        for key in ("unet_lr", "classifier_lr", "unet_weight_decay", "classifier_weight_decay", "grad_clip"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise GuidanceError(f"{where}{key}={value} must be a number >= 0")
        for key in ("ema_rate", "classifier_ema_rate"):
            rate = getattr(self, key)
            if rate is not None and not 0.0 <= rate < 1.0:
                raise GuidanceError(f"{where}{key}={rate} must be in [0, 1) (e.g. 0.9999, or 0.999 for short runs)")
