"""The six strategies of issue 21 (TCFG, FDG, MAMBO-G, APG-mix, SLG, SEG) follow the shared design of issue 18
item 5: one `extrapolate`, one per-chain-step schedule applied to every scale of a strategy. (a) With the constant
schedule (their default) each combine is bitwise the formula each strategy wrote before it took the schedule;
(b) with an interval schedule the extra passes run only inside the window and the counted cost says so; SLG's own
SD 3.5 window and APG-mix's switch step are decided per chain step and refused where they select no step."""

import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders import (AdaptiveProjectedMixGuidance, FrequencyDecoupledGuidance, MagnitudeAwareGuidance,
                              SkipLayerGuidance, SmoothedEnergyGuidance, TangentialCFG)
from guidance.guiders.apg import per_image_dot
from guidance.guiders.fdg import _padded, from_pyramid, laplacian_pyramid
from guidance.guiders.slg import in_window
from guidance.guiders.spaces import from_space, to_space
from guidance.guiders.tcfg import tangential_filter
from guidance.engine import Eval, Prediction, Step
from guidance.nn import UNet
from guidance.sampling import DDIMSampler, GuidedDenoiser, HeunSampler, PerImageRNG

BASE = create_diffusion(1000)
K = 10


def preds(seed=0, t=500, index=0, count=10, names=("cond", "uncond")):
    g = torch.Generator().manual_seed(seed)
    step = Step(t, float(BASE.alphas_cumprod[t]), index, count)
    x, c = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    out = {names[0]: Prediction.from_eps(x, step, c)}
    for name in names[1:]:
        out[name] = Prediction.from_eps(x, step, c + 0.3 * torch.randn(c.shape, generator=g))
    return x, step, out


def same(a: Prediction, b: Prediction):
    assert torch.equal(a.eps, b.eps) and torch.equal(a.x0, b.x0)


# ---- (a) constant schedule: bitwise the formulas before the schedule ----

@pytest.mark.parametrize("space", ["eps", "x0", "flow"])
def test_tcfg_and_mambo_constant_schedule_are_their_previous_formulas_bitwise(space):
    x, step, p = preds()
    c, u = to_space(p["cond"], x, step, space), to_space(p["uncond"], x, step, space)
    w, alpha = 1.7, 3.0
    old_tcfg = from_space(c + w * (c - tangential_filter(c, u)), x, step, space)
    same(TangentialCFG(w, space=space, schedule="constant").combine(p, x, step), old_tcfg)
    d = (c - u).double()
    ratio = (per_image_dot(d, d) / per_image_dot(u.double(), u.double()).clamp_min(1e-24)).sqrt()
    wr = (w * torch.exp(-alpha * ratio)).to(c.dtype)
    same(MagnitudeAwareGuidance(w, alpha=alpha, space=space).combine(p, x, step), from_space(c + wr * (c - u), x, step, space))


@pytest.mark.parametrize("eta", [1.0, 0.4])
@pytest.mark.parametrize("levels", [2, 3])
def test_fdg_constant_schedule_is_its_previous_formula_bitwise(eta, levels):
    x, step, p = preds(1)
    w_low, w_high = 0.8, 2.3
    c, u = p["cond"].x0, p["uncond"].x0
    cs, us = (laplacian_pyramid(_padded(t, levels), levels) for t in (c, u))
    guided = []
    for c_l, u_l, w in zip(cs, us, [w_high] * (levels - 1) + [w_low]):
        delta = c_l - u_l
        if eta != 1:
            cd = c_l.double()
            par = per_image_dot(delta.double(), cd) / per_image_dot(cd, cd).clamp_min(1e-12) * cd
            delta = (delta - par + eta * par).to(c_l.dtype)
        guided.append(u_l + (1 + w) * delta)
    old = from_space(from_pyramid(guided)[..., :28, :28], x, step, "x0")
    g = FrequencyDecoupledGuidance(w_low, high_scale=w_high, levels=levels, parallel_weight=eta)
    same(g.combine(p, x, step), old)
    # which steps pay the null pass: as before, unless both scales are 0
    assert len(FrequencyDecoupledGuidance(0.0, high_scale=2.0).requests(step)) == 2
    assert len(FrequencyDecoupledGuidance(0.0, high_scale=0.0).requests(step)) == 1


