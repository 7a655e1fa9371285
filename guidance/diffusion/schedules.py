"""Noise schedules β_1..β_T as float64 numpy arrays (index 0 holds β_1, the first forward step)."""

from __future__ import annotations

import math

import numpy as np

from guidance.errors import GuidanceError

SCHEDULES = ("linear", "cosine")


def linear_beta_schedule(num_timesteps: int) -> np.ndarray:
    """DDPM's linear schedule (β from 1e-4 to 0.02 at T = 1000), rescaled by 1000/T as in ADM.

    The rescaling keeps ᾱ_T roughly the same for any T, so a short schedule still ends near pure noise.
    """
    scale = 1000.0 / num_timesteps
    return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def cosine_alpha_bar(t: np.ndarray | float, s: float = 0.008) -> np.ndarray:
    """ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t + s)/(1 + s)) · π/2), t in [0, 1] (Improved DDPM eq. 17)."""
    f = lambda u: np.cos((np.asarray(u, dtype=np.float64) + s) / (1.0 + s) * math.pi / 2) ** 2
    return f(t) / f(0.0)


def cosine_beta_schedule(num_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """β_t = 1 − ᾱ(t/T)/ᾱ((t−1)/T), clipped at 0.999 (Improved DDPM sec. 3.2).

    The clip stops the singularity at t = T (ᾱ → 0) from producing β = 1.
    """
    grid = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(grid)
    betas = 1.0 - alpha_bar[1:] / alpha_bar[:-1]
    return np.minimum(betas, max_beta)


def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """The β schedule called `name` ("linear" or "cosine") with `num_timesteps` steps, float64."""
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps < 1:
        raise GuidanceError(f"diffusion steps must be a positive integer, got {num_timesteps!r}; set diffusion.steps=1000")
    if name == "linear":
        if num_timesteps <= 20:  # β_T = 0.02 · 1000/T reaches 1 at T = 20, which would make ᾱ_T = 0
            raise GuidanceError(f"the linear schedule needs at least 21 steps, got {num_timesteps}; "
                                "raise diffusion.steps (or respace a longer schedule) or use noise_schedule=cosine")
        return linear_beta_schedule(int(num_timesteps))
    if name == "cosine":
        return cosine_beta_schedule(int(num_timesteps))
    raise GuidanceError(f"unknown noise schedule {name!r}; use one of {', '.join(SCHEDULES)} (diffusion.noise_schedule)")
