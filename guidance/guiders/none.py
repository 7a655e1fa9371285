"""No guidance: the conditional model, or the unconditional one (null label) with conditional=false."""

from __future__ import annotations

from guidance.guiders.base import Description, Eval, Guider, model_of


class NoGuidance(Guider):
    name = "none"

    def __init__(self, conditional: bool = True):
        super().__init__(scale=0.0, conditional=conditional)

    def requests(self, step):
        return [Eval("model", labels=self.model_labels)]

    def combine(self, preds, x, step):
        return preds["model"]

    @classmethod
    def describe(cls, info):
        return Description(table=None, series=f"none ({model_of(info)})", x=0.0, unguided=True)
