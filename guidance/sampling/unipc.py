"""UniPC (Zhao et al. 2023, "UniPC", Alg. 2-3: UniP-p predictor + UniC corrector, B(h) = e^{h} − 1 ("bh2"), data
prediction), in diffusers' UniPCMultistepScheduler form, on x̃ = x̂0 + σ ε with λ = −log σ.

Step i, with x̂0 history m_i, m_{i−1}, ... at λ_i, λ_{i−1}, ... and h = λ_{i+1} − λ_i, hh = −h:
    r_k = (λ_{i−k} − λ_i)/h, D_k = (m_{i−k} − m_i)/r_k,  φ_1 = e^{hh} − 1,  B = e^{hh} − 1,
    b_j = j! g_j / B, g_1 = φ_1/hh − 1, g_{j+1} = g_j/hh − 1/(j+1)!,  R_{jk} = r_k^{j−1} (r_p = 1 last)
    predictor (UniP-p, eq. 8):  x̃_{i+1} = (σ_{i+1}/σ_i) x̃_i − φ_1 m_i − B Σ_k ρ^p_k D_k,
        ρ^p = R[:-1,:-1]^{-1} b[:-1] (ρ^p = ½ for p = 2)
    corrector (UniC-p, eq. 10): once m_{i+1} is evaluated at the predicted x̃_{i+1}, x̃_{i+1} is replaced by the same
        update from x̃_i with ρ^c = R^{-1} b (ρ^c = ½ for p = 1) and a last term ρ^c_p (m_{i+1} − m_i); m_{i+1} is
        NOT re-evaluated, so the cost stays one evaluation per step.
Order p = min(order, i + 1, n − i) (warm-up, and diffusers' lower_order_final), so the last step (to σ = 0) is first
order and returns x̂0 of the last evaluation. Capabilities (sigma.py): classifier term in ε form; deterministic;
no re-noising with a given ε.
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from guidance.errors import GuidanceError
from guidance.sampling.sigma import SigmaSampler


def unipc_coefficients(rks: list[float], h: float, p: int, corrector: bool) -> tuple[list[float], float, float]:
    """(ρ, φ_1, B) of one UniP (corrector False) or UniC update of order p; rks: r_k of the older steps."""
    hh = -h
    phi_1 = math.expm1(hh)
    B = math.expm1(hh)  # bh2
    g, fact, b = phi_1 / hh - 1, 1, []
    for j in range(1, p + 1):
        b.append(g * fact / B)
        fact *= j + 1
        g = g / hh - 1 / fact
    R = torch.tensor([[r ** (j - 1) for r in rks + [1.0]] for j in range(1, p + 1)], dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    if corrector:
        rho = [0.5] if p == 1 else torch.linalg.solve(R, b).tolist()
    else:
        rho = [] if p == 1 else [0.5] if p == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
    return rho, phi_1, B


class UniPCSampler(SigmaSampler):
    name = "unipc"

    def __init__(self, diffusion, respacing="edm20", clip_denoised: bool = True, order: int = 2, **grid):
        super().__init__(diffusion, respacing, clip_denoised, **grid)
        if int(order) not in (1, 2, 3):
            raise GuidanceError(f"{self.name}: order must be 1, 2 or 3 (UniPC-p), got {order}")
        self.order = int(order)
        self.label = f"{self.name} p={self.order}"

    def info(self):
        return {**super().info(), "order": self.order}

    def update(self, x, m, lams, lam_next, p, model_next=None):
        """x̃ at λ_next from x̃ at lams[0] and x̂0 history m (newest first); with model_next, the UniC corrector."""
        h = lam_next - lams[0]
        rks = [(lams[k] - lams[0]) / h for k in range(1, p)]
        D = [(m[k] - m[0]) / rks[k - 1] for k in range(1, p)]
        rho, phi_1, B = unipc_coefficients(rks, h, p, corrector=model_next is not None)
        res = sum((rho[k] * D[k] for k in range(len(D))), torch.zeros_like(x)) if D else 0.0
        if model_next is not None:
            res = res + rho[-1] * (model_next - m[0])
        return math.exp(-h) * x - phi_1 * m[0] - B * res

    def run(self, denoiser, x, y, rng, progress):
        x = self.prior(x)
        m, lams, x_prev, p_prev = [], [], None, 0
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            x0 = self.predict(denoiser, x, y, self.step_at(i)).x0
            if i == self.steps - 1:
                return x0  # first order to σ = 0: x̂0 of the last evaluation (a correction of x̃ would not change it)
            lam = -math.log(self.sigma(i))
            if x_prev is not None:  # UniC: correct x̃_i with the x̂0 just evaluated there
                x = self.update(x_prev, m, lams, lam, p_prev, model_next=x0)
            m, lams = [x0] + m[:self.order - 1], [lam] + lams[:self.order - 1]
            p = min(self.order, i + 1, self.steps - i)
            x_prev, p_prev = x, p
            x = self.update(x, m, lams, -math.log(self.sigma(i + 1)), p)
        return x
