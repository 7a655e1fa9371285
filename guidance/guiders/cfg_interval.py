"""CFG in a limited interval (Kynkäänniemi et al. 2024, "Applying Guidance in a Limited Interval Improves Sample
and Distribution Quality in Diffusion Models", NeurIPS): guidance is harmful at high noise and unnecessary at low.

ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅)   while t_min <= t <= t_max (ORIGINAL timestep, inclusive)
ε~ = ε(x_t, y)                           otherwise (the conditional model: 1 NFE, no null pass)
w is Ho & Salimans' scale, as in `cfg`. The paper states the interval in EDM's σ; for a VP schedule
σ(t) = sqrt((1 − ᾱ_t) / ᾱ_t) (see conf/guidance/cfg_interval.yaml). A batch whose images sit at different t is
handled by masking: images inside the interval get CFG, the others the conditional model.
"""

from __future__ import annotations

from typing import Iterable

import torch

from guidance.errors import GuidanceError
from guidance.guiders.base import GuidanceCost
from guidance.guiders.cfg import ClassifierFreeGuidance, cfg_model_output


class CFGIntervalGuidance(ClassifierFreeGuidance):
    name = "cfg_interval"

    def __init__(self, scale: float = 1.0, t_min: int = 0, t_max: int = 600, null_label: int | None = None,
                 classifier=None):
        super().__init__(scale=scale, null_label=null_label, classifier=classifier)
        try:
            self.t_min, self.t_max = float(t_min), float(t_max)
        except (TypeError, ValueError):
            raise GuidanceError(f"cfg_interval: t_min/t_max must be numbers, got {t_min!r}/{t_max!r}") from None
        if not (0 <= self.t_min <= self.t_max):
            raise GuidanceError(f"cfg_interval needs 0 <= t_min <= t_max (original timesteps), got t_min={t_min}, "
                                f"t_max={t_max}; pass e.g. guidance.t_min=0 guidance.t_max=600")

    def inside(self, t: torch.Tensor) -> torch.Tensor:
        """Bool mask: which (original) timesteps get guidance."""
        return (t >= self.t_min) & (t <= self.t_max)

    def model_output(self, model, x, t, y):
        inside = self.inside(t)
        if self.scale == 0 or not inside.any():
            return model(x, t, y)
        if inside.all():
            return cfg_model_output(model, x, t, y, self.scale, self.null_label)
        guided = cfg_model_output(model, x[inside], t[inside], y[inside], self.scale, self.null_label)
        out = guided.new_empty((len(x), *guided.shape[1:]))
        out[inside], out[~inside] = guided, model(x[~inside], t[~inside], y[~inside])
        return out

    # cost() (inherited): the cost of a step inside the interval.
    def cost_over(self, timesteps: Iterable[int]) -> GuidanceCost:
        ts = list(timesteps)
        guided = sum(self.t_min <= t <= self.t_max for t in ts) if self.scale != 0 else 0
        return GuidanceCost(nfe=len(ts) + guided)

    def info(self) -> dict:
        return {**super().info(), "t_min": self.t_min, "t_max": self.t_max}
