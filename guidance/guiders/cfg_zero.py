"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models", eqs. 8-10
and the official sd3 pipeline), carried from velocity to ε, scale w (Ho & Salimans units, paper's w + 1):

    s* = ⟨ε_c, ε_u⟩ / (‖ε_u‖² + 1e-8)                  per image, flattened (the optimised scale)
    ε~ = s* ε_u + (1 + w)(ε_c − s* ε_u)
    zero-init: ε~ = 0 on the first `zero_steps` steps (no network pass, counted as 0 NFE)

Why ε: a flow model's velocity is the network's noise-direction output, and s* is a projection of the
conditional output onto the unconditional one; for an ε-model that output is ε (ComfyUI's x − x̂0 = σ ε gives the
same s*). Zeroing ε is the exact analogue of zeroing the velocity: the probability-flow ODE in EDM's variable
x̃ = x_t / sqrt(ᾱ_t) is dx̃/dσ = ε, so ε = 0 leaves x̃ unchanged over the step, as v = 0 leaves a flow's x.
The official code zeroes steps i <= zero_steps (its default 0 zeroes one step; ~4% of steps recommended);
here zero_steps counts them. Neutral settings: s* ≡ 1 and zero_steps = 0 is CFG (tested by forcing s*).
"""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError
from guidance.guiders.apg import per_image_dot
from guidance.guiders.base import Description, Prediction, TableSpec, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance

TABLE = TableSpec("cfg_zero", "CFG-Zero* (Fan et al. 2025)", ("w", "Zeroed steps"), order=28,
                  baseline_models=("conditional",), baseline_cells=("0", "0"))


class CFGZeroStar(ClassifierFreeGuidance):
    name = "cfg_zero"

    def __init__(self, scale: float = 1.0, zero_steps: int = 1, optimized_scale: bool = True):
        super().__init__(scale=scale)
        if not isinstance(zero_steps, int) or zero_steps < 0:
            raise GuidanceError(f"guidance.zero_steps must be an integer >= 0, got {zero_steps!r}")
        self.zero_steps, self.optimized_scale = zero_steps, bool(optimized_scale)

    def zeroed(self, step) -> bool:
        return step.index < self.zero_steps

    def requests(self, step):
        return [] if self.zeroed(step) else super().requests(step)

    def finish(self, pred, x, step, clip):
        # A zeroed step must leave x̃ where it is: clipping its x̂0 = x_t / sqrt(ᾱ_t) would move it.
        return pred if self.zeroed(step) else super().finish(pred, x, step, clip)

    def combine(self, preds, x, step):
        if self.zeroed(step):
            return Prediction.from_eps(x, step, torch.zeros_like(x))
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        c, u = cond.eps.double(), preds["uncond"].eps.double()
        s = per_image_dot(c, u) / (per_image_dot(u, u) + 1e-8) if self.optimized_scale else torch.ones_like(c[:, :1, :1, :1])
        eps = s * u + (1 + self.scale) * (c - s * u)
        return Prediction.from_eps(x, step, eps.to(x.dtype), cond.var_v)

    def info(self):
        return {**super().info(), "zero_steps": self.zero_steps, "optimized_scale": self.optimized_scale}

    @classmethod
    def describe(cls, info):
        w, k = info.get("scale"), info.get("zero_steps")
        return Description(TABLE, (fmt(w), fmt(k)), (w if w is not None else float("inf"), k or 0),
                           series=f"cfg-zero* ({fmt(k)} zeroed)", x=w, x_symbol="w",
                           unguided=w == 0 and not k)
