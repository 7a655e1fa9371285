"""The guider-sampler contract (guidance.engine, issue 18): the import rules that keep guiders and samplers apart,
capabilities stated as data and checked in Sampler.sample (a plain library call, no app), and CFG++ as its paper
defines it (never clipped; refused where its update has no stated form)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.engine import CAPABILITIES, GRAD_IN_EPS, GRAD_IN_MEAN, RENOISE_EPS
from guidance.errors import GuidanceError
from guidance.guiders import GUIDERS, CFGPlusPlus, ClassifierGuidance, DynamicThresholding
from guidance.sampling import (SAMPLERS, DDIMSampler, DDPMSampler, DPMSolverPP2MSampler, EulerSampler, GuidedDenoiser,
                               HeunSampler, PerImageRNG)
from guidance.testbed import GaussianMixture, make_testbed

BASE = create_diffusion(1000)
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K = MIX.num_classes
_, MODEL, CLASSIFIER = make_testbed(BASE, MIX)  # data far outside [-1, 1]: clipping x̂0 matters here
NETS = {"unet": MODEL, "classifier": CLASSIFIER}


def loaded(package: str) -> list[str]:
    """The guidance modules a fresh interpreter holds after importing `package`."""
    code = f"import sys, json, {package}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('guidance'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_import_rules_guiders_and_samplers_meet_only_in_the_engine():
    guiders, sampling, engine = loaded("guidance.guiders"), loaded("guidance.sampling"), loaded("guidance.engine")
    assert "guidance.engine" in guiders and "guidance.engine" in sampling
    assert not [m for m in guiders if m.startswith(("guidance.sampling", "guidance.apps"))], guiders
    assert not [m for m in sampling if m.startswith(("guidance.guiders", "guidance.apps"))], sampling
    assert set(engine) == {"guidance", "guidance.errors", "guidance.engine", "guidance.engine.capabilities",
                           "guidance.engine.cost", "guidance.engine.prediction", "guidance.engine.requests"}


def test_capabilities_are_data_and_depend_on_the_parameters_that_change_the_form():
    assert DDPMSampler(BASE, "10").capabilities == {GRAD_IN_MEAN}
    assert DDIMSampler(BASE, "10").capabilities == {GRAD_IN_EPS, RENOISE_EPS}
    assert DDIMSampler(BASE, "10", eta=0.5).capabilities == {GRAD_IN_EPS}
    assert EulerSampler(BASE, "edm8").capabilities == {GRAD_IN_EPS, RENOISE_EPS}
    assert EulerSampler(BASE, "edm8", s_churn=5).capabilities == {GRAD_IN_EPS}
    assert HeunSampler(BASE, "edm8").capabilities == {GRAD_IN_EPS}
    assert DPMSolverPP2MSampler(BASE).capabilities == {GRAD_IN_EPS}
    for cls in SAMPLERS.values():
        assert cls(BASE).capabilities <= set(CAPABILITIES), cls
    for name, cls in GUIDERS.items():
        assert cls.needs <= set(CAPABILITIES), name
    assert CFGPlusPlus.needs == {RENOISE_EPS}  # (dynamic thresholding refuses CFG++: test_guider_schedule)
    assert DynamicThresholding(ClassifierGuidance(1.0)).needs == frozenset()


class Counted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args):
        self.calls += 1
        return self.net(*args)


@pytest.mark.parametrize("make", [
    lambda: DDIMSampler(BASE, "10", eta=0.5),          # fresh noise σ_t z: no CFG++ form in the paper
    lambda: EulerSampler(BASE, "edm8", s_churn=5),    # churn: the same
    lambda: HeunSampler(BASE, "edm8"),                # the second-order correction replaces the re-noised step
    lambda: DDPMSampler(BASE, "10"),                  # ancestral: re-noises with fresh noise
    lambda: DPMSolverPP2MSampler(BASE, "10")])        # multistep in x̂0: no ε of its own
def test_a_plain_library_call_refuses_a_strategy_whose_needs_the_sampler_lacks(make):
    sampler, unet = make(), Counted(MODEL)
    den = GuidedDenoiser(CFGPlusPlus(0.5), {"unet": unet}, K)
    rng = PerImageRNG(0, range(4))
    with pytest.raises(GuidanceError) as err:
        sampler.sample(den, (4, 2), rng.labels(K), rng)
    line = str(err.value)
    assert "\n" not in line and "guidance=cfgpp" in line and f"sampler={sampler.label}" in line and RENOISE_EPS in line
    assert line.endswith("use a sampler that does (ddim eta=0, euler)")  # the registry's defaults that offer it
    assert unet.calls == 0  # refused before any network pass


@pytest.mark.parametrize("make", [lambda: DDIMSampler(BASE, "ddim10"), lambda: EulerSampler(BASE, "edm8")])
def test_cfgpp_is_never_clipped_whatever_the_samplers_clip_denoised(make):
    """Chung et al. 2024, Alg. 1 (and the official code) re-noise the UNCLIPPED x̂0_λ with ε_u. The samplers clip by
    default; before issue 18 CFG++ clipped x̂0_λ there and re-noised with the raw ε_u."""
    clipped, raw = make(), make()
    clipped.clip_denoised, raw.clip_denoised = True, False
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3)) * 2
    step = clipped.step_at(2)
    pred = GuidedDenoiser(CFGPlusPlus(0.7), NETS, K)(x, y, step, clip=True)
    e_c = MODEL(x, torch.full_like(y, step.t), y)
    e_u = MODEL(x, torch.full_like(y, step.t), torch.full_like(y, K))
    e_l = e_u + 0.7 * (e_c - e_u)
    x0 = (x - math.sqrt(1 - step.alpha_bar) * e_l) / math.sqrt(step.alpha_bar)  # CFG++ eq. 10, by hand
    assert x0.abs().max() > 1.5  # a clip would change it
    torch.testing.assert_close(pred.x0, x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.renoise_eps, e_u)
    a = clipped.sample(GuidedDenoiser(CFGPlusPlus(0.7), NETS, K), (6, 2), y, PerImageRNG(0, range(6)))
    b = raw.sample(GuidedDenoiser(CFGPlusPlus(0.7), NETS, K), (6, 2), y, PerImageRNG(0, range(6)))
    assert torch.equal(a, b) and a.abs().max() > 1
    assert CFGPlusPlus(0.7).info()["x0_clip"] == "never"  # sample_info says so (and old clipped points are resampled)
