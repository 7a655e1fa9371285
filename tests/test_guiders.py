"""Guidance strategies: exact identities on the analytic test bed, statistics of guided samples, bad input."""

import math

import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders import (GUIDERS, CFGClassifierGuidance, CFGIntervalGuidance, ClassifierFreeGuidance, ClassifierGuidance, GuidanceCost,
                              NoGuidance, build_guider, cfg_w_to_classifier_scale, cfg_w_to_guidance_scale,
                              guidance_scale_to_cfg_w)
from guidance.sampling import BatchRNG, DDIMSampler, DDPMSampler
from guidance.testbed import GaussianMixture, make_testbed

T = 1000
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K = MIX.num_classes
BASE = create_diffusion(T)


@pytest.fixture(scope="module")
def bed():
    _, model, classifier = make_testbed(BASE, MIX)
    return model, classifier


def noisy_batch(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, y = MIX.sample(n, g)
    t = torch.randint(0, T, (n,), generator=g)
    x = BASE.q_sample(x0, t, torch.randn(x0.shape, generator=g))
    return x, t, y, torch.from_numpy(BASE.alphas_cumprod).float()[t].reshape(-1, 1, 1, 1)


def test_registry_and_costs(bed):
    _, clf = bed
    assert set(GUIDERS) == {"none", "classifier", "cfg", "cfg_classifier", "cfg_interval"}
    assert build_guider("none", null_label=K).cost() == GuidanceCost(1, 0, 0)
    assert build_guider("cfg", scale=0, null_label=K).cost() == GuidanceCost(1, 0, 0)   # null pass skipped
    assert build_guider("cfg", scale=2, null_label=K).cost() == GuidanceCost(2, 0, 0)
    assert build_guider("classifier", scale=1, classifier=clf).cost() == GuidanceCost(1, 1, 1)
    assert build_guider("classifier", scale=0, classifier=clf).cost() == GuidanceCost(1, 0, 0)
    assert build_guider("cfg_classifier", scale=1, classifier_scale=2, classifier=clf, null_label=K).cost() == GuidanceCost(2, 1, 1)
    assert GuidanceCost(2, 1, 1).times(10) == GuidanceCost(20, 10, 10)


@pytest.mark.parametrize("make", [
    lambda c: ClassifierGuidance(float("nan"), classifier=c),
    lambda c: ClassifierGuidance(float("inf"), classifier=c),
    lambda c: ClassifierGuidance(-1.0, classifier=c),
    lambda c: ClassifierGuidance(1.0, classifier=None),
    lambda c: ClassifierFreeGuidance(float("nan"), null_label=K),
    lambda c: ClassifierFreeGuidance(-0.5, null_label=K),
    lambda c: ClassifierFreeGuidance("abc", null_label=K),
    lambda c: ClassifierFreeGuidance(1.0, null_label=None),
    lambda c: CFGClassifierGuidance(1.0, classifier_scale=float("nan"), classifier=c, null_label=K),
    lambda c: CFGClassifierGuidance(1.0, classifier_scale=1.0, classifier=None, null_label=K),
    lambda c: NoGuidance(conditional=False, null_label=None),
])
def test_bad_input_is_one_line_guidance_error(bed, make):
    with pytest.raises(GuidanceError) as e:
        make(bed[1])
    assert "\n" not in str(e.value)


def test_scale_converters():
    assert cfg_w_to_guidance_scale(0) == 1 and cfg_w_to_guidance_scale(3) == 4
    assert guidance_scale_to_cfg_w(7.5) == 6.5
    with pytest.raises(GuidanceError):
        guidance_scale_to_cfg_w(0.5)  # g < 1 is w < 0
    assert cfg_w_to_classifier_scale(2) == 2 and cfg_w_to_classifier_scale(2, conditional=False) == 3


def test_cfg_w0_is_the_conditional_model_exactly(bed):
    model, _ = bed
    x, t, y, _ = noisy_batch()
    assert torch.equal(ClassifierFreeGuidance(0.0, null_label=K).model_output(model, x, t, y), model(x, t, y))
    s = DDIMSampler(create_diffusion(T, timestep_respacing="ddim20"), eta=1.0, clip_denoised=False)
    y = torch.arange(64) % K
    a = s.sample(model, ClassifierFreeGuidance(0.0, null_label=K), (64, 2, 1, 1), y, BatchRNG(3, 64))
    b = s.sample(model, NoGuidance(null_label=K), (64, 2, 1, 1), y, BatchRNG(3, 64))
    assert torch.equal(a, b)


class CountingNet(torch.nn.Module):
    """Wraps a net; counts forwards; optionally appends fake learned-variance channels (a function of x, t, y)."""

    def __init__(self, net, learn_sigma=False):
        super().__init__()
        self.net, self.learn_sigma, self.calls = net, learn_sigma, []

    def forward(self, x, t, y):
        self.calls.append(len(x))
        eps = self.net(x, t, y)
        if not self.learn_sigma:
            return eps
        return torch.cat([eps, torch.tanh(x + y.float().reshape(-1, 1, 1, 1) / 10)], dim=1)


@pytest.mark.parametrize("learn_sigma", [False, True])
def test_cfg_one_batched_forward_equals_two_forwards(bed, learn_sigma):
    net = CountingNet(bed[0], learn_sigma)
    x, t, y, _ = noisy_batch(64)
    w = 2.5
    out = ClassifierFreeGuidance(w, null_label=K).model_output(net, x, t, y)
    assert net.calls == [2 * 64]  # cond and null passes in ONE forward
    cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, K))
    torch.testing.assert_close(out[:, :2], (1 + w) * cond[:, :2] - w * uncond[:, :2], rtol=0, atol=1e-6)
    if learn_sigma:
        assert torch.equal(out[:, 2:], cond[:, 2:])  # conditional variance channels kept
    assert out.shape == cond.shape


