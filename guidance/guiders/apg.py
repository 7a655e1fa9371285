"""APG, adaptive projected guidance (Sadat et al., ICLR 2025, "Eliminating Oversaturation and Artifacts of High
Guidance Scales in Diffusion Models", Alg. 1), in x̂0 space as the paper says, scale w in Ho & Salimans units.

    Δ_i = (x̂0_c − x̂0_u) + β Δ_{i−1}               momentum over the chain's denoiser calls (β < 0: "reverse")
    Δ  ← Δ · min(1, r / ‖Δ‖)                         norm threshold r per image (None: off)
    Δ_∥ = (⟨Δ, x̂0_c⟩ / ‖x̂0_c‖²) x̂0_c,  Δ_⊥ = Δ − Δ_∥    projection onto the conditional prediction
    x̂0 = x̂0_c + w (Δ_⊥ + η Δ_∥)
The paper's guidance scale is w + 1. Neutral setting: η = 1, r = None, β = 0 is CFG combined in x̂0 space (the
same prediction as cfg). The momentum is per chain (reset at the start of each chain) and advances at every
denoiser call, so a 2nd-order sampler (Heun) feeds it both evaluations of a step.
"""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.base import Description, Eval, Guider, Prediction, TableSpec, fmt

TABLE = TableSpec("apg", "Adaptive projected guidance (Sadat et al. 2025)", ("w", "η", "r", "β"), order=35,
                  baseline_models=("conditional",), baseline_cells=("0", "–", "–", "–"))


def per_image_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


class AdaptiveProjectedGuidance(Guider):
    name = "apg"

    def __init__(self, scale: float = 1.0, eta: float = 0.0, norm_threshold: float | None = None,
                 momentum: float = 0.0, **schedule):
        super().__init__(scale=scale, conditional=True, **schedule)
        self.eta = check_scale(eta, "guidance.eta")
        self.norm_threshold = None if norm_threshold is None else check_scale(norm_threshold, "guidance.norm_threshold")
        self.momentum = check_scale(momentum, "guidance.momentum", allow_negative=True)
        if self.norm_threshold == 0:
            raise GuidanceError("guidance.norm_threshold must be > 0, or null for no threshold")
        if self.eta > 1:  # Alg. 1 down-weights the parallel part: η = 1 is CFG's, beyond it is not APG
            raise GuidanceError(f"guidance.eta={eta} must be in [0, 1] (APG's weight of the parallel part; 0 as the "
                                "paper recommends, 1 = CFG)")
        if not -1 < self.momentum < 1:  # Δ_i = Δ + β Δ_{i−1} sums β^k: |β| >= 1 never forgets (grows without bound)
            raise GuidanceError(f"guidance.momentum={momentum} must be in (-1, 1) (the paper's reverse momentum is "
                                "negative, e.g. -0.5; 0 = off)")
        self.running = None

    def reset(self, batch_size, rng=None):
        self.running = None  # momentum belongs to one chain

    def requests(self, step):
        return [Eval("cond")] + ([Eval("uncond", labels="null")] if self.scale_at(step) != 0 else [])

    def combine(self, preds, x, step):
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        diff = (cond.x0 - preds["uncond"].x0).double()
        if self.momentum != 0:
            self.running = diff if self.running is None else diff + self.momentum * self.running
            diff = self.running
        if self.norm_threshold is not None:
            norm = per_image_dot(diff, diff).sqrt()
            diff = diff * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        c = cond.x0.double()
        parallel = per_image_dot(diff, c) / per_image_dot(c, c).clamp_min(1e-12) * c
        update = (diff - parallel) + self.eta * parallel
        return Prediction.from_x0(x, step, (c + self.scale_at(step) * update).to(x.dtype), cond.var_v)

    def info(self):
        return {**super().info(), "eta": self.eta, "norm_threshold": self.norm_threshold, "momentum": self.momentum}

    @classmethod
    def describe(cls, info):
        w, eta, r, beta = (info.get(k) for k in ("scale", "eta", "norm_threshold", "momentum"))
        cells = (fmt(w), fmt(eta), "∞" if r is None else fmt(r), fmt(beta))
        return Description(TABLE, cells, (w if w is not None else float("inf"),), x=w, x_symbol="w",
                           series=f"apg η={fmt(eta)} r={cells[2]} β={fmt(beta)}", unguided=w == 0)
