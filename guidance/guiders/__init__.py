"""Guidance strategies: one small module each, one registry.

`GUIDERS[name]` is the class; `build_guider(name, **fields)` builds one; Hydra configs in conf/guidance/<name>.yaml
instantiate them with `classifier=` and `null_label=` passed in by the app.
"""

from __future__ import annotations

from guidance.errors import GuidanceError
from guidance.guiders.base import GuidanceCost, Guider, check_scale, classifier_grad
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.cfg_interval import CFGIntervalGuidance
from guidance.guiders.cfg_classifier import CFGClassifierGuidance
from guidance.guiders.classifier import ClassifierGuidance
from guidance.guiders.none import NoGuidance
from guidance.guiders.scales import cfg_w_to_classifier_scale, cfg_w_to_guidance_scale, guidance_scale_to_cfg_w

GUIDERS: dict[str, type[Guider]] = {
    cls.name: cls for cls in (NoGuidance, ClassifierGuidance, ClassifierFreeGuidance, CFGClassifierGuidance,
                            CFGIntervalGuidance)
}


def guider_class(name: str) -> type[Guider]:
    if name not in GUIDERS:
        raise GuidanceError(f"unknown guidance strategy {name!r}; choose one of {sorted(GUIDERS)}")
    return GUIDERS[name]


def build_guider(name: str, **fields) -> Guider:
    """E.g. build_guider("cfg", scale=2.0, null_label=10) or build_guider("classifier", scale=1, classifier=clf)."""
    return guider_class(name)(**fields)


__all__ = [
    "GUIDERS", "GuidanceCost", "Guider", "NoGuidance", "ClassifierGuidance", "ClassifierFreeGuidance",
    "CFGClassifierGuidance", "CFGIntervalGuidance", "build_guider", "guider_class", "check_scale", "classifier_grad",
    "cfg_w_to_guidance_scale", "guidance_scale_to_cfg_w", "cfg_w_to_classifier_scale",
]
