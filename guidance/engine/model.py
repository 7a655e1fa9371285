"""The model adapter: a denoising network wrapped once with what the engine must know to guide and sample it.

    model = DenoisingModel(net, parameterization="flow", levels=ContinuousLevels(0, inf), noise_input="flow_time",
                           time_scale=1000, null_label=1000)
    GuidedDenoiser(guider, {"unet": model})      # every strategy;  build(sampler_cfg, diffusion=model.levels)

The denoiser hands it the engine's VP variable x_t (guidance.engine.prediction) at a Step and gets a `Prediction`
(ε and x̂0) back, so nothing downstream assumes ε. Parameterizations (what the network returns, and the variable
it takes; σ, ᾱ = 1/(1 + σ²), τ = σ/(1 + σ) of the step):

    eps    ε, from x_t (DDPM / ADM / the toolkit's own U-Net: bitwise the engine before adapters)
    x0     x̂0, from x_t
    v      v = sqrt(ᾱ) ε − sqrt(1 − ᾱ) x_0, from x_t (Salimans & Ho 2022, sec. 4):
           x̂0 = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v,  ε = sqrt(1 − ᾱ) x_t + sqrt(ᾱ) v
    flow   the velocity u = ε − x_0 of x_f = (1 − τ) x_0 + τ ε (rectified flow / flow matching; SD3, SiT's linear
           path), from x_f:  x̂0 = x_f − τ u,  ε = x_f + (1 − τ) u
    edm    D(x̃; σ) = x̂0 of a preconditioned EDM denoiser (Karras et al. 2022, eq. 7), from x̃ = x_0 + σ n:
           ε = (x̃ − D)/σ

Noise levels (`levels`): None (discrete levels held by the sampler's GaussianDiffusion), a GaussianDiffusion (trained discrete timesteps; σ snaps to them) or `ContinuousLevels`
(any σ in [sigma_min, sigma_max]: samplers give the grid's σ exactly). How the level reaches the network
(`noise_input`): "timestep" (integer original t; discrete levels only), "sigma" (σ: EDM's Precond modules),
"c_noise" (ln σ / 4: a raw EDM network F), "flow_time" (τ · time_scale: diffusers' SD3/DiT-style flow models use
1000), "flow_time_reversed" ((1 − τ) · time_scale: SiT, whose t = 1 is data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from guidance.engine.prediction import Prediction, Step
from guidance.errors import GuidanceError

PARAMETERIZATIONS = ("eps", "x0", "v", "flow", "edm")
NOISE_INPUTS = ("timestep", "sigma", "c_noise", "flow_time", "flow_time_reversed")


@dataclass(frozen=True)
class ContinuousLevels:
    """A model trained on every σ in [sigma_min, sigma_max] (sigma_max = inf: a flow model's t = 1 included).
    model_var_type: the variance DDPM uses on its chain (a continuous model learns none)."""

    sigma_min: float = 0.0
    sigma_max: float = math.inf
    model_var_type: str = "fixed_small"

    def __post_init__(self):
        if not (0 <= self.sigma_min < self.sigma_max):
            raise GuidanceError(f"ContinuousLevels needs 0 <= sigma_min < sigma_max, got {self.sigma_min}, "
                                f"{self.sigma_max}")

    def info(self) -> dict:
        return {"kind": "continuous", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


def is_continuous(levels) -> bool:
    return isinstance(levels, ContinuousLevels)


class DenoisingModel:
    """network(x_in, noise_in, labels) -> its parameterization's output (+ learned-variance channels when
    `learned_variance`; None: taken when the output has more channels than x, as ADM's learn_sigma).
    null_label: the class of the unconditional mode (None: an unconditional network, called with labels=None);
    null_trained=False: a conditional network that never trained it (ADM's and EDM2's conditional releases), so
    strategies needing the unconditional pass are refused. decoder: a latent model's `LatentDecoder`
    (guidance.engine.latent: its autoencoder and latent standardization; None: a pixel-space model); the samplers
    run on the latents, the denoiser's `decode` turns them into images."""

    def __init__(self, network: torch.nn.Module, parameterization: str = "eps", levels=None,
                 noise_input: str = "timestep", time_scale: float = 1.0, null_label: int | None = None,
                 null_trained: bool = True, learned_variance: bool | None = None, name: str | None = None,
                 decoder=None):
        if parameterization not in PARAMETERIZATIONS:
            raise GuidanceError(f"parameterization={parameterization!r} is unknown; use one of "
                                f"{', '.join(PARAMETERIZATIONS)}")
        if noise_input not in NOISE_INPUTS:
            raise GuidanceError(f"noise_input={noise_input!r} is unknown; use one of {', '.join(NOISE_INPUTS)}")
        if noise_input == "timestep" and is_continuous(levels):
            raise GuidanceError("noise_input=timestep needs trained discrete levels (a GaussianDiffusion); a "
                                "continuous model takes sigma, c_noise or flow_time")
        self.network, self.parameterization, self.levels = network, parameterization, levels
        self.noise_input, self.time_scale = noise_input, float(time_scale)
        self.null_label = None if null_label is None else int(null_label)
        self.null_trained, self.learned_variance = bool(null_trained), learned_variance
        self.name = name or type(network).__name__
        self.decoder = decoder

    @property
    def continuous(self) -> bool:
        return is_continuous(self.levels)

    # --- what the network sees -------------------------------------------------------------------------------
    def network_input(self, x: torch.Tensor, step: Step) -> torch.Tensor:
        """The engine's VP x_t in the network's own variable (x_t, x̃ or x_f)."""
        if self.parameterization == "edm":
            if step.alpha_bar == 0:
                raise GuidanceError("an EDM denoiser cannot take σ = ∞; give its sampler a finite sigma_max")
            return x / step.alpha_bar ** 0.5  # x̃ = x_t sqrt(1 + σ²)
        if self.parameterization == "flow":
            return step.to_flow(x)
        return x

    def noise_level(self, step: Step, n: int, device) -> torch.Tensor:
        """The [n] noise-level input of the network at this step."""
        if self.noise_input == "timestep":
            if step.t is None:
                raise GuidanceError(f"{self.name} takes integer timesteps but the step is at a continuous σ = "
                                    f"{step.sigma:g}; give its sampler the model's GaussianDiffusion")
            return torch.full((n,), step.t, dtype=torch.long, device=device)
        sigma = step.sigma
        if self.noise_input == "sigma":
            value = sigma
        elif self.noise_input == "c_noise":
            value = math.log(sigma) / 4  # EDM's c_noise (Karras et al. 2022, Table 1)
        elif self.noise_input == "flow_time":
            value = step.tau * self.time_scale
        else:
            value = (1.0 - step.tau) * self.time_scale
        return torch.full((n,), value, dtype=torch.float32, device=device)

    # --- what the network returns ----------------------------------------------------------------------------
    def split(self, out: torch.Tensor, channels: int):
        """(prediction, learned-variance v or None)."""
        if self.learned_variance is False or (self.learned_variance is None and out.shape[1] <= channels):
            return out[:, :channels] if out.shape[1] > channels else out, None
        if out.shape[1] != 2 * channels:
            raise GuidanceError(f"{self.name} returned {out.shape[1]} channels for {channels}-channel inputs; a "
                                "learned variance doubles them")
        return out[:, :channels], out[:, channels:]

    def prediction(self, x: torch.Tensor, step: Step, out: torch.Tensor) -> Prediction:
        """ε and x̂0 at the VP x_t from the network's output (the formulas of the module docstring)."""
        raw, var_v = self.split(out, x.shape[1])
        p = self.parameterization
        if p == "eps":
            return Prediction.from_eps(x, step, raw, var_v)
        if p == "x0":
            return Prediction.from_x0(x, step, raw, var_v)
        if p == "v":
            a, b = step.alpha_bar ** 0.5, (1.0 - step.alpha_bar) ** 0.5
            return Prediction(b * x + a * raw, a * x - b * raw, var_v)
        if p == "flow":
            tau, x_f = step.tau, step.to_flow(x)
            return Prediction(x_f + (1.0 - tau) * raw, x_f - tau * raw, var_v)
        x_scaled, sigma = x / step.alpha_bar ** 0.5, step.sigma  # edm
        return Prediction((x_scaled - raw) / sigma, raw, var_v)

    def __call__(self, x: torch.Tensor, step: Step, labels: torch.Tensor | None) -> Prediction:
        """One prediction (no guidance, no counting): for tests and users; the guided denoiser batches passes."""
        out = self.network(self.network_input(x, step), self.noise_level(step, len(x), x.device), labels)
        return self.prediction(x, step, out.to(x.dtype))

    def info(self) -> dict:
        levels = self.levels.info() if self.continuous else {"kind": "discrete"}
        return {"parameterization": self.parameterization, "noise_input": self.noise_input,
                "time_scale": self.time_scale, "levels": levels, "null_label": self.null_label,
                "null_trained": self.null_trained}


def as_model(network, diffusion=None, null_label: int | None = None, null_trained: bool = True) -> DenoisingModel:
    """A network as the engine's model: a DenoisingModel as it is, anything else as the ε-prediction network on
    integer timesteps that every network before the adapters was (levels: `diffusion`, may be None there)."""
    if isinstance(network, DenoisingModel):
        return network
    return DenoisingModel(network, "eps", diffusion, null_label=null_label, null_trained=null_trained)
