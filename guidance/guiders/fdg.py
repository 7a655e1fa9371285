"""FDG, frequency-decoupled guidance (Sadat et al. 2025, "Guidance in the Frequency Domain Enables High-Fidelity
Sampling at Low CFG Scales", arXiv 2506.19713; Alg. 2 for the pyramid), in x̂0 space (the denoiser output D(x_t),
as the same authors' APG; with η = 1 every space gives the same prediction), scales in Ho & Salimans units: w_l per
level l of a Laplacian pyramid P (level 0 the finest, L − 1 the coarse Gaussian residual):

    c_l, u_l = P(x̂0_c)_l, P(x̂0_u)_l
    Δ_l = c_l − u_l,   optionally Δ_l ← Δ_l^⊥ + η Δ_l^∥   (projection on c_l per image, APG's; η = 1: off)
    g_l = u_l + (1 + w_l) Δ_l                       (η = 1: g_l = c_l + w_l (c_l − u_l))
    x̂0 = P⁻¹(g)

`scale` is w for the coarsest (lowest-frequency) level, `high_scale` for every finer level; the paper recommends a
low w_low and a high w_high (SDXL: guidance scales 5 and 10, i.e. w = 4 and 9). P is Burt & Adelson's pyramid as
kornia builds it (diffusers uses kornia's build_laplacian_pyramid / pyrup): 5-tap binomial blur ([1, 4, 6, 4, 1]/16,
reflect border) with bilinear resampling. P⁻¹ is exact; an image whose side is not divisible by 2^(L−1) is
reflect-padded at the right and bottom, then cropped back. diffusers' FrequencyDecoupledGuidance takes
guidance_scales = [1 + w_high, ..., 1 + w_low] (finest first) and the same η as parallel_weights. With η = 1 the
combination is affine, so it is the same prediction in ε space; η ≠ 1 depends on the space. kornia is not in the
bench extra: the peer test runs diffusers' combination on this pyramid, and compares the pyramid with kornia's
where kornia is installed. Neutral settings: w_low = w_high = w is CFG at w; both 0 is the conditional model (1 NFE).
The shared per-chain-step schedule (guidance.guiders.base) applies to BOTH scales (one schedule shape for every
guidance term: w_l,i = schedule(w_l, i)); a step where both are 0 skips the null pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.apg import per_image_dot
from guidance.guiders.base import Description, TableSpec, extrapolate, fmt
from guidance.guiders.cfg import ClassifierFreeGuidance
from guidance.guiders.spaces import check_space, from_space, to_space

TABLE = TableSpec("fdg", "Frequency-decoupled guidance (Sadat et al. 2025)", ("w_low", "w_high", "Levels", "η"),
                  order=37, baseline_models=("conditional",), baseline_cells=("0", "0", "–", "–"))


def _blur(x: torch.Tensor) -> torch.Tensor:
    k1 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype, device=x.device) / 16
    kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 5, 5)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def pyr_down(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(_blur(x), size=(x.shape[-2] // 2, x.shape[-1] // 2), mode="bilinear", align_corners=False)


def pyr_up(x: torch.Tensor) -> torch.Tensor:
    return _blur(F.interpolate(x, size=(x.shape[-2] * 2, x.shape[-1] * 2), mode="bilinear", align_corners=False))


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """[L_0 (finest), ..., L_{levels−2}, G_{levels−1} (coarse residual)]; x's side must divide by 2^(levels−1)."""
    gaussian = [x]
    for _ in range(levels - 1):
        gaussian.append(pyr_down(gaussian[-1]))
    return [g - pyr_up(coarser) for g, coarser in zip(gaussian, gaussian[1:])] + [gaussian[-1]]


def from_pyramid(pyramid: list[torch.Tensor]) -> torch.Tensor:
    img = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        img = pyr_up(img) + level
    return img


def _padded(x: torch.Tensor, levels: int) -> torch.Tensor:
    m = 2 ** (levels - 1)
    ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
    return F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x


class FrequencyDecoupledGuidance(ClassifierFreeGuidance):
    name = "fdg"

    def __init__(self, scale: float = 1.0, high_scale: float = 2.0, levels: int = 2, parallel_weight: float = 1.0,
                 space: str = "x0", **schedule):
        super().__init__(scale=scale, **schedule)
        self.high_scale = check_scale(high_scale, "guidance.high_scale")
        self.parallel_weight = check_scale(parallel_weight, "guidance.parallel_weight")
        if not isinstance(levels, int) or levels < 2:
            raise GuidanceError(f"fdg needs levels an integer >= 2 (a pyramid with a high and a low band), got {levels!r}")
        self.levels, self.space = levels, check_space(space, "fdg")

    def guided_at(self, step):
        return any(w != 0 for w in self.level_scales(step))

    def level_scales(self, step) -> list[float]:
        """This chain step's w_l, finest first: both scales under the schedule."""
        return [self.schedule.scale_at(self.high_scale, step)] * (self.levels - 1) + [self.scale_at(step)]

    def combine(self, preds, x, step):
        cond = preds["cond"]
        if "uncond" not in preds:
            return cond
        c, u = to_space(cond, x, step, self.space), to_space(preds["uncond"], x, step, self.space)
        h, w_px = c.shape[-2:]
        if min(h, w_px) < 2 ** self.levels:
            raise GuidanceError(f"fdg: {self.levels} pyramid levels need images of at least {2 ** self.levels} px, "
                                f"got {h}x{w_px}; lower guidance.levels")
        cs, us = (laplacian_pyramid(_padded(t, self.levels), self.levels) for t in (c, u))
        guided = []
        for c_l, u_l, w in zip(cs, us, self.level_scales(step)):
            if self.parallel_weight == 1:
                guided.append(extrapolate(c_l, u_l, w, order="lerp"))  # u_l + (1 + w_l)(c_l − u_l), the paper's
                continue
            delta, cd = c_l - u_l, c_l.double()
            parallel = per_image_dot(delta.double(), cd) / per_image_dot(cd, cd).clamp_min(1e-12) * cd
            delta = (delta - parallel + self.parallel_weight * parallel).to(c_l.dtype)
            guided.append(u_l + (1 + w) * delta)            # the projected update: not an extrapolation
        out = from_pyramid(guided)[..., :h, :w_px]
        return from_space(out, x, step, self.space, cond.var_v)

    def info(self):
        return {**super().info(), "high_scale": self.high_scale, "levels": self.levels,
                "parallel_weight": self.parallel_weight, "space": self.space}

    @classmethod
    def describe(cls, info):
        w, wh, lv, eta = (info.get(k) for k in ("scale", "high_scale", "levels", "parallel_weight"))
        return Description(TABLE, (fmt(w), fmt(wh), fmt(lv), fmt(eta)), (w if w is not None else float("inf"),),
                           series=f"fdg w_high={fmt(wh)} L={fmt(lv)} η={fmt(eta)}", x=w, x_symbol="w_low",
                           unguided=w == 0 and wh == 0)
