"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), scale w; w = 0 is the conditional model.

ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅)        = extrapolate(ε_c, ε_u, w): away from the unconditional prediction
Conditional and null rows go through the U-Net as ONE batch (the denoiser stacks them); a step whose scale is 0
(w = 0, or outside the schedule's window: the presets cfg_interval and cfg_schedule) asks for the conditional
pass alone (1 NFE). With a learned variance the conditional variance is kept.
"""

from __future__ import annotations

from guidance.guiders.base import Description, Eval, Guider, Prediction, TableSpec, affine, extrapolate, fmt

TABLE = TableSpec("cfg", "Classifier-free guidance (Ho & Salimans 2022 layout)", ("w",), order=20,
                  baseline_models=("conditional",), baseline_cells=("0",))


def cfg_combine(cond: Prediction, uncond: Prediction, w: float, x, step) -> Prediction:
    """CFG in ε at scale w (eq. 6's order of operations: the samples of every CFG variant stay bitwise). At σ = ∞
    (a flow model's t = 1) ε = x_t determines no x̂0; the combination, affine, is then taken of x̂0 as well."""
    return affine(lambda c, u: extrapolate(c, u, w, order="weights"), (cond, uncond), x, step, cond.var_v)


class ClassifierFreeGuidance(Guider):
    name = "cfg"

    def __init__(self, scale: float = 1.0, **schedule):
        super().__init__(scale=scale, conditional=True, **schedule)

    def guided_at(self, step) -> bool:
        """Whether this step pays for the null pass (its scheduled scale is not 0)."""
        return self.scale_at(step) != 0

    def requests(self, step):
        return [Eval("cond")] + ([Eval("uncond", labels="null")] if self.guided_at(step) else [])

    def combine(self, preds, x, step):
        if "uncond" not in preds:
            return preds["cond"]
        return cfg_combine(preds["cond"], preds["uncond"], self.scale_at(step), x, step)

    @classmethod
    def describe(cls, info):
        w = info.get("scale")
        if info.get("schedule"):  # cfg with a schedule, not through a preset: the schedules' table
            from guidance.guiders.presets import describe_cfg_schedule

            return describe_cfg_schedule(info)
        return Description(TABLE, (fmt(w),), (w if w is not None else float("inf"),), series="cfg", x=w,
                           x_symbol="w", unguided=w == 0)
