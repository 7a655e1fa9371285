"""CFG in a limited interval of noise levels (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality in Diffusion Models"): guidance harms at high noise, is unneeded at low.

ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅)   while sigma_lo < σ_i <= sigma_hi
ε~ = ε(x_t, y)                           otherwise (the conditional model: 1 NFE, no null pass)
σ = sqrt((1 − ᾱ_t)/ᾱ_t) is EDM's noise level, the unit of the paper's interval (e.g. (0.28, 5.42] for EDM2-S on
ImageNet-512). The decision is made per chain STEP on its grid σ_i (Step.step_sigma): Heun's second evaluation
(at σ_{i+1}) and a churned one (at σ̂) follow their step, as the paper's EDM sampler decides by step index.
`covered_steps(sampler)` lists every evaluation of a sampler and whether it is guided.
"""

from __future__ import annotations

from guidance.errors import GuidanceError
from guidance.guiders.base import Description, TableSpec, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance

TABLE = TableSpec("cfg_interval", "CFG in a limited interval (Kynkäänniemi et al. 2024)", ("w", "Interval σ"),
                  order=30, baseline_models=("conditional",), baseline_cells=("0", "–"))


class CFGIntervalGuidance(ClassifierFreeGuidance):
    name = "cfg_interval"

    def __init__(self, scale: float = 1.0, sigma_lo: float = 0.0, sigma_hi: float = 6.2):
        super().__init__(scale=scale)
        try:
            self.sigma_lo, self.sigma_hi = float(sigma_lo), float(sigma_hi)
        except (TypeError, ValueError):
            raise GuidanceError(f"cfg_interval: sigma_lo/sigma_hi must be numbers, got {sigma_lo!r}/{sigma_hi!r}") from None
        if not (0 <= self.sigma_lo < self.sigma_hi):
            raise GuidanceError(f"cfg_interval needs 0 <= sigma_lo < sigma_hi (EDM noise levels), got sigma_lo={sigma_lo}, "
                                f"sigma_hi={sigma_hi}; pass e.g. guidance.sigma_lo=0.28 guidance.sigma_hi=5.42")

    def inside(self, sigma: float) -> bool:
        return self.sigma_lo < sigma <= self.sigma_hi

    def guided_at(self, step) -> bool:
        return self.scale != 0 and self.inside(step.step_sigma)

    def covered_steps(self, sampler) -> list[tuple[int, float, bool]]:
        """(original t, σ, guided?) for every denoiser evaluation of `sampler`'s chain, in order."""
        return [(s.t, s.sigma, self.inside(s.step_sigma)) for s in sampler.evaluation_steps()]

    def info(self):
        return {**super().info(), "sigma_lo": self.sigma_lo, "sigma_hi": self.sigma_hi}

    @classmethod
    def describe(cls, info):
        w, lo, hi = info.get("scale"), info.get("sigma_lo"), info.get("sigma_hi")
        interval = f"({fmt(lo)}, {fmt(hi)}]"
        return Description(TABLE, (fmt(w), interval), (w if w is not None else float("inf"), hi or 0.0),
                           series=f"cfg_interval σ in {interval}", x=w, x_symbol="w", unguided=w == 0)
