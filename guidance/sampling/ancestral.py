"""Ancestral samplers in σ (k-diffusion's `sample_euler_ancestral`, `sample_dpmpp_2s_ancestral`).

Each step σ_i -> σ_{i+1} splits into a deterministic step down to σ_down and fresh noise of size σ_up
(sigma.ancestral_split): x̃ <- step(x̃, σ_i -> σ_down) + s_noise σ_up z, no noise on the last step (to σ = 0).
- euler_ancestral: the Euler step x̃ + (σ_down − σ_i) ε. At η = 1 (and any η in [0, 1]) it is DDIM(η) on the same
  timesteps (Song et al. 2021, eq. 12 in σ form).
- dpmpp_2s_ancestral: DPM-Solver++(2S) (Lu et al. 2022, Alg. 1, data prediction, λ = −log σ) for the step down:
  h = λ_down − λ_i, midpoint λ_s = λ_i + r h evaluated at a trained timestep (grid.py snapping, its own σ used),
      x̃_s = (σ_s/σ_i) x̃ − (e^{−r h} − 1) x̂0_i,
      x̃_down = (σ_down/σ_i) x̃ − (e^{−h} − 1) ((1 − 1/(2r)) x̂0_i + 1/(2r) x̂0_s).
  With η = 1, σ_down = σ_{i+1}²/σ_i, so k-diffusion's r = 1/2 midpoint sqrt(σ_i σ_down) IS σ_{i+1}: no snapping and
  the update is theirs exactly. A step whose σ_down is 0 (the last) is one Euler step (x̃ = x̂0_i).
Capabilities (sigma.py): classifier term in ε form; no re-noising with a given ε; one noise draw per step but the last.
"""

from __future__ import annotations

import math
from dataclasses import replace

from tqdm.auto import tqdm

from guidance.engine import Step
from guidance.sampling.sigma import StochasticSigmaSampler, ancestral_split


class EulerAncestralSampler(StochasticSigmaSampler):
    name = "euler_ancestral"

    def run(self, denoiser, x, y, rng, progress):
        x = self.prior(x)
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            sigma, sigma_next = self.sigma(i), self.sigma(i + 1)
            down, up = ancestral_split(sigma, sigma_next, self.eta)
            x = x + (down - sigma) * self.predict(denoiser, x, y, self.step_at(i)).eps
            if sigma_next > 0 and up > 0:
                x = x + self.s_noise * up * self.noise(rng, x)
        return x


class DPMSolverPP2SAncestralSampler(EulerAncestralSampler):
    name = "dpmpp_2s_ancestral"

    def midpoint(self, i: int) -> Step | None:
        """Step i's second evaluation, at the trained σ nearest to sqrt(σ_i σ_down); None when σ_down = 0. It lies in
        [σ_{i+1}, σ_i): σ_{i+1}²/σ_i <= σ_down <= σ_{i+1} puts the target between σ_{i+1} and sqrt(σ_i σ_{i+1}),
        which is nearer σ_{i+1} than σ_i, so 0 < r <= 1."""
        sigma = self.sigma(i)
        down, _ = ancestral_split(sigma, self.sigma(i + 1), self.eta)
        if down == 0:
            return None
        return replace(self.snapped_step(math.sqrt(sigma * down), i), grid_sigma=sigma)

    def evaluation_steps(self):
        out = []
        for i in range(self.steps):
            out.append(self.step_at(i))
            mid = self.midpoint(i)
            if mid is not None:
                out.append(mid)
        return out

    def run(self, denoiser, x, y, rng, progress):
        x = self.prior(x)
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            sigma, sigma_next = self.sigma(i), self.sigma(i + 1)
            down, up = ancestral_split(sigma, sigma_next, self.eta)
            x0 = self.predict(denoiser, x, y, self.step_at(i)).x0
            mid = self.midpoint(i)
            if mid is None:
                x = x0  # Euler to σ_down = 0
            else:
                h = math.log(sigma / down)
                r = math.log(sigma / mid.sigma) / h
                x_mid = (mid.sigma / sigma) * x - math.expm1(-r * h) * x0
                x0_mid = self.predict(denoiser, x_mid, y, mid).x0
                x = (down / sigma) * x - math.expm1(-h) * ((1 - 1 / (2 * r)) * x0 + 1 / (2 * r) * x0_mid)
            if sigma_next > 0 and up > 0:
                x = x + self.s_noise * up * self.noise(rng, x)
        return x
