"""Timestep respacing (Improved DDPM sec. 4, ADM): sample with a subset of the training timesteps.

Keeping steps t_1 < ... < t_K of a T-step schedule and setting β_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} gives a K-step
process whose marginals q(x_{t_i} | x_0) are exactly those of the original, so the trained network applies
unchanged, as long as it is fed the original index t_i (timestep_map).
"""

from __future__ import annotations

import numpy as np

from guidance.errors import GuidanceError


def space_timesteps(num_timesteps: int, spec: str | int) -> set[int]:
    """The original timesteps (0..num_timesteps-1) kept by an ADM respacing spec, exactly as guided-diffusion's
    `respace.space_timesteps` keeps them:

    - "ddimN": the smallest stride s in 1..T-1 with len(range(0, T, s)) == N; keep range(0, T, s). (ADM tries
      strides below T only, so "ddim1" has no stride and is an error, as there.)
    - "K1,K2,...": split 0..T-1 into len(K) sections of T // len(K) steps, the first T % len(K) one longer; in a
      section of `size` steps starting at `start`, keep start + round(c) for c = 0, f, f + f, ... (K_i values,
      f = (size − 1)/(K_i − 1), 1 for K_i = 1). ADM accumulates c by repeated float addition and rounds with
      Python's round (half to even); both change which step is kept for some counts (e.g. "21"), so we do
      the same. "250" is the one-section case.
    """
    spec = str(spec).strip()
    fix = "use e.g. '250', '10,10,10' or 'ddim25'"
    if spec.startswith("ddim"):
        try:
            want = int(spec[len("ddim"):])
        except ValueError:
            raise GuidanceError(f"bad timestep respacing {spec!r}: 'ddim' must be followed by a step count; {fix}") from None
        for stride in range(1, num_timesteps):
            steps = range(0, num_timesteps, stride)
            if len(steps) == want:
                return set(steps)
        if not 1 <= want <= num_timesteps:  # no count of steps helps here: the plain count fails as well
            raise GuidanceError(f"bad timestep respacing {spec!r}: the model has {num_timesteps} timesteps, so 'ddimN' "
                                f"takes 1 <= N <= {num_timesteps}")
        raise GuidanceError(f"cannot take exactly {want} evenly strided steps from {num_timesteps}; pick a count N for "
                            f"which some stride s has ceil({num_timesteps}/s) = N, or use the plain count '{want}'")
    try:
        counts = [int(c) for c in spec.split(",")]
    except ValueError:
        raise GuidanceError(f"bad timestep respacing {spec!r}: expected comma-separated step counts; {fix}") from None
    if any(c < 1 for c in counts):
        raise GuidanceError(f"bad timestep respacing {spec!r}: every section needs at least one step; {fix}")
    if len(counts) > num_timesteps:
        raise GuidanceError(f"bad timestep respacing {spec!r}: more sections than the {num_timesteps} timesteps")

    base, extra = divmod(num_timesteps, len(counts))  # the first `extra` sections get one more step
    kept: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = base + (1 if i < extra else 0)
        if count > size:
            raise GuidanceError(f"bad timestep respacing {spec!r}: section {i} has {size} timesteps, cannot keep {count}")
        stride = 1 if count == 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride  # accumulated, not j * stride: ADM's float rounding decides ties
        start += size
    return set(kept)


def respace_betas(betas: np.ndarray, use_timesteps) -> tuple[np.ndarray, list[int]]:
    """Betas of the process that keeps only `use_timesteps`, and the kept original indices (sorted).

    β_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i−1}} (with ᾱ before the first kept step = 1) makes the new ᾱ_i equal the old ᾱ_{t_i}.
    """
    betas = np.asarray(betas, dtype=np.float64)
    keep = sorted(int(t) for t in use_timesteps)
    if not keep or keep[0] < 0 or keep[-1] >= len(betas):
        raise GuidanceError(f"kept timesteps must be a non-empty subset of 0..{len(betas) - 1}")
    alphas_cumprod = np.cumprod(1.0 - betas)[keep]
    prev = np.append(1.0, alphas_cumprod[:-1])
    return 1.0 - alphas_cumprod / prev, keep