def test_apg_mix_constant_schedule_is_its_previous_formula_bitwise_over_a_chain():
    w, wa, beta, r, eta, k = 1.5, 4.0, -0.5, 15.0, 0.2, 2
    g = AdaptiveProjectedMixGuidance(w, apg_scale=wa, momentum=beta, norm_threshold=r, eta=eta, apg_start_step=k,
                                     space="flow")
    g.reset(3)
    running = None
    for i in range(6):
        x, step, p = preds(10 + i, t=900 - 150 * i, index=i, count=6)
        c, u = to_space(p["cond"], x, step, "flow"), to_space(p["uncond"], x, step, "flow")
        diff = (c - u).double()
        running = diff if running is None else diff + beta * running
        if i <= k:
            old = from_space(c + w * (c - u), x, step, "flow")
        else:
            delta = running * torch.clamp(r / per_image_dot(running, running).sqrt().clamp_min(1e-12), max=1.0)
            cd = c.double()
            par = per_image_dot(delta, cd) / per_image_dot(cd, cd).clamp_min(1e-12) * cd
            old = from_space(u + (1 + wa) * (delta - par + eta * par).to(c.dtype), x, step, "flow")
        same(g.combine(p, x, step), old)


@pytest.mark.parametrize("cls,extra", [(SkipLayerGuidance, "skip"), (SmoothedEnergyGuidance, "seg")])
def test_slg_seg_constant_schedule_are_their_previous_formulas_bitwise(cls, extra):
    s, w = 2.8, 1.3
    fields = {"start": 0.0, "stop": 1.0} if cls is SkipLayerGuidance else {}
    x, step, p = preds(2, index=3, names=("model", "uncond", extra))
    m = p["model"].eps
    old = Prediction.from_eps(x, step, m + w * (m - p["uncond"].eps) + s * (m - p[extra].eps))
    same(cls(s, cfg_scale=w, **fields).combine(p, x, step), old)
    only = {k: v for k, v in p.items() if k != "uncond"}  # no CFG part
    same(cls(s, cfg_scale=0.0, **fields).combine(only, x, step), Prediction.from_eps(x, step, m + s * (m - p[extra].eps)))


# ---- (b) an interval schedule: extra passes only inside the window, counted ----

@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet(28, 1, 16, 1, 1, attention_resolutions=[14, 7], channel_mult=[1, 2, 2], num_classes=K,
               num_head_channels=8).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return net


STRATEGIES = [  # (class, fields, extra passes of a guided step)
    (TangentialCFG, {}, 1), (FrequencyDecoupledGuidance, {}, 1), (MagnitudeAwareGuidance, {}, 1),
    (AdaptiveProjectedMixGuidance, {"apg_start_step": 3}, 1),
    (SkipLayerGuidance, {"cfg_scale": 1.0, "start": 0.0, "stop": 1.0}, 2),
    (SmoothedEnergyGuidance, {"cfg_scale": 1.0}, 2)]


@pytest.mark.parametrize("cls,fields,extra", STRATEGIES)
def test_an_interval_schedule_skips_the_extra_passes_outside_it_and_the_cost_drops(unet, cls, fields, extra):
    n, b = 10, 2
    ddim = DDIMSampler(BASE, f"ddim{n}")
    sig = [ddim.step_at(i).sigma for i in range(n)]
    lo, hi = sig[7], sig[2]                        # the window (σ_7, σ_2]: steps 2..6
    inside = [lo < s <= hi for s in sig]
    assert sum(inside) == 5

    def cost(**schedule):
        g = cls(1.5, **fields, **schedule)
        den = GuidedDenoiser(g, {"unet": unet}, null_label=K)
        rng = PerImageRNG(0, range(b))
        x = ddim.sample(den, (b, 1, 28, 28), rng.labels(K), rng)
        assert torch.isfinite(x).all()
        for i, step in enumerate(ddim.evaluation_steps()):
            evals = [r for r in g.requests(step) if isinstance(r, Eval)]
            slg_void = cls is SkipLayerGuidance and not in_window(step, 0.0, 1.0)  # SD 3.5's rule: step 0 is out
            guided = inside[step.index] if schedule else True
            assert len(evals) == 1 + (extra - slg_void if guided else 0), (i, evals)
        return den.cost_per_sample()["nfe"]

    windowed, constant = cost(schedule="interval", sigma_lo=lo, sigma_hi=hi), cost()
    skip0 = 1 if cls is SkipLayerGuidance else 0
    assert constant == n + extra * n - skip0
    assert windowed == n + extra * sum(inside) < constant


