"""DEIS (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator", sec. 4, ρAB-DEIS:
the multistep exponential integrator in ρ = σ with ε extrapolated by a polynomial in log ρ, diffusers'
DEISMultistepScheduler "logrho") on x̃ = x̂0 + σ ε, where dx̃/dσ = ε exactly (EDM eq. 3):
    x̃_{i+1} = x̃_i + Σ_{k<p} c_k ε_{i−k},  c_k = ∫_{σ_i}^{σ_{i+1}} ℓ_k(log ρ) dρ,
ℓ_k the Lagrange basis on the nodes log σ_i, ..., log σ_{i−p+1}. With u = log ρ the integrand is e^u ℓ_k(u), whose
antiderivative is e^u Σ_j (−1)^j ℓ_k^{(j)}(u): closed form, as diffusers' ind_fn. Order p = min(order, i + 1, n − i)
(warm-up and a lower order at the end), so the last step (to σ = 0, log 0 = −∞) is Euler and returns x̂0;
diffusers lowers the end only below 15 steps. Capabilities (sigma.py): classifier term in ε form; deterministic; no
re-noising with a given ε.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import Polynomial
from tqdm.auto import tqdm

from guidance.errors import GuidanceError
from guidance.sampling.sigma import SigmaSampler


def deis_coefficients(sigmas: list[float], sigma_next: float) -> list[float]:
    """c_k = ∫_{σ_0}^{σ_next} ℓ_k(log ρ) dρ for the nodes log σ_0, log σ_1, ... (newest first)."""
    u = np.log(np.asarray(sigmas, dtype=np.float64))
    a, b = math.log(sigmas[0]), math.log(sigma_next)
    out = []
    for k in range(len(u)):
        others = np.delete(u, k)
        ell = Polynomial.fromroots(others) if len(others) else Polynomial([1.0])
        ell = ell / float(np.prod(u[k] - others))  # ℓ_k(u): 1 at u_k, 0 at the other nodes
        anti = lambda v: math.exp(v) * sum((-1) ** j * ell.deriv(j)(v) for j in range(len(u)))
        out.append(anti(b) - anti(a))
    return out


class DEISSampler(SigmaSampler):
    name = "deis"

    def __init__(self, diffusion, respacing="edm20", clip_denoised: bool = True, order: int = 3, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        if int(order) not in (1, 2, 3):
            raise GuidanceError(f"{self.name}: order must be 1, 2 or 3 (ρAB-DEIS), got {order}")
        self.order = int(order)
        self.label = f"{self.name} p={self.order}"

    def info(self):
        return {**super().info(), "order": self.order}

    def run(self, denoiser, x, y, rng, progress):
        x = self.prior(x)
        eps, sigmas = [], []  # newest first
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            pred = self.predict(denoiser, x, y, self.step_at(i))
            if i == self.steps - 1:
                return pred.x0  # Euler to σ = 0
            eps, sigmas = [pred.eps] + eps[:self.order - 1], [self.sigma(i)] + sigmas[:self.order - 1]
            p = min(self.order, i + 1, self.steps - i)
            c = deis_coefficients(sigmas[:p], self.sigma(i + 1))
            x = x + sum(ck * e for ck, e in zip(c, eps))
        return x
