"""Classifier guidance (Dhariwal & Nichol 2021, "ADM"), gradient scale s; s = 0 is unguided.

Ancestral (Alg. 1):  μ' = μ + s Σ ∇_{x_t} log p_φ(y | x_t)
DDIM      (Alg. 2):  ε' = ε − s sqrt(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t)
Applies to the conditional model or, with conditional=false, to the unconditional one (ADM Table 4).
"""

from __future__ import annotations

from guidance.guiders.base import GuidanceCost, Guider, classifier_grad, require_classifier


class ClassifierGuidance(Guider):
    name = "classifier"
    needs_classifier = True

    def __init__(self, scale: float = 1.0, conditional: bool = True, classifier=None, null_label: int | None = None):
        super().__init__(scale=scale, null_label=null_label, conditional=conditional, classifier=classifier)
        require_classifier(self)

    def condition_mean(self, mean, variance, x, t, y):
        if self.scale == 0:
            return mean
        return mean + self.scale * variance * classifier_grad(self.classifier, x, t, y)

    def condition_eps(self, eps, x, t, y, alpha_bar):
        if self.scale == 0:
            return eps
        return eps - self.scale * (1 - alpha_bar).sqrt() * classifier_grad(self.classifier, x, t, y)

    def cost(self) -> GuidanceCost:
        passes = int(self.scale != 0)  # s = 0 skips the classifier entirely
        return GuidanceCost(nfe=1, classifier_forward=passes, classifier_backward=passes)
