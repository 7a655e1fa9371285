"""Each σ-sampler equals its peer implementation on the same network, σ grid and noise draws.

k-diffusion (`k_diffusion.sampling`): Euler ancestral, DPM-Solver++(2S) ancestral, DPM-Solver++(2M) SDE (midpoint),
(3M) SDE and Heun (EDM2's sampler started from σ_max n); its samplers take the σ grid and a `noise_sampler`, so the
per-image draws our sampler made are fed to it in order. diffusers: UniPC (bh2) and DEIS (logρ), whose schedulers
are given the chain's timesteps and σ's. The network is the analytic mixture under CFG (w = 1.5), so guidance is in
the loop; the peer's model snaps σ to the trained timestep as k-diffusion's DiscreteEpsDDPMDenoiser does.

k-diffusion's package __init__ imports its training stack (clean-fid, CLIP, kornia, accelerate, wandb, ...), so a
light install works too: `pip install --no-deps k-diffusion torchsde trampoline torchdiffeq` (pure Python; scipy,
Pillow, safetensors, torchvision come with the toolkit) and `kdiffusion_sampling` loads sampling.py alone.
"""

import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.guiders import ClassifierFreeGuidance
from guidance.sampling import (BatchRNG, DEISSampler, DPMSolverPP2MSDESampler, DPMSolverPP2SAncestralSampler,
                               DPMSolverPP3MSDESampler, EDM2HeunSampler, EulerAncestralSampler, GuidedDenoiser,
                               UniPCSampler)
from guidance.engine import Step
from guidance.testbed import GaussianMixture, make_testbed

BASE = create_diffusion(1000)
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K, B = 3, 16


class Recording(BatchRNG):
    """BatchRNG that keeps every draw, to feed the peer the same noise in the same order."""

    def __init__(self, *a):
        super().__init__(*a)
        self.draws = []

    def randn(self, shape):
        self.draws.append(super().randn(shape))
        return self.draws[-1]


@pytest.fixture(scope="module")
def denoiser():
    _, model, classifier = make_testbed(BASE, MIX)
    return GuidedDenoiser(ClassifierFreeGuidance(1.5), {"unet": model, "classifier": classifier}, null_label=K)


def ours(sampler, denoiser, seed=0):
    y = torch.arange(B) % K
    rng = Recording(seed, B)
    return sampler.sample(denoiser, (B, 2, 1, 1), y, rng), rng.draws, y


def kd_model(sampler, denoiser, y):
    """k-diffusion's view of the guided network: x̃, σ -> x̂0 at the trained timestep nearest in log σ."""
    log_sig = np.log(sampler.trained_sigmas)

    def model(x, sigma):
        k = int(np.argmin(np.abs(log_sig - math.log(float(sigma[0])))))
        step = Step(int(sampler.trained_t[k]), float(sampler.trained_alpha_bar[k]))
        x_vp = x / math.sqrt(1 + step.sigma**2)
        return denoiser(x_vp, y, step, clip=False).eps_form(x_vp, step).x0
    return model


def kdiffusion_sampling():
    """k_diffusion.sampling, imported normally or, when the package's heavy __init__ cannot import, loaded from its
    files under a bare parent package (sampling.py needs only its sibling utils.py); skips when not installed."""
    try:
        import k_diffusion.sampling
        return k_diffusion.sampling
    except ImportError:
        pass
    for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
        del sys.modules[name]  # the half-imported package
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["k_diffusion"] = package
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError as e:
        del sys.modules["k_diffusion"]
        pytest.skip(f"k_diffusion.sampling does not import: {e}")


def kd_sigmas(sampler):
    return torch.tensor([sampler.step_at(i).sigma for i in range(sampler.steps)] + [0.0], dtype=torch.float64)


CASES = [  # (our sampler, k-diffusion function, its keyword arguments)
    (lambda: EulerAncestralSampler(BASE, "edm12", clip_denoised=False), "sample_euler_ancestral", {}),
    (lambda: EulerAncestralSampler(BASE, "edm12", clip_denoised=False, eta=0.5, s_noise=0.9), "sample_euler_ancestral",
     {"eta": 0.5, "s_noise": 0.9}),
    (lambda: DPMSolverPP2SAncestralSampler(BASE, "edm12", clip_denoised=False), "sample_dpmpp_2s_ancestral", {}),
    (lambda: DPMSolverPP2MSDESampler(BASE, "edm12", clip_denoised=False), "sample_dpmpp_2m_sde", {}),
    (lambda: DPMSolverPP2MSDESampler(BASE, "edm12", clip_denoised=False, eta=0.5), "sample_dpmpp_2m_sde", {"eta": 0.5}),
    (lambda: DPMSolverPP3MSDESampler(BASE, "edm12", clip_denoised=False), "sample_dpmpp_3m_sde", {}),
    (lambda: DPMSolverPP3MSDESampler(BASE, "edm12", clip_denoised=False, eta=0.0), "sample_dpmpp_3m_sde", {"eta": 0.0}),
]


@pytest.mark.parametrize("make,fn,kw", CASES)
def test_equals_k_diffusion(denoiser, make, fn, kw):
    kd = kdiffusion_sampling()
    s = make()
    x, draws, y = ours(s, denoiser)
    noise = iter(draws[1:])
    x_kd = getattr(kd, fn)(kd_model(s, denoiser, y), draws[0] * math.sqrt(1 + s.step_at(0).sigma ** 2), kd_sigmas(s),
                          disable=True, noise_sampler=lambda *_: next(noise), **kw)
    assert next(noise, None) is None  # every draw we made, the peer used
    assert (len(draws) > 1) == (kw.get("eta", 1.0) > 0)
    torch.testing.assert_close(x, x_kd.to(x.dtype), rtol=1e-4, atol=1e-4)


