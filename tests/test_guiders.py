"""Guidance strategies on the guided denoiser: exact identities on the analytic test bed, counted cost, ADM's
update forms by hand, statistics of guided samples, bad input."""

import math

import numpy as np
import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders import (GUIDERS, PRESETS, CFGClassifierGuidance, ClassifierFreeGuidance,
                              ClassifierGuidance, NoGuidance, build_guider, cfg_w_to_classifier_scale, describe_point,
                              cfg_w_to_guidance_scale, guidance_scale_to_cfg_w)
from guidance.engine import Step
from guidance.sampling import BatchRNG, DDIMSampler, DDPMSampler, GuidedDenoiser, HeunSampler
from guidance.sampling.grid import sigmas_of
from guidance.testbed import GaussianMixture, make_testbed

T = 1000
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K = MIX.num_classes
BASE = create_diffusion(T)
SIG = sigmas_of(BASE.alphas_cumprod)


@pytest.fixture(scope="module")
def bed():
    _, model, classifier = make_testbed(BASE, MIX)
    return model, classifier


class CountingNet(torch.nn.Module):
    """Wraps a net; records each forward's batch size; optionally appends fake learned-variance channels."""

    def __init__(self, net, learn_sigma=False):
        super().__init__()
        self.net, self.learn_sigma, self.calls = net, learn_sigma, []

    def forward(self, x, t, y=None):
        self.calls.append(len(x))
        out = self.net(x, t, y) if y is not None else self.net(x, t)
        if not self.learn_sigma:
            return out
        return torch.cat([out, torch.tanh(x + y.float().reshape(-1, 1, 1, 1) / 10)], dim=1)


def den(bed, guider, learn_sigma=False, batching="stacked"):
    nets = {"unet": CountingNet(bed[0], learn_sigma), "classifier": CountingNet(bed[1])}
    return GuidedDenoiser(guider, nets, K, batching=batching)


def noisy_batch(n=256, seed=0, t=None):
    g = torch.Generator().manual_seed(seed)
    x0, y = MIX.sample(n, g)
    t = int(torch.randint(0, T, (1,), generator=g)) if t is None else t
    x = BASE.q_sample(x0, torch.full((n,), t), torch.randn(x0.shape, generator=g))
    return x, y, Step(t, float(BASE.alphas_cumprod[t]))


def exact_eps(bed, x, y, step, null=False):
    labels = torch.full_like(y, K) if null else y
    return bed[0](x, torch.full_like(y, step.t), labels)


def test_registry_and_counted_costs(bed):
    assert set(GUIDERS) >= {"none", "classifier", "cfg", "cfg_classifier"} and "cfg_interval" in PRESETS
    x, y, step = noisy_batch(16, t=300)
    cases = [(build_guider("none"), 1, 0), (build_guider("cfg", scale=0), 1, 0), (build_guider("cfg", scale=2), 2, 0),
             (build_guider("classifier", scale=1), 1, 1), (build_guider("classifier", scale=0), 1, 0),
             (build_guider("cfg_classifier", scale=1, classifier_scale=2), 2, 1),
             (build_guider("cfg_classifier", scale=0, classifier_scale=0), 1, 0)]
    for g, nfe, clf in cases:
        d = den(bed, g)
        d.reset(16)
        d(x, y, step)
        assert d.cost_per_sample() == {"nfe": nfe, "classifier_forward": clf, "classifier_backward": clf}, g
        assert d.networks["unet"].calls == [16 * nfe]  # every requested row in ONE forward
        assert sum(d.networks["classifier"].calls) == 16 * clf


@pytest.mark.parametrize("make", [
    lambda: ClassifierGuidance(float("nan")), lambda: ClassifierGuidance(float("inf")), lambda: ClassifierGuidance(-1.0),
    lambda: ClassifierFreeGuidance(float("nan")), lambda: ClassifierFreeGuidance(-0.5), lambda: ClassifierFreeGuidance("abc"),
    lambda: CFGClassifierGuidance(1.0, classifier_scale=float("nan")),
])
def test_bad_input_is_one_line_guidance_error(make):
    with pytest.raises(GuidanceError) as e:
        make()
    assert "\n" not in str(e.value)


def test_missing_classifier_is_one_line_error(bed):
    for g in (ClassifierGuidance(1.0), CFGClassifierGuidance(1.0, 1.0)):
        with pytest.raises(GuidanceError, match="classifier_ckpt") as e:
            GuidedDenoiser(g, {"unet": bed[0]}, K)
        assert "\n" not in str(e.value)


