"""Guidance strategies: one small module each, one registry.

`GUIDERS[name]` is the class; `build_guider(name, **fields)` builds one (or a preset: `PRESETS[name]`, a strategy at
a named schedule setting, e.g. cfg_interval); Hydra configs in conf/guidance/<name>.yaml instantiate them. A new strategy is a module here, a line in GUIDERS and a yaml: the denoiser, every sampler and
the report take it from there (see guidance.guiders.base for the contract).
"""

from __future__ import annotations

from guidance.errors import GuidanceError
from guidance.guiders.apg import AdaptiveProjectedGuidance
from guidance.guiders.apg_mix import AdaptiveProjectedMixGuidance
from guidance.guiders.autoguidance import Autoguidance
from guidance.guiders.base import Description, Guider, TableSpec, check_scale, extrapolate
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.cfg_classifier import CFGClassifierGuidance
from guidance.guiders.cfg_rescale import RescaledCFG
from guidance.guiders.cfg_zero import CFGZeroStar
from guidance.guiders.cfgpp import CFGPlusPlus
from guidance.guiders.classifier import ClassifierGuidance
from guidance.guiders.fdg import FrequencyDecoupledGuidance
from guidance.guiders.icg import IndependentConditionGuidance
from guidance.guiders.mambo import MagnitudeAwareGuidance
from guidance.guiders.none import NoGuidance
from guidance.guiders.pag import PerturbedAttentionGuidance
from guidance.guiders.presets import PRESETS, Preset
from guidance.guiders.schedules import WeightSchedule
from guidance.guiders.seg import SmoothedEnergyGuidance
from guidance.guiders.slg import SkipLayerGuidance
from guidance.guiders.tcfg import TangentialCFG
from guidance.guiders.thresholding import DynamicThresholding
from guidance.guiders.tsg import TimeStepGuidance
from guidance.guiders.scales import cfg_w_to_classifier_scale, cfg_w_to_guidance_scale, guidance_scale_to_cfg_w

GUIDERS: dict[str, type[Guider]] = {
    cls.name: cls for cls in (NoGuidance, ClassifierGuidance, ClassifierFreeGuidance, CFGClassifierGuidance,
                              AdaptiveProjectedGuidance, RescaledCFG, DynamicThresholding, CFGPlusPlus, Autoguidance,
                              IndependentConditionGuidance, TimeStepGuidance, CFGZeroStar, PerturbedAttentionGuidance,
                              TangentialCFG, FrequencyDecoupledGuidance, MagnitudeAwareGuidance,
                              AdaptiveProjectedMixGuidance, SkipLayerGuidance, SmoothedEnergyGuidance)
}


def guider_class(name: str) -> type[Guider]:
    """The class of a strategy or of a preset's strategy."""
    if name in PRESETS:
        name = PRESETS[name].strategy
    if name not in GUIDERS:
        raise GuidanceError(f"unknown guidance strategy {name!r}; choose one of {sorted(GUIDERS | PRESETS)}")
    return GUIDERS[name]


def build_guider(name: str, **fields) -> Guider:
    """E.g. build_guider("cfg", scale=2.0), build_guider("classifier", scale=1, conditional=False), or a preset:
    build_guider("cfg_interval", scale=2.0, sigma_hi=6.2)."""
    if name in PRESETS:
        fields = {"preset": name, **fields}
    return guider_class(name)(**fields)


def describe_point(info: dict) -> Description | None:
    """The report's view of a sampled point (from its sample_info); None for an unknown strategy."""
    name = info.get("strategy")
    if name in PRESETS:
        return PRESETS[name].describe(info)
    cls = GUIDERS.get(name)
    return cls.describe(info) if cls else None


__all__ = [
    "GUIDERS", "Guider", "Description", "TableSpec", "NoGuidance", "ClassifierGuidance", "ClassifierFreeGuidance",
    "CFGClassifierGuidance", "AdaptiveProjectedGuidance", "RescaledCFG", "PRESETS", "Preset", "WeightSchedule",
    "extrapolate", "DynamicThresholding", "CFGPlusPlus", "Autoguidance", "IndependentConditionGuidance",
    "TimeStepGuidance", "CFGZeroStar", "PerturbedAttentionGuidance", "TangentialCFG", "FrequencyDecoupledGuidance",
    "MagnitudeAwareGuidance", "AdaptiveProjectedMixGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance",
    "build_guider", "guider_class",
    "describe_point", "check_scale",
    "cfg_w_to_guidance_scale", "guidance_scale_to_cfg_w", "cfg_w_to_classifier_scale",
]
