"""What every sampler shares: the chain's timesteps, the initial noise, the loop; subclasses write `step`.

Samplers never call a network: they ask a guided denoiser (guidance.sampling.denoiser) for the prediction at a
Step and get ε / x̂0 (and a classifier gradient term to apply in their own form), whatever the model's
parameterization (guidance.engine.model). Every sampler starts from x ~ N(0, I) at its first (noisiest) level,
ADM's prior, unless it says otherwise (EDM2's Heun: x̃ = σ_max n; flow Euler / SDE: x_f = n at τ = 1).

Noise levels: a sampler is built on the model's levels, a GaussianDiffusion (trained timesteps: the chain visits a
subset, ADM's respacing or an edm/flow grid snapped to them) or ContinuousLevels (the chain's σ exactly, from an
edmN or flowN grid: guidance.sampling.grid). On continuous levels DDPM's and DDIM's VP chain is the one whose
ᾱ_i = 1/(1 + σ_i²) are the grid's (their updates need a finite σ at every step). A sampler states what its update does with a
Prediction as `capabilities` (guidance.engine.capabilities); `sample` refuses a strategy that needs one it lacks.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from guidance.diffusion import GaussianDiffusion, respace_betas
from guidance.engine import Step, check_capabilities
from guidance.engine.model import is_continuous
from guidance.errors import GuidanceError
from guidance.sampling.grid import continuous_sigmas, kept_timesteps, sigmas_of, snap_to_timestep


class Sampler:
    """diffusion: the model's levels (a GaussianDiffusion or ContinuousLevels). respacing: which levels the chain
    visits ("" / None: every trained timestep, or as given by an already respaced diffusion); ADM specs, "edmN"
    (sigma_min, sigma_max, rho shape the edm grid) or "flowN" (shift, t_min, shift_t_min shape the flow grid)."""

    name = "sampler"
    label = "sampler"  # the report's name for it (subclasses add their parameters)

    def __init__(self, diffusion, respacing: str | int | None = None, clip_denoised: bool = True,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, shift: float = 1.0,
                 t_min: float | None = None, shift_t_min: bool = False):
        self.respacing = "" if respacing is None else str(respacing)
        self.clip_denoised = bool(clip_denoised)
        self.levels = diffusion if is_continuous(diffusion) else None
        if self.levels is not None:  # the grid's σ exactly; DDPM's / DDIM's VP chain built when asked for
            self.chain_sigmas = continuous_sigmas(respacing, diffusion, sigma_min, sigma_max, rho, shift, t_min,
                                                  bool(shift_t_min))
            self._diffusion = None
            return
        self.trained_t = diffusion.timestep_map.numpy()         # timesteps the networks know (for snapping)
        self.trained_alpha_bar = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
        self.trained_sigmas = sigmas_of(self.trained_alpha_bar)
        if respacing not in (None, ""):
            if not np.array_equal(self.trained_t, np.arange(diffusion.num_timesteps)):
                raise GuidanceError("pass the un-respaced diffusion together with sampler.respacing (not both respaced)")
            kept = kept_timesteps(diffusion.alphas_cumprod, respacing, sigma_min, sigma_max, rho, shift, t_min,
                                  bool(shift_t_min))
            betas, kept = respace_betas(diffusion.betas, kept)
            diffusion = GaussianDiffusion(betas, model_var_type=diffusion.model_var_type, loss_type=diffusion.loss_type,
                                          timestep_map=kept)
        self._diffusion = diffusion  # the chain's own (respaced) process: DDPM's posterior and variances

    @property
    def continuous(self) -> bool:
        return self.levels is not None

    @property
    def diffusion(self) -> GaussianDiffusion:
        """The chain's own VP process (DDPM's posterior and variances, DDIM's ᾱ); on continuous levels the one
        with the grid's ᾱ_i = 1/(1 + σ_i²), which needs every σ finite."""
        if self._diffusion is None:
            sigmas = self.chain_sigmas[::-1]  # increasing, as a schedule runs
            if not np.isfinite(sigmas).all():
                raise GuidanceError(f"{self.name} steps a VP chain, which has no step from σ = ∞ (a flow grid's "
                                    "τ = 1): use sampler=flow_euler or flow_sde, or an edm grid "
                                    "(sampler.respacing=edmN)")
            ab = 1.0 / (1.0 + sigmas.astype(np.float64) ** 2)
            self._diffusion = GaussianDiffusion(1.0 - ab / np.append(1.0, ab[:-1]),
                                                model_var_type=self.levels.model_var_type)
        return self._diffusion

    def check_finite_start(self) -> None:
        """Refuse a chain starting at σ = ∞ for an update written on x̃ = x_0 + σ n (infinite there)."""
        if self.continuous and not np.isfinite(self.chain_sigmas[0]):
            raise GuidanceError(f"{self.name} steps x̃ = x_0 + σ n, infinite at σ = ∞ (a flow grid's τ = 1): use "
                                "sampler=flow_euler or flow_sde, or an edm grid")

    @property
    def capabilities(self) -> frozenset:
        """What this sampler's update does with a Prediction (guidance.engine.capabilities); subclasses state theirs,
        depending on their parameters where those change the form."""
        return frozenset()

    @property
    def steps(self) -> int:
        return len(self.chain_sigmas) if self.continuous else self._diffusion.num_timesteps

    def step_at(self, i: int) -> Step:
        """Chain position i (0 = noisiest) as a Step: original t and its ᾱ (continuous: the grid's σ)."""
        if self.continuous:
            return Step.at_sigma(self.chain_sigmas[i], i, self.steps)
        j = self.steps - 1 - i  # index into the (respaced) schedule, which runs from low to high noise
        return Step(int(self.diffusion.timestep_map[j]), float(self.diffusion.alphas_cumprod[j]), i, self.steps)

    def snapped_step(self, sigma: float, i: int) -> Step:
        """A trained timestep for a σ off the chain's grid (grid.py: nearest in σ); continuous: σ itself."""
        if self.continuous:
            return Step.at_sigma(sigma, i, self.steps)
        k = snap_to_timestep(sigma, self.trained_sigmas)
        return Step(int(self.trained_t[k]), float(self.trained_alpha_bar[k]), i, self.steps)

    def evaluation_steps(self) -> list[Step]:
        """Every denoiser evaluation of one chain, in order (one per step unless a subclass says otherwise)."""
        return [self.step_at(i) for i in range(self.steps)]

    def info(self) -> dict:
        return {"sampler": self.name, "sampler_label": self.label, "steps": self.steps, "respacing": self.respacing,
                "clip_denoised": self.clip_denoised,  # original timesteps, or σ on continuous levels
                "timesteps": [s.sigma if s.t is None else s.t for s in self.evaluation_steps()]}

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
                other = (cls(self.levels, respacing=self.respacing) if self.continuous  # on this chain's levels
                         else cls(self.diffusion, respacing=None))  # on this chain's own (respaced) process
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
