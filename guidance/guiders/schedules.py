"""Scale schedules that every strategy takes (Wang et al. 2024, "Analysis of Classifier-Free Guidance Weight
Schedulers"; Kynkäänniemi et al. 2024 for the interval; diffusers' guiders call the window start/stop): the
scale at chain step i of n is w · shape(i), in the strategy's own units (CFG's w, ADM's s, PAG's s, ...).
u_i = (i + ½)/n is the middle of step i in chain progress (0 = noisiest), so the schedules INCREASE as denoising
proceeds (little guidance at high noise), as the paper's Fig. 1 code:

    constant      1                                   the strategy as its paper states it (the default)
    linear        2 u_i                               mean over the chain exactly 1: w keeps its meaning on average
    cosine        1 − cos(π u_i)                      mean exactly 1 (the paper's w(1 + cos(π τ/T)), τ/T = 1 − u)
    clamp_linear  max(c / w, 2 u_i)                   scale max(c, 2 w u_i): the paper's clamp, c in w units
    step          1 for start < (i + 1)/n <= end      a window of chain progress, (i + 1)/n = done after step i
    interval      1 for sigma_lo < σ_i <= sigma_hi    a window of noise levels (Kynkäänniemi et al. 2024)

Decided per CHAIN STEP (Step.index, Step.step_sigma), never per evaluation: Heun's second evaluation and a
churned one belong to their step. Where the scale is 0 the strategies skip their extra pass (counted).
`Sampler.sample` refuses a window that selects no step of its chain (`check_selects`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from guidance.errors import GuidanceError, check_scale

SHAPES = ("constant", "linear", "cosine", "clamp_linear", "step", "interval")
FIELDS = ("schedule", "clamp", "start", "end", "sigma_lo", "sigma_hi")  # the config fields of a schedule


@dataclass(frozen=True)
class WeightSchedule:
    shape: str = "constant"
    clamp: float = 0.0                                   # clamp_linear's c (scale units)
    start: float = 0.0                                   # step: the window (start, end] of (i + 1)/n
    end: float = 1.0
    sigma_lo: float = 0.0                                # interval: the window (sigma_lo, sigma_hi] of σ_i
    sigma_hi: float = float("inf")

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise GuidanceError(f"guidance.schedule={self.shape!r} is unknown; use one of {', '.join(SHAPES)}")
        check_scale(self.clamp, "guidance.clamp")
        if not (0 <= self.start < self.end <= 1) or not (0 <= self.sigma_lo < self.sigma_hi):
            raise GuidanceError("guidance.start < guidance.end must lie in [0, 1] and 0 <= sigma_lo < sigma_hi "
                                f"(EDM noise levels), got start={self.start}, end={self.end}, "
                                f"sigma_lo={self.sigma_lo}, sigma_hi={self.sigma_hi}")

    @classmethod
    def of(cls, schedule="constant", **window) -> "WeightSchedule":
        """From a strategy's config fields (`schedule` + clamp/start/end/sigma_lo/sigma_hi), one line if wrong."""
        if isinstance(schedule, WeightSchedule) and not window:
            return schedule
        unknown = sorted(set(window) - set(FIELDS))
        if unknown:
            raise GuidanceError(f"unknown guidance option(s) {unknown}; a strategy takes its own fields and the "
                                f"schedule's: {', '.join(FIELDS)}")
        try:
            return cls(str(schedule), **{k: float(v) for k, v in window.items()})
        except (TypeError, ValueError):
            raise GuidanceError(f"guidance.{'/'.join(window)} must be numbers, got {window}") from None

    def scale_at(self, w: float, step) -> float:
        if self.shape == "constant":
            return w
        u = (step.index + 0.5) / max(step.count, 1)
        if self.shape == "linear":
            return w * 2 * u
        if self.shape == "cosine":
            return w * (1 - math.cos(math.pi * u))
        if self.shape == "clamp_linear":
            return max(self.clamp, w * 2 * u) if w != 0 else 0.0
        if self.shape == "step":
            return w if self.start < (step.index + 1) / max(step.count, 1) <= self.end else 0.0
        return w if self.sigma_lo < step.step_sigma <= self.sigma_hi else 0.0

    def selects(self, step) -> bool:
        """Whether a window shape keeps this step at all (the other shapes keep every step)."""
        return self.scale_at(1.0, step) != 0 if self.shape in ("step", "interval") else True

    def check_selects(self, steps, what: str = "guidance") -> None:
        """Refuse (one line) a window that selects no step of a chain (`steps`: its evaluation Steps)."""
        if steps and not any(self.selects(s) for s in steps):
            sig = sorted({round(s.step_sigma, 4) for s in steps})
            raise GuidanceError(f"{what}: the {self.label()} window selects no step of this chain (its σ_i: "
                                f"{sig[0]:g} .. {sig[-1]:g}, {len({s.index for s in steps})} steps); widen it or "
                                "use the strategy without a window")

    def label(self) -> str:
        extra = {"clamp_linear": f" c={self.clamp:g}", "step": f" u∈({self.start:g}, {self.end:g}]",
                 "interval": f" σ∈({self.sigma_lo:g}, {self.sigma_hi:g}]"}.get(self.shape, "")
        return self.shape + extra

    def record(self) -> dict:
        """The schedule as sample_info records it (under "schedule")."""
        return asdict(self) | {"label": self.label()}

    def info(self) -> dict:
        """A strategy's sample_info fields for its schedule: none for the constant one (the paper's strategy)."""
        return {} if self.shape == "constant" else {"schedule": self.record()}
