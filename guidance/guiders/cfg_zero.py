"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow Matching Models", eqs. 8-10
and the official sd3 pipeline), scale w (Ho & Salimans units, the paper's w + 1):

    s* = ⟨v_c, v_u⟩ / (‖v_u‖² + 1e-8)                  per image, flattened (the optimised scale)
    v~ = s* v_u + (1 + w)(v_c − s* v_u)
    zero-init: v~ = 0 on the first `zero_steps` steps (no network pass, counted as 0 NFE)

Native on a flow model (parameterization flow: v is the network's own output, from τ = 1 on; checked by hand in
tests/test_parameterizations.py). Carried to ε-models through the rectified-flow path of the same marginals (`space: v`, default): EDM's
x̃ = x_t / sqrt(ᾱ_t) = x0 + σ ε divided by 1 + σ is x_f = (1 − τ) x0 + τ ε with τ = σ / (1 + σ), whose velocity is
v = ε − x̂0 (the paper's model output). We form v_c, v_u from the two passes, apply the paper's equations to v, and
map back with x̂0 = x_f − τ v, ε = x_f + (1 − τ) v. Zero-init is then exactly the paper's: x_f stays where it is
over the step (x̂0 = ε = x_f). `space: eps` applies the same formulas to ε instead (s* on ε, zero-init ε = 0,
which keeps x̃ and not x_f: with σ_max ≈ 157 and few steps it leaves far too much noise; kept as the naive
carry-over to compare against). The official code zeroes steps i <= zero_steps (default 0: one step; ~4% of
steps recommended); here zero_steps counts them. Neutral setting: s* ≡ 1 and zero_steps = 0 is CFG.
"""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError
from guidance.guiders.apg import per_image_dot
from guidance.guiders.base import Description, Prediction, TableSpec, extrapolate, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.spaces import from_velocity

TABLE = TableSpec("cfg_zero", "CFG-Zero* (Fan et al. 2025)", ("w", "Zeroed steps", "Space"), order=28,
                  baseline_models=("conditional",), baseline_cells=("0", "0", "–"))


class CFGZeroStar(ClassifierFreeGuidance):
    name = "cfg_zero"

    def __init__(self, scale: float = 1.0, zero_steps: int = 1, optimized_scale: bool = True, space: str = "v",
                 **schedule):
        super().__init__(scale=scale, **schedule)
        if not isinstance(zero_steps, int) or zero_steps < 0 or space not in ("v", "eps"):
            raise GuidanceError(f"cfg_zero needs zero_steps an integer >= 0 and space v or eps, got {zero_steps!r}, "
                                f"{space!r}")
        self.zero_steps, self.optimized_scale, self.space = zero_steps, bool(optimized_scale), space

    def zeroed(self, step) -> bool:
        return step.index < self.zero_steps

    def check_chain(self, steps):
        super().check_chain(steps)
        if steps and self.zero_steps >= steps[0].count:
            raise GuidanceError(f"cfg_zero: zero_steps={self.zero_steps} zeroes all {steps[0].count} steps of this "
                                "chain (no network pass at all); use fewer (the paper zeroes ~4% of the steps)")

    def requests(self, step):
        return [] if self.zeroed(step) else super().requests(step)

    def holds(self, step):
        return self.zeroed(step)  # a zeroed step leaves the state where it is: clipping its x̂0 would move it

    def to_output(self, pred: Prediction, x, step) -> torch.Tensor:
        return (pred.eps - pred.x0) if self.space == "v" else pred.eps

    def from_output(self, out: torch.Tensor, x, step, var_v) -> Prediction:
        if self.space == "eps":
            return Prediction.from_eps(x, step, out, var_v)
        return from_velocity(out, x, step, var_v)  # ε = x_f + (1 − τ) v, x̂0 = x_f − τ v

    def combine(self, preds, x, step):
        if self.zeroed(step):
            return self.from_output(torch.zeros_like(x), x, step, None)
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        c, u = self.to_output(cond, x, step).double(), self.to_output(preds["uncond"], x, step).double()
        s = per_image_dot(c, u) / (per_image_dot(u, u) + 1e-8) if self.optimized_scale else torch.ones_like(c[:, :1, :1, :1])
        out = extrapolate(c, s * u, self.scale_at(step), order="lerp")  # eq. 9: s* v_u + (1 + w)(v_c − s* v_u)
        return self.from_output(out.to(x.dtype), x, step, cond.var_v)

    def info(self):
        return {**super().info(), "zero_steps": self.zero_steps, "optimized_scale": self.optimized_scale,
                "space": self.space}

    @classmethod
    def describe(cls, info):
        w, k, space = info.get("scale"), info.get("zero_steps"), info.get("space", "v")  # the constructor's default
        return Description(TABLE, (fmt(w), fmt(k), space), (w if w is not None else float("inf"), k or 0),
                           series=f"cfg-zero* ({fmt(k)} zeroed, {space})", x=w, x_symbol="w",
                           unguided=w == 0 and not k)
