"""Gaussian diffusion math: noise schedules, q/p of DDPM, training losses, timestep respacing."""

from __future__ import annotations

from guidance.diffusion.gaussian import LOSS_TYPES, MODEL_VAR_TYPES, GaussianDiffusion
from guidance.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from guidance.diffusion.respace import respace_betas, space_timesteps
from guidance.diffusion.schedules import SCHEDULES, get_named_beta_schedule

__all__ = [
    "GaussianDiffusion", "create_diffusion", "get_named_beta_schedule", "space_timesteps", "respace_betas",
    "normal_kl", "discretized_gaussian_log_likelihood", "mean_flat", "SCHEDULES", "MODEL_VAR_TYPES", "LOSS_TYPES",
]


def create_diffusion(steps: int = 1000, noise_schedule: str = "linear", model_var_type: str = "fixed_small",
                     loss_type: str = "mse", timestep_respacing: str | int = "") -> GaussianDiffusion:
    """The diffusion a config describes (`conf/diffusion/*.yaml` instantiate this).

    `timestep_respacing` "" keeps all `steps`; otherwise an ADM spec ("250", "10,10,10", "ddim25") selects the
    kept steps and the returned diffusion maps its indices back to the original ones (timestep_map).
    """
    betas = get_named_beta_schedule(noise_schedule, steps)
    timestep_map = None
    if timestep_respacing not in ("", None):
        betas, timestep_map = respace_betas(betas, space_timesteps(steps, timestep_respacing))
    return GaussianDiffusion(betas, model_var_type=model_var_type, loss_type=loss_type, timestep_map=timestep_map)
