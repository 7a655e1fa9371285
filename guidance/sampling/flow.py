"""Euler on the flow ODE: the sampler of rectified-flow / flow-matching models (diffusers'
FlowMatchEulerDiscreteScheduler, SiT's ODE with Euler steps), on every model through the engine's common view.

The chain runs on the flow variable x_f = (1 − τ) x_0 + τ n, τ = σ/(1 + σ) (guidance.engine.prediction), along
dx_f/dτ = u = ε − x̂0, the velocity a flow model predicts (Liu et al. 2023; Lipman et al. 2023):
    x_f(τ_{i+1}) = x_f(τ_i) + (τ_{i+1} − τ_i) u_i,      τ_0 > τ_1 > ... > τ_n = 0,
over a flowN grid (τ_i = linspace(1, t_min, N) with SD3's shift; grid.py; t_min = 0.001 with shift_t_min is
diffusers' grid exactly, tests/test_reference_samplers.py) by default, from the prior x_f = n at
τ_0 = 1 (pure noise: ADM's VP prior x_T ~ N(0, I) is the same n there; at τ_0 < 1, or on a discrete model whose
noisiest level is finite, the VP prior is seen in x_f). At τ = 1 the flow model's t = 1 is evaluated exactly,
as the reference schedulers do; the σ-samplers and DDPM/DDIM cannot start there (x̃ is infinite).
Euler in τ and Euler in σ (sampler=euler) are different discretisations of the same ODE.
Capabilities: GRAD_IN_EPS (a classifier term enters through ε, ADM Alg. 2, then u = ε' − x̂0').
"""

from __future__ import annotations

from tqdm.auto import tqdm

from guidance.engine import GRAD_IN_EPS
from guidance.sampling.base import Sampler


class FlowEulerSampler(Sampler):
    name = label = "flow_euler"
    capabilities = frozenset({GRAD_IN_EPS})

    def __init__(self, diffusion, respacing="flow20", clip_denoised: bool = False, shift: float = 1.0,
                 t_min: float | None = None, shift_t_min: bool = False, **grid):
        super().__init__(diffusion, respacing, clip_denoised, shift=shift, t_min=t_min, shift_t_min=shift_t_min, **grid)
        self.shift, self.t_min, self.shift_t_min = float(shift), t_min, bool(shift_t_min)

    def info(self):
        return {**super().info(), "shift": self.shift, "t_min": self.t_min, "shift_t_min": self.shift_t_min}

    def run(self, denoiser, x, y, rng, progress):
        x_f = self.step_at(0).to_flow(x)  # the prior n in x_f (itself at τ = 1)
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            step = self.step_at(i)
            tau_next = self.step_at(i + 1).tau if i + 1 < self.steps else 0.0
            x_vp = step.from_flow(x_f)
            pred = denoiser(x_vp, y, step, clip=self.clip_denoised).eps_form(x_vp, step)
            x_f = x_f + (tau_next - step.tau) * (pred.eps - pred.x0)
        return x_f  # at τ = 0 the flow variable is x_0 itself
