"""APG (Sadat et al. 2025) against its equations computed by hand, its neutral setting, and per-chain momentum."""

import math

import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders import GUIDERS, AdaptiveProjectedGuidance, ClassifierFreeGuidance
from guidance.engine import Step
from guidance.sampling import BatchRNG, DDIMSampler, GuidedDenoiser
from guidance.testbed import GaussianMixture, make_testbed

BASE = create_diffusion(1000)
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K = MIX.num_classes
_, MODEL, _ = make_testbed(BASE, MIX)


def batch(n=32, t=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    x0, y = MIX.sample(n, g)
    x = BASE.q_sample(x0, torch.full((n,), t), torch.randn(x0.shape, generator=g))
    return x, y, Step(t, float(BASE.alphas_cumprod[t]))


def x0_of(x, y, step, null=False):
    ab = step.alpha_bar
    eps = MODEL(x, torch.full_like(y, step.t), torch.full_like(y, K) if null else y)
    return (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab)


def by_hand(x, y, step, w, eta, r, prev=None, beta=0.0):
    """Sadat et al. Alg. 1, one image at a time, written out with plain vector algebra."""
    c, u = x0_of(x, y, step).double(), x0_of(x, y, step, null=True).double()
    out, running = [], []
    for i in range(len(x)):
        d = (c[i] - u[i]).flatten()
        if prev is not None:
            d = d + beta * prev[i].flatten()
        running.append(d.clone())
        if r is not None and d.norm() > r:
            d = d * (r / d.norm())
        ci = c[i].flatten()
        par = (d @ ci) / (ci @ ci) * ci
        out.append((ci + w * ((d - par) + eta * par)).reshape(c[i].shape))
    return torch.stack(out).float(), torch.stack(running)


def test_apg_is_the_papers_update():
    x, y, step = batch()
    for w, eta, r in [(2.0, 0.0, None), (1.5, 0.3, 0.5), (4.0, 0.0, 0.05)]:
        pred = GuidedDenoiser(AdaptiveProjectedGuidance(w, eta=eta, norm_threshold=r), {"unet": MODEL}, K)(x, y, step)
        torch.testing.assert_close(pred.x0, by_hand(x, y, step, w, eta, r)[0], rtol=1e-5, atol=1e-5)
        ab = step.alpha_bar  # ε consistent with the guided x̂0
        torch.testing.assert_close(pred.eps, (x - math.sqrt(ab) * pred.x0) / math.sqrt(1 - ab), rtol=1e-4, atol=1e-4)


def test_neutral_apg_is_cfg():
    x, y, step = batch()
    apg = GuidedDenoiser(AdaptiveProjectedGuidance(2.0, eta=1.0, norm_threshold=None, momentum=0.0), {"unet": MODEL}, K)
    cfg = GuidedDenoiser(ClassifierFreeGuidance(2.0), {"unet": MODEL}, K)
    a, b = apg(x, y, step), cfg(x, y, step)
    torch.testing.assert_close(a.x0, b.x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.eps, b.eps, rtol=1e-4, atol=1e-4)
    zero = GuidedDenoiser(AdaptiveProjectedGuidance(0.0), {"unet": MODEL}, K)
    assert torch.equal(zero(x, y, step).eps, MODEL(x, torch.full_like(y, step.t), y)) and zero.counts["unet"] == 32


def test_momentum_runs_over_the_chain_and_resets_per_chain():
    x, y, step = batch()
    g = AdaptiveProjectedGuidance(2.0, eta=0.0, norm_threshold=1.0, momentum=-0.5)
    den = GuidedDenoiser(g, {"unet": MODEL}, K)
    den.reset(32)
    first = den(x, y, step)
    _, running = by_hand(x, y, step, 2.0, 0.0, 1.0)
    x2, _, step2 = batch(t=500, seed=1)
    second = den(x2, y, step2)
    want, _ = by_hand(x2, y, step2, 2.0, 0.0, 1.0, prev=running, beta=-0.5)
    torch.testing.assert_close(second.x0, want, rtol=1e-5, atol=1e-5)
    den.reset(32)  # a new chain starts without momentum
    torch.testing.assert_close(den(x, y, step).x0, first.x0, rtol=0, atol=0)
    # whole chains: the same seeds give the same samples however many chains ran before (state is per chain)
    s = DDIMSampler(BASE, "ddim10", clip_denoised=False)
    a = s.sample(den, (32, 2, 1, 1), y, BatchRNG(0, 32))
    b = s.sample(den, (32, 2, 1, 1), y, BatchRNG(0, 32))
    assert torch.equal(a, b)


def test_apg_report_row_and_bad_input():
    d = GUIDERS["apg"].describe({"strategy": "apg", "scale": 2.0, "eta": 0.0, "norm_threshold": None, "momentum": -0.5})
    assert d.table.kind == "apg" and d.cells == ("2", "0", "∞", "-0.5") and d.x == 2.0
    for bad in (dict(eta=float("nan")), dict(norm_threshold=0), dict(norm_threshold=-1), dict(momentum="x")):
        with pytest.raises(GuidanceError):
            AdaptiveProjectedGuidance(1.0, **bad)
