"""PAG, perturbed-attention guidance (Ahn et al. 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance", eq. 11), in ε space, scale s (0 = unguided):

    ε~ = ε(x_t, y) + s (ε(x_t, y) − ε̂(x_t, y))

(the official ADM code writes ε̂ + s'(ε − ε̂): s' = s + 1; its guide_scale 4.0 is s = 3 here).

ε̂ is the same U-Net with the self-attention map of the chosen blocks replaced by the identity (each position
attends only to itself, so attention returns V), through UNet.identity_attention, not a fork of the network.
Needs no label dropout and no classifier; works on the conditional or the unconditional model. Neutral settings:
s = 0, or no perturbed block (the perturbed pass is then the model itself and ε~ = ε).
"""

from __future__ import annotations

from dataclasses import dataclass

from guidance.errors import GuidanceError
from guidance.guiders.base import Description, Eval, Guider, TableSpec, affine, extrapolate, fmt, model_of

TABLE = TableSpec("pag", "Perturbed-attention guidance (Ahn et al. 2024)", ("Model", "s", "Blocks"), order=60,
                  baseline_models=("unconditional", "conditional"), baseline_cells=("{model}", "0", "–"))


@dataclass(frozen=True)
class IdentityAttention:
    """The perturbation of PAG's second pass (hashable, so the denoiser groups its rows)."""

    blocks: tuple[str, ...]

    def applied(self, network, denoiser=None):
        if not hasattr(network, "identity_attention"):
            raise GuidanceError(f"{type(network).__name__} has no identity_attention (self-attention blocks to perturb): "
                                "PAG needs guidance.nn.UNet")
        return network.identity_attention(self.blocks)


class PerturbedAttentionGuidance(Guider):
    name = "pag"

    def __init__(self, scale: float = 1.0, blocks=("middle",), conditional: bool = True, **schedule):
        super().__init__(scale=scale, conditional=conditional, **schedule)
        self.blocks = tuple(str(b) for b in (blocks or ()))

    def requests(self, step):
        base = [Eval("model", labels=self.model_labels)]
        if self.scale_at(step) == 0 or not self.blocks:
            return base  # nothing perturbed: the perturbed pass would equal the model's (not paid for)
        return base + [Eval("perturbed", labels=self.model_labels, perturb=IdentityAttention(self.blocks))]

    def combine(self, preds, x, step):
        model = preds["model"]
        if "perturbed" not in preds:
            return model
        w = self.scale_at(step)  # affine in ε: at σ = ∞ the same combination of x̂0 (base.affine)
        return affine(lambda m, p: extrapolate(m, p, w), (model, preds["perturbed"]), x, step, model.var_v)

    def info(self):
        return {**super().info(), "blocks": list(self.blocks)}

    @classmethod
    def describe(cls, info):
        s, model, blocks = info.get("scale"), model_of(info), ",".join(info.get("blocks") or []) or "none"
        return Description(TABLE, (model, fmt(s), blocks), (s if s is not None else float("inf"),),
                           series=f"pag ({model}, {blocks})", x=s, x_symbol="s", unguided=s == 0 or blocks == "none")
