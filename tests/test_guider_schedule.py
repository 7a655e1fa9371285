"""One extrapolation, one per-chain-step schedule, presets, and the guider/sampler settings refused before any work
(issue 18 items 5-6, issue 23 item 3)."""

import math

import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders import (AdaptiveProjectedGuidance, CFGZeroStar, ClassifierFreeGuidance, DynamicThresholding,
                              TimeStepGuidance, build_guider, describe_point, extrapolate)
from guidance.guiders.base import Prediction, Step
from guidance.sampling import DDIMSampler, EulerSampler, GuidedDenoiser, HeunSampler, PerImageRNG

BASE = create_diffusion(steps=1000)


class Refuses(torch.nn.Module):
    """A network that must not be called (the check comes before any work)."""

    def forward(self, x, t, y=None):
        raise AssertionError("a network pass ran before the refusal")


def one_line(excinfo) -> str:
    assert "\n" not in str(excinfo.value)
    return str(excinfo.value)


# ---- one extrapolation ----

def test_extrapolate_orders_are_each_strategys_arithmetic_bitwise():
    g = torch.Generator().manual_seed(0)
    m, r = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    for w in (0.5, 1.0, 1.7, 4.0):
        assert torch.equal(extrapolate(m, r, w), m + w * (m - r))                      # PAG, autoguidance
        assert torch.equal(extrapolate(m, r, w, order="weights"), (1 + w) * m - w * r)  # CFG (Ho & Salimans eq. 6)
        assert torch.equal(extrapolate(m, r, w, order="lerp"), r + (1 + w) * (m - r))   # TSG, CFG-Zero*
        for order in ("weights", "lerp"):  # one real number, rounded differently
            torch.testing.assert_close(extrapolate(m, r, w, order=order), extrapolate(m, r, w), rtol=1e-5, atol=1e-5)
    assert not torch.equal(extrapolate(m, r, 1.7, order="weights"), extrapolate(m, r, 1.7))  # why the orders stay
    assert torch.equal(extrapolate(m, r, 0.0), m)


# ---- presets keep their records ----

def test_presets_record_what_their_classes_recorded():
    assert build_guider("cfg_interval", scale=2.0).info() == {
        "strategy": "cfg_interval", "scale": 2.0, "conditional": True, "sigma_lo": 0.0, "sigma_hi": 6.2}
    sched = build_guider("cfg_schedule", scale=1.0).info()
    assert sched == {"strategy": "cfg_schedule", "scale": 1.0, "conditional": True, "schedule": {
        "shape": "linear", "clamp": 0.0, "start": 0.0, "end": 1.0, "sigma_lo": 0.0, "sigma_hi": math.inf,
        "label": "linear"}}
    clf = build_guider("classifier_schedule", scale=4.0, conditional=False).info()
    assert clf["strategy"] == "classifier_schedule" and clf["schedule"]["label"] == "interval σ∈(0, 6.2]"
    assert describe_point(sched).table.kind == "cfg_schedule" and describe_point(clf).cells[0] == "unconditional"
    assert build_guider("cfg", scale=1.0).info() == {"strategy": "cfg", "scale": 1.0, "conditional": True}
    with pytest.raises(GuidanceError) as e:
        build_guider("cfg_interval", scale=1.0, schedule="linear")
    assert "guidance=cfg guidance.schedule" in one_line(e)
    with pytest.raises(GuidanceError) as e:
        ClassifierFreeGuidance(1.0, preset="classifier_schedule")
    one_line(e)


@pytest.mark.parametrize("name,fields", [("pag", {}), ("apg", {}), ("autoguidance", {}), ("icg", {}),
                                         ("cfg_rescale", {}), ("cfg_zero", {}), ("tsg", {}), ("classifier", {}),
                                         ("tcfg", {}), ("fdg", {}), ("mambo", {}), ("apg_mix", {}),
                                         ("slg", {"start": 0.0, "stop": 1.0}), ("seg", {})])
