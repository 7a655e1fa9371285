"""ICG, independent condition guidance (Sadat et al., ICLR 2025, "No Training, No Problem: Rethinking
Classifier-Free Guidance for Diffusion Models", eq. 6 / Alg. 1), scale w (Ho & Salimans units, paper's w + 1):

    ε~ = ε(x_t, ŷ) + (1 + w)(ε(x_t, y) − ε(x_t, ŷ)),   ŷ ~ Uniform(classes), independent of y

= extrapolate(ε(x_t, y), ε(x_t, ŷ), w), combined exactly as CFG (cfg_combine).

The null-label pass of CFG is replaced by a pass at a random class, so it guides a model trained WITHOUT label
dropout. ŷ is drawn afresh at every denoiser evaluation from each image's own random stream (reproducible and
independent of the batch size). Neutral setting: `independent: null` (ŷ = the null label) is exactly CFG.
"""

from __future__ import annotations

from guidance.errors import GuidanceError
from guidance.guiders.base import Description, Eval, TableSpec, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance

TABLE = TableSpec("icg", "Independent condition guidance (Sadat et al. 2025)", ("w", "ŷ"), order=45,
                  baseline_models=("conditional",), baseline_cells=("0", "–"))


class IndependentConditionGuidance(ClassifierFreeGuidance):
    name = "icg"

    def __init__(self, scale: float = 1.0, independent: str = "random", **schedule):
        super().__init__(scale=scale, **schedule)
        if independent not in ("random", "null"):
            raise GuidanceError(f"guidance.independent must be random (ICG) or null (= CFG), got {independent!r}")
        self.independent = independent

    def requests(self, step):
        return [Eval("cond")] + ([Eval("uncond", labels=self.independent)] if self.guided_at(step) else [])

    def info(self):
        return {**super().info(), "independent": self.independent}

    @classmethod
    def describe(cls, info):
        w, ind = info.get("scale"), info.get("independent", "random")
        return Description(TABLE, (fmt(w), ind), (w if w is not None else float("inf"),), series=f"icg ({ind})",
                           x=w, x_symbol="w", unguided=w == 0)
