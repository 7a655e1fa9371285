"""Guidance strategies: one small module each, one registry.

`GUIDERS[name]` is the class; `build_guider(name, **fields)` builds one; Hydra configs in conf/guidance/<name>.yaml
instantiate them. A new strategy is a module here, a line in GUIDERS and a yaml: the denoiser, every sampler and
the report take it from there (see guidance.guiders.base for the contract).
"""

from __future__ import annotations

from guidance.errors import GuidanceError
from guidance.guiders.apg import AdaptiveProjectedGuidance
from guidance.guiders.apg_mix import AdaptiveProjectedMixGuidance
from guidance.guiders.autoguidance import Autoguidance
from guidance.guiders.base import Description, Guider, TableSpec, check_scale
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.cfg_classifier import CFGClassifierGuidance
from guidance.guiders.cfg_interval import CFGIntervalGuidance
from guidance.guiders.cfg_rescale import RescaledCFG
from guidance.guiders.cfg_zero import CFGZeroStar
from guidance.guiders.cfgpp import CFGPlusPlus
from guidance.guiders.classifier import ClassifierGuidance
from guidance.guiders.fdg import FrequencyDecoupledGuidance
from guidance.guiders.icg import IndependentConditionGuidance
from guidance.guiders.mambo import MagnitudeAwareGuidance
from guidance.guiders.none import NoGuidance
from guidance.guiders.pag import PerturbedAttentionGuidance
from guidance.guiders.scheduled import ScheduledCFG, ScheduledClassifier
from guidance.guiders.seg import SmoothedEnergyGuidance
from guidance.guiders.slg import SkipLayerGuidance
from guidance.guiders.tcfg import TangentialCFG
from guidance.guiders.thresholding import DynamicThresholding
from guidance.guiders.tsg import TimeStepGuidance
from guidance.guiders.scales import cfg_w_to_classifier_scale, cfg_w_to_guidance_scale, guidance_scale_to_cfg_w

GUIDERS: dict[str, type[Guider]] = {
    cls.name: cls for cls in (NoGuidance, ClassifierGuidance, ClassifierFreeGuidance, CFGClassifierGuidance,
                              CFGIntervalGuidance, AdaptiveProjectedGuidance, ScheduledCFG, ScheduledClassifier,
                              RescaledCFG, DynamicThresholding, CFGPlusPlus, Autoguidance,
                              IndependentConditionGuidance, TimeStepGuidance, CFGZeroStar, PerturbedAttentionGuidance,
                              TangentialCFG, FrequencyDecoupledGuidance, MagnitudeAwareGuidance,
                              AdaptiveProjectedMixGuidance, SkipLayerGuidance, SmoothedEnergyGuidance)
}


def guider_class(name: str) -> type[Guider]:
    if name not in GUIDERS:
        raise GuidanceError(f"unknown guidance strategy {name!r}; choose one of {sorted(GUIDERS)}")
    return GUIDERS[name]


def build_guider(name: str, **fields) -> Guider:
    """E.g. build_guider("cfg", scale=2.0) or build_guider("classifier", scale=1, conditional=False)."""
    return guider_class(name)(**fields)


def describe_point(info: dict) -> Description | None:
    """The report's view of a sampled point (from its sample_info); None for an unknown strategy."""
    cls = GUIDERS.get(info.get("strategy"))
    return cls.describe(info) if cls else None


__all__ = [
    "GUIDERS", "Guider", "Description", "TableSpec", "NoGuidance", "ClassifierGuidance", "ClassifierFreeGuidance",
    "CFGClassifierGuidance", "CFGIntervalGuidance", "AdaptiveProjectedGuidance", "ScheduledCFG", "ScheduledClassifier",
    "RescaledCFG", "DynamicThresholding", "CFGPlusPlus", "Autoguidance", "IndependentConditionGuidance",
    "TimeStepGuidance", "CFGZeroStar", "PerturbedAttentionGuidance", "TangentialCFG", "FrequencyDecoupledGuidance",
    "MagnitudeAwareGuidance", "AdaptiveProjectedMixGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance",
    "build_guider", "guider_class",
    "describe_point", "check_scale",
    "cfg_w_to_guidance_scale", "guidance_scale_to_cfg_w", "cfg_w_to_classifier_scale",
]
