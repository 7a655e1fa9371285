"""CFG (scale w, Ho & Salimans 2022) on the network output, then classifier guidance (scale s, ADM Alg. 1/2)
on top of it: ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅), then μ + sΣ∇log p(y|x_t) or ε~ − s sqrt(1−ᾱ_t)∇log p(y|x_t).
"""

from __future__ import annotations

from guidance.guiders.base import GuidanceCost, check_scale
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.classifier import ClassifierGuidance


class CFGClassifierGuidance(ClassifierFreeGuidance):
    name = "cfg_classifier"
    needs_classifier = True

    def __init__(self, scale: float = 1.0, classifier_scale: float = 1.0, classifier=None,
                 null_label: int | None = None):
        super().__init__(scale=scale, null_label=null_label, classifier=classifier)
        # The classifier half is a ClassifierGuidance at scale s on the (already CFG-combined) output.
        self.classifier_scale = check_scale(classifier_scale, "guidance.classifier_scale")
        self._cg = ClassifierGuidance(self.classifier_scale, conditional=True, classifier=classifier)

    def condition_mean(self, mean, variance, x, t, y):
        return self._cg.condition_mean(mean, variance, x, t, y)

    def condition_eps(self, eps, x, t, y, alpha_bar):
        return self._cg.condition_eps(eps, x, t, y, alpha_bar)

    def cost(self) -> GuidanceCost:
        c = self._cg.cost()
        return GuidanceCost(super().cost().nfe, c.classifier_forward, c.classifier_backward)

    def info(self) -> dict:
        return {**super().info(), "classifier_scale": self.classifier_scale}
