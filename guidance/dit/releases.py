"""The DiT and SiT model families (DiT's / SiT's models.py configs) and what the engine must know of each release.

DiT (Peebles & Xie 2023): ε-prediction with learned range variance on ADM's linear 1000-step schedule (DiT's
create_diffusion: learn_sigma=True), class labels 0..999 with the null label 1000 trained by label dropout
(p = 0.1), on SD-VAE latents (x 0.18215, 4 x size/8 x size/8). Released: DiT-XL/2 at 256 and 512 px.
SiT (Ma et al. 2024): the same network trained on SiT's Linear path x_t = t x_data + (1 − t) ε with a velocity
loss, t ∈ [0, 1] fed to the time embedder as is (no x1000) — in the engine's flow time τ = σ/(1 + σ) (τ = 1
noise) t = 1 − τ: noise_input="flow_time_reversed", time_scale=1; the network's velocity is negated into the
engine's u = ε − x̂0 by DiTNetwork(velocity="sit"). Released: SiT-XL/2 at 256 px (learn_sigma=True, unused).
Both evaluate FID with the SD VAE ft-EMA decoder (sample_ddp.py's default --vae ema; ft-MSE is the alternative).
"""

from __future__ import annotations

import math

from guidance.errors import GuidanceError

SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}  # depth, hidden, heads
MODELS = [f"{f}-{s}/{p}" for f in ("DiT", "SiT") for s in SIZES for p in (2, 4, 8)]
LATENT_SCALE = 0.18215  # DiT's and SiT's sample.py: vae.decode(samples / 0.18215)
DECODER = "stabilityai/sd-vae-ft-ema"
NULL_LABEL = 1000


def model_config(model: str, image_size: int = 256, learn_sigma: bool = True, num_classes: int = 1000,
                 conventions: str = "dit", shared_embedding: bool = True) -> dict:
    """The DiTNetwork config of DiT's/SiT's named model (e.g. "DiT-XL/2", "SiT-XL/2") at `image_size` px."""
    family = str(model).split("-", 1)[0]
    if model not in MODELS:
        raise GuidanceError(f"model={model} is not a DiT/SiT model; use one of {', '.join(MODELS)}")
    if image_size % 8:
        raise GuidanceError(f"image_size={image_size} is not a multiple of 8 (the SD VAE's downsampling)")
    size, patch = model.split("-", 1)[1].split("/")
    depth, hidden, heads = SIZES[size]
    return {"_target_": "guidance.nn.dit.DiTNetwork", "image_size": image_size // 8, "patch_size": int(patch),
            "in_channels": 4, "hidden_size": hidden, "depth": depth, "num_heads": heads, "num_classes": num_classes,
            "learn_sigma": bool(learn_sigma), "conventions": conventions, "shared_embedding": shared_embedding,
            "velocity": "sit" if family == "SiT" else None}


def diffusion_config(learn_sigma: bool = True) -> dict:
    """DiT's diffusion: ADM's linear schedule, 1000 steps, learned range variance (DiT's create_diffusion; a
    model without learned σ: fixed_large, its default then)."""
    return {"_target_": "guidance.diffusion.create_diffusion", "steps": 1000, "noise_schedule": "linear",
            "model_var_type": "learned_range" if learn_sigma else "fixed_large",
            "loss_type": "hybrid" if learn_sigma else "mse", "timestep_respacing": ""}


def adapter(family: str, null_label: int = NULL_LABEL, learn_sigma: bool = True) -> dict:
    """The snapshot adapter (guidance.checkpoint's schema) of a DiT or SiT network: DiT = ε with learned variance
    on the snapshot's diffusion_config (its trained timesteps); SiT = flow velocity on continuous σ ∈ [0, ∞]
    (t = 0 pure noise), fed SiT's t = 1 − τ; its network returns no variance (SiT's forward drops that half).
    The null label (num_classes) is trained by label dropout in both (extra.null_class_trained True)."""
    if family == "DiT":
        return {"parameterization": "eps", "noise_input": "timestep", "time_scale": 1.0, "null_label": null_label,
                "learned_variance": bool(learn_sigma), "levels": None}
    return {"parameterization": "flow", "noise_input": "flow_time_reversed", "time_scale": 1.0,
            "null_label": null_label, "learned_variance": False,
            "levels": {"sigma_min": 0.0, "sigma_max": math.inf}}


def latent() -> dict:
    """DiT's/SiT's latent standardization as guidance.engine.latent.LatentDecoder's fields (LatentDecoder.dit())."""
    from guidance.engine.latent import LatentDecoder

    d = LatentDecoder.dit(LATENT_SCALE)
    return {"scale": list(d.scale), "shift": list(d.shift), "vae_range": list(d.vae_range), "batch_size": d.batch_size}