def test_scale_converters():
    assert cfg_w_to_guidance_scale(0) == 1 and cfg_w_to_guidance_scale(3) == 4
    assert guidance_scale_to_cfg_w(7.5) == 6.5
    with pytest.raises(GuidanceError):
        guidance_scale_to_cfg_w(0.5)  # g < 1 is w < 0
    assert cfg_w_to_classifier_scale(2) == 2 and cfg_w_to_classifier_scale(2, conditional=False) == 3


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_cfg_is_eq6_in_one_batched_forward(bed, learn_sigma):
    x, y, step = noisy_batch(64, t=500)
    w = 2.5
    d = den(bed, ClassifierFreeGuidance(w), learn_sigma)
    pred = d(x, y, step)
    assert d.networks["unet"].calls == [2 * 64]  # cond and null rows in ONE forward
    cond, uncond = exact_eps(bed, x, y, step), exact_eps(bed, x, y, step, null=True)
    torch.testing.assert_close(pred.eps, (1 + w) * cond - w * uncond, rtol=0, atol=1e-6)
    ab = step.alpha_bar  # x̂0 from the guided ε, DDPM eq. 4 solved for x_0
    torch.testing.assert_close(pred.x0, (x - math.sqrt(1 - ab) * pred.eps) / math.sqrt(ab), rtol=1e-5, atol=1e-5)
    if learn_sigma:  # the conditional variance channels are kept
        torch.testing.assert_close(pred.var_v, torch.tanh(x + y.float().reshape(-1, 1, 1, 1) / 10))
    assert pred.grad is None


def test_split_batching_runs_one_forward_per_pass_with_the_same_result(bed):
    x, y, step = noisy_batch(64, t=500)
    stacked = den(bed, CFGClassifierGuidance(2.0, 1.0))
    split = den(bed, CFGClassifierGuidance(2.0, 1.0), batching="split")
    a, b = stacked(x, y, step), split(x, y, step)
    assert split.networks["unet"].calls == [64, 64] and stacked.networks["unet"].calls == [128]
    torch.testing.assert_close(a.eps, b.eps, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=1e-6)
    assert stacked.counts == split.counts  # cost is the same work, however it is batched
    with pytest.raises(GuidanceError):
        GuidedDenoiser(NoGuidance(), {"unet": bed[0]}, K, batching="sometimes")


def test_cfg_w0_is_the_conditional_model_exactly(bed):
    x, y, step = noisy_batch()
    a, b = den(bed, ClassifierFreeGuidance(0.0))(x, y, step), den(bed, NoGuidance())(x, y, step)
    assert torch.equal(a.eps, b.eps) and torch.equal(a.x0, b.x0)


def test_classifier_guidance_s1_on_uncond_is_the_conditional_eps(bed):
    # ADM Alg. 2 with the exact classifier at s = 1: ε_u − sqrt(1−ᾱ)∇log p(y|x_t) = ε_c (Bayes).
    for t in (50, 400, 800):
        x, y, step = noisy_batch(t=t)
        pred = den(bed, ClassifierGuidance(1.0, conditional=False))(x, y, step).eps_form(x, step)
        torch.testing.assert_close(pred.eps, exact_eps(bed, x, y, step), rtol=1e-3, atol=1e-3)
    assert (exact_eps(bed, x, y, step, null=True) - exact_eps(bed, x, y, step)).abs().max() > 0.05  # t = 800
    # CFG at w == classifier guidance at s = w on the conditional model (implicit classifier, see scales.py).
    x, y, step = noisy_batch(t=400)
    w = 1.5
    cfg = den(bed, ClassifierFreeGuidance(w))(x, y, step)
    cg = den(bed, ClassifierGuidance(cfg_w_to_classifier_scale(w)))(x, y, step).eps_form(x, step)
    torch.testing.assert_close(cg.eps, cfg.eps, rtol=1e-3, atol=1e-3)