def test_the_schedule_scales_every_term_of_a_strategy():
    """One per-step weight for every guidance term: a linear schedule scales fdg's, apg_mix's, slg's, seg's second
    scales as their first."""
    step = Step(500, float(BASE.alphas_cumprod[500]), 2, 10)   # linear: 2 u = 2 · 2.5/10 = 0.5
    assert FrequencyDecoupledGuidance(1.0, high_scale=3.0, levels=3, schedule="linear").level_scales(step) == [1.5, 1.5, 0.5]
    for cls in (SkipLayerGuidance, SmoothedEnergyGuidance):
        g = cls(2.0, cfg_scale=4.0, schedule="linear")
        assert (g.scale_at(step), g.cfg_at(step)) == (1.0, 2.0)
    x, step8, p = preds(3, index=8, count=10)                  # linear at step 8: 2 · 8.5/10 = 1.7
    g = AdaptiveProjectedMixGuidance(1.0, apg_scale=2.0, momentum=None, norm_threshold=None, eta=1.0,
                                     apg_start_step=0, space="eps", schedule="linear")
    c, u = p["cond"].eps, p["uncond"].eps
    torch.testing.assert_close(g.combine(p, x, step8).eps, u + (1 + 2.0 * 1.7) * (c - u), rtol=1e-5, atol=1e-5)


# ---- SLG's window and APG-mix's switch: per chain step, refused where void ----

def test_slg_window_follows_the_chain_step_under_heun():
    h = HeunSampler(BASE, "edm12")
    g = SkipLayerGuidance(2.0, cfg_scale=0.0, start=0.2, stop=0.5)        # 2.4 < i < 6: steps 3, 4, 5
    evals = h.evaluation_steps()
    assert any(s.grid_sigma is not None for s in evals)                  # second evaluations are in the list
    assert sorted({s.index for s in evals if g.skipping(s)}) == [3, 4, 5]
    assert all(g.skipping(s) == (3 <= s.index <= 5) for s in evals)


class Refuses(torch.nn.Module):
    def forward(self, x, t, y=None):
        raise AssertionError("a network pass ran before the refusal")


def sample(sampler, guider):
    den = GuidedDenoiser(guider, {"unet": Refuses()}, null_label=K)
    rng = PerImageRNG(0, range(2))
    return sampler.sample(den, (2, 1, 4, 4), rng.labels(K, "balanced"), rng)


@pytest.mark.parametrize("guider,what", [
    (lambda: SkipLayerGuidance(2.8), "holds no step"),                      # SD 3.5's 1%..20%: 0.05 < i < 1
    (lambda: AdaptiveProjectedMixGuidance(2.5), "no APG step"),             # k = 5 >= 5 − 1
    (lambda: SmoothedEnergyGuidance(3.0, schedule="step", start=0.0, end=0.1), "selects no step")])
def test_a_void_window_or_switch_is_refused_before_any_work(guider, what):
    with pytest.raises(GuidanceError) as e:
        sample(DDIMSampler(BASE, "ddim5"), guider())
    assert what in str(e.value) and "\n" not in str(e.value)


def test_slg_refuses_the_step_schedule_whose_start_is_its_window():
    with pytest.raises(GuidanceError) as e:
        SkipLayerGuidance(2.8, schedule="step", end=0.5)
    assert "schedule=step" in str(e.value) and "\n" not in str(e.value)
    assert SkipLayerGuidance(2.8, schedule="interval", sigma_hi=5.0).info()["schedule"]["shape"] == "interval"
