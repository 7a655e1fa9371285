"""CFG (scale w, Ho & Salimans 2022) and, on top of it, classifier guidance (scale s, ADM Alg. 1/2):
ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅), then μ + sΣ∇log p(y|x_t) or ε~ − s sqrt(1−ᾱ_t)∇log p(y|x_t).
A schedule scales w (the CFG part); the classifier scale s is constant.
"""

from __future__ import annotations

from guidance.guiders.base import ClassifierGrad, Description, Eval, Guider, TableSpec, check_scale, fmt
from guidance.guiders.cfg import cfg_combine

TABLE = TableSpec("cfg_classifier", "Classifier-free + classifier guidance", ("w", "s"), order=40,
                  classifier_cost=True)


class CFGClassifierGuidance(Guider):
    name = "cfg_classifier"
    networks = ("unet", "classifier")

    def __init__(self, scale: float = 1.0, classifier_scale: float = 1.0, **schedule):
        super().__init__(scale=scale, conditional=True, **schedule)
        self.classifier_scale = check_scale(classifier_scale, "guidance.classifier_scale")

    def requests(self, step):
        return ([Eval("cond")] + ([Eval("uncond", labels="null")] if self.scale_at(step) != 0 else [])
                + ([ClassifierGrad("grad")] if self.classifier_scale != 0 else []))

    def combine(self, preds, x, step):
        w = self.scale_at(step)
        pred = cfg_combine(preds["cond"], preds["uncond"], w, x, step) if "uncond" in preds else preds["cond"]
        return pred.with_grad(self.classifier_scale * preds["grad"]) if "grad" in preds else pred

    def info(self):
        return {**super().info(), "classifier_scale": self.classifier_scale}

    @classmethod
    def describe(cls, info):
        w, s = info.get("scale"), info.get("classifier_scale")
        num = lambda v: v if v is not None else float("inf")
        return Description(TABLE, (fmt(w), fmt(s)), (num(w), num(s)), series=f"cfg+classifier, w={fmt(w)}", x=s,
                           x_symbol="s", unguided=w == 0 and s == 0)
