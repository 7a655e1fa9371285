"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Alg. 2: multistep, data prediction) on the VP model.

With λ = −log σ (σ_t = sqrt((1 − ᾱ_t)/ᾱ_t), the scaled variable x̃ = x_t/sqrt(ᾱ_t)) and h_i = λ_{i+1} − λ_i:
    x̃_{i+1} = (σ_{i+1}/σ_i) x̃_i − (e^{−h_i} − 1) D_i
    D_i = x̂0_i on the first step,  (1 + 1/(2 r_i)) x̂0_i − 1/(2 r_i) x̂0_{i−1} after it,  r_i = h_{i−1}/h_i.
The last step goes to σ = 0 (h = ∞) and is first order: x_0 = x̂0 (as k-diffusion's dpmpp_2m). One denoiser
evaluation per step; a classifier term enters through ε (ADM Alg. 2). Capabilities: GRAD_IN_EPS (a multistep
update of x̂0's, with no re-noising ε of its own).
"""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from guidance.engine import GRAD_IN_EPS
from guidance.sampling.base import Sampler


class DPMSolverPP2MSampler(Sampler):
    name = label = "dpmpp_2m"
    capabilities = frozenset({GRAD_IN_EPS})

    def __init__(self, diffusion, respacing="ddim20", clip_denoised: bool = True, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        self.check_finite_start()

    def run(self, denoiser, x, y, rng, progress):
        x = x * math.sqrt(1.0 + self.step_at(0).sigma ** 2)  # VP prior N(0, I) in the scaled variable
        prev_x0 = h_prev = None
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            step = self.step_at(i)
            x_vp = x / math.sqrt(1.0 + step.sigma**2)
            x0 = denoiser(x_vp, y, step, clip=self.clip_denoised).eps_form(x_vp, step).x0
            if i == self.steps - 1:
                return x0
            sigma_next = self.step_at(i + 1).sigma
            h = math.log(step.sigma / sigma_next)
            d = x0 if prev_x0 is None else (1 + 1 / (2 * h_prev / h)) * x0 - 1 / (2 * h_prev / h) * prev_x0
            x = (sigma_next / step.sigma) * x - math.expm1(-h) * d
            prev_x0, h_prev = x0, h
        return x
