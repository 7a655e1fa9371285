"""Which ORIGINAL timesteps a sampler's chain visits.

Every sampler takes a `respacing` spec: ADM's ("250", "10,10,10", "ddim25"; guidance.diffusion.respace) or
"edmN", EDM's ρ-grid of N noise levels (Karras et al. 2022, eq. 5):
    σ_i = (σ_max^(1/ρ) + i/(N−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,  i = 0..N−1,
mapped onto the VP model's trained timesteps, σ_t = sqrt((1 − ᾱ_t)/ᾱ_t). As EDM's sampler does, σ_min and σ_max
are first clamped to the model's own range [σ(0), σ(T−1)], then the grid is built.

A σ between two trained timesteps is SNAPPED to the trained timestep nearest in σ (EDM's `round_sigma` for ADM
models, iDDPMPrecond), and the sampler then uses that timestep's own σ in its update: the network always sees a
valid integer timestep whose noise level is exactly the one the solver assumes. Grid points that snap to the same
timestep are merged, so an edmN chain may have fewer than N steps (sample_info records the real count); a grid
that keeps fewer than 80% of its N levels (edm5000 on 1000 trained timesteps keeps 931) is refused.
"""

from __future__ import annotations

import numpy as np

from guidance.diffusion.respace import space_timesteps
from guidance.errors import GuidanceError


def sigmas_of(alphas_cumprod) -> np.ndarray:
    ab = np.asarray(alphas_cumprod, dtype=np.float64)
    return np.sqrt((1.0 - ab) / ab)


def snap_to_timestep(sigma: float, sigmas: np.ndarray) -> int:
    """Index of the trained σ nearest to `sigma` (sigmas increasing with the timestep), as EDM's round_sigma."""
    return int(np.argmin(np.abs(sigmas - float(sigma))))


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
    """EDM's ρ-grid (Karras et al. 2022, eq. 5), decreasing, without the final σ = 0."""
    if n < 1:
        raise GuidanceError(f"an edm grid needs at least 1 step, got {n}")
    if not (0 < sigma_min < sigma_max) or rho <= 0:
        raise GuidanceError(f"edm grid needs 0 < sigma_min < sigma_max and rho > 0, got sigma_min={sigma_min}, "
                            f"sigma_max={sigma_max}, rho={rho}")
    i = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    return (sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


MIN_KEPT = 0.8  # an edmN grid must keep this share of its N levels after merging onto trained timesteps


def kept_timesteps(alphas_cumprod, spec: str | int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0) -> list[int]:
    """Sorted original timesteps kept by `spec` on a schedule with these ᾱ (one per trained timestep)."""
    spec = str(spec).strip()
    T = len(alphas_cumprod)
    if not spec.startswith("edm"):
        return sorted(space_timesteps(T, spec))
    try:
        n = int(spec[len("edm"):])
    except ValueError:
        raise GuidanceError(f"bad grid {spec!r}: 'edm' must be followed by a step count, e.g. 'edm18'") from None
    sigmas = sigmas_of(alphas_cumprod)
    if not (0 < sigma_min < sigma_max):
        raise GuidanceError(f"edm grid needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    lo, hi = max(sigma_min, float(sigmas[0])), min(sigma_max, float(sigmas[-1]))  # EDM: clamp to the model's range
    if lo >= hi:
        raise GuidanceError(f"edm grid: [sigma_min, sigma_max] = [{sigma_min}, {sigma_max}] misses the model's σ range "
                            f"[{sigmas[0]:.4g}, {sigmas[-1]:.4g}]")
    kept = sorted({snap_to_timestep(s, sigmas) for s in edm_sigmas(n, lo, hi, rho)})
    if len(kept) < MIN_KEPT * n:  # the grid is finer than the trained levels: most steps would merge silently
        raise GuidanceError(f"edm{n} asks for more noise levels than the model has near them: it merges to "
                            f"{len(kept)} distinct trained timesteps (of {T}); ask for at most edm{len(kept)}")
    return kept
