"""What every sampler shares: the chain's timesteps, the initial noise, the loop; subclasses write `step`.

Samplers never call a network: they ask a guided denoiser (guidance.sampling.denoiser) for the prediction at a
Step and get ε / x̂0 (and a classifier gradient term to apply in their own form). Every sampler starts from
x ~ N(0, I) at its first (noisiest) timestep, ADM's prior. A sampler states what its update does with a
Prediction as `capabilities` (guidance.engine.capabilities); `sample` refuses a strategy that needs one it lacks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from guidance.diffusion import GaussianDiffusion, respace_betas
from guidance.engine import Step, check_capabilities
from guidance.errors import GuidanceError
from guidance.sampling.grid import kept_timesteps, sigmas_of, snap_to_timestep


class Sampler:
    """diffusion: the model's schedule. respacing: which of its timesteps the chain visits ("" / None: all, or as
    given by an already respaced diffusion); ADM specs or "edmN" (sigma_min, sigma_max, rho shape the edm grid)."""

    name = "sampler"
    label = "sampler"  # the report's name for it (subclasses add their parameters)

    def __init__(self, diffusion: GaussianDiffusion, respacing: str | int | None = None, clip_denoised: bool = True,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        self.trained_t = diffusion.timestep_map.numpy()         # timesteps the networks know (for snapping)
        self.trained_alpha_bar = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
        self.trained_sigmas = sigmas_of(self.trained_alpha_bar)
        if respacing not in (None, ""):
            if not np.array_equal(self.trained_t, np.arange(diffusion.num_timesteps)):
                raise GuidanceError("pass the un-respaced diffusion together with sampler.respacing (not both respaced)")
            kept = kept_timesteps(diffusion.alphas_cumprod, respacing, sigma_min, sigma_max, rho)
            betas, kept = respace_betas(diffusion.betas, kept)
            diffusion = GaussianDiffusion(betas, model_var_type=diffusion.model_var_type, loss_type=diffusion.loss_type,
                                          timestep_map=kept)
        self.diffusion = diffusion  # the chain's own (respaced) process: DDPM's posterior and variances
        self.respacing = "" if respacing is None else str(respacing)
        self.clip_denoised = bool(clip_denoised)

    @property
    def capabilities(self) -> frozenset:
        """What this sampler's update does with a Prediction (guidance.engine.capabilities); subclasses state theirs,
        depending on their parameters where those change the form."""
        return frozenset()

    @property
    def steps(self) -> int:
        return self.diffusion.num_timesteps

    def step_at(self, i: int) -> Step:
        """Chain position i (0 = noisiest) as a Step: original t and its ᾱ."""
        j = self.steps - 1 - i  # index into the (respaced) schedule, which runs from low to high noise
        return Step(int(self.diffusion.timestep_map[j]), float(self.diffusion.alphas_cumprod[j]), i, self.steps)

    def snapped_step(self, sigma: float, i: int) -> Step:
        """A trained timestep for a σ off the chain's grid (grid.py: nearest in log σ)."""
        k = snap_to_timestep(sigma, self.trained_sigmas)
        return Step(int(self.trained_t[k]), float(self.trained_alpha_bar[k]), i, self.steps)

    def evaluation_steps(self) -> list[Step]:
        """Every denoiser evaluation of one chain, in order (one per step unless a subclass says otherwise)."""
        return [self.step_at(i) for i in range(self.steps)]

    def info(self) -> dict:
        return {"sampler": self.name, "sampler_label": self.label, "steps": self.steps, "respacing": self.respacing,
                "clip_denoised": self.clip_denoised, "timesteps": [s.t for s in self.evaluation_steps()]}

    def step(self, denoiser, x: torch.Tensor, i: int, y: torch.Tensor, rng) -> torch.Tensor:
        raise NotImplementedError

    def run(self, denoiser, x, y, rng, progress: bool) -> torch.Tensor:
        for i in tqdm(range(self.steps), desc=self.label, disable=not progress, leave=False):
            x = self.step(denoiser, x, i, y, rng)
        return x

    @torch.no_grad()
    def sample(self, denoiser, shape: Sequence[int], y: torch.Tensor, rng, progress: bool = False) -> torch.Tensor:
        """shape = [B, C, H, W]; y = target labels [B]; rng = PerImageRNG (or anything with randn(shape))."""
        self.check_strategy(denoiser)
        x = check_inputs(shape, y, rng)
        denoiser.reset(len(y), rng)
        return self.run(denoiser, x, y, rng, progress)

    def check_strategy(self, denoiser) -> None:
        """Refuse (one line) a strategy that needs a capability this sampler lacks (naming the samplers that offer it
        at their defaults), or whose settings select nothing on this chain. Before any work."""
        needs = getattr(denoiser, "needs", frozenset())  # a GuidedDenoiser's: its strategy's
        if not needs <= self.capabilities:
            check_capabilities(denoiser.guider.name, needs, self.label, self.capabilities, self.offering(needs))
        if hasattr(denoiser, "guider"):  # the strategy's settings against this chain (a window selecting no step)
            denoiser.guider.check_chain(self.evaluation_steps())

    def offering(self, needs: frozenset) -> str:
        """The registered samplers that offer `needs` at their default settings, by label (e.g. "ddim eta=0")."""
        from guidance.sampling import SAMPLERS  # the registry imports this module

        labels = []
        for cls in SAMPLERS.values():
            try:
                other = cls(self.diffusion, respacing=None)  # on this chain's own (respaced) process
            except (GuidanceError, TypeError):  # a sampler that needs more than the schedule: not a hint
                continue
            if needs <= other.capabilities:
                labels.append(other.label)
        return ", ".join(labels)


def check_inputs(shape, y, rng) -> torch.Tensor:
    """Validate the batch and draw the initial noise x_T (first draw of every image's stream)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 2 or shape[0] != len(y) or len(rng) != shape[0]:
        raise GuidanceError(f"sample shape {shape}, {len(y)} labels and {len(rng)} random streams must agree on the "
                            "batch size; pass shape=[B, C, H, W] with one label and one stream per image")
    return rng.randn(shape[1:])
