"""Euler–Maruyama on the reverse SDE of the flow path: SiT's SDE sampler (Ma et al. 2024; willisma/SiT transport
`Sampler.sample_sde` with its sample.py defaults), on every model through the engine's common view.

The chain runs on the flow variable x_f = (1 − τ) x̂0 + τ ε (SiT's x_t with t = 1 − τ; guidance.engine.prediction).
For a diffusion coefficient w(τ) >= 0 the SDE with the flow path's marginals (stochastic interpolants, Albergo et al.
2023) is, in SiT's time t,
    dx = [v + w s] dt + sqrt(2 w) dW,   v = x̂0 − ε (the velocity, dx/dt),   s = ∇log p = −ε/τ (the score),
and every w gives the same marginals (w = 0 is flow_euler's ODE). Each step τ_i -> τ_{i+1} (dt = τ_i − τ_{i+1}):
    x_f <- x_f + dt [(x̂0 − ε) − (w(τ_i)/τ_i) ε] + sqrt(2 w(τ_i) dt) n,   n ~ N(0, I) from the image's stream,
except the last step, τ_{n−1} -> 0, which is `last_step`:
    "mean"    the drift without noise (SiT's default),       "euler"  the ODE drift x̂0 − ε only,
    "tweedie" x_f = x̂0 (SiT: x/α + σ²/α s at t = 1 − τ_{n−1}),  None    one more Euler–Maruyama step (noise included).
The "mean" step's score term is −(w/τ_{n−1}) ε · τ_{n−1} = −w ε: fine where w = O(τ) (sigma, linear), but with a
constant w it removes a whole w ε (too little variance: tests/test_parameterizations.py); use tweedie there.
SiT's default (num_steps 250, last_step Mean, last_step_size 0.04) is the grid τ = linspace(1, 0.04, 250), then 0:
respacing=flow250 t_min=0.04, this sampler's defaults; its last_step None with num_steps N is flow(N−1), t_min null.
diffusion_form, with c = diffusion_norm, on the linear path (SiT's path.ICPlan.compute_diffusion, t = 1 − τ):
    constant  c          sigma, linear  c τ (SiT's default: the drift is x̂0 − 2ε)          SBDM  c τ/(1 − τ) (= c σ)
    decreasing  (c cos(π t) + 1)²/4          increasing-decreasing  c sin²(π t) (SiT's own table misspells this key)
SBDM is infinite at τ = 1 and is refused on a chain starting there. SiT's sampling_method "Heun" is not implemented.
From τ = 1 the prior is x_f = n exactly; on a model whose noisiest level is finite the VP prior is seen in x_f
(as flow_euler). Capabilities: GRAD_IN_EPS (a classifier term enters through ε, ADM Alg. 2).
"""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from guidance.engine import GRAD_IN_EPS
from guidance.errors import GuidanceError
from guidance.sampling.base import Sampler

DIFFUSION_FORMS = {  # w(τ) / c on the linear path, SiT's t = 1 − τ
    "constant": lambda tau: 1.0,
    "sigma": lambda tau: tau,
    "linear": lambda tau: tau,
    "sbdm": lambda tau: math.inf if tau >= 1 else tau / (1 - tau),
    "decreasing": None,  # (c cos(π t) + 1)²/4: c inside the square
    "increasing-decreasing": lambda tau: math.sin(math.pi * (1 - tau)) ** 2,
}
LAST_STEPS = ("mean", "euler", "tweedie", None)


class FlowSDESampler(Sampler):
    name = "flow_sde"
    capabilities = frozenset({GRAD_IN_EPS})

    def __init__(self, diffusion, respacing="flow250", clip_denoised: bool = False, diffusion_form: str = "sigma",
                 diffusion_norm: float = 1.0, last_step: str | None = "mean", sampling_method: str = "euler",
                 shift: float = 1.0, t_min: float | None = 0.04, shift_t_min: bool = False, **grid):
        super().__init__(diffusion, respacing, clip_denoised, shift=shift, t_min=t_min, shift_t_min=shift_t_min, **grid)
        self.shift, self.t_min, self.shift_t_min = float(shift), t_min, bool(shift_t_min)
        self.diffusion_form, self.diffusion_norm = str(diffusion_form).lower(), float(diffusion_norm)
        self.last_step = None if last_step is None or str(last_step).lower() == "none" else str(last_step).lower()
        if self.diffusion_form not in DIFFUSION_FORMS or self.diffusion_norm < 0:
            raise GuidanceError(f"flow_sde: diffusion_form must be one of {', '.join(DIFFUSION_FORMS)} and "
                                f"diffusion_norm >= 0, got {diffusion_form!r}, {diffusion_norm}")
        if self.last_step not in LAST_STEPS:
            raise GuidanceError(f"flow_sde: last_step must be mean, euler, tweedie or null, got {last_step!r}")
        if str(sampling_method).lower() != "euler":
            raise GuidanceError(f"flow_sde runs SiT's Euler–Maruyama only (sampling_method=euler), got "
                                f"{sampling_method!r}")
        if not math.isfinite(self.w(self.step_at(0).tau)):
            raise GuidanceError(f"flow_sde: diffusion_form={self.diffusion_form} is infinite at τ = 1 (σ = ∞), where "
                                "this chain starts: use diffusion_form=sigma, or an edm grid (sampler.respacing=edmN)")
        parts = [self.diffusion_form if self.diffusion_form != "sigma" else "",
                 f"norm={self.diffusion_norm:g}" if self.diffusion_norm != 1 else "",
                 f"last={self.last_step}" if self.last_step != "mean" else ""]
        self.label = " ".join([self.name, *filter(None, parts)])

    def w(self, tau: float) -> float:
        """The diffusion coefficient w(τ) (SiT's diffusion_fn; the noise is sqrt(2 w dt))."""
        if self.diffusion_form == "decreasing":
            return 0.25 * (self.diffusion_norm * math.cos(math.pi * (1 - tau)) + 1) ** 2
        return self.diffusion_norm * DIFFUSION_FORMS[self.diffusion_form](tau)

    def info(self):
        return {**super().info(), "shift": self.shift, "t_min": self.t_min, "shift_t_min": self.shift_t_min,
                "diffusion_form": self.diffusion_form, "diffusion_norm": self.diffusion_norm,
                "last_step": self.last_step}

    def run(self, denoiser, x, y, rng, progress):
        x_f = self.step_at(0).to_flow(x)  # the prior n in x_f (itself at τ = 1)
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            step = self.step_at(i)
            tau, last = step.tau, i + 1 == self.steps
            dt = tau - (self.step_at(i + 1).tau if not last else 0.0)
            x_vp = step.from_flow(x_f)
            pred = denoiser(x_vp, y, step, clip=self.clip_denoised).eps_form(x_vp, step)
            if last and self.last_step == "tweedie":
                return pred.x0
            velocity = pred.x0 - pred.eps  # SiT's v = dx/dt
            if last and self.last_step == "euler":
                return x_f + dt * velocity
            w = self.w(tau)
            x_f = x_f + dt * (velocity - (w / tau) * pred.eps)  # v + w s, s = −ε/τ
            if not last or self.last_step is None:
                x_f = x_f + math.sqrt(2 * w * dt) * rng.randn(x.shape[1:]).to(x.dtype)
        return x_f
