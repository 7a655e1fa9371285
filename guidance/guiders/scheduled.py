"""CFG and classifier guidance with a weight schedule (Wang et al. 2024; guidance.guiders.schedules): the scale
at each step is schedule.scale_at(w, step) in the strategy's own units (CFG's w, ADM's s), and a step whose
scale is 0 pays for no extra pass. Classifier guidance in an interval of noise levels (schedule=interval) is
ADM's s with Kynkäänniemi et al.'s interval. A constant schedule is exactly cfg / classifier.
"""

from __future__ import annotations

from guidance.guiders.base import ClassifierGrad, Description, Eval, TableSpec, fmt, model_of
from guidance.guiders.cfg import ClassifierFreeGuidance, cfg_combine
from guidance.guiders.classifier import ClassifierGuidance
from guidance.guiders.schedules import WeightSchedule

CFG_TABLE = TableSpec("cfg_schedule", "CFG weight schedules (Wang et al. 2024)", ("w", "Schedule"), order=25,
                      baseline_models=("conditional",), baseline_cells=("0", "–"))
CLF_TABLE = TableSpec("classifier_schedule", "Classifier guidance on a schedule / in an interval",
                      ("Model", "s", "Schedule"), order=15, classifier_cost=True,
                      baseline_models=("unconditional", "conditional"), baseline_cells=("{model}", "0", "–"))


def _schedule(schedule, clamp, start, end, sigma_lo, sigma_hi) -> WeightSchedule:
    return WeightSchedule(str(schedule), float(clamp), float(start), float(end), float(sigma_lo), float(sigma_hi))


class ScheduledCFG(ClassifierFreeGuidance):
    name = "cfg_schedule"

    def __init__(self, scale=1.0, schedule="linear", clamp=0.0, start=0.0, end=1.0, sigma_lo=0.0,
                 sigma_hi=float("inf")):
        super().__init__(scale=scale)
        self.schedule = _schedule(schedule, clamp, start, end, sigma_lo, sigma_hi)

    def guided_at(self, step):
        return self.schedule.scale_at(self.scale, step) != 0

    def combine(self, preds, x, step):
        if "uncond" not in preds:
            return preds["cond"]
        return cfg_combine(preds["cond"], preds["uncond"], self.schedule.scale_at(self.scale, step), x, step)

    def info(self):
        return {**super().info(), "schedule": vars(self.schedule) | {"label": self.schedule.label()}}

    @classmethod
    def describe(cls, info):
        w, label = info.get("scale"), (info.get("schedule") or {}).get("label", "?")
        return Description(CFG_TABLE, (fmt(w), label), (w if w is not None else float("inf"),),
                           series=f"cfg {label}", x=w, x_symbol="w", unguided=w == 0)


class ScheduledClassifier(ClassifierGuidance):
    name = "classifier_schedule"

    def __init__(self, scale=1.0, conditional=True, schedule="interval", clamp=0.0, start=0.0, end=1.0,
                 sigma_lo=0.0, sigma_hi=6.2):
        super().__init__(scale=scale, conditional=conditional)
        self.schedule = _schedule(schedule, clamp, start, end, sigma_lo, sigma_hi)

    def requests(self, step):
        s = self.schedule.scale_at(self.scale, step)
        return [Eval("model", labels=self.model_labels)] + ([ClassifierGrad("grad")] if s != 0 else [])

    def combine(self, preds, x, step):
        if "grad" not in preds:
            return preds["model"]
        return preds["model"].with_grad(self.schedule.scale_at(self.scale, step) * preds["grad"])

    def info(self):
        return {**super().info(), "schedule": vars(self.schedule) | {"label": self.schedule.label()}}

    @classmethod
    def describe(cls, info):
        s, model, label = info.get("scale"), model_of(info), (info.get("schedule") or {}).get("label", "?")
        return Description(CLF_TABLE, (model, fmt(s), label), (s if s is not None else float("inf"),),
                           series=f"classifier {label} ({model})", x=s, x_symbol="s", unguided=s == 0)
