"""Classifier-free guidance (Ho & Salimans 2022, eq. 6), scale w; w = 0 is the conditional model.

ε~ = (1 + w) ε(x_t, y) − w ε(x_t, ∅)
Conditional and null passes run as ONE batched forward; w = 0 skips the null pass (1 NFE).
With a learned variance (2C output channels) the conditional variance channels are kept.
"""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError
from guidance.guiders.base import GuidanceCost, Guider


def cfg_model_output(model, x, t, y, w: float, null_label: int) -> torch.Tensor:
    if w == 0:
        return model(x, t, y)
    out = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)]))
    cond, uncond = out.chunk(2)
    c = x.shape[1]  # eps channels; any further channels are the learned variance
    eps = (1 + w) * cond[:, :c] - w * uncond[:, :c]
    return torch.cat([eps, cond[:, c:]], dim=1)


class ClassifierFreeGuidance(Guider):
    name = "cfg"

    def __init__(self, scale: float = 1.0, null_label: int | None = None, classifier=None):
        super().__init__(scale=scale, null_label=null_label, conditional=True, classifier=classifier)
        if null_label is None:
            raise GuidanceError("cfg needs null_label (= num_classes of a U-Net trained with label dropout)")

    def model_output(self, model, x, t, y):
        return cfg_model_output(model, x, t, y, self.scale, self.null_label)

    def cost(self) -> GuidanceCost:
        return GuidanceCost(nfe=2 if self.scale != 0 else 1)
