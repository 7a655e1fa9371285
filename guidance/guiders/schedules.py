"""Guidance weight schedules (Wang et al. 2024, "Analysis of Classifier-Free Guidance Weight Schedulers"): the
scale at chain step i is w · shape(u_i), u_i = (i + 1)/n the fraction of the chain done after the step, so
the schedules INCREASE as denoising proceeds (little guidance at high noise), as the paper's Fig. 1 code:

    constant      1
    linear        2u                          mean over the chain ≈ 1, so w keeps its meaning on average
    cosine        1 − cos(π u)                mean ≈ 1 (the paper's w(1 + cos(π τ/T)) with τ/T = 1 − u)
    clamp_linear  max(c / w, 2u)              scale max(c, 2wu): the paper's clamp, c in w units
    step          1 for start < u <= end, else 0      a window of chain progress
    interval      1 for sigma_lo < σ_i <= sigma_hi, else 0   a window of noise levels (Kynkäänniemi et al. 2024)

Heun's second evaluation and a churned one belong to their step (Step.index, Step.step_sigma). Where the scale
is 0 the strategies skip the extra pass (counted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from guidance.errors import GuidanceError, check_scale

SHAPES = ("constant", "linear", "cosine", "clamp_linear", "step", "interval")


@dataclass(frozen=True)
class WeightSchedule:
    shape: str = "constant"
    clamp: float = 0.0                                   # clamp_linear's c (scale units)
    start: float = 0.0                                   # step: the window (start, end] of u
    end: float = 1.0
    sigma_lo: float = 0.0                                # interval: the window (sigma_lo, sigma_hi] of σ
    sigma_hi: float = float("inf")

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise GuidanceError(f"guidance.schedule={self.shape!r} is unknown; use one of {', '.join(SHAPES)}")
        check_scale(self.clamp, "guidance.clamp")
        if not (0 <= self.start < self.end <= 1) or not (0 <= self.sigma_lo < self.sigma_hi):
            raise GuidanceError("guidance.start < guidance.end must lie in [0, 1] and 0 <= sigma_lo < sigma_hi")

    def scale_at(self, w: float, step) -> float:
        u = (step.index + 1) / max(step.count, 1)
        if self.shape == "constant":
            return w
        if self.shape == "linear":
            return w * 2 * u
        if self.shape == "cosine":
            return w * (1 - math.cos(math.pi * u))
        if self.shape == "clamp_linear":
            return max(self.clamp, w * 2 * u) if w != 0 else 0.0
        if self.shape == "step":
            return w if self.start < u <= self.end else 0.0
        return w if self.sigma_lo < step.step_sigma <= self.sigma_hi else 0.0

    def label(self) -> str:
        extra = {"clamp_linear": f" c={self.clamp:g}", "step": f" u∈({self.start:g}, {self.end:g}]",
                 "interval": f" σ∈({self.sigma_lo:g}, {self.sigma_hi:g}]"}.get(self.shape, "")
        return self.shape + extra
