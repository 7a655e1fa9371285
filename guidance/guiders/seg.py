"""SEG, smoothed energy guidance (Hong 2024, "Smoothed Energy Guidance: Guiding Diffusion Models with Reduced
Energy Curvature of Attention", NeurIPS 2024, and its official SEG-SDXL pipeline), in ε space, scale s:

    ε~ = ε + s (ε − ε_seg)  (+ w (ε_c − ε_u) with cfg_scale w on the conditional model, as the official code)

ε_seg is the same U-Net with the query of the named self-attention `blocks` blurred over the H×W grid by a
Gaussian of std σ (blurring the attention weights' query side: softmax of (G_σ * Q) Kᵀ); σ = inf (or > 9999, the
official threshold; `blur_sigma: null` here) replaces every query by its spatial mean (uniform attention over keys' average). The official
kernel: size ⌈6σ⌉ + 1 − (⌈6σ⌉ mod 2) (odd), reflect padding; on our small maps (7×7 at 28 px) the kernel is cut
to at most 2·side − 1 taps (reflect padding needs a pad < side) and renormalised. Applied with a forward hook on
the block's qkv projection for this pass only (UNet.attention_blocks() names the blocks, as for PAG).
diffusers (0.42, SmoothedEnergyGuidance): guidance_scale = w + 1, seg_guidance_scale = s, seg_blur_sigma = σ; two
differences, stated: (1) its _gaussian_blur_2d swaps the official branches: σ <= 9999 gives the spatial mean,
σ > 9999 a Gaussian of σ with the kernel cut to the grid (each equal to ours at the other σ, tests check both); on
a 7×7 map of random queries its σ = 0.5 / 1 / 2 query differs from the paper's by ~98% / 91% / 71% of its norm
(only σ = inf, its default and the paper's, agrees, up to its finite-kernel approximation of the mean); (2) its window
int(start·n) < i never guides step 0; SEG here guides every step, as the paper. Neutral settings: s = 0 or no
block is CFG at w (or the model); σ → 0 makes ε_seg = ε. The shared per-chain-step schedule (guidance.guiders.base;
e.g. `schedule: step` for diffusers' start/stop window) applies to BOTH scales (s_i = schedule(s, i),
w_i = schedule(w, i)): a step whose w_i is 0 skips the null pass, whose s_i is 0 the blurred pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.base import Description, Eval, Guider, TableSpec, fmt, model_of
from guidance.guiders.slg import _Hooks, cfg_plus_perturbed

TABLE = TableSpec("seg", "Smoothed energy guidance (Hong 2024)", ("Model", "s", "w", "σ", "Blocks"), order=62,
                  baseline_models=("unconditional", "conditional"), baseline_cells=("{model}", "0", "0", "–", "–"))
INFINITE_BLUR = 9999.0  # the official code's threshold: above it, σ is infinite


def blur_query(q: torch.Tensor, sigma: float) -> torch.Tensor:
    """q [B, C, H, W] blurred over H, W by a Gaussian of std σ (the official SEG kernel), or its mean for σ = inf."""
    if sigma > INFINITE_BLUR:
        return q.mean(dim=(-2, -1), keepdim=True).expand_as(q)
    size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
    size = min(size, 2 * min(q.shape[-2:]) - 1)
    half = (size - 1) / 2
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, size, dtype=q.dtype, device=q.device) / sigma) ** 2)
    k1 = pdf / pdf.sum()
    kernel = (k1[:, None] * k1[None, :]).expand(q.shape[1], 1, size, size)
    pad = size // 2
    return F.conv2d(F.pad(q, (pad, pad, pad, pad), mode="reflect"), kernel, groups=q.shape[1])


@dataclass(frozen=True)
class BlurredQuery:
    """The perturbation of SEG's extra pass (hashable, so the denoiser groups its rows)."""

    blocks: tuple[str, ...]
    sigma: float

    def applied(self, network, denoiser=None):
        if not hasattr(network, "attention_blocks"):
            raise GuidanceError(f"{type(network).__name__} has no attention blocks: SEG needs guidance.nn.UNet")
        blocks = network.attention_blocks()
        unknown = [b for b in self.blocks if b not in blocks]
        if unknown:
            raise GuidanceError(f"seg: no self-attention block {unknown} in this U-Net; it has {list(blocks)}")

        fused = [name for name in self.blocks if not hasattr(blocks[name], "qkv")]
        if fused:  # the blur hooks the fused qkv projection of the toolkit's attention (diffusers' has q, k, v apart)
            raise GuidanceError(f"seg: block {fused[0]} of {type(network).__name__} has no fused qkv projection to "
                                "blur the queries of: SEG needs guidance.nn.UNet's attention blocks")

        def blur(module, inputs, qkv):  # qkv [B, 3C, H*W]: the first C channels are the queries
            b, three_c, length = qkv.shape
            c, side = three_c // 3, math.isqrt(length)
            q = blur_query(qkv[:, :c].reshape(b, c, side, side), self.sigma).reshape(b, c, length)
            return torch.cat([q, qkv[:, c:]], dim=1)

        return _Hooks([(blocks[name].qkv, blur) for name in self.blocks])


class SmoothedEnergyGuidance(Guider):
    name = "seg"

    def __init__(self, scale: float = 3.0, cfg_scale: float = 0.0, blur_sigma: float | None = None,
                 blocks=("middle",), conditional: bool = True, **schedule):
        super().__init__(scale=scale, conditional=conditional, **schedule)
        self.cfg_scale = check_scale(cfg_scale, "guidance.cfg_scale")
        self.blur_sigma = None if blur_sigma is None or float(blur_sigma) > INFINITE_BLUR else float(blur_sigma)
        if self.blur_sigma is not None and not self.blur_sigma > 0:
            raise GuidanceError(f"seg needs blur_sigma > 0 (null for the infinite blur), got {blur_sigma!r}")
        self.blocks = tuple(str(b) for b in (blocks or ()))
        if self.cfg_scale and not self.conditional:
            raise GuidanceError("seg: cfg_scale must be 0 on the unconditional model (guidance.conditional=false)")

    def cfg_at(self, step) -> float:
        """This chain step's w (the CFG part), under the shared schedule."""
        return self.schedule.scale_at(self.cfg_scale, step)

    def requests(self, step):
        reqs = [Eval("model", labels=self.model_labels)]
        if self.cfg_at(step) != 0:
            reqs.append(Eval("uncond", labels="null"))
        if self.scale_at(step) != 0 and self.blocks:
            reqs.append(Eval("seg", labels=self.model_labels, perturb=BlurredQuery(self.blocks, self.blur_sigma or math.inf)))
        return reqs

    def combine(self, preds, x, step):
        return cfg_plus_perturbed(preds, x, step, self.cfg_at(step), self.scale_at(step), "seg")

    def info(self):
        return {**super().info(), "cfg_scale": self.cfg_scale, "blur_sigma": self.blur_sigma,
                "blocks": list(self.blocks)}

    @classmethod
    def describe(cls, info):
        s, w, sigma, model = info.get("scale"), info.get("cfg_scale"), info.get("blur_sigma"), model_of(info)
        blocks = ",".join(info.get("blocks") or []) or "none"
        sig = "∞" if sigma is None else fmt(sigma)
        return Description(TABLE, (model, fmt(s), fmt(w), sig, blocks), (s if s is not None else float("inf"),),
                           series=f"seg ({model}, w={fmt(w)}, σ={sig}, {blocks})", x=s, x_symbol="s",
                           unguided=(s == 0 or blocks == "none") and not w)