def test_every_strategy_takes_the_schedule(name, fields):
    g = build_guider(name, scale=2.0, schedule="interval", sigma_lo=1.0, sigma_hi=5.0, **fields)
    inside, outside = Step(500, 0.1, 3, 10), Step(999, 4e-5, 0, 10)
    assert g.scale_at(inside) == 2.0 and g.scale_at(outside) == 0.0
    assert len(g.requests(outside)) <= 1 < len(g.requests(inside)) or name == "cfg_zero"
    assert g.info()["schedule"]["label"] == "interval σ∈(1, 5]"


# ---- defects ----

def test_dynamic_threshold_keeps_cfg_zero_zeroed_steps_where_they_are():
    """A zeroed CFG-Zero* step leaves x_f where it is (x̂0 = x_f, |x̂0| >> 1 at high noise); thresholding it would
    move the state (before: DynamicThresholding.finish replaced the inner's finish and rescaled it)."""
    x = torch.randn(3, 1, 4, 4) * 5
    step = Step(999, float(BASE.alphas_cumprod[999]), 0, 10)
    own = GuidedDenoiser(CFGZeroStar(1.0, zero_steps=1), {"unet": Refuses()}, null_label=10)(x, torch.zeros(3, dtype=torch.long), step, clip=True)
    wrapped = DynamicThresholding(CFGZeroStar(1.0, zero_steps=1), percentile=0.9)
    pred = GuidedDenoiser(wrapped, {"unet": Refuses()}, null_label=10)(x, torch.zeros(3, dtype=torch.long), step, clip=True)
    assert own.x0.abs().max() > 1 and torch.equal(pred.x0, own.x0) and torch.equal(pred.eps, own.eps)
    later = Step(500, float(BASE.alphas_cumprod[500]), 1, 10)  # a step it does not hold is thresholded
    p = Prediction.from_x0(x, later, x * 3)
    assert wrapped.finish(p, x, later, clip=True).x0.abs().max() <= 1


def test_cfg_zero_describes_a_record_without_space_as_its_default_v():
    assert CFGZeroStar().space == "v"
    assert describe_point({"strategy": "cfg_zero", "scale": 1.0, "zero_steps": 1}).cells == ("1", "1", "v")


def test_tsg_decides_per_chain_step_under_heun():
    """Heun's second evaluation of step i (at σ_{i+1}, outside the window) follows step i (inside): both guided."""
    h = HeunSampler(BASE, "edm12")
    sig = [h.step_at(i).sigma for i in range(h.steps)]
    g = TimeStepGuidance(1.0, schedule="interval", sigma_lo=sig[8], sigma_hi=sig[4])
    second = h.second(7)  # evaluated at σ_8 (outside), belongs to step 7 (inside)
    assert second.sigma == pytest.approx(sig[8]) and g.active(second)
    assert not g.active(h.second(3)) and second.t < h.step_at(7).t
    assert [c[2] for c in g.covered_steps(h.evaluation_steps())][::2] == [4 <= i <= 7 for i in range(h.steps)]


# ---- silent accepts -> one line before any work ----

@pytest.mark.parametrize("fields,what", [({"eta": 1.5}, "eta"), ({"momentum": 1.0}, "momentum"),
                                         ({"momentum": -1.0}, "momentum"), ({"momentum": -3}, "momentum")])
def test_apg_refuses_eta_and_momentum_outside_their_range(fields, what):
    with pytest.raises(GuidanceError) as e:
        AdaptiveProjectedGuidance(1.0, **fields)
    assert what in one_line(e)
    AdaptiveProjectedGuidance(1.0, eta=1.0, momentum=-0.5)  # the paper's reverse momentum; η = 1 is CFG


def sample(sampler, guider):
    den = GuidedDenoiser(guider, {"unet": Refuses()}, null_label=10)
    rng = PerImageRNG(0, range(2))
    return sampler.sample(den, (2, 1, 4, 4), rng.labels(10, "balanced"), rng)