def test_classifier_guidance_s1_on_uncond_is_the_conditional_eps(bed):
    # ADM Alg. 2 with the exact classifier at s = 1: ε_u − sqrt(1−ᾱ)∇log p(y|x_t) = ε_c (Bayes).
    model, clf = bed
    x, t, y, ab = noisy_batch()
    null = torch.full_like(y, K)
    g = ClassifierGuidance(1.0, conditional=False, classifier=clf, null_label=K)
    eps = g.condition_eps(g.model_output(model, x, t, y), x, t, y, ab)
    torch.testing.assert_close(eps, model(x, t, y), rtol=1e-3, atol=1e-3)
    assert (model(x, t, null) - model(x, t, y)).abs().max() > 0.1  # the guidance really did something
    # CFG at w == classifier guidance at s = w on the conditional model (implicit classifier, see scales.py).
    w = 1.5
    cfg = ClassifierFreeGuidance(w, null_label=K).model_output(model, x, t, y)
    g = ClassifierGuidance(cfg_w_to_classifier_scale(w), conditional=True, classifier=clf, null_label=K)
    torch.testing.assert_close(g.condition_eps(model(x, t, y), x, t, y, ab), cfg, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind,spec", [("ddim", "ddim100"), ("ddpm", "250")])
def test_classifier_guidance_s1_samples_the_class_conditional(bed, kind, spec):
    model, clf = bed
    n = 1500
    d = create_diffusion(T, timestep_respacing=spec)
    s = DDIMSampler(d, clip_denoised=False) if kind == "ddim" else DDPMSampler(d, clip_denoised=False)
    y = torch.arange(n) % K
    g = ClassifierGuidance(1.0, conditional=False, classifier=clf, null_label=K)
    x = s.sample(model, g, (n, 2, 1, 1), y, BatchRNG(7, n)).reshape(n, -1).double()
    z = (x - MIX.means[y]) / MIX.stds[y, None]
    for k in range(K):
        assert z[y == k].mean(0).abs().max() < 4.5 / math.sqrt((y == k).sum()), (k, z[y == k].mean(0))
    assert abs(z.pow(2).mean() - 1) < 4.5 * math.sqrt(2 / z.numel()), z.pow(2).mean()


# A narrow class nested inside a wide one: p(y=0 | x) peaks at the shared mean, so stronger guidance toward
# class 0 concentrates its samples there (for well-separated classes guidance would push them *away* instead).
NESTED = GaussianMixture(means=[[0.5, -0.5], [0.5, -0.5], [-2.0, 1.0]], stds=[0.2, 1.0, 0.3], weights=[0.3, 0.5, 0.2])


@pytest.mark.parametrize("strategy", ["classifier", "cfg"])
def test_larger_scale_moves_samples_toward_the_class_mode(strategy):
    _, model, clf = make_testbed(BASE, NESTED)
    n, Kn = 1000, NESTED.num_classes
    s = DDIMSampler(create_diffusion(T, timestep_respacing="ddim50"), clip_denoised=False)
    y = torch.zeros(n, dtype=torch.long)
    dists = []
    for scale in (0.0, 1.0, 2.0, 4.0):
        if strategy == "classifier":  # on the unconditional model: s = 0 is the whole mixture
            g = ClassifierGuidance(scale, conditional=False, classifier=clf, null_label=Kn)
        else:
            g = ClassifierFreeGuidance(scale, null_label=Kn)
        x = s.sample(model, g, (n, 2, 1, 1), y, BatchRNG(11, n)).reshape(n, -1).double()
        dists.append((x - NESTED.means[0]).norm(dim=1))
    for a, b in zip(dists, dists[1:]):  # paired samples (same seeds): the mean decrease must beat its noise
        diff = a - b
        assert diff.mean() > 4 * diff.std() / math.sqrt(n), [float(d.mean()) for d in dists]


# ---- CFG in a limited interval (Kynkäänniemi et al. 2024) ----

def test_cfg_interval_outside_is_conditional_inside_is_cfg(bed):
    model, _ = bed
    x, _, y, _ = noisy_batch(64)
    w, g = 2.0, CFGIntervalGuidance(2.0, t_min=200, t_max=600, null_label=K)
    cfg = ClassifierFreeGuidance(w, null_label=K)
    assert (cfg.model_output(model, x, torch.full_like(y, 700), y) - model(x, torch.full_like(y, 700), y)).abs().max() > 0.01
    for t_out in (0, 199, 601, 999):  # outside: the conditional model exactly, one forward, no null pass
        t = torch.full_like(y, t_out)
        net = CountingNet(model)
        assert torch.equal(g.model_output(net, x, t, y), model(x, t, y)) and net.calls == [64]
    for t_in in (200, 400, 600):  # inside (both ends inclusive): CFG exactly, one batched forward
        t = torch.full_like(y, t_in)
        net = CountingNet(model)
        assert torch.equal(g.model_output(net, x, t, y), cfg.model_output(model, x, t, y)) and net.calls == [128]
    # A batch mixing both: each image gets its own rule (masking).
    t = torch.where(torch.arange(64) % 2 == 0, 400, 800)
    out, inside = g.model_output(model, x, t, y), t == 400
    torch.testing.assert_close(out[inside], cfg.model_output(model, x, t, y)[inside], rtol=0, atol=1e-6)
    assert torch.equal(out[~inside], model(x, t, y)[~inside])
    assert torch.equal(CFGIntervalGuidance(0.0, null_label=K).model_output(model, x, t, y), model(x, t, y))


def test_cfg_interval_cost_over_counts_the_steps_inside(bed):
    g = build_guider("cfg_interval", scale=1.5, t_min=150, t_max=600, null_label=K)
    assert g.cost() == GuidanceCost(2, 0, 0)  # a step inside the interval
    d = create_diffusion(T, timestep_respacing="ddim10")
    ts = d.timestep_map.tolist()
    assert ts == [0, 100, 200, 300, 400, 500, 600, 700, 800, 900]
    assert g.cost_over(ts) == GuidanceCost(10 + 5, 0, 0)  # 200..600 inside, t_max inclusive
    assert CFGIntervalGuidance(1.0, t_min=0, t_max=0, null_label=K).cost_over(ts) == GuidanceCost(11, 0, 0)
    assert CFGIntervalGuidance(1.0, t_min=0, t_max=999, null_label=K).cost_over(ts) == GuidanceCost(20, 0, 0)
    assert CFGIntervalGuidance(0.0, t_min=0, t_max=999, null_label=K).cost_over(ts) == GuidanceCost(10, 0, 0)
    # Everyone else: cost() at every step.
    assert ClassifierFreeGuidance(2.0, null_label=K).cost_over(ts) == GuidanceCost(20, 0, 0)
    assert build_guider("classifier", scale=1, classifier=bed[1]).cost_over(ts) == GuidanceCost(10, 10, 10)
    # The count matches the forwards a sampler really runs.
    net, s = CountingNet(bed[0]), DDIMSampler(d, clip_denoised=False)
    s.sample(net, g, (4, 2, 1, 1), torch.arange(4) % K, BatchRNG(0, 4))
    assert sum(net.calls) == 4 * g.cost_over(ts).nfe


@pytest.mark.parametrize("t_min,t_max", [(600, 200), (-1, 500), (0, -5), (float("nan"), 500), ("a", 5)])
def test_cfg_interval_bad_interval_is_one_line_guidance_error(t_min, t_max):
    with pytest.raises(GuidanceError) as e:
        CFGIntervalGuidance(1.0, t_min=t_min, t_max=t_max, null_label=K)
    assert "\n" not in str(e.value)
    with pytest.raises(GuidanceError):
        CFGIntervalGuidance(1.0, null_label=None)
