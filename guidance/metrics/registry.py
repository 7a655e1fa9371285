"""The one list of metrics and feature extractors (the idea of edm2's `metric_specs`).

A metric names the statistic that computes it (guidance.metrics.statistics) and the feature *roles* it reads:
`embedding` (one global vector per image), `spatial` (sFID's spatial map) and `logits` (class scores). An
extractor says which of its layers plays each role, so a metric runs on every extractor that provides its
roles: FID on DINOv2 is FD-DINOv2, CMMD on CLIP is the paper's CMMD. Adding a metric is an entry in METRICS
(+ its statistic); adding an extractor is an entry in EXTRACTORS (+ its class in extractors.py). report/ reads
these tables and names neither: a metric's `column` says where the tables show it (the csv and the wandb table
carry every metric), `label`/`decimals` how, `lower_is_better` which way is better (arrows, bold, plot labels).
This module is data only (no torch): the report imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from guidance.errors import GuidanceError


COLUMNS = ("always", "measured", "csv")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    statistic: str               # guidance.metrics.statistics.STATISTICS key; one statistic may give several
    roles: tuple[str, ...]       # feature roles it reads
    key: str                     # value key in a metrics.json result
    std_key: str                 # its spread (bootstrap, or the split std of IS/KID)
    label: str
    lower_is_better: bool
    decimals: int
    needs_class_logits: bool = False  # logits must be the DATASET's classes (class fidelity)
    paper: str = ""
    column: str = "csv"          # md/tex tables: "always" a column, "measured" when a row has it, "csv" never

    def __post_init__(self):
        if self.column not in COLUMNS:
            raise ValueError(f"MetricSpec {self.name!r}: column must be one of {COLUMNS}, got {self.column!r}")

    @property
    def better(self) -> str:
        return "lower" if self.lower_is_better else "higher"

    @property
    def arrow(self) -> str:
        return "↓" if self.lower_is_better else "↑"


# Paper conventions (ADM Table 4, Ho & Salimans Table 1): FID/sFID/KID/CMMD go down, the rest goes up; the tables
# show the papers' five columns (+ class accuracy where measured), in this order.
_M = MetricSpec
METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    _M("fid", "frechet", ("embedding",), "fid", "fid_std", "FID", True, 2, paper="Heusel et al. 2017",
       column="always"),
    _M("sfid", "frechet", ("spatial",), "sfid", "sfid_std", "sFID", True, 2, paper="Nash et al. 2021",
       column="always"),
    _M("is", "inception_score", ("logits",), "is_mean", "is_std", "IS", False, 2, paper="Salimans et al. 2016",
       column="always"),
    _M("kid", "kid", ("embedding",), "kid_mean", "kid_std", "KID", True, 4, paper="Binkowski et al. 2018"),
    _M("precision", "manifold", ("embedding",), "precision", "precision_std", "Precision", False, 2,
       paper="Kynkäänniemi et al. 2019", column="always"),
    _M("recall", "manifold", ("embedding",), "recall", "recall_std", "Recall", False, 2,
       paper="Kynkäänniemi et al. 2019", column="always"),
    _M("density", "manifold", ("embedding",), "density", "density_std", "Density", False, 2,
       paper="Naeem et al. 2020"),
    _M("coverage", "manifold", ("embedding",), "coverage", "coverage_std", "Coverage", False, 2,
       paper="Naeem et al. 2020"),
    _M("class_acc", "class_fidelity", ("logits",), "class_acc", "class_acc_std", "Class acc", False, 3,
       needs_class_logits=True, column="measured"),
    _M("class_prob", "class_fidelity", ("logits",), "class_target_prob", "class_target_prob_std", "Target prob",
       False, 3, needs_class_logits=True),
    _M("cmmd", "cmmd", ("embedding",), "cmmd", "cmmd_std", "CMMD", True, 3, paper="Jayasumana et al. 2024"),
    _M("vendi", "vendi", ("embedding",), "vendi", "vendi_std", "Vendi", False, 2, paper="Friedman & Dieng 2023"),
)}


@dataclass(frozen=True)
class ExtractorSpec:
    name: str                    # torch-fidelity registry name and metrics.extractor value
    description: str
    layers: dict[str, str]       # role -> the extractor's layer name
    weights_option: str          # metrics config key holding its weights file
    class_logits: bool = False   # its logits are the dataset's classes
    headline: tuple[str, ...] = ("fid",)  # columns it adds to a table led by another extractor
    labels: dict[str, str] = field(default_factory=dict)  # metric -> the name the field uses on this extractor


EXTRACTORS: dict[str, ExtractorSpec] = {e.name: e for e in (
    ExtractorSpec("evaluator", "the toolkit's dataset evaluator (guidance-train-evaluator)",
                  {"embedding": "pool", "spatial": "spatial", "logits": "logits"}, "evaluator_checkpoint",
                  class_logits=True, headline=("fid", "class_acc")),
    ExtractorSpec("inception", "Inception-v3 (torch-fidelity's TF-compatible port)",
                  {"embedding": "2048", "spatial": "spatial", "logits": "logits_unbiased"}, "inception_weights"),
    ExtractorSpec("dinov2", "DINOv2 ViT-L/14 (Oquab et al. 2023), as Stein et al. 2023 and EDM2",
                  {"embedding": "dinov2"}, "dinov2_weights", labels={"fid": "FD_DINOv2"}),
    ExtractorSpec("clip", "CLIP ViT-L/14@336px image embedding (Radford et al. 2021), as CMMD",
                  {"embedding": "clip"}, "clip_weights", headline=("cmmd",), labels={"fid": "FD_CLIP", "cmmd": "CMMD"}),
)}

ROLE_FOR_TORCH_FIDELITY = {"fid": "embedding", "kid": "embedding", "prc": "embedding", "isc": "logits"}


def extractor_spec(name: str) -> ExtractorSpec:
    if name not in EXTRACTORS:
        raise GuidanceError(f"unknown metrics.extractor={name!r}: use one of {sorted(EXTRACTORS)}")
    return EXTRACTORS[name]


def supported(metric: str, extractor: str) -> bool:
    m, e = METRICS[metric], extractor_spec(extractor)
    return all(r in e.layers for r in m.roles) and (e.class_logits or not m.needs_class_logits)


def metrics_for(extractor: str, names: list[str] | None = None) -> list[str]:
    """The metrics to compute: `names` (each checked against the extractor), or every one it supports."""
    if names is None:
        return [m for m in METRICS if supported(m, extractor)]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise GuidanceError(f"unknown metric(s) {unknown} in metrics.compute: known are {list(METRICS)}")
    unfit = [n for n in names if not supported(n, extractor)]
    if unfit:
        raise GuidanceError(f"metrics.compute asks for {unfit} but extractor {extractor!r} provides only "
                            f"{sorted(EXTRACTORS[extractor].layers)} features: drop them or change metrics.extractor")
    return list(names)


def metric_label(metric: str, extractor: str, qualify: bool) -> str:
    """FID on DINOv2 is "FD_DINOv2"; other metrics get "(extractor)" when a table holds several extractors."""
    e = EXTRACTORS.get(extractor)
    if e is not None and metric in e.labels:
        return e.labels[metric]
    return f"{METRICS[metric].label} ({extractor})" if qualify else METRICS[metric].label


def results_by_extractor(data: dict) -> dict[str, dict]:
    """extractor -> result from metrics.json content; a format-1 file (one flat result) is its own extractor."""
    if "extractors" in data:
        found = data["extractors"] if isinstance(data["extractors"], dict) else {}
        return {k: v for k, v in found.items() if isinstance(v, dict)}
    return {str(data.get("extractor")): data} if data else {}


def extractor_order(name: str) -> int:
    return list(EXTRACTORS).index(name) if name in EXTRACTORS else len(EXTRACTORS)
