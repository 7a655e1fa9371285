"""Sampling: the guided denoiser, samplers that each take any guider whose needs their capabilities meet (DDPM,
DDIM(η), Euler, Heun, EDM2's Heun, DPM-Solver++(2M), Euler ancestral, DPM-Solver++(2S) ancestral, DPM-Solver++(2M)/(3M)
SDE, UniPC, DEIS, flow Euler, SiT's flow SDE), per-image random streams, and generation of N seeded samples. The
contract with the guiders (Step, Prediction, requests, capabilities, cost) is guidance.engine."""

from guidance.sampling.ancestral import DPMSolverPP2SAncestralSampler, EulerAncestralSampler
from guidance.sampling.base import Sampler
from guidance.sampling.ddim import DDIMSampler
from guidance.sampling.ddpm import DDPMSampler
from guidance.sampling.deis import DEISSampler
from guidance.sampling.denoiser import GuidedDenoiser
from guidance.sampling.dpm_sde import DPMSolverPP2MSDESampler, DPMSolverPP3MSDESampler
from guidance.sampling.dpm_solver import DPMSolverPP2MSampler
from guidance.sampling.flow import FlowEulerSampler
from guidance.sampling.flow_sde import FlowSDESampler
from guidance.sampling.karras import EDM2HeunSampler, EulerSampler, HeunSampler
from guidance.sampling.rng import LABEL_MODES, BatchRNG, PerImageRNG, image_seed
from guidance.sampling.unipc import UniPCSampler

SAMPLERS = {cls.name: cls for cls in (DDPMSampler, DDIMSampler, EulerSampler, HeunSampler, EDM2HeunSampler,
                                      DPMSolverPP2MSampler, EulerAncestralSampler, DPMSolverPP2SAncestralSampler,
                                      DPMSolverPP2MSDESampler, DPMSolverPP3MSDESampler, UniPCSampler, DEISSampler,
                                      FlowEulerSampler, FlowSDESampler)}

__all__ = ["Sampler", "DDPMSampler", "DDIMSampler", "EulerSampler", "HeunSampler", "EDM2HeunSampler", "DPMSolverPP2MSampler",
           "EulerAncestralSampler", "DPMSolverPP2SAncestralSampler", "DPMSolverPP2MSDESampler", "DPMSolverPP3MSDESampler",
           "UniPCSampler", "DEISSampler", "FlowEulerSampler", "FlowSDESampler", "SAMPLERS",
           "GuidedDenoiser", "PerImageRNG", "BatchRNG", "LABEL_MODES",
           "image_seed"]
