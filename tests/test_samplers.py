"""Samplers against the analytic Gaussian-mixture test bed: exact ε in, known distribution out.

Every sampler (DDPM, DDIM η = 0 and 1, Euler, Heun, EDM2's Heun, DPM-Solver++(2M), Euler ancestral, DPM-Solver++(2S)
ancestral, DPM-Solver++(2M)/(3M) SDE, UniPC, DEIS) must reproduce the mixture's class weights and per-class moments;
tolerances are a few standard errors, so a wrong coefficient fails. Peer comparisons: tests/test_sampler_peers.py.
"""

import functools
import math

import numpy as np
import pytest
import torch

from guidance.diffusion import create_diffusion, space_timesteps
from guidance.errors import GuidanceError
from guidance.guiders import ClassifierFreeGuidance, ClassifierGuidance, NoGuidance
from guidance.sampling import (BatchRNG, DDIMSampler, DDPMSampler, DEISSampler, DPMSolverPP2MSampler,
                               DPMSolverPP2MSDESampler, DPMSolverPP2SAncestralSampler, DPMSolverPP3MSDESampler,
                               EDM2HeunSampler, EulerAncestralSampler, EulerSampler, FlowEulerSampler, FlowSDESampler,
                               GuidedDenoiser, HeunSampler, UniPCSampler)
from guidance.sampling.grid import edm_sigmas, kept_timesteps, sigmas_of
from guidance.testbed import GaussianMixture, make_testbed

T = 1000
BASE = create_diffusion(T)
# Three classes, separated enough that few samples sit near a boundary, with unequal weights and spreads.
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K = MIX.num_classes
N = 2000

