"""APG mixed with CFG, as diffusers' AdaptiveProjectedMixGuidance defines it (the guider of HunyuanImage-2.1,
Tencent 2025; no paper of its own: APG is Sadat et al., ICLR 2025, Alg. 1), scales in Ho & Salimans units:

    every guided call:  Δ_i = (o_c − o_u) + β Δ_{i−1}              momentum (β = null or 0: Δ_i = o_c − o_u)
    step i <= k:        o = o_c + w (o_c − o_u)                     plain CFG, the momentum still advancing
    step i >  k:        Δ ← Δ_i · min(1, r / ‖Δ_i‖)                 norm threshold r (null: off)
                        Δ_∥ = (⟨Δ, o_c⟩ / ‖o_c‖²) o_c,  Δ_⊥ = Δ − Δ_∥
                        o = o_u + (1 + w_apg)(Δ_⊥ + η Δ_∥)

o is the model output in `space` (default `flow`, the velocity HunyuanImage-2.1 predicts; `eps`: what diffusers
computes on an ε-model; `x0`: APG's own space). diffusers: guidance_scale = 1 + w,
adaptive_projected_guidance_scale = 1 + w_apg, _momentum = β, _rescale = r, eta = η, _start_step = k; steps count
from 0 (Step.index) and the momentum restarts with each chain. Differences, stated: (1) diffusers' APG phase adds
the update to o_u, APG's paper to o_c with w_apg (o_c + w_apg (Δ_⊥ + η Δ_∥)); the two differ by
(o_u − o_c) + (Δ_⊥ + η Δ_∥), zero only at η = 1, β = 0, r = ∞ — followed here as diffusers defines it;
(2) the momentum advances at every denoiser call, so a 2nd-order sampler feeds it both evaluations of a step
(diffusers' pipelines call the guider once per step). When w_apg = 0 the late steps stay CFG (as in diffusers).
Neutral settings: w = 0 is the conditional model (1 NFE, no APG either). The switch is decided per chain step
(Step.index, so both evaluations of a Heun step are in the same phase); a k that leaves no APG step in the chain
(k >= steps − 1 with w, w_apg != 0) is refused before any work (check_chain), as a schedule window that selects
none. The shared per-chain-step schedule (guidance.guiders.base) applies to BOTH scales (w_i = schedule(w, i),
w_apg,i = schedule(w_apg, i)); a step whose w_i is 0 skips the null pass (and the momentum does not advance).
"""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.apg import per_image_dot
from guidance.guiders.base import Description, TableSpec, extrapolate, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.spaces import check_space, from_space, to_space

TABLE = TableSpec("apg_mix", "APG mixed with CFG (diffusers / HunyuanImage-2.1)", ("w", "w_apg", "From step", "β", "r"),
                  order=39, baseline_models=("conditional",), baseline_cells=("0", "–", "–", "–", "–"))


class AdaptiveProjectedMixGuidance(ClassifierFreeGuidance):
    name = "apg_mix"

    def __init__(self, scale: float = 2.5, apg_scale: float = 9.0, momentum: float | None = -0.5,
                 norm_threshold: float | None = 10.0, eta: float = 0.0, apg_start_step: int = 5, space: str = "flow",
                 **schedule):
        super().__init__(scale=scale, **schedule)
        self.apg_scale = check_scale(apg_scale, "guidance.apg_scale")
        self.momentum = 0.0 if momentum is None else check_scale(momentum, "guidance.momentum", allow_negative=True)
        self.norm_threshold = None if not norm_threshold else check_scale(norm_threshold, "guidance.norm_threshold")
        self.eta = check_scale(eta, "guidance.eta")
        if not isinstance(apg_start_step, int) or apg_start_step < 0:
            raise GuidanceError(f"apg_mix needs apg_start_step an integer >= 0 (APG after that step), got {apg_start_step!r}")
        self.apg_start_step, self.space = apg_start_step, check_space(space, "apg_mix")
        self.running = None

    def check_chain(self, steps):
        super().check_chain(steps)
        if steps and self.scale != 0 and self.apg_scale != 0 and not any(s.index > self.apg_start_step for s in steps):
            raise GuidanceError(f"guidance=apg_mix: apg_start_step={self.apg_start_step} leaves no APG step in this "
                                f"chain of {steps[0].count} steps (APG runs at steps > apg_start_step, from 0); "
                                "lower it, or use cfg")

    def reset(self, batch_size, rng=None):
        self.running = None  # the momentum belongs to one chain

    def combine(self, preds, x, step):
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        c, u = to_space(cond, x, step, self.space), to_space(preds["uncond"], x, step, self.space)
        diff = (c - u).double()
        self.running = diff if self.running is None or self.momentum == 0 else diff + self.momentum * self.running
        w_apg = self.schedule.scale_at(self.apg_scale, step)
        if step.index <= self.apg_start_step or w_apg == 0:
            return from_space(extrapolate(c, u, self.scale_at(step)), x, step, self.space, cond.var_v)
        delta = self.running
        if self.norm_threshold is not None:
            norm = per_image_dot(delta, delta).sqrt()
            delta = delta * torch.clamp(self.norm_threshold / norm.clamp_min(1e-12), max=1.0)
        cd = c.double()
        parallel = per_image_dot(delta, cd) / per_image_dot(cd, cd).clamp_min(1e-12) * cd
        update = (delta - parallel + self.eta * parallel).to(c.dtype)
        return from_space(u + (1 + w_apg) * update, x, step, self.space, cond.var_v)

    def info(self):
        return {**super().info(), "apg_scale": self.apg_scale, "momentum": self.momentum,
                "norm_threshold": self.norm_threshold, "eta": self.eta, "apg_start_step": self.apg_start_step,
                "space": self.space}

    @classmethod
    def describe(cls, info):
        w, wa, k, beta, r = (info.get(key) for key in ("scale", "apg_scale", "apg_start_step", "momentum", "norm_threshold"))
        cells = (fmt(w), fmt(wa), fmt(k), fmt(beta), "∞" if r is None else fmt(r))
        return Description(TABLE, cells, (w if w is not None else float("inf"),), x=w, x_symbol="w",
                           series=f"apg_mix w_apg={fmt(wa)} k={fmt(k)} β={fmt(beta)} r={cells[4]}", unguided=w == 0)
