"""The Guider interface: how a guidance strategy changes one sampling step.

A sampler calls, per step (t = ORIGINAL timesteps, as the networks see them):
  out  = guider.model_output(model, x, t, y)              network-level combination (CFG)
  mean = guider.condition_mean(mean, variance, x, t, y)   ancestral samplers (ADM Alg. 1)
  eps  = guider.condition_eps(eps, x, t, y, alpha_bar)    DDIM samplers (ADM Alg. 2)
`y` is always the target class; the guider decides which label the network sees (null label for an
unconditional pass). Scales keep their papers' units: ADM's s, Ho & Salimans' w.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from guidance.errors import GuidanceError


@dataclass(frozen=True)
class GuidanceCost:
    """Work per sampling step per image: network evaluations and classifier passes."""

    nfe: int
    classifier_forward: int = 0
    classifier_backward: int = 0

    def as_dict(self) -> dict:
        return asdict(self)

    def times(self, steps: int) -> "GuidanceCost":
        return GuidanceCost(self.nfe * steps, self.classifier_forward * steps, self.classifier_backward * steps)


def check_scale(value, what: str, allow_negative: bool = False) -> float:
    """A guidance scale as a float; non-finite or (where invalid) negative values are a GuidanceError."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise GuidanceError(f"{what} must be a number, got {value!r}; pass e.g. {what}=1.0") from None
    if not math.isfinite(value):
        raise GuidanceError(f"{what} must be finite, got {value}; pass a finite value such as {what}=1.0")
    if value < 0 and not allow_negative:
        raise GuidanceError(f"{what} must be >= 0 (0 = unguided), got {value}; pass a non-negative scale")
    return value


class Guider:
    """Base strategy: the plain model, no guidance. Subclasses override one or more hooks."""

    name = "base"
    needs_classifier = False  # apps load the classifier snapshot only when this is True

    def __init__(self, scale: float = 0.0, null_label: int | None = None, conditional: bool = True, classifier=None):
        self.scale = check_scale(scale, "guidance.scale")
        self.null_label = null_label
        self.conditional = bool(conditional)
        self.classifier = classifier
        if not self.conditional and null_label is None:
            raise GuidanceError(f"{self.name}: an unconditional pass needs null_label (= num_classes of the U-Net)")

    # -- hooks -------------------------------------------------------------------------------------------
    def model_output(self, model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return model(x, t, self.model_labels(y))

    def condition_mean(self, mean, variance, x, t, y) -> torch.Tensor:
        return mean

    def condition_eps(self, eps, x, t, y, alpha_bar) -> torch.Tensor:
        return eps

    def cost(self) -> GuidanceCost:
        return GuidanceCost(nfe=1)

    def cost_over(self, timesteps: Sequence[int]) -> GuidanceCost:
        """Cost per image of a whole chain over these ORIGINAL timesteps (strategies whose cost varies per step
        override this; the default is cost() at every step)."""
        return self.cost().times(len(timesteps))

    # -- helpers -----------------------------------------------------------------------------------------
    def model_labels(self, y: torch.Tensor) -> torch.Tensor:
        """Labels the U-Net sees: the target class, or the null label for the unconditional model."""
        return y if self.conditional else torch.full_like(y, self.null_label)

    def info(self) -> dict:
        """What sample_info.json records about the strategy."""
        return {"strategy": self.name, "scale": self.scale, "conditional": self.conditional}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.info().items() if k != 'strategy')})"


def classifier_grad(classifier, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∇_{x_t} log p_φ(y | x_t) at the ORIGINAL timestep t (ADM Alg. 1/2).

    Summing log-probs over the batch gives each image its own gradient: the classifier treats images
    independently (eval mode, no batch statistics).
    """
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
        selected = log_probs[torch.arange(len(y), device=y.device), y]
        return torch.autograd.grad(selected.sum(), x_in)[0]


def require_classifier(guider: Guider) -> None:
    if guider.classifier is None:
        raise GuidanceError(f"{guider.name} guidance needs a noise-aware classifier; pass classifier_ckpt=PATH "
                            "(a classifier.pt snapshot from guidance-train)")