def test_ddim_classifier_guidance_is_adms_update_without_reclipping(bed):
    """ADM's ddim_sample + condition_score, by hand: x̂0 clipped, ε from it, ε' = ε − s sqrt(1−ᾱ)∇, x̂0' from ε'
    (NOT clipped again), x_prev = sqrt(ᾱ_prev) x̂0' + sqrt(1 − ᾱ_prev) ε'."""
    model, clf = bed
    s = DDIMSampler(BASE, "ddim10", clip_denoised=True)
    x, y, _ = noisy_batch(32, t=900)
    step, scale = s.step_at(0), 30.0
    d = GuidedDenoiser(ClassifierGuidance(scale), {"unet": model, "classifier": clf}, K)
    d.reset(32)
    out = s.step(d, x, 0, y, rng=None)
    ab, ab_prev = step.alpha_bar, float(BASE.alphas_cumprod[s.step_at(1).t])
    eps = model(x, torch.full_like(y, step.t), y)
    x0 = ((x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)).clamp(-1, 1)
    eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        lp = torch.log_softmax(clf(xi, torch.full_like(y, step.t)), -1)[torch.arange(32), y].sum()
        grad = torch.autograd.grad(lp, xi)[0]
    eps = eps - scale * math.sqrt(1 - ab) * grad
    x0 = (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    assert x0.abs().max() > 1.05  # the guided x̂0 leaves [-1, 1]: re-clipping would change the step
    torch.testing.assert_close(out, math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps, rtol=1e-4, atol=1e-4)


def test_ddpm_classifier_guidance_shifts_the_mean_by_sigma_grad(bed):
    """ADM Alg. 1 by hand: μ + s Σ ∇log p(y|x_t), Σ = β̃ (fixed_small) of the respaced step."""
    model, clf = bed
    s = DDPMSampler(BASE, "50", clip_denoised=False)
    x, y, _ = noisy_batch(32, t=500)
    zero = type("Z", (), {"randn": lambda self, shape: torch.zeros(32, *shape)})()
    run = lambda g: s.step(GuidedDenoiser(g, {"unet": model, "classifier": clf}, K), x, 10, y, zero)
    step = s.step_at(10)
    with torch.enable_grad():
        xi = x.detach().requires_grad_(True)
        lp = torch.log_softmax(clf(xi, torch.full_like(y, step.t)), -1)[torch.arange(32), y].sum()
        grad = torch.autograd.grad(lp, xi)[0]
    var = float(s.diffusion.posterior_variance[s.steps - 1 - 10])
    torch.testing.assert_close(run(ClassifierGuidance(3.0)) - run(NoGuidance()), 3.0 * var * grad, rtol=1e-4, atol=1e-5)


# A narrow class nested inside a wide one: p(y=0 | x) peaks at the shared mean, so stronger guidance toward
# class 0 concentrates its samples there (for well-separated classes guidance would push them *away* instead).
NESTED = GaussianMixture(means=[[0.5, -0.5], [0.5, -0.5], [-2.0, 1.0]], stds=[0.2, 1.0, 0.3], weights=[0.3, 0.5, 0.2])


@pytest.mark.parametrize("strategy", ["classifier", "cfg"])
def test_larger_scale_moves_samples_toward_the_class_mode(strategy):
    _, model, clf = make_testbed(BASE, NESTED)
    n = 1000
    s = DDIMSampler(BASE, "ddim50", clip_denoised=False)
    y = torch.zeros(n, dtype=torch.long)
    dists = []
    for scale in (0.0, 1.0, 2.0, 4.0):
        g = ClassifierGuidance(scale, conditional=False) if strategy == "classifier" else ClassifierFreeGuidance(scale)
        d = GuidedDenoiser(g, {"unet": model, "classifier": clf}, NESTED.num_classes)
        x = s.sample(d, (n, 2, 1, 1), y, BatchRNG(11, n)).reshape(n, -1).double()
        dists.append((x - NESTED.means[0]).norm(dim=1))
    for a, b in zip(dists, dists[1:]):  # paired samples (same seeds): the mean decrease must beat its noise
        diff = a - b
        assert diff.mean() > 4 * diff.std() / math.sqrt(n), [float(d.mean()) for d in dists]


# ---- CFG in a limited interval of σ (Kynkäänniemi et al. 2024) ----

def test_cfg_interval_is_cfg_inside_and_conditional_outside(bed):
    lo, hi = float(SIG[200]), float(SIG[600])  # (σ(200), σ(600)]: t = 200 is outside, t = 600 inside
    g = build_guider("cfg_interval", scale=2.0, sigma_lo=lo, sigma_hi=hi)
    for t, inside in [(0, False), (199, False), (200, False), (201, True), (400, True), (600, True), (601, False),
                      (999, False)]:
        x, y, step = noisy_batch(64, t=t)
        d = den(bed, g)
        pred = d(x, y, step)
        ref = den(bed, ClassifierFreeGuidance(2.0) if inside else NoGuidance())(x, y, step)
        assert torch.equal(pred.eps, ref.eps) and d.networks["unet"].calls == [128 if inside else 64], t
    x, y, step = noisy_batch(64, t=400)
    assert torch.equal(den(bed, build_guider("cfg_interval", scale=0.0))(x, y, step).eps, den(bed, NoGuidance())(x, y, step).eps)


def test_cfg_interval_covered_steps_and_counted_cost(bed):
    g = build_guider("cfg_interval", scale=1.5, sigma_lo=float(SIG[150]), sigma_hi=float(SIG[600]))
    s = DDIMSampler(BASE, "ddim10", clip_denoised=False)
    covered = g.covered_steps(s.evaluation_steps())
    assert [t for t, _, _ in covered] == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert [t for t, _, inside in covered if inside] == [600, 500, 400, 300, 200]
    d = den(bed, g)
    s.sample(d, (4, 2, 1, 1), torch.arange(4) % K, BatchRNG(0, 4))
    assert d.cost_per_sample()["nfe"] == 10 + 5 == sum(d.networks["unet"].calls) / 4
    h = HeunSampler(BASE, "edm10")  # a 2nd-order sampler: its second evaluations are listed (and counted) too
    d = den(bed, g)
    h.sample(d, (4, 2, 1, 1), torch.arange(4) % K, BatchRNG(0, 4))
    cov = g.covered_steps(h.evaluation_steps())
    assert len(cov) == 2 * h.steps - 1 and d.cost_per_sample()["nfe"] == len(cov) + sum(c[2] for c in cov)


@pytest.mark.parametrize("lo,hi", [(5.0, 1.0), (-1, 5), (1.0, 1.0), (float("nan"), 5), ("a", 5)])
def test_cfg_interval_bad_interval_is_one_line_guidance_error(lo, hi):
    with pytest.raises(GuidanceError) as e:
        build_guider("cfg_interval", scale=1.0, sigma_lo=lo, sigma_hi=hi)
    assert "\n" not in str(e.value)


def test_guiders_describe_their_report_rows():
    d = describe_point({"strategy": "cfg_interval", "scale": 2.0, "sigma_lo": 0.0, "sigma_hi": 6.2})
    assert d.table.kind == "cfg_interval" and d.cells == ("2", "(0, 6.2]") and d.x == 2.0 and d.x_symbol == "w"
    d = GUIDERS["classifier"].describe({"strategy": "classifier", "scale": 0.0, "conditional": False})
    assert d.cells == ("unconditional", "classifier", "0") and d.unguided and d.table.classifier_cost
    assert GUIDERS["none"].describe({"conditional": True}).table is None  # a baseline
    assert np.all([isinstance(g.networks, tuple) and "unet" in g.networks for g in GUIDERS.values()])


def test_cfg_interval_decides_per_step_under_heun(bed):
    """Heun's second evaluation (at σ_{i+1}) follows its step's decision, taken on σ_i: as the paper's sampler,
    which switches by step index."""
    h = HeunSampler(BASE, "edm12")
    sig = [h.step_at(i).sigma for i in range(h.steps)]
    g = build_guider("cfg_interval", scale=2.0, sigma_lo=sig[8], sigma_hi=sig[4])  # steps 4..7 guided: σ_i in (σ_8, σ_4]
    cov = g.covered_steps(h.evaluation_steps())
    first = [c for k, c in enumerate(cov) if k % 2 == 0]
    second = [c for k, c in enumerate(cov) if k % 2 == 1]
    assert [c[2] for c in first] == [4 <= i <= 7 for i in range(h.steps)]
    assert [c[2] for c in second] == [4 <= i <= 7 for i in range(h.steps - 1)]
    assert second[7][2] and second[7][1] == pytest.approx(sig[8])  # guided at σ_8 (outside) as part of step 7
    assert not second[3][2] and second[3][1] == pytest.approx(sig[4])  # unguided at σ_4 as part of step 3
    d = den(bed, g)
    h.sample(d, (4, 2, 1, 1), torch.arange(4) % K, BatchRNG(0, 4))
    assert d.cost_per_sample()["nfe"] == len(cov) + 4 + 4  # 4 guided steps x 2 evaluations each
