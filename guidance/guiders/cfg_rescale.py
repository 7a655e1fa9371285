"""CFG rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", sec. 3.4,
eqs. 13-16, Alg. 2), scale w (Ho & Salimans units) and factor φ:

    o_cfg = o_u + (1 + w)(o_c − o_u)
    o     = φ · o_cfg · std(o_c)/std(o_cfg) + (1 − φ) · o_cfg       std per image over C, H, W (unbiased)

on the model OUTPUT o. The paper's model predicts v, so by default o = v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x̂0 (Salimans &
Ho 2022), converted exactly from the model's prediction and back (on a v model: its own output,
tests/test_parameterizations.py; defined at σ = ∞ too, where v = −x̂0); `space: eps` rescales ε instead, which is what diffusers'
rescale_noise_cfg does on ε-models. Neutral setting: φ = 0 is CFG. The paper uses w + 1 = 7.5, φ = 0.7.
"""

from __future__ import annotations

import math

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.base import Description, Prediction, TableSpec, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance, cfg_combine

TABLE = TableSpec("cfg_rescale", "CFG rescale (Lin et al. 2024)", ("w", "φ", "Space"), order=26,
                  baseline_models=("conditional",), baseline_cells=("0", "–", "–"))


class RescaledCFG(ClassifierFreeGuidance):
    name = "cfg_rescale"

    def __init__(self, scale: float = 1.0, phi: float = 0.7, space: str = "v", **schedule):
        super().__init__(scale=scale, **schedule)
        self.phi = check_scale(phi, "guidance.phi")
        if self.phi > 1 or space not in ("v", "eps"):
            raise GuidanceError(f"cfg_rescale needs 0 <= phi <= 1 and space in (v, eps), got phi={phi}, space={space!r}")
        self.space = space

    def output(self, pred: Prediction, step):
        if self.space == "eps":
            return pred.eps
        return math.sqrt(step.alpha_bar) * pred.eps - math.sqrt(1 - step.alpha_bar) * pred.x0

    def combine(self, preds, x, step):
        if "uncond" not in preds:
            return preds["cond"]
        cond = preds["cond"]
        guided = cfg_combine(cond, preds["uncond"], self.scale_at(step), x, step)
        if self.phi == 0:
            return guided
        o_c, o_cfg = self.output(cond, step).double(), self.output(guided, step).double()
        std = lambda o: o.flatten(1).std(dim=1).reshape(-1, *([1] * (o.ndim - 1)))
        o = (self.phi * o_cfg * std(o_c) / std(o_cfg).clamp_min(1e-12) + (1 - self.phi) * o_cfg).to(x.dtype)
        if self.space == "eps":
            return Prediction.from_eps(x, step, o, cond.var_v)
        a, b = math.sqrt(step.alpha_bar), math.sqrt(1 - step.alpha_bar)
        return Prediction.from_x0(x, step, a * x - b * o, cond.var_v)  # x̂0 = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v

    def info(self):
        return {**super().info(), "phi": self.phi, "space": self.space}

    @classmethod
    def describe(cls, info):
        w, phi, space = info.get("scale"), info.get("phi"), info.get("space", "v")
        return Description(TABLE, (fmt(w), fmt(phi), space), (w if w is not None else float("inf"), phi or 0.0),
                           series=f"cfg_rescale φ={fmt(phi)} ({space})", x=w, x_symbol="w", unguided=w == 0)
