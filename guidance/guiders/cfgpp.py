"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for Diffusion Models", eq. 10 /
Alg. 1), scale λ ∈ [0, 1]: the guided x̂0 is re-noised with the UNCONDITIONAL ε.

    ε_λ = ε_u + λ (ε_c − ε_u),   x̂0_λ = (x_t − sqrt(1 − ᾱ_t) ε_λ) / sqrt(ᾱ_t)
    DDIM (η = 0):  x_{t−1} = sqrt(ᾱ_{t−1}) x̂0_λ + sqrt(1 − ᾱ_{t−1}) ε_u
    Euler:         x̃_{i+1} = x̂0_λ + σ_{i+1} ε_u     (the official code's k-diffusion Euler, EDM's scaled variable)

The prediction carries ε_u as `renoise_eps`, so the strategy needs a sampler whose step re-noises x̂0 with a
given ε and adds no fresh noise (capability RENOISE_EPS, guidance.engine): the two forms above, as the paper states
them. Forms it does not define (fresh noise, churn, second-order corrections, multistep or ancestral updates) are
refused by Sampler.sample in one line. λ = 0 is the unconditional model's DDIM/Euler step.

Never clipped: the paper (Alg. 1) and its official code use x̂0_λ as is, and a clipped x̂0_λ re-noised with the raw
ε_u is no longer their update; so CFG++ ignores the sampler's clip_denoised (it keeps its default true, which every
other strategy uses, and sample_info records "x0_clip": "never" for CFG++ points).

In EDM's variable a CFG++ step
(η = 0) IS a CFG step at guidance scale ω_i = λ σ_i / (σ_i − σ_{i+1}) (w = ω − 1; tested), so λ's meaning
depends on the step count: with the paper's 50+ small steps ω ≫ λ (λ ≈ 0.2 behaves like w + 1 ≈ 2 in its SD
experiments), with 10 DDIM steps on the linear schedule ω ≈ 1.0-2.5 λ, and the last step is always ω = λ.
The scale column is λ, not comparable with w.
"""

from __future__ import annotations

from dataclasses import replace

from guidance.engine import RENOISE_EPS
from guidance.errors import GuidanceError
from guidance.guiders.base import Description, Eval, Guider, Prediction, TableSpec, fmt

TABLE = TableSpec("cfgpp", "CFG++ (Chung et al. 2024)", ("λ",), order=27, baseline_models=("conditional",),
                  baseline_cells=("none (cond.)",))


class CFGPlusPlus(Guider):
    name = "cfgpp"
    needs = frozenset({RENOISE_EPS})

    def __init__(self, scale: float = 0.2):
        super().__init__(scale=scale, conditional=True)
        if self.scale > 1:
            raise GuidanceError(f"cfgpp's guidance.scale is λ in [0, 1], got {scale} (λ ≈ 0.2 acts like CFG w + 1 ≈ 2)")

    def requests(self, step):
        return ([Eval("cond")] if self.scale != 0 else []) + [Eval("uncond", labels="null")]

    def combine(self, preds, x, step):
        uncond = preds["uncond"]
        if "cond" not in preds:
            return uncond  # λ = 0: the unconditional model's own step
        cond = preds["cond"]
        guided = Prediction.from_eps(x, step, uncond.eps + self.scale * (cond.eps - uncond.eps), cond.var_v)
        return replace(guided, renoise_eps=uncond.eps)

    def finish(self, pred, x, step, clip):
        """x̂0_λ as it is, whatever the sampler's clip_denoised: CFG++ is defined unclipped (see the module doc)."""
        return pred

    def info(self):
        return {**super().info(), "x0_clip": "never"}

    @classmethod
    def describe(cls, info):
        lam = info.get("scale")
        return Description(TABLE, (fmt(lam),), (lam if lam is not None else float("inf"),), series="cfg++", x=lam,
                           x_symbol="λ", unguided=False)
