"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), scale w; w = 0 is the conditional model.

ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅)
Conditional and null rows go through the U-Net as ONE batch (the denoiser stacks them); w = 0 asks for the
conditional pass alone (1 NFE). With a learned variance the conditional variance is kept.
"""

from __future__ import annotations

from guidance.guiders.base import Description, Eval, Guider, Prediction, TableSpec, fmt

TABLE = TableSpec("cfg", "Classifier-free guidance (Ho & Salimans 2022 layout)", ("w",), order=20,
                  baseline_models=("conditional",), baseline_cells=("0",))


def cfg_combine(cond: Prediction, uncond: Prediction, w: float, x, step) -> Prediction:
    return Prediction.from_eps(x, step, (1 + w) * cond.eps - w * uncond.eps, cond.var_v)


class ClassifierFreeGuidance(Guider):
    name = "cfg"

    def __init__(self, scale: float = 1.0):
        super().__init__(scale=scale, conditional=True)

    def guided_at(self, step) -> bool:
        """Whether this step pays for the null pass (every step unless w = 0; interval CFG narrows it)."""
        return self.scale != 0

    def requests(self, step):
        return [Eval("cond")] + ([Eval("uncond", labels="null")] if self.guided_at(step) else [])

    def combine(self, preds, x, step):
        if "uncond" not in preds:
            return preds["cond"]
        return cfg_combine(preds["cond"], preds["uncond"], self.scale, x, step)

    @classmethod
    def describe(cls, info):
        w = info.get("scale")
        return Description(TABLE, (fmt(w),), (w if w is not None else float("inf"),), series="cfg", x=w,
                           x_symbol="w", unguided=w == 0)