# name -> sampler factory (clip off: the mixture lives outside [-1, 1]). Step counts are chosen so that the
# discretisation error stays well below the statistical tolerance.
SAMPLERS = {
    "ddpm": lambda: DDPMSampler(BASE, "250", clip_denoised=False),
    "ddim_eta0": lambda: DDIMSampler(BASE, "ddim100", eta=0.0, clip_denoised=False),
    "ddim_eta1": lambda: DDIMSampler(BASE, "250", eta=1.0, clip_denoised=False),
    "euler": lambda: EulerSampler(BASE, "ddim100", clip_denoised=False),
    "heun": lambda: HeunSampler(BASE, "edm40", clip_denoised=False),
    "heun_churn": lambda: HeunSampler(BASE, "edm40", clip_denoised=False, s_churn=10.0),
    "dpmpp_2m": lambda: DPMSolverPP2MSampler(BASE, "edm40", clip_denoised=False),
    "edm2_heun": lambda: EDM2HeunSampler(BASE, "edm32"),
    "euler_ancestral": lambda: EulerAncestralSampler(BASE, "edm100", clip_denoised=False),
    "dpmpp_2s_ancestral": lambda: DPMSolverPP2SAncestralSampler(BASE, "edm40", clip_denoised=False),
    "dpmpp_2m_sde": lambda: DPMSolverPP2MSDESampler(BASE, "edm60", clip_denoised=False),
    "dpmpp_3m_sde": lambda: DPMSolverPP3MSDESampler(BASE, "edm60", clip_denoised=False),
    "unipc": lambda: UniPCSampler(BASE, "edm40", clip_denoised=False),
    "deis": lambda: DEISSampler(BASE, "edm40", clip_denoised=False),
}
NEW = ["edm2_heun", "euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "deis"]


@pytest.fixture(scope="module")
def bed():
    _, model, classifier = make_testbed(BASE, MIX)
    return model, classifier


def denoiser(bed, guider):
    model, clf = bed
    return GuidedDenoiser(guider, {"unet": model, "classifier": clf}, null_label=K)


def classify(x):
    """Nearest exact posterior at t = 0 (ᾱ = 1: the data distribution itself)."""
    return MIX.posterior_logits(x, torch.ones(len(x))).argmax(1)


@functools.lru_cache(maxsize=1)
def reference(n=200_000, seed=123):
    """Exact data samples, classified by the same rule as sampler output (so boundary errors cancel)."""
    x, _ = MIX.sample(n, torch.Generator().manual_seed(seed))
    return x.reshape(n, -1).double(), classify(x)


def check_moments(x, labels, means, variances, n_sigma=4.5):
    """Class-wise standardised residuals z = (x − m_k)/sqrt(v_k): each class mean ≈ 0 (SE 1/sqrt(n_k)) and the
    pooled variance ≈ 1 (SE sqrt(2/(n d))); pooling makes a few-% variance error detectable."""
    n, d = x.shape
    z = torch.empty_like(x)
    for k in range(len(means)):
        sel = labels == k
        z[sel] = (x[sel] - means[k]) / math.sqrt(variances[k])
        assert z[sel].mean(0).abs().max() < n_sigma / math.sqrt(sel.sum().item()), (k, z[sel].mean(0))
    assert abs(z.pow(2).mean().item() - 1) < n_sigma * math.sqrt(2 / (n * d)), z.pow(2).mean()


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_unguided_unconditional_reproduces_mixture(bed, name):
    y = torch.zeros(N, dtype=torch.long)  # target is irrelevant for the unconditional pass
    x = SAMPLERS[name]().sample(denoiser(bed, NoGuidance(conditional=False)), (N, 2, 1, 1), y, BatchRNG(0, N))
    labels, xf = classify(x), x.reshape(N, -1).double()
    ref_x, ref_labels = reference()
    means, variances = [], []
    for k in range(K):
        p = (ref_labels == k).double().mean().item()
        assert abs(p - MIX.weights[k].item()) < 0.01  # the classification rule itself is near exact
        count = (labels == k).sum().item()
        assert abs(count - N * p) < 4.5 * math.sqrt(N * p * (1 - p)), (k, count, N * p)
        rk = ref_x[ref_labels == k]
        means.append(rk.mean(0))
        variances.append(rk.var(0).mean().item())
    check_moments(xf, labels, means, variances)


@pytest.mark.parametrize("name", ["ddpm", "ddim_eta0", "heun", "dpmpp_2m"] + NEW)
def test_conditional_model_reproduces_each_class(bed, name):
    y = torch.arange(N) % K
    x = SAMPLERS[name]().sample(denoiser(bed, NoGuidance()), (N, 2, 1, 1), y, BatchRNG(1, N))
    check_moments(x.reshape(N, -1).double(), y, MIX.means, (MIX.stds**2).tolist())


@pytest.mark.parametrize("name", ["ddpm", "heun", "euler", "euler_ancestral", "dpmpp_2m_sde", "unipc"])
def test_classifier_guidance_s1_on_unconditional_samples_the_class_conditional(bed, name):
    # Bayes: ∇log p(x_t) + ∇log p(y|x_t) = ∇log p(x_t|y), so s = 1 on the exact unconditional score with the exact
    # classifier is the conditional model: for the ancestral form (mean shift) and the ODE form (ε shift).
    n = 1500
    y = torch.arange(n) % K
    x = SAMPLERS[name]().sample(denoiser(bed, ClassifierGuidance(1.0, conditional=False)), (n, 2, 1, 1), y,
                                BatchRNG(7, n))
    check_moments(x.reshape(n, -1).double(), y, MIX.means, (MIX.stds**2).tolist())


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cfg_w0_equals_the_conditional_model_exactly(bed, name):
    y = torch.arange(64) % K
    a = SAMPLERS[name]().sample(denoiser(bed, ClassifierFreeGuidance(0.0)), (64, 2, 1, 1), y, BatchRNG(3, 64))
    b = SAMPLERS[name]().sample(denoiser(bed, NoGuidance()), (64, 2, 1, 1), y, BatchRNG(3, 64))
    assert torch.equal(a, b)


def test_ddim_eta1_is_ddpm_with_fixed_small_variance(bed):
    # σ(η=1) = sqrt(β̃_t) and the DDIM mean equals the posterior mean, so the two samplers coincide.
    y = torch.arange(64) % 3
    run = lambda s: s.sample(denoiser(bed, NoGuidance()), (64, 2, 1, 1), y, BatchRNG(5, 64))
    a = run(DDPMSampler(BASE, "20", clip_denoised=False))
    torch.testing.assert_close(a, run(DDIMSampler(BASE, "20", eta=1.0, clip_denoised=False)), rtol=1e-4, atol=1e-4)
    assert (a - run(DDIMSampler(BASE, "20", clip_denoised=False))).abs().max() > 1e-2  # η = 0 is another sampler


@pytest.mark.parametrize("clip", [False, True])
def test_euler_without_churn_is_ddim_eta0(bed, clip):
    # Both are the exact Euler step of dx̃/dσ = ε in EDM's variable; same timesteps, same start.
    y = torch.arange(64) % 3
    g = ClassifierGuidance(2.0, conditional=False)  # the classifier term too: both take it in ε form (ADM Alg. 2)
    a = EulerSampler(BASE, "ddim25", clip_denoised=clip).sample(denoiser(bed, g), (64, 2, 1, 1), y, BatchRNG(5, 64))
    b = DDIMSampler(BASE, "ddim25", clip_denoised=clip).sample(denoiser(bed, g), (64, 2, 1, 1), y, BatchRNG(5, 64))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


class Recording(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x, t, *args):
        self.seen += t.tolist()
        return self.net(x, t, *args)


@pytest.mark.parametrize("make", [
    lambda: DDPMSampler(BASE, "10,10,10"), lambda: DDIMSampler(BASE, "ddim10"), lambda: DDIMSampler(BASE, "7"),
    lambda: EulerSampler(BASE, "edm12"), lambda: HeunSampler(BASE, "edm12", s_churn=40.0),
    lambda: DPMSolverPP2MSampler(BASE, "edm12"), lambda: EDM2HeunSampler(BASE, "edm12"),
    lambda: EulerAncestralSampler(BASE, "edm12"), lambda: DPMSolverPP2SAncestralSampler(BASE, "edm12"),
    lambda: DPMSolverPP2SAncestralSampler(BASE, "edm12", eta=0.5), lambda: DPMSolverPP2MSDESampler(BASE, "edm12"),
    lambda: DPMSolverPP2SAncestralSampler(BASE, "edm100", eta=0.0),  # dense grid: midpoints stay in [σ_{i+1}, σ_i)
    lambda: DPMSolverPP3MSDESampler(BASE, "edm12"), lambda: UniPCSampler(BASE, "edm12", order=3),
    lambda: DEISSampler(BASE, "edm12")])
def test_networks_see_original_timesteps(bed, make):
    model, classifier = Recording(bed[0]), Recording(bed[1])
    s = make()
    den = GuidedDenoiser(ClassifierGuidance(1.0, conditional=False), {"unet": model, "classifier": classifier}, K)
    s.sample(den, (8, 2, 1, 1), torch.arange(8) % 3, BatchRNG(0, 8))
    expected = [t for st in s.evaluation_steps() for t in [st.t] * 8]
    assert model.seen == expected and classifier.seen == expected  # in order, every evaluation accounted for
    assert all(isinstance(t, int) and 0 <= t < T for t in model.seen) and max(model.seen) >= 900
    if s.respacing[:3] not in ("edm",):
        assert set(model.seen) == space_timesteps(T, s.respacing)


def test_edm_grid_snaps_to_trained_timesteps():
    """EDM's sampler: clamp σ_min/σ_max to the model's range, build the ρ-grid, round each σ to the nearest trained
    σ (iDDPMPrecond.round_sigma); the solver then uses that timestep's σ."""
    sig = sigmas_of(BASE.alphas_cumprod)
    kept = kept_timesteps(BASE.alphas_cumprod, "edm18")
    grid = edm_sigmas(18, max(0.002, sig[0]), min(80.0, sig[-1]), 7.0)
    expected = {int(np.argmin(np.abs(sig - s))) for s in grid}
    assert kept == sorted(expected) and len(kept) == 18 and kept[0] == 0  # σ_min 0.002 < σ(0) ≈ 0.01: clamped
    k = kept[-1]  # σ_max = 80 lands on the nearest trained σ
    assert abs(sig[k] - 80) <= min(abs(sig[k - 1] - 80), abs(sig[k + 1] - 80))
    assert len(kept_timesteps(BASE.alphas_cumprod, "edm50")) == 50
    h = HeunSampler(BASE, "edm18")
    for i in range(h.steps):  # the step's σ is exactly its timestep's σ
        st = h.step_at(i)
        assert st.t == kept[::-1][i] and st.sigma == pytest.approx(float(sig[st.t]), rel=1e-12)
    # churn: σ̂ = σ_i (1 + γ) snapped to the nearest trained σ (kept when above t_i), with its own exact σ
    c = HeunSampler(BASE, "edm18", s_churn=5.0)
    gamma = min(5.0 / c.steps, math.sqrt(2) - 1)
    for i in range(c.steps):
        st, hat = c.step_at(i), c.churned(i)
        target = st.sigma * (1 + gamma)
        assert hat.t >= st.t and hat.sigma == pytest.approx(float(sig[hat.t]), rel=1e-12)
        assert hat.index == i and hat.step_sigma == st.sigma  # it belongs to step i
        if hat.t > st.t:
            assert abs(hat.sigma - target) == pytest.approx(float(np.min(np.abs(sig - target))), abs=1e-9)
    with pytest.raises(GuidanceError):
        kept_timesteps(BASE.alphas_cumprod, "edm10", sigma_min=200.0, sigma_max=300.0)  # outside the model's range


def test_heun_evaluates_twice_per_step_except_the_last(bed):
    h = HeunSampler(BASE, "edm10")
    den = denoiser(bed, NoGuidance())
    h.sample(den, (4, 2, 1, 1), torch.arange(4) % 3, BatchRNG(0, 4))
    assert den.cost_per_sample()["nfe"] == 2 * h.steps - 1 == len(h.evaluation_steps())


def test_dpm_solver_pp_2m_matches_the_update_by_hand():
    """Three steps with a denoiser whose x̂0 is known, checked against Lu et al. 2022 Alg. 2 written out."""
    class Const(torch.nn.Module):  # ε such that x̂0 = c_t (a different constant at every t); records its inputs
        seen = []

        def forward(self, x, t, y):
            self.seen.append(x.double())
            ab = torch.from_numpy(BASE.alphas_cumprod).float()[t].reshape(-1, 1, 1, 1)
            c = (t.float() / 1000).reshape(-1, 1, 1, 1)
            return (x - ab.sqrt() * c) / (1 - ab).sqrt()
    s = DPMSolverPP2MSampler(BASE, "3", clip_denoised=False)
    x_T = torch.randn(2, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    rng = type("R", (), {"randn": lambda self, shape: x_T, "__len__": lambda self: 2})()
    out = s.sample(GuidedDenoiser(NoGuidance(), {"unet": Const()}, 3), (2, 1, 1, 1), torch.zeros(2, dtype=torch.long), rng)
    ts = [s.step_at(i).t for i in range(3)]
    sig = [float(sigmas_of(BASE.alphas_cumprod)[t]) for t in ts]
    d = [t / 1000 for t in ts]
    x = x_T.double() * math.sqrt(1 + sig[0] ** 2)
    h0, h1 = math.log(sig[0] / sig[1]), math.log(sig[1] / sig[2])
    x = sig[1] / sig[0] * x - math.expm1(-h0) * d[0]                       # first step: first order
    r = h0 / h1
    x = sig[2] / sig[1] * x - math.expm1(-h1) * ((1 + 1 / (2 * r)) * d[1] - 1 / (2 * r) * d[0])
    # the third evaluation sees the VP input x̃ / sqrt(1 + σ²); the last step to σ = 0 returns its x̂0
    torch.testing.assert_close(Const.seen[2], x / math.sqrt(1 + sig[2] ** 2), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.double(), torch.full_like(x, d[2]), rtol=0, atol=1e-4)
    assert ts == sorted(ts, reverse=True) and (Const.seen[2] - Const.seen[1]).abs().max() > 1e-3


class CountingRNG(BatchRNG):
    def __init__(self, *a):
        super().__init__(*a)
        self.calls = 0

    def randn(self, shape):
        self.calls += 1
        return super().randn(shape)


def test_noise_draws_and_last_step(bed):
    y = torch.arange(4) % 3
    for s, draws in [(DDPMSampler(BASE, "12"), 12), (DDIMSampler(BASE, "12", eta=0.5), 12), (DDIMSampler(BASE, "12"), 1),
                     (EulerSampler(BASE, "12"), 1), (DPMSolverPP2MSampler(BASE, "12"), 1),
                     (EulerAncestralSampler(BASE, "12"), 12), (EulerAncestralSampler(BASE, "12", eta=0), 1),
                     (DPMSolverPP2SAncestralSampler(BASE, "12"), 12), (DPMSolverPP2MSDESampler(BASE, "12"), 12),
                     (DPMSolverPP3MSDESampler(BASE, "12"), 12), (DPMSolverPP3MSDESampler(BASE, "12", eta=0), 1),
                     (UniPCSampler(BASE, "12"), 1), (DEISSampler(BASE, "12"), 1), (EDM2HeunSampler(BASE, "12"), 1),
                     (FlowEulerSampler(BASE, "flow12"), 1), (FlowSDESampler(BASE, "flow12"), 12),
                     (FlowSDESampler(BASE, "flow12", last_step=None), 13),
                     (FlowSDESampler(BASE, "flow12", last_step="tweedie"), 12)]:
        rng = CountingRNG(0, 4)
        s.sample(denoiser(bed, NoGuidance()), (4, 2, 1, 1), y, rng)
        assert rng.calls == draws  # x_T, then one draw per step except the last (none at all when deterministic;
        # flow_sde with last_step=None: the last step too)


def test_clip_denoised_keeps_samples_in_range(bed):
    y = torch.arange(64) % 3  # the mixture's data lies far outside [-1, 1]
    for make in (DDPMSampler, DDIMSampler, EulerSampler, HeunSampler, DPMSolverPP2MSampler, EDM2HeunSampler,
                 EulerAncestralSampler, DPMSolverPP2SAncestralSampler, DPMSolverPP2MSDESampler, DPMSolverPP3MSDESampler,
                 UniPCSampler, DEISSampler):
        x = make(BASE, "20", clip_denoised=True).sample(denoiser(bed, NoGuidance()), (64, 2, 1, 1), y, BatchRNG(0, 64))
        assert x.abs().max() <= 1.0 + 1e-5, make.name
    x = DDIMSampler(BASE, "20", clip_denoised=False).sample(denoiser(bed, NoGuidance()), (64, 2, 1, 1), y, BatchRNG(0, 64))
    assert x.abs().max() > 1.5


def test_bad_sampler_input_is_one_line_error(bed):
    with pytest.raises(GuidanceError):
        DDIMSampler(create_diffusion(T, timestep_respacing="ddim10"), "ddim5")  # respaced twice
    for bad in (lambda: HeunSampler(BASE, "edmx"), lambda: HeunSampler(BASE, "edm10", s_churn=-1),
                lambda: HeunSampler(BASE, "edm10", sigma_min=5, sigma_max=1), lambda: DDIMSampler(BASE, "20", eta=-1),
                lambda: DDIMSampler(BASE, "20", eta=1.5), lambda: EulerAncestralSampler(BASE, "20", eta=1.5),
                lambda: DPMSolverPP2MSDESampler(BASE, "20", s_noise=-1), lambda: UniPCSampler(BASE, "20", order=4),
                lambda: DEISSampler(BASE, "20", order=0)):
        with pytest.raises(GuidanceError) as e:
            bad()
        assert "\n" not in str(e.value)
    with pytest.raises(GuidanceError):
        DDPMSampler(BASE, "4").sample(denoiser(bed, NoGuidance()), (3, 2, 1, 1), torch.zeros(4, dtype=torch.long),
                                      BatchRNG(0, 4))


def test_learned_variance_model_needs_a_learned_range_diffusion_for_ddpm(bed):
    class WithVariance(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.cat([bed[0](x, t, y), torch.zeros_like(x)], dim=1)
    d = GuidedDenoiser(NoGuidance(), {"unet": WithVariance()}, K)
    with pytest.raises(GuidanceError, match="learned_range"):
        DDPMSampler(BASE, "5").sample(d, (4, 2, 1, 1), torch.zeros(4, dtype=torch.long), BatchRNG(0, 4))
    x = DDIMSampler(BASE, "5").sample(d, (4, 2, 1, 1), torch.zeros(4, dtype=torch.long), BatchRNG(0, 4))
    assert torch.isfinite(x).all()  # ε-form samplers have no use for the variance: they ignore it


@pytest.mark.parametrize("eta", [0.0, 0.6, 1.0])
def test_euler_ancestral_is_ddim_with_the_same_eta(bed, eta):
    # σ_up² = η² σ'²(σ² − σ'²)/σ² is DDIM's σ_t²/ᾱ_{t−1} (eq. 16 in σ), and the Euler step to σ_down lands on
    # x̂0 + σ_down ε = DDIM's deterministic part: the same chain, the same draws.
    y = torch.arange(64) % 3
    g = ClassifierGuidance(2.0, conditional=False)
    a = EulerAncestralSampler(BASE, "ddim25", eta=eta).sample(denoiser(bed, g), (64, 2, 1, 1), y, BatchRNG(5, 64))
    b = DDIMSampler(BASE, "ddim25", eta=eta).sample(denoiser(bed, g), (64, 2, 1, 1), y, BatchRNG(5, 64))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_sde_solvers_at_eta0_are_the_ode_solvers(bed):
    # DPM-Solver++(2M) SDE (midpoint) with η = 0 is DPM-Solver++(2M) term by term; (3M) at η = 0 differs from (2M)
    # only by its second- and third-order terms, which vanish on a linear-in-λ x̂0 but not here.
    y = torch.arange(64) % 3
    run = lambda s: s.sample(denoiser(bed, NoGuidance()), (64, 2, 1, 1), y, BatchRNG(2, 64))
    ode = run(DPMSolverPP2MSampler(BASE, "edm15", clip_denoised=False))
    torch.testing.assert_close(run(DPMSolverPP2MSDESampler(BASE, "edm15", clip_denoised=False, eta=0)), ode,
                               rtol=1e-5, atol=1e-5)
    assert (run(DPMSolverPP2MSDESampler(BASE, "edm15", clip_denoised=False)) - ode).abs().max() > 1e-2


def test_edm2_heun_is_heun_from_sigma_max_noise(bed):
    """The one difference from `heun` besides its defaults: x̃ starts at σ_0 n, not sqrt(1 + σ_0²) n (ADM's prior)."""
    y = torch.arange(16) % 3
    s = EDM2HeunSampler(BASE, "edm12")
    x = s.sample(denoiser(bed, NoGuidance()), (16, 2, 1, 1), y, BatchRNG(4, 16))
    sig = s.step_at(0).sigma
    scaled = type("R", (BatchRNG,), {"randn": lambda self, shape: BatchRNG.randn(self, shape) * sig
                                     / math.sqrt(1 + sig**2)})(4, 16)
    ref = HeunSampler(BASE, "edm12", clip_denoised=False).sample(denoiser(bed, NoGuidance()), (16, 2, 1, 1), y, scaled)
    torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
    assert s.steps == 12 and not s.clip_denoised and EDM2HeunSampler(BASE).respacing == "edm32"


def test_unipc_and_deis_first_steps_by_hand():
    """A denoiser whose x̂0 is a known constant per timestep: one step of each order written out."""
    class Const(torch.nn.Module):
        def forward(self, x, t, y):
            ab = torch.from_numpy(BASE.alphas_cumprod).float()[t].reshape(-1, 1, 1, 1)
            c = (t.float() / 1000).reshape(-1, 1, 1, 1)
            return (x - ab.sqrt() * c) / (1 - ab).sqrt()
    x_T = torch.randn(2, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    rng = type("R", (), {"randn": lambda self, shape: x_T, "__len__": lambda self: 2})()
    run = lambda s: s.sample(GuidedDenoiser(NoGuidance(), {"unet": Const()}, 3), (2, 1, 1, 1),
                             torch.zeros(2, dtype=torch.long), rng).double()
    # 2 steps: the first is DDIM (first order), the last returns x̂0 of the last evaluation = c_{t_1}, for both.
    for s in (UniPCSampler(BASE, "2", clip_denoised=False), DEISSampler(BASE, "2", clip_denoised=False)):
        assert run(s).flatten().tolist() == pytest.approx([s.step_at(1).t / 1000] * 2, abs=5e-4)  # fp32 at t = 0
    # DEIS(2), 3 steps: x̃_2 = x̃_1 + c_0 ε_1 + c_1 ε_0 with the Lagrange weights in log σ integrated over σ; x̂0 = c
    # const in σ between nodes => ε_i = (x̃_i − c_i)/σ_i; checked through x_0 = x̂0(x̃_2) = c_{t_2} and against a
    # 2000-point trapezoid of the interpolant.
    from guidance.sampling.deis import deis_coefficients
    s0, s1, s2 = 3.0, 1.0, 0.4
    u0, u1 = math.log(s1), math.log(s0)
    grid = np.linspace(s1, s2, 2001)
    ell0 = (np.log(grid) - u1) / (u0 - u1)
    trap = lambda f: float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(grid)))
    assert deis_coefficients([s1, s0], s2) == pytest.approx([trap(ell0), trap(1 - ell0)], rel=1e-6)


@pytest.mark.parametrize("make", [
    lambda: EulerAncestralSampler(BASE, "edm8"), lambda: DPMSolverPP2SAncestralSampler(BASE, "edm8"),
    lambda: DPMSolverPP2MSDESampler(BASE, "edm8"), lambda: DPMSolverPP3MSDESampler(BASE, "edm8"),
    lambda: FlowSDESampler(BASE, "flow8")])
def test_stochastic_samplers_draw_from_per_image_streams(bed, make):
    """Image i depends only on (seed, i): bitwise the same in a batch of 12, of 5 and alone."""
    from guidance.sampling import PerImageRNG

    def run(batch, indices=range(12)):
        out, indices = [], list(indices)
        for a in range(0, len(indices), batch):
            rng = PerImageRNG(3, indices[a:a + batch])
            out.append(make().sample(denoiser(bed, ClassifierFreeGuidance(1.0)), (len(rng), 2, 1, 1),
                                     torch.tensor(indices[a:a + batch]) % K, rng))
        return torch.cat(out)
    x = run(12)
    assert torch.equal(x, run(5)) and torch.equal(x[7:8], run(1, [7]))
    assert not torch.equal(x, make().sample(denoiser(bed, ClassifierFreeGuidance(1.0)), (12, 2, 1, 1),
                                            torch.arange(12) % K, PerImageRNG(4, range(12))))
