"""The statistics behind the registry's metrics: features by role -> values (+ spreads).

Each function takes the evaluation's `Inputs` and the metric names wanted from it and returns metrics.json
entries. They run in registry order and share one numpy Generator, so bootstrap spreads are reproducible.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from tqdm.auto import tqdm

from guidance.metrics.beyond_fid import class_fidelity as class_indicators
from guidance.metrics.beyond_fid import cmmd as cmmd_value
from guidance.metrics.beyond_fid import cmmd_reference_term, vendi_score
from guidance.metrics.fid import bootstrap_fid_std, feature_statistics, frechet_distance
from guidance.metrics.prdc import bootstrap_indicator_std, bootstrap_sample_coverage_std, manifold_indicators
from guidance.metrics.registry import METRICS


@dataclass
class Inputs:
    samples: dict[str, torch.Tensor]      # role -> features
    reference: dict[str, torch.Tensor]
    sample_labels: torch.Tensor | None
    config: dict                          # the metrics config (evaluate.metrics_config)
    rng: np.random.Generator
    ref_stats: dict | None = None         # precomputed {"fid": {mu, sigma}, "sfid": ...} (an ADM batch's)

    @property
    def bootstrap(self) -> int:
        return int(self.config["bootstrap"])

    def bar(self, **kw):
        return tqdm(leave=False, disable=not self.config["progress"], **kw)


def frechet(inp: Inputs, wanted: list[str]) -> dict:
    """FID / sFID (Heusel et al. 2017; Nash et al. 2021) on float64 statistics, bootstrap over the samples."""
    out = {}
    for name in wanted:
        role = METRICS[name].roles[0]
        stats = (inp.ref_stats or {}).get(name) or feature_statistics(inp.reference[role])
        out[name] = frechet_distance(feature_statistics(inp.samples[role]), stats)
        if inp.bootstrap > 1:
            with inp.bar(total=inp.bootstrap, desc=f"bootstrap {name}") as bar:
                out[f"{name}_std"] = bootstrap_fid_std(inp.samples[role], stats, inp.bootstrap, inp.rng, bar)
    return out


def inception_score(inp: Inputs, wanted: list[str]) -> dict:
    """IS (Salimans et al. 2016) on logits: torch-fidelity's split mean/std."""
    c = inp.config
    isc = isc_features_to_metric(inp.samples["logits"], splits=c["isc_splits"], shuffle=True, rng_seed=c["seed"])
    return {"is_mean": isc[KEY_METRIC_ISC_MEAN], "is_std": isc[KEY_METRIC_ISC_STD]}


def kid(inp: Inputs, wanted: list[str]) -> dict:
    """KID (Binkowski et al. 2018): torch-fidelity's unbiased MMD² with the cubic kernel over random subsets."""
    c = inp.config
    k = kid_features_to_metric(inp.samples["embedding"], inp.reference["embedding"], kid_subsets=c["kid_subsets"],
                               kid_subset_size=c["kid_subset_size"], rng_seed=c["seed"], verbose=False)
    return {"kid_mean": k[KEY_METRIC_KID_MEAN], "kid_std": k[KEY_METRIC_KID_STD]}


def manifold(inp: Inputs, wanted: list[str]) -> dict:
    """P&R (k_prc) and D&C (k_dc) from one chunked k-NN pass (equal to torch-fidelity's prc, tested)."""
    c = inp.config
    s, r = inp.samples["embedding"], inp.reference["embedding"]
    with inp.bar(total=2 * len(s) + len(r), desc="k-NN manifolds", unit="rows") as bar:
        ind, pairs = manifold_indicators(s, r, c["k_prc"], c["k_dc"], c["knn_chunk"], bar, return_pairs=True)
    out = {k: float(v.double().mean()) for k, v in ind.items()}
    if inp.bootstrap > 1:
        # All four spreads resample the samples: precision/density through their per-sample indicators,
        # recall/coverage through the covering pairs (per-reference indicators would hold the samples fixed).
        per_sample = {k: ind[k] for k in ("precision", "density")}
        out.update({f"{k}_std": v for k, v in bootstrap_indicator_std(per_sample, inp.bootstrap, inp.rng).items()})
        out.update({f"{k}_std": v for k, v in
                    bootstrap_sample_coverage_std(pairs, len(s), len(r), inp.bootstrap, inp.rng).items()})
    return {k: v for k, v in out.items() if k.removesuffix("_std") in wanted}


def class_fidelity(inp: Inputs, wanted: list[str]) -> dict:
    """Class accuracy / target-class probability of labelled samples under the dataset evaluator's logits."""
    if inp.sample_labels is None:
        return {}  # unlabelled samples (an unconditional batch): nothing to score against
    ind = class_indicators(inp.samples["logits"], inp.sample_labels)
    out = {k: float(v.mean()) for k, v in ind.items()}
    if inp.bootstrap > 1:
        out.update({f"{k}_std": v for k, v in bootstrap_indicator_std(ind, inp.bootstrap, inp.rng).items()})
    return out


_CMMD_REF_TERMS: dict[tuple, float] = {}  # per process: a sweep evaluates many points against one reference


def cmmd(inp: Inputs, wanted: list[str]) -> dict:
    """CMMD × 1000 (Jayasumana et al. 2024); the reference-only kernel term once per reference set."""
    ref, sigma = inp.reference["embedding"], float(inp.config["cmmd_sigma"])
    key = (hashlib.sha256(np.ascontiguousarray(ref.float().numpy()).tobytes()).hexdigest(), tuple(ref.shape), sigma)
    if key not in _CMMD_REF_TERMS:
        _CMMD_REF_TERMS[key] = cmmd_reference_term(ref, sigma)
    return {"cmmd": cmmd_value(inp.samples["embedding"], ref, sigma=sigma, ref_term=_CMMD_REF_TERMS[key])}


def vendi(inp: Inputs, wanted: list[str]) -> dict:
    """Vendi score (Friedman & Dieng 2023) of the samples alone."""
    return {"vendi": vendi_score(inp.samples["embedding"])}


STATISTICS = {"frechet": frechet, "inception_score": inception_score, "kid": kid, "manifold": manifold,
              "class_fidelity": class_fidelity, "cmmd": cmmd, "vendi": vendi}
