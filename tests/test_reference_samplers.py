"""The engine's native samplers equal the field's reference samplers: same network, same noise, same grid.

EDM2: NVlabs/edm2 `generate_images.py` `edm_sampler` (lines 75-117 at commit 4bf8162, "Autoguidance release"),
restated below as `edm2_reference` (its σ grid, its prior x = σ_0 n, Heun with Euler on the last step, churn, and
its guidance `gnet(x).lerp(net(x), guidance)`), on a random-weight network wrapped in edm2's preconditioning
(`training/networks_edm2.py` `Precond.forward`, lines 295-316: c_skip, c_out, c_in, c_noise = ln σ / 4, σ_data 0.5).
Ours: `edm2_heun` / `heun` / `euler` on `ContinuousLevels` with DenoisingModel(parameterization="edm",
noise_input="sigma"); guidance none, CFG (null label, w = edm2's guidance − 1), CFG through EDM2's unconditional
companion network (autoguidance with an unconditional weak model, as edm2's "guid" presets) and autoguidance.

Flow: diffusers' FlowMatchEulerDiscreteScheduler (the installed package's own set_timesteps / step), driven by the
loop of its SD3 pipeline (pipeline_stable_diffusion_3.py: timestep = t.expand(B), noise_pred = uncond + g (cond −
uncond), latents = scheduler.step(noise_pred, t, latents)), on a random-weight velocity network fed τ·1000. Ours:
`flow_euler` on ContinuousLevels(0, inf) with DenoisingModel(parameterization="flow", noise_input="flow_time",
time_scale=1000), its grid set to diffusers' (t_min = 1/1000, shift_t_min = true). CFG-Zero*: diffusers' own
ClassifierFreeZeroStarGuidance fed the same velocity predictions inside the same loop.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from guidance.engine.model import ContinuousLevels, DenoisingModel
from guidance.guiders import Autoguidance, ClassifierFreeGuidance, build_guider
from guidance.guiders.none import NoGuidance
from guidance.sampling import EDM2HeunSampler, EulerSampler, FlowEulerSampler, GuidedDenoiser, HeunSampler
from guidance.sampling.grid import flow_sigmas, shift_time

K, B, C, H = 3, 4, 2, 6  # classes, batch, channels, image side
LEVELS = ContinuousLevels(0.0, math.inf)


class TinyF(nn.Module):
    """A raw network F(c_in x, c_noise, label): two convs, a noise and a class embedding (label K = the null class
    of a conditional net trained with label dropout; `num_classes=0`: unconditional, labels must be None)."""

    def __init__(self, seed: int, width: int = 16, num_classes: int = K):
        super().__init__()
        torch.manual_seed(seed)
        self.inp, self.out = nn.Conv2d(C, width, 3, padding=1), nn.Conv2d(width, C, 3, padding=1)
        self.noise = nn.Linear(1, width)
        self.emb = nn.Embedding(num_classes + 1, width) if num_classes else None

    def forward(self, x, noise, labels=None):
        assert (labels is None) == (self.emb is None), "a conditional net gets labels, an unconditional one none"
        h = self.noise(noise.reshape(-1, 1).to(x.dtype))
        if self.emb is not None:
            h = h + self.emb(labels)
        return self.out(torch.nn.functional.silu(self.inp(x) + h[:, :, None, None]))


class Precond(nn.Module):
    """edm2's Precond.forward restated (networks_edm2.py 295-316, fp32, no logvar): D(x; σ) = c_skip x + c_out F."""

    def __init__(self, F, sigma_data: float = 0.5):
        super().__init__()
        self.F, self.sigma_data = F, sigma_data

    def forward(self, x, sigma, labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data ** 2
        c_skip, c_out = sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in, c_noise = 1 / (sd2 + sigma ** 2).sqrt(), sigma.flatten().log() / 4
        return c_skip * x + c_out * self.F(c_in * x, c_noise, labels).to(torch.float32)


def edm2_reference(net, noise, labels, gnet=None, num_steps=32, sigma_min=0.002, sigma_max=80, rho=7, guidance=1,
                   S_churn=0, S_min=0, S_max=float("inf"), S_noise=1, dtype=torch.float64, randn_like=None,
                   second_order=True):  # noqa: N803 (edm2's argument names)
    """edm2's edm_sampler restated (generate_images.py 75-117). `second_order=False` drops the correction (EDM
    Alg. 1 without lines 9-11: the Euler sampler). edm2's default dtype is float32, EDM's float64: the comparison
    runs the chain in float64 (the network in float32 either way, as Precond casts), so what remains is the float32
    rounding of the network's inputs (our x̃ goes through the VP variable and back): ~1e-6 on the final sample."""
    @torch.no_grad()
    def denoise(x, t):
        D = net(x, t, labels).to(dtype)
        return D if guidance == 1 else gnet(x, t, labels).to(dtype).lerp(D, guidance)

    i = torch.arange(num_steps, dtype=dtype)
    t_steps = (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
    x_next = noise.to(dtype) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        if S_churn > 0 and S_min <= t_cur <= S_max:
            gamma = min(S_churn / num_steps, np.sqrt(2) - 1)
            t_hat = t_cur + gamma * t_cur
            x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).sqrt() * S_noise * randn_like(x_cur)
        else:
            t_hat, x_hat = t_cur, x_cur
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if second_order and i < num_steps - 1:
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


class Recording:
    """Per-image noise in float64 (the dtype the chain then runs in), every draw kept to feed the reference."""

    def __init__(self, seed: int, dtype=torch.float64):
        self.generator, self.dtype, self.draws = torch.Generator().manual_seed(seed), dtype, []

    def __len__(self):
        return B

    def randn(self, shape):
        self.draws.append(torch.randn((B, *shape), generator=self.generator, dtype=self.dtype))
        return self.draws[-1]


NET = Precond(TinyF(0, width=24))
GNET = Precond(TinyF(1, width=8))          # the weak model of autoguidance: smaller, other weights
UNCOND = Precond(TinyF(2, num_classes=0))  # EDM2's unconditional companion (its "guid" presets' gnet)
Y = torch.arange(B) % K


def edm_model(net, null_label=K):
    return DenoisingModel(net, parameterization="edm", levels=LEVELS, noise_input="sigma", null_label=null_label)


def ours(sampler, guider, networks, seed=0, dtype=torch.float64):
    rng = Recording(seed, dtype)
    denoiser = GuidedDenoiser(guider, {name: edm_model(net, **kw) for name, (net, kw) in networks.items()},
                              measure_flops=True)  # the measuring pass, too, calls an unconditional weak net bare
    return sampler.sample(denoiser, (B, C, H, H), Y, rng), rng.draws


NULL = lambda x, t, labels: NET(x, t, torch.full_like(labels, K))  # noqa: E731  the null-label pass of NET
STRATEGIES = {  # name: (our guider, our networks, edm2's gnet, edm2's guidance)
    "none": (lambda: NoGuidance(), {"unet": (NET, {})}, None, 1.0),
    "cfg": (lambda: ClassifierFreeGuidance(0.7), {"unet": (NET, {})}, NULL, 1.7),
    "cfg_companion": (lambda: Autoguidance(0.4), {"unet": (NET, {}), "weak": (UNCOND, {"null_label": None})},
                      lambda x, t, labels: UNCOND(x, t), 1.4),
    "autoguidance": (lambda: Autoguidance(1.1), {"unet": (NET, {}), "weak": (GNET, {})}, GNET, 2.1),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_edm2_heun_equals_edm2_sampler(strategy):
    guider, networks, gnet, g = STRATEGIES[strategy]
    x, draws = ours(EDM2HeunSampler(LEVELS, "edm8"), guider(), networks)
    ref = edm2_reference(NET, draws[0], Y, gnet, num_steps=8, guidance=g)
    assert len(draws) == 1
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    if strategy != "none":  # the guidance is in the loop: the unguided chain ends elsewhere
        assert (ref - edm2_reference(NET, draws[0], Y, num_steps=8)).abs().max() > 1e-2


@pytest.mark.parametrize("churn", [dict(s_churn=5.0), dict(s_churn=40.0, s_tmin=0.05, s_tmax=10.0, s_noise=1.007)])
def test_edm2_heun_with_churn_equals_edm2_sampler(churn):
    """EDM's stochastic sampler (Alg. 2) through edm_sampler's S_churn options; our per-step draws fed to it."""
    guider, networks, gnet, g = STRATEGIES["autoguidance"]
    x, draws = ours(EDM2HeunSampler(LEVELS, "edm8", **churn), guider(), networks)
    noise = iter(draws[1:])
    ref = edm2_reference(NET, draws[0], Y, gnet, num_steps=8, guidance=g, randn_like=lambda _: next(noise),
                         **{{"s_churn": "S_churn", "s_tmin": "S_min", "s_tmax": "S_max", "s_noise": "S_noise"}[k]: v
                            for k, v in churn.items()})
    assert next(noise, None) is None and len(draws) > 2  # every draw we made, the reference used
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,second_order", [(HeunSampler, True), (EulerSampler, False)])
def test_heun_and_euler_equal_edm_from_their_vp_prior(cls, second_order):
    """`heun` / `euler` take the same update on the same grid; they differ from edm2's sampler only by ADM's VP
    prior x_T ~ N(0, I) at the first level (x̃ = sqrt(1 + σ_0²) n, not σ_0 n) and their default clip of x̂0. Given
    edm2's noise n' = n sqrt(1 + σ_0²)/σ_0 and clip_denoised=False, they equal it."""
    guider, networks, gnet, g = STRATEGIES["cfg"]
    sampler = cls(LEVELS, "edm6", clip_denoised=False, sigma_max=20.0)
    x, draws = ours(sampler, guider(), networks)
    s0 = sampler.step_at(0).sigma
    ref = edm2_reference(NET, draws[0] * math.sqrt(1 + s0 ** 2) / s0, Y, gnet, num_steps=6, sigma_max=20.0,
                         guidance=g, second_order=second_order)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    as_edm2 = edm2_reference(NET, draws[0], Y, gnet, num_steps=6, sigma_max=20.0, guidance=g, second_order=second_order)
    assert (x - as_edm2).abs().max() > 1e-3  # the prior is the whole difference, and it shows


def test_float32_chain_equals_edm2_default_dtype():
    """The chain in float32 (our samplers' usual dtype, edm2's default) against the float64 reference."""
    guider, networks, gnet, g = STRATEGIES["autoguidance"]
    x, draws = ours(EDM2HeunSampler(LEVELS, "edm8"), guider(), networks, dtype=torch.float32)
    ref = edm2_reference(NET, draws[0], Y, gnet, num_steps=8, guidance=g)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, ref.float(), rtol=1e-4, atol=1e-4)


# --- flow models: diffusers' FlowMatchEulerDiscreteScheduler --------------------------------------------------

class TinyVelocity(nn.Module):
    """A random-weight velocity network u(x_f, τ·1000, label), label K = the trained null class."""

    def __init__(self, seed: int = 3, width: int = 16):
        super().__init__()
        self.F = TinyF(seed, width)

    def forward(self, x, timestep, labels):
        return self.F(x, timestep / 1000.0, labels)


VNET = TinyVelocity()


def flow_model():
    return DenoisingModel(VNET, parameterization="flow", levels=LEVELS, noise_input="flow_time", time_scale=1000,
                          null_label=K)


def diffusers_flow_loop(noise, steps, shift, guidance_scale, guider=None):
    """diffusers' SD3 denoising loop (pipeline_stable_diffusion_3.py, __call__'s loop) with its scheduler; `guider`:
    one of diffusers.guiders combining the two velocity predictions in place of the pipeline's CFG line."""
    schedulers = pytest.importorskip("diffusers.schedulers")
    scheduler = schedulers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(steps)
    latents = noise.float()
    for i, t in enumerate(scheduler.timesteps):
        timestep = t.expand(B)
        cond = VNET(latents, timestep, Y)
        uncond = VNET(latents, timestep, torch.full_like(Y, K))
        if guider is not None:
            guider.set_state(i, steps, t)
            pred = guider.forward(cond, uncond).pred
        elif guidance_scale == 1:
            pred = cond
        else:
            pred = uncond + guidance_scale * (cond - uncond)
        latents = scheduler.step(pred, t, latents, return_dict=False)[0]
    return latents, scheduler.sigmas


def flow_sampler(steps, shift):
    return FlowEulerSampler(LEVELS, f"flow{steps}", shift=shift, t_min=0.001, shift_t_min=True)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_grid_equals_diffusers(shift):
    """Our flowN grid (t_min = 1/1000, shift_t_min) is diffusers' τ grid: linspace(1, shift(1/1000), N), shifted."""
    schedulers = pytest.importorskip("diffusers.schedulers")
    scheduler = schedulers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(10)
    s = flow_sampler(10, shift)
    tau = [s.step_at(i).tau for i in range(s.steps)] + [0.0]
    np.testing.assert_allclose(tau, scheduler.sigmas.double().numpy(), rtol=1e-6, atol=1e-7)
    assert s.step_at(0).sigma == math.inf  # τ_0 = 1 exactly: pure noise
    if shift != 1:  # without shift_t_min the end point differs: the option is what makes the grids equal
        plain = flow_sigmas(10, shift, 0.001)
        assert abs(plain[-1] / (1 + plain[-1]) - scheduler.sigmas[-2].item()) > 1e-4


def test_flow_grid_equals_diffusers_dynamic_shift():
    """Flux-style resolution-dependent shifting (use_dynamic_shifting, set_timesteps(mu=μ), exponential): diffusers
    leaves its training range unshifted and maps τ -> e^μ / (e^μ + 1/τ − 1), SD3's shift with s = e^μ: our grid
    with shift = e^μ, t_min = 1/1000 and shift_t_min = false."""
    schedulers = pytest.importorskip("diffusers.schedulers")
    scheduler = schedulers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=True)
    mu = 0.8
    scheduler.set_timesteps(10, mu=mu)
    s = FlowEulerSampler(LEVELS, "flow10", shift=math.exp(mu), t_min=0.001)
    tau = [s.step_at(i).tau for i in range(s.steps)] + [0.0]
    np.testing.assert_allclose(tau, scheduler.sigmas.double().numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("w", [0.0, 1.5])
def test_flow_euler_equals_diffusers_flow_match_euler(shift, w):
    steps = 6
    guider = ClassifierFreeGuidance(w)
    denoiser = GuidedDenoiser(guider, {"unet": flow_model()})
    rng = Recording(0, torch.float32)
    x = flow_sampler(steps, shift).sample(denoiser, (B, C, H, H), Y, rng)
    ref, _ = diffusers_flow_loop(rng.draws[0], steps, shift, w + 1)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert denoiser.counts["unet"] == B * steps * (2 if w else 1)


@pytest.mark.parametrize("zero_steps", [0, 1, 2])
def test_cfg_zero_star_equals_diffusers_guider(zero_steps):
    """Our cfg_zero (space v) on the flow model = diffusers' ClassifierFreeZeroStarGuidance (guidance_scale = w + 1,
    zero_init_steps) in the same loop, fed the same velocity predictions."""
    guiders = pytest.importorskip("diffusers.guiders")
    steps, shift, w = 6, 3.0, 2.0
    denoiser = GuidedDenoiser(build_guider("cfg_zero", scale=w, zero_steps=zero_steps, space="v"),
                              {"unet": flow_model()})
    rng = Recording(0, torch.float32)
    x = flow_sampler(steps, shift).sample(denoiser, (B, C, H, H), Y, rng)
    peer = guiders.ClassifierFreeZeroStarGuidance(guidance_scale=w + 1, zero_init_steps=zero_steps)
    ref, _ = diffusers_flow_loop(rng.draws[0], steps, shift, None, guider=peer)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    plain, _ = diffusers_flow_loop(rng.draws[0], steps, shift, w + 1)  # CFG-Zero* is not CFG here
    assert (plain - ref).abs().max() > 1e-3


def test_shift_time():
    assert shift_time(1.0, 3.0) == 1.0 and shift_time(0.5, 3.0) == pytest.approx(0.75)
    assert shift_time(0.001, 1.0) == 0.001


def test_flow_euler_config_builds_diffusers_grid_on_continuous_levels():
    """conf/sampler/flow_euler.yaml with diffusers' settings, built as run_sample builds samplers (guidance.config
    .build, which hands the ContinuousLevels dataclass to the constructor as it is, not as a Hydra config)."""
    from guidance.config import build, compose_config

    cfg = compose_config("sample", ["sampler=flow_euler", "sampler.respacing=flow10", "sampler.shift=3.0",
                                    "sampler.t_min=0.001", "sampler.shift_t_min=true"])
    s = build(cfg.sampler, diffusion=LEVELS)
    np.testing.assert_array_equal(s.chain_sigmas, flow_sampler(10, 3.0).chain_sigmas)
    assert s.info()["shift_t_min"] is True and s.levels is LEVELS