def test_cfg_zero_with_every_step_zeroed_is_refused():
    with pytest.raises(GuidanceError) as e:
        sample(DDIMSampler(BASE, "ddim10"), CFGZeroStar(1.0, zero_steps=10))
    assert "zero_steps=10" in one_line(e)


@pytest.mark.parametrize("guider", [
    lambda: build_guider("cfg_interval", scale=2.0, sigma_lo=200.0, sigma_hi=300.0),
    lambda: TimeStepGuidance(1.0, schedule="interval", sigma_lo=0.0, sigma_hi=0.001),
    lambda: build_guider("cfg_schedule", scale=1.0, schedule="step", start=0.0, end=0.05)])
def test_a_window_that_selects_no_step_is_refused(guider):
    with pytest.raises(GuidanceError) as e:
        sample(DDIMSampler(BASE, "ddim10"), guider())
    assert "selects no step" in one_line(e)


def test_an_empty_churn_window_is_refused():
    with pytest.raises(GuidanceError) as e:
        EulerSampler(BASE, "edm10", s_churn=10, s_tmin=500.0, s_tmax=600.0)  # σ_max of this model is ~157
    assert "churns no step" in one_line(e)
    EulerSampler(BASE, "edm10", s_churn=10, s_tmin=0.05, s_tmax=50.0)


def test_an_edm_grid_far_beyond_the_trained_timesteps_is_refused():
    with pytest.raises(GuidanceError) as e:
        EulerSampler(BASE, "edm5000")
    assert "931" in one_line(e)
    assert EulerSampler(BASE, "edm500").steps == 451


# ---- points sampled before the presets are still recognised ----

def test_a_point_sampled_by_the_old_interval_class_is_recognised_by_its_preset(tmp_path):
    from guidance.sampling.point import MATCH_KEYS
    from guidance.sampling.generate import finished_samples, save_samples

    new = {**build_guider("cfg_interval", scale=2.0).info(), "sampler": "ddim", "num_samples": 2,
           "guider": {"_target_": "guidance.guiders.ClassifierFreeGuidance", "preset": "cfg_interval", "scale": 2.0,
                      "sigma_lo": 0.0, "sigma_hi": 6.2}}
    old = {**new, "guider": {"_target_": "guidance.guiders.CFGIntervalGuidance", "scale": 2.0, "sigma_lo": 0.0,
                             "sigma_hi": 6.2}}
    save_samples(tmp_path, torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), old)
    assert finished_samples(tmp_path, new, MATCH_KEYS)
    other = {**new, "guider": {**new["guider"], "sigma_hi": 5.0}, "sigma_hi": 5.0}
    assert not finished_samples(tmp_path, other, MATCH_KEYS)
    tsg_before = {**old, "guider": {**old["guider"], "t_min": 0}}  # a field the new strategy lacks: not the same
    save_samples(tmp_path, torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long), tsg_before)
    assert not finished_samples(tmp_path, new, MATCH_KEYS)


def test_dynamic_threshold_refuses_cfgpp_and_checks_its_inner_strategy_against_the_chain():
    """Thresholding CFG++'s x̂0_λ while it re-noises with ε_u is not CFG++'s form: refused in one line. The
    wrapper also hands the chain to its inner strategy, so CFG-Zero* zeroing every step is refused inside it too."""
    from guidance.diffusion import create_diffusion
    from guidance.errors import GuidanceError
    from guidance.guiders import CFGPlusPlus, CFGZeroStar, DynamicThresholding
    from guidance.sampling import DDIMSampler

    with pytest.raises(GuidanceError, match="re-noises"):
        DynamicThresholding(CFGPlusPlus(0.4))
    steps = DDIMSampler(create_diffusion(steps=1000), respacing="2").evaluation_steps()
    with pytest.raises(GuidanceError, match="zeroes all 2 steps"):
        DynamicThresholding(CFGZeroStar(1.0, zero_steps=2)).check_chain(steps)
