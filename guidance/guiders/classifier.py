"""Classifier guidance (Dhariwal & Nichol 2021, "ADM"), gradient scale s; s = 0 is unguided.

Ancestral (Alg. 1):  μ' = μ + s Σ ∇_{x_t} log p_φ(y | x_t)
DDIM      (Alg. 2):  ε' = ε − s sqrt(1 − ᾱ_t) ∇_{x_t} log p_φ(y | x_t)
The guider hands s ∇log p to the sampler as `grad`; the sampler picks the form. Applies to the conditional model
or, with conditional=false, to the unconditional one (ADM Table 4). A step whose scheduled s is 0 (s = 0, or
outside the schedule's window: the preset classifier_schedule) skips the classifier.
"""

from __future__ import annotations

from guidance.guiders.base import ClassifierGrad, Description, Eval, Guider, TableSpec, fmt, model_of

TABLE = TableSpec("classifier", "Classifier guidance (ADM Table 4 layout)", ("Model", "Guidance", "Scale s"),
                  order=10, classifier_cost=True, baseline_models=("unconditional", "conditional"),
                  baseline_cells=("{model}", "none", "0"))


class ClassifierGuidance(Guider):
    name = "classifier"
    networks = ("unet", "classifier")

    def __init__(self, scale: float = 1.0, conditional: bool = True, **schedule):
        super().__init__(scale=scale, conditional=conditional, **schedule)

    def requests(self, step):
        grad = [ClassifierGrad("grad")] if self.scale_at(step) != 0 else []  # s = 0 skips the classifier
        return [Eval("model", labels=self.model_labels)] + grad

    def combine(self, preds, x, step):
        if "grad" not in preds:
            return preds["model"]
        return preds["model"].with_grad(self.scale_at(step) * preds["grad"])

    @classmethod
    def describe(cls, info):
        s, model = info.get("scale"), model_of(info)
        if info.get("schedule"):  # with a schedule, not through the preset: the schedules' table
            from guidance.guiders.presets import describe_classifier_schedule

            return describe_classifier_schedule(info)
        return Description(TABLE, (model, "classifier", fmt(s)), (s if s is not None else float("inf"),),
                           series=f"classifier ({model})", x=s, x_symbol="s", unguided=s == 0)
