"""Samplers that take any guider: DDPM ancestral and DDIM with η; per-image random streams."""

from guidance.sampling.ddim import DDIMSampler
from guidance.sampling.ddpm import DDPMSampler
from guidance.sampling.rng import LABEL_MODES, BatchRNG, PerImageRNG, image_seed

SAMPLERS = {cls.name: cls for cls in (DDPMSampler, DDIMSampler)}

__all__ = ["DDPMSampler", "DDIMSampler", "SAMPLERS", "PerImageRNG", "BatchRNG", "LABEL_MODES", "image_seed"]
