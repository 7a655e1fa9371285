"""Which ORIGINAL timesteps a sampler's chain visits.

Every sampler takes a `respacing` spec: ADM's ("250", "10,10,10", "ddim25"; guidance.diffusion.respace) or
"edmN", EDM's ρ-grid of N noise levels (Karras et al. 2022, eq. 5):
    σ_i = (σ_max^(1/ρ) + i/(N−1) (σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ,  i = 0..N−1,
mapped onto the VP model's trained timesteps, σ_t = sqrt((1 − ᾱ_t)/ᾱ_t). As EDM's sampler does, σ_min and σ_max
are first clamped to the model's own range [σ(0), σ(T−1)], then the grid is built.

"flowN": N flow times τ_i = linspace(1, t_min, N) (t_min default 1/N: τ_i = 1 − i/N, the rectified-flow Euler
grid), then SD3's shift τ' = s τ / (1 + (s − 1) τ) (Esser et al. 2024, eq. 23), as σ_i = τ_i / (1 − τ_i) (σ = ∞ at
τ = 1: pure noise, a flow model's start). diffusers' FlowMatchEulerDiscreteScheduler (set_timesteps) runs its
linspace from its own shifted training range, 1 to shift(1/T), and shifts that grid again: t_min = 1/T with
`shift_t_min` (the end point shifted before the linspace) is its grid exactly (T = num_train_timesteps, 1000);
its Flux-style dynamic shifting (set_timesteps(mu=μ), exponential) is shift = e^μ with t_min = 1/T, unshifted.

On a model with CONTINUOUS noise levels (guidance.engine.model.ContinuousLevels) an edmN or flowN grid is used
exactly (σ_min/σ_max clamped to the model's range, as EDM); ADM's specs name trained timesteps and are refused.

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
    """Index of the trained σ nearest to `sigma` (sigmas increasing with the timestep), as EDM's round_sigma;
    σ = ∞ (a flow grid's τ = 1) is the noisiest trained level."""
    if np.isinf(sigma):
        return len(sigmas) - 1
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


def shift_time(tau, shift: float):
    """SD3's time shift τ' = s τ / (1 + (s − 1) τ) (Esser et al. 2024, eq. 23); τ = 1 stays exactly 1."""
    tau = np.asarray(tau, dtype=np.float64)
    out = np.where(tau == 1.0, 1.0, shift * tau / (1 + (shift - 1) * tau))
    return float(out) if out.ndim == 0 else out


def flow_sigmas(n: int, shift: float = 1.0, t_min: float | None = None, shift_t_min: bool = False) -> np.ndarray:
    """The flowN grid as σ, decreasing (inf first when it starts at τ = 1), without the final σ = 0.
    shift_t_min: the linspace ends at shift(t_min) (diffusers' grid with t_min = 1/num_train_timesteps)."""
    if n < 1:
        raise GuidanceError(f"a flow grid needs at least 1 step, got {n}")
    t_min = 1.0 / n if t_min is None else float(t_min)
    if not (0 < t_min <= 1) or shift <= 0:
        raise GuidanceError(f"flow grid needs 0 < t_min <= 1 and shift > 0, got t_min={t_min}, shift={shift}")
    tau = shift_time(np.linspace(1.0, shift_time(t_min, shift) if shift_t_min else t_min, n, dtype=np.float64), shift)
    with np.errstate(divide="ignore"):
        return np.where(tau >= 1.0, np.inf, tau / np.maximum(1.0 - tau, 1e-300))


def grid_count(spec: str, prefix: str) -> int:
    try:
        return int(spec[len(prefix):])
    except ValueError:
        raise GuidanceError(f"bad grid {spec!r}: {prefix!r} must be followed by a step count, e.g. '{prefix}18'") from None


def continuous_sigmas(spec, levels, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                      shift: float = 1.0, t_min: float | None = None, shift_t_min: bool = False) -> np.ndarray:
    """The chain's σ, decreasing, on a model with continuous levels (edmN or flowN, used exactly)."""
    spec = "" if spec is None else str(spec).strip()
    if spec.startswith("edm"):
        lo, hi = max(sigma_min, levels.sigma_min), min(sigma_max, levels.sigma_max)
        if not (0 < lo < hi < np.inf):
            raise GuidanceError(f"edm grid: [sigma_min, sigma_max] = [{sigma_min}, {sigma_max}] misses the model's "
                                f"σ range [{levels.sigma_min:g}, {levels.sigma_max:g}]")
        return edm_sigmas(grid_count(spec, "edm"), lo, hi, rho)
    if spec.startswith("flow"):
        sigmas = flow_sigmas(grid_count(spec, "flow"), shift, t_min, shift_t_min)
        outside = (sigmas > levels.sigma_max) | (sigmas < levels.sigma_min)
        if outside.any():
            raise GuidanceError(f"flow grid {spec!r} reaches σ = {sigmas[outside][0]:g}, outside the model's range "
                                f"[{levels.sigma_min:g}, {levels.sigma_max:g}]; raise t_min or use an edm grid")
        return sigmas
    raise GuidanceError(f"a model with continuous noise levels takes an edmN or flowN grid (sampler.respacing), got "
                        f"{spec!r}: ADM's specs name trained timesteps")


MIN_KEPT = 0.8  # an edmN grid must keep this share of its N levels after merging onto trained timesteps


def kept_timesteps(alphas_cumprod, spec: str | int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0, shift: float = 1.0, t_min: float | None = None,
                   shift_t_min: bool = False) -> list[int]:
    """Sorted original timesteps kept by `spec` on a schedule with these ᾱ (one per trained timestep)."""
    spec = str(spec).strip()
    T = len(alphas_cumprod)
    sigmas = sigmas_of(alphas_cumprod)
    if spec.startswith("flow"):  # σ = ∞ snaps to the noisiest trained level
        n = grid_count(spec, "flow")
        kept = {snap_to_timestep(s, sigmas) for s in flow_sigmas(n, shift, t_min, shift_t_min)}
        return check_kept(sorted(kept), n, T, spec)
    if not spec.startswith("edm"):
        return sorted(space_timesteps(T, spec))
    n = grid_count(spec, "edm")
    if not (0 < sigma_min < sigma_max):
        raise GuidanceError(f"edm grid needs 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    lo, hi = max(sigma_min, float(sigmas[0])), min(sigma_max, float(sigmas[-1]))  # EDM: clamp to the model's range
    if lo >= hi:
        raise GuidanceError(f"edm grid: [sigma_min, sigma_max] = [{sigma_min}, {sigma_max}] misses the model's σ range "
                            f"[{sigmas[0]:.4g}, {sigmas[-1]:.4g}]")
    return check_kept(sorted({snap_to_timestep(s, sigmas) for s in edm_sigmas(n, lo, hi, rho)}), n, T, spec)


def check_kept(kept: list[int], n: int, T: int, spec: str) -> list[int]:
    if len(kept) < MIN_KEPT * n:  # the grid is finer than the trained levels: most steps would merge silently
        prefix = spec.rstrip("0123456789")
        raise GuidanceError(f"{spec} asks for more noise levels than the model has near them: it merges to "
                            f"{len(kept)} distinct trained timesteps (of {T}); ask for at most {prefix}{len(kept)}")
    return kept
