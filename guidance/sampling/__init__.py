"""Sampling: the guided denoiser, samplers (DDPM, DDIM(η), Euler, Heun, DPM-Solver++(2M)) that each take any guider
whose needs their capabilities meet, per-image random streams, and generation of N seeded samples. The contract with
the guiders (Step, Prediction, requests, capabilities, cost) is guidance.engine."""

from guidance.sampling.base import Sampler
from guidance.sampling.ddim import DDIMSampler
from guidance.sampling.ddpm import DDPMSampler
from guidance.sampling.denoiser import GuidedDenoiser
from guidance.sampling.dpm_solver import DPMSolverPP2MSampler
from guidance.sampling.karras import EulerSampler, HeunSampler
from guidance.sampling.rng import LABEL_MODES, BatchRNG, PerImageRNG, image_seed

SAMPLERS = {cls.name: cls for cls in (DDPMSampler, DDIMSampler, EulerSampler, HeunSampler, DPMSolverPP2MSampler)}

__all__ = ["Sampler", "DDPMSampler", "DDIMSampler", "EulerSampler", "HeunSampler", "DPMSolverPP2MSampler", "SAMPLERS",
           "GuidedDenoiser", "PerImageRNG", "BatchRNG", "LABEL_MODES", "image_seed"]
