"""Sampling: the guided denoiser, samplers that each take any guider (DDPM, DDIM(η), Euler, Heun, DPM-Solver++(2M)),
per-image random streams, and generation of N seeded samples."""

from guidance.sampling.base import Sampler
from guidance.sampling.ddim import DDIMSampler
from guidance.sampling.ddpm import DDPMSampler
from guidance.sampling.denoiser import ClassifierGrad, Eval, GuidedDenoiser
from guidance.sampling.dpm_solver import DPMSolverPP2MSampler
from guidance.sampling.karras import EulerSampler, HeunSampler
from guidance.sampling.prediction import Prediction, Step
from guidance.sampling.rng import LABEL_MODES, BatchRNG, PerImageRNG, image_seed

SAMPLERS = {cls.name: cls for cls in (DDPMSampler, DDIMSampler, EulerSampler, HeunSampler, DPMSolverPP2MSampler)}

__all__ = ["Sampler", "DDPMSampler", "DDIMSampler", "EulerSampler", "HeunSampler", "DPMSolverPP2MSampler", "SAMPLERS",
           "GuidedDenoiser", "Eval", "ClassifierGrad", "Prediction", "Step", "PerImageRNG", "BatchRNG", "LABEL_MODES",
           "image_seed"]