def test_edm2_heun_equals_k_diffusion_heun_from_sigma_max_noise(denoiser):
    kd = kdiffusion_sampling()
    s = EDM2HeunSampler(BASE, "edm12")
    x, draws, y = ours(s, denoiser)
    x_kd = kd.sample_heun(kd_model(s, denoiser, y), draws[0] * s.step_at(0).sigma, kd_sigmas(s), disable=True)
    torch.testing.assert_close(x, x_kd.to(x.dtype), rtol=1e-4, atol=1e-4)


def diffusers_run(scheduler, sampler, denoiser, x_T, y, last_sigma=0.0):
    """A diffusers scheduler on our chain: its timesteps and σ's replaced by ours, then the usual loop on x_t."""
    scheduler.set_timesteps(sampler.steps)
    scheduler.timesteps = torch.tensor([sampler.step_at(i).t for i in range(sampler.steps)])
    scheduler.sigmas = kd_sigmas(sampler)
    scheduler.sigmas[-1] = last_sigma
    x = x_T
    for i, t in enumerate(scheduler.timesteps):
        step = sampler.step_at(i)
        eps = denoiser(x, y, step, clip=False).eps_form(x, step).eps
        x = scheduler.step(eps, t, x).prev_sample
    return x


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_equals_diffusers(denoiser, order):
    schedulers = pytest.importorskip("diffusers.schedulers")
    s = UniPCSampler(BASE, "edm10", clip_denoised=False, order=order)
    x, draws, y = ours(s, denoiser)
    sch = schedulers.UniPCMultistepScheduler(trained_betas=BASE.betas, solver_order=order, solver_type="bh2",
                                             predict_x0=True, lower_order_final=True, final_sigmas_type="zero")
    torch.testing.assert_close(x, diffusers_run(sch, s, denoiser, draws[0], y).to(x.dtype), rtol=1e-4, atol=1e-4)
    assert len(draws) == 1  # deterministic: x_T only


@pytest.mark.parametrize("order", [1, 2, 3])
def test_deis_equals_diffusers(denoiser, order):
    schedulers = pytest.importorskip("diffusers.schedulers")
    s = DEISSampler(BASE, "edm10", clip_denoised=False, order=order)  # < 15 steps: diffusers lowers the order at the end
    x, draws, y = ours(s, denoiser)
    sch = schedulers.DEISMultistepScheduler(trained_betas=BASE.betas, solver_order=order, lower_order_final=True)
    # diffusers' DEIS ends at σ(t=0) ≈ 0.01 (its final Euler step to σ = 0 is 0·∞); a last σ of 1e-9 is σ = 0 to
    # within 1e-9 |ε| and keeps its formula finite.
    x_peer = diffusers_run(sch, s, denoiser, draws[0], y, last_sigma=1e-9)
    torch.testing.assert_close(x, x_peer.to(x.dtype), rtol=1e-4, atol=1e-4)


def test_euler_ancestral_equals_diffusers(denoiser, monkeypatch):
    """diffusers' EulerAncestralDiscreteScheduler (η = 1) steps x̃ itself and takes ε at x̃/sqrt(σ² + 1); it draws
    noise on the last step too (times σ_up = 0), so the peer gets our draws and then zeros."""
    module = pytest.importorskip("diffusers.schedulers.scheduling_euler_ancestral_discrete")
    s = EulerAncestralSampler(BASE, "edm12", clip_denoised=False)
    x, draws, y = ours(s, denoiser)
    noise = iter(draws[1:] + [torch.zeros_like(draws[0])])
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(noise))
    sch = module.EulerAncestralDiscreteScheduler(trained_betas=BASE.betas)
    sch.set_timesteps(s.steps)
    sch.timesteps = torch.tensor([float(s.step_at(i).t) for i in range(s.steps)])  # its timesteps are floats
    sch.sigmas = kd_sigmas(s)
    x_peer = draws[0] * math.sqrt(1 + s.step_at(0).sigma ** 2)
    for i, t in enumerate(sch.timesteps):
        step = s.step_at(i)
        x_vp = sch.scale_model_input(x_peer, t)
        x_peer = sch.step(denoiser(x_vp, y, step, clip=False).eps_form(x_vp, step).eps, t, x_peer).prev_sample
    assert next(noise, None) is None
    torch.testing.assert_close(x, x_peer.to(x.dtype), rtol=1e-4, atol=1e-4)


def test_dpmpp_2m_sde_equals_diffusers(denoiser):
    """diffusers' DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", solver_order=2, midpoint) on x_t,
    our draws fed as `variance_noise` (zeros on the last step, where its noise term is 0·noise)."""
    schedulers = pytest.importorskip("diffusers.schedulers")
    s = DPMSolverPP2MSDESampler(BASE, "edm12", clip_denoised=False)
    x, draws, y = ours(s, denoiser)
    sch = schedulers.DPMSolverMultistepScheduler(trained_betas=BASE.betas, algorithm_type="sde-dpmsolver++",
                                                 solver_order=2, solver_type="midpoint", final_sigmas_type="zero")
    sch.set_timesteps(s.steps)
    sch.timesteps = torch.tensor([s.step_at(i).t for i in range(s.steps)])
    sch.sigmas = kd_sigmas(s)
    noise = draws[1:] + [torch.zeros_like(draws[0])]
    x_peer = draws[0]
    for i, t in enumerate(sch.timesteps):
        step = s.step_at(i)
        eps = denoiser(x_peer, y, step, clip=False).eps_form(x_peer, step).eps
        x_peer = sch.step(eps, t, x_peer, variance_noise=noise[i]).prev_sample
    torch.testing.assert_close(x, x_peer.to(x.dtype), rtol=1e-4, atol=1e-4)
