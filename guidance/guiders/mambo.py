"""MAMBO-G, magnitude-aware guidance (Zhu et al. 2025, "MAMBO-G: Magnitude-Aware Mitigation for Boosted Guidance",
arXiv 2508.03442; diffusers' MagnitudeAwareGuidance), in the flow-velocity space of its models (SD3.5, Lumina, Wan),
scale w (Ho & Salimans units, the paper's w_max − 1) and damping α:

    r = ‖v_c − v_u‖ / ‖v_u‖                          per image, over all pixels
    w(r) = w · exp(−α r)                             (the paper's 1 + (w_max − 1) exp(−α r))
    v~ = v_c + w(r) (v_c − v_u)

v is the rectified-flow velocity of our ε-model's marginals (guidance.guiders.spaces, `flow`); the combination is
affine, so only r depends on the space: `space: eps` takes r on ε (what diffusers computes on an ε-model such as
SDXL), `x0` on x̂0. diffusers: guidance_scale = w + 1, same α, use_original_formulation=False. Neutral settings:
w = 0 is the conditional model (1 NFE); α = 0 is CFG at w. (diffusers 0.42's mambo_guidance takes
torch.norm over dims [1, 2, 3], which torch 2.14 refuses on 4-D tensors: the peer test feeds it flattened images.)
w follows the shared per-chain-step schedule (guidance.guiders.base) before the damping: w(r) = w_i exp(−α r), and
a step whose w_i is 0 skips the null pass.
"""

from __future__ import annotations

import torch

from guidance.errors import check_scale
from guidance.guiders.apg import per_image_dot
from guidance.guiders.base import Description, TableSpec, extrapolate, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.spaces import check_space, from_space, to_space

TABLE = TableSpec("mambo", "Magnitude-aware guidance, MAMBO-G (Zhu et al. 2025)", ("w", "α", "Space"), order=38,
                  baseline_models=("conditional",), baseline_cells=("0", "–", "–"))


class MagnitudeAwareGuidance(ClassifierFreeGuidance):
    name = "mambo"

    def __init__(self, scale: float = 1.0, alpha: float = 8.0, space: str = "flow", **schedule):
        super().__init__(scale=scale, **schedule)
        self.alpha = check_scale(alpha, "guidance.alpha")
        self.space = check_space(space, "mambo")

    def combine(self, preds, x, step):
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        c, u = to_space(cond, x, step, self.space), to_space(preds["uncond"], x, step, self.space)
        d = (c - u).double()
        ratio = (per_image_dot(d, d) / per_image_dot(u.double(), u.double()).clamp_min(1e-24)).sqrt()
        w = (self.scale_at(step) * torch.exp(-self.alpha * ratio)).to(c.dtype)   # per image, shape [B, 1, ...]
        return from_space(extrapolate(c, u, w), x, step, self.space, cond.var_v)

    def info(self):
        return {**super().info(), "alpha": self.alpha, "space": self.space}

    @classmethod
    def describe(cls, info):
        w, a, space = info.get("scale"), info.get("alpha"), info.get("space", "flow")
        return Description(TABLE, (fmt(w), fmt(a), space), (w if w is not None else float("inf"),),
                           series=f"mambo α={fmt(a)} ({space})", x=w, x_symbol="w", unguided=w == 0)
