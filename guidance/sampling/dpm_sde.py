"""DPM-Solver++(2M) SDE and (3M) SDE (Lu et al. 2022, "DPM-Solver++", sec. 5 and App. B: the SDE solvers in data
prediction; the multistep forms of k-diffusion's `sample_dpmpp_2m_sde` (midpoint) and `sample_dpmpp_3m_sde`).

λ = −log σ on x̃ = x̂0 + σ ε, h = λ_{i+1} − λ_i, H = (1 + η) h; D_i = x̂0 at step i, r_k = h_{i−k}/h:
    x̃_{i+1} = (σ_{i+1}/σ_i) e^{−η h} x̃_i + (1 − e^{−H}) D_i + [multistep correction] + σ_{i+1} sqrt(1 − e^{−2ηh}) s_noise z
    2M (midpoint): + ½ (1 − e^{−H}) (D_i − D_{i−1}) / r_0
    3M: + φ_2 d1 − φ_3 d2, φ_2 = (e^{−H} − 1)/H + 1, φ_3 = φ_2/H − ½, d1_0 = (D_i − D_{i−1})/r_0,
        d1_1 = (D_{i−1} − D_{i−2})/r_1, d1 = d1_0 + (d1_0 − d1_1) r_0/(r_0 + r_1), d2 = (d1_0 − d1_1)/(r_0 + r_1)
        (its second step uses φ_2 (D_i − D_{i−1})/r_0, the first none). η = 0 gives the ODE solvers (2M: dpmpp_2m).
The last step (to σ = 0) returns x̂0. One evaluation per step. diffusers' sde-dpmsolver++ with solver_order=3 has
+(… − ½) where the φ_3 above has −(… − ½): its D2 coefficient is off by exactly −D2 (O(1) as h -> 0), so the peer
for 3M SDE is k-diffusion.
Capabilities (sigma.py): classifier term in ε form; no re-noising with a given ε; one noise draw per step but the
last when η > 0.
"""

from __future__ import annotations

import math

from tqdm.auto import tqdm

from guidance.sampling.sigma import StochasticSigmaSampler


class DPMSolverPP2MSDESampler(StochasticSigmaSampler):
    name = "dpmpp_2m_sde"
    order = 2

    def correction(self, D, hs, H):
        """The multistep term from the x̂0 history D (newest first) and step sizes hs (current first)."""
        if len(D) < 2:
            return 0.0
        return 0.5 * -math.expm1(-H) * (D[0] - D[1]) * (hs[0] / hs[1])

    def run(self, denoiser, x, y, rng, progress):
        x = self.prior(x)
        D, hs = [], []  # x̂0 and h of the previous steps, newest first
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            sigma, sigma_next = self.sigma(i), self.sigma(i + 1)
            D = [self.predict(denoiser, x, y, self.step_at(i)).x0] + D[:self.order - 1]
            if sigma_next == 0:
                return D[0]
            h = math.log(sigma / sigma_next)
            hs = [h] + hs[:self.order - 1]
            H = (1 + self.eta) * h
            x = (sigma_next / sigma) * math.exp(-self.eta * h) * x - math.expm1(-H) * D[0] + self.correction(D, hs, H)
            if self.eta > 0:
                x = x + sigma_next * math.sqrt(-math.expm1(-2 * self.eta * h)) * self.s_noise * self.noise(rng, x)
        return x


class DPMSolverPP3MSDESampler(DPMSolverPP2MSDESampler):
    name = "dpmpp_3m_sde"
    order = 3

    def correction(self, D, hs, H):
        if len(D) < 2:
            return 0.0
        phi_2 = math.expm1(-H) / H + 1
        r0 = hs[1] / hs[0]
        d1_0 = (D[0] - D[1]) / r0
        if len(D) < 3:
            return phi_2 * d1_0
        r1 = hs[2] / hs[0]
        d1_1 = (D[1] - D[2]) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        return phi_2 * d1 - (phi_2 / H - 0.5) * d2
