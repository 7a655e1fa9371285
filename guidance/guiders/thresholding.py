"""Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3), on the x̂0 of ANY strategy, percentile p:

    s = max(quantile_p(|x̂0|) per image, 1),   x̂0 ← clip(x̂0, −s, s) / s,   ε re-derived from x̂0

It replaces the static clip to [-1, 1] (the sampler's clip_denoised) at every step, whether or not the sampler
clips; a classifier term (`grad`) passes through unchanged. A step the inner strategy `holds` (CFG-Zero*'s zeroed
steps, which must leave the state where it is) is not thresholded. p = 1 with |x̂0| <= 1 everywhere leaves x̂0 as is.
The wrapped strategy (`inner`) is any guider config; its scale is swept as guidance.inner.scale.
"""

from __future__ import annotations

import torch

from guidance.engine import RENOISE_EPS
from guidance.errors import GuidanceError
from guidance.guiders.base import Description, Guider, TableSpec, fmt

TABLE = TableSpec("dynamic_threshold", "Dynamic thresholding (Saharia et al. 2022) on a strategy",
                  ("Strategy", "Scale", "p"), order=70, baseline_models=("conditional",),
                  baseline_cells=("none", "0", "–"))


def dynamic_threshold(x0: torch.Tensor, p: float) -> torch.Tensor:
    s = torch.quantile(x0.abs().flatten(1).double(), p, dim=1).clamp_min(1.0)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return x0.clamp(-s, s) / s


class DynamicThresholding(Guider):
    name = "dynamic_threshold"

    def __init__(self, inner: Guider, percentile: float = 0.995):
        if not isinstance(inner, Guider) or isinstance(inner, DynamicThresholding):
            raise GuidanceError("guidance.inner must be a guidance strategy config (e.g. guidance/cfg.yaml's fields)")
        super().__init__(scale=inner.scale, conditional=inner.conditional)
        self.inner, self.percentile = inner, float(percentile)
        if not 0.0 < self.percentile <= 1.0:
            raise GuidanceError(f"guidance.percentile must be in (0, 1] (Imagen uses 0.995), got {percentile}")
        if RENOISE_EPS in inner.needs:  # CFG++: its step re-noises x̂0 with its own ε_u, a pair thresholding breaks
            raise GuidanceError(f"guidance.inner={inner.name} re-noises x̂0 with its own ε, which dynamic thresholding "
                                "would pair with a thresholded x̂0 (a form its paper does not define); threshold "
                                "another strategy, or run it alone")
        self.networks, self.needs = inner.networks, inner.needs

    def reset(self, batch_size, rng=None):
        self.inner.reset(batch_size, rng)

    def requests(self, step):
        return self.inner.requests(step)

    def combine(self, preds, x, step):
        return self.inner.combine(preds, x, step)

    def holds(self, step):
        return self.inner.holds(step)

    def check_chain(self, steps):
        self.inner.check_chain(steps)  # the inner strategy's windows and zeroed steps against this chain

    def finish(self, pred, x, step, clip):
        if self.holds(step):
            return pred
        return pred.with_x0(x, step, dynamic_threshold(pred.x0, self.percentile))

    def info(self):
        return {**self.inner.info(), "strategy": self.name, "inner": self.inner.info(), "percentile": self.percentile}

    @classmethod
    def describe(cls, info):
        inner = info.get("inner") or {}
        s, p = inner.get("scale"), info.get("percentile")
        name = inner.get("strategy", "?")
        return Description(TABLE, (name, fmt(s), fmt(p)), (s if s is not None else float("inf"),),
                           series=f"{name} + dynamic threshold p={fmt(p)}", x=s, unguided=False)
