"""TCFG, tangential damping classifier-free guidance (Kwon et al., CVPR 2025, "TCFG: Tangential Damping
Classifier-free Guidance", arXiv 2503.18137), in ε space (the paper's SD models predict ε), scale w (Ho & Salimans
units):

    A = [ε_c; ε_u] ∈ R^{2×D}  per image, flattened;   A = U S Vᵀ,  v₁ = first right-singular vector
    ε_u' = ⟨ε_u, v₁⟩ v₁                               the unconditional ε with its tangential part (along v₂) removed
    ε~ = ε_c + w (ε_c − ε_u')                          CFG with ε_u' in place of ε_u

The paper writes ε_u' + s (ε_c − ε_u') with s = w + 1, and so does diffusers' TangentialClassifierFreeGuidance
(guidance_scale = w + 1, use_original_formulation=False); it runs the SVD in float32, here in float64 (they agree to
float32 rounding). v₁'s sign is arbitrary and cancels. Neutral setting: w = 0 is the conditional model (1 NFE).
w follows the shared per-chain-step schedule (guidance.guiders.base): a step whose scale is 0 skips the null pass.
`space: x0 | flow` runs the same filter on x̂0 or the flow velocity instead (not the paper's; the SVD is not
affine-invariant, so it differs).
"""

from __future__ import annotations

import torch

from guidance.guiders.base import Description, TableSpec, extrapolate, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.spaces import check_space, from_space, to_space

TABLE = TableSpec("tcfg", "Tangential damping CFG (Kwon et al. 2025)", ("w", "Space"), order=36,
                  baseline_models=("conditional",), baseline_cells=("0", "–"))


def tangential_filter(cond: torch.Tensor, uncond: torch.Tensor) -> torch.Tensor:
    """ε_u' = ⟨ε_u, v₁⟩ v₁ with v₁ the top right-singular vector of the per-image 2×D matrix [ε_c; ε_u]."""
    stacked = torch.stack([cond, uncond], dim=1).flatten(2).double()           # [B, 2, D]
    v1 = torch.linalg.svd(stacked, full_matrices=False).Vh[:, :1]              # [B, 1, D]
    u = uncond.flatten(1).double().unsqueeze(1)
    return ((u @ v1.transpose(1, 2)) @ v1).reshape(uncond.shape).to(uncond.dtype)


class TangentialCFG(ClassifierFreeGuidance):
    name = "tcfg"

    def __init__(self, scale: float = 1.0, space: str = "eps", **schedule):
        super().__init__(scale=scale, **schedule)
        self.space = check_space(space, "tcfg")

    def combine(self, preds, x, step):
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        c, u = to_space(cond, x, step, self.space), to_space(preds["uncond"], x, step, self.space)
        ref = tangential_filter(c, u)
        return from_space(extrapolate(c, ref, self.scale_at(step)), x, step, self.space, cond.var_v)

    def info(self):
        return {**super().info(), "space": self.space}

    @classmethod
    def describe(cls, info):
        w, space = info.get("scale"), info.get("space", "eps")
        return Description(TABLE, (fmt(w), space), (w if w is not None else float("inf"),), series=f"tcfg ({space})",
                           x=w, x_symbol="w", unguided=w == 0)
