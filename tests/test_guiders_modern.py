"""The modern strategies (issue 10) against their papers' equations computed by hand, and their neutral settings
reducing exactly to the strategy they refine. Exact ε from the Gaussian-mixture test bed where the strategy needs
no network internals; a tiny real U-Net for PAG and TSG."""

import math

import pytest
import torch

from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.guiders import (GUIDERS, Autoguidance, CFGPlusPlus, CFGZeroStar, ClassifierFreeGuidance,
                              ClassifierGuidance, DynamicThresholding, IndependentConditionGuidance, NoGuidance,
                              PerturbedAttentionGuidance, RescaledCFG, PRESETS,
                              TimeStepGuidance)
from guidance.guiders.schedules import WeightSchedule
from guidance.guiders.thresholding import dynamic_threshold
from guidance.nn import UNet
from guidance.engine import Step
from guidance.sampling import DDIMSampler, EulerSampler, GuidedDenoiser, PerImageRNG
from guidance.testbed import GaussianMixture, make_testbed

BASE = create_diffusion(1000)
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K = MIX.num_classes
_, MODEL, CLASSIFIER = make_testbed(BASE, MIX)
NETS = {"unet": MODEL, "classifier": CLASSIFIER}


def batch(n=16, t=600, seed=0, index=0, count=1):
    g = torch.Generator().manual_seed(seed)
    x0, y = MIX.sample(n, g)
    x = BASE.q_sample(x0, torch.full((n,), t), torch.randn(x0.shape, generator=g))
    return x, y, Step(t, float(BASE.alphas_cumprod[t]), index, count)


def eps(x, y, step, labels=None):
    return MODEL(x, torch.full_like(y, step.t), y if labels is None else labels)


def x0_from(x, step, e):
    return (x - math.sqrt(1 - step.alpha_bar) * e) / math.sqrt(step.alpha_bar)


def run(guider, x, y, step, nets=NETS, rng=None):
    den = GuidedDenoiser(guider, nets, K)
    den.reset(len(x), rng)
    return den(x, y, step), den


# ------------------------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("shape,expected", [
    ("constant", lambda w, u, s: w), ("linear", lambda w, u, s: 2 * w * u),
    ("cosine", lambda w, u, s: w * (1 - math.cos(math.pi * u))),
    ("clamp_linear", lambda w, u, s: max(1.0, 2 * w * u)),
    ("step", lambda w, u, s: w if 0.25 < u <= 0.75 else 0.0),
    ("interval", lambda w, u, s: w if 0.5 < s <= 3.0 else 0.0)])
def test_cfg_schedule_is_cfg_at_the_scheduled_weight(shape, expected):
    w, n = 2.0, 8
    g = ClassifierFreeGuidance(w, schedule=shape, clamp=1.0, start=0.25, end=0.75, sigma_lo=0.5, sigma_hi=3.0)
    for i, t in enumerate([900, 700, 500, 400, 300, 200, 100, 10]):
        x, y, step = batch(t=t, index=i, count=n)
        u = (i + 1) / n if shape == "step" else (i + 0.5) / n  # the window: done after step i; shapes: its middle
        w_i = expected(w, u, step.sigma)
        pred, den = run(g, x, y, step)
        want = (1 + w_i) * eps(x, y, step) - w_i * eps(x, y, step, torch.full_like(y, K))
        torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-6)
        assert den.counts["unet"] == (2 if w_i != 0 else 1) * len(x)  # no null pass where the weight is 0


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50])
def test_linear_and_cosine_average_to_exactly_w_and_constant_is_cfg(n):
    """Wang et al.'s schedules keep w's meaning on average: Σ 2(i + ½)/n = n and Σ cos(π(i + ½)/n) = 0 exactly
    (u = (i + 1)/n averaged w(1 + 1/n): 10% high at 10 steps)."""
    w = 3.0
    steps = [Step(999 - 10 * i, float(BASE.alphas_cumprod[999 - 10 * i]), i, n) for i in range(n)]
    for shape in ("linear", "cosine"):
        mean = sum(WeightSchedule(shape).scale_at(w, s) for s in steps) / n
        assert mean == pytest.approx(w, rel=1e-12, abs=1e-12), shape
    x, y, step = batch()
    a, _ = run(ClassifierFreeGuidance(w, schedule="constant"), x, y, step)
    b, _ = run(ClassifierFreeGuidance(w), x, y, step)
    assert torch.equal(a.eps, b.eps)


def test_classifier_in_an_interval_is_adm_inside_and_unguided_outside():
    g = ClassifierGuidance(2.0, preset="classifier_schedule", schedule="interval", sigma_lo=0.0, sigma_hi=1.0)
    inside, outside = batch(t=200), batch(t=700)
    assert inside[2].sigma <= 1.0 < outside[2].sigma
    pred, den = run(g, *inside)
    ref, _ = run(ClassifierGuidance(2.0), *inside)
    assert torch.equal(pred.grad, ref.grad) and den.counts["classifier_forward"] == len(inside[0])
    pred, den = run(g, *outside)
    assert pred.grad is None and den.counts["classifier_forward"] == 0
    with pytest.raises(GuidanceError, match="schedule"):
        ClassifierFreeGuidance(1.0, schedule="exponential")


# ------------------------------------------------------------------------------------------- rescale


@pytest.mark.parametrize("space", ["v", "eps"])
def test_cfg_rescale_by_hand(space):
    x, y, step = batch()
    w, phi = 3.0, 0.7
    a, b = math.sqrt(step.alpha_bar), math.sqrt(1 - step.alpha_bar)
    e_c, e_u = eps(x, y, step).double(), eps(x, y, step, torch.full_like(y, K)).double()
    out = lambda e: a * e - b * x0_from(x.double(), step, e) if space == "v" else e
    o_c, o_u = out(e_c), out(e_u)
    o_cfg = o_u + (1 + w) * (o_c - o_u)  # Lin et al. Alg. 2 (their guidance_scale = w + 1)
    o = torch.stack([phi * o_cfg[i] * o_c[i].std() / o_cfg[i].std() + (1 - phi) * o_cfg[i] for i in range(len(x))])
    want = o if space == "eps" else b * x.double() + a * o  # ε = sqrt(1 − ᾱ) x_t + sqrt(ᾱ) v
    pred, _ = run(RescaledCFG(w, phi, space), x, y, step)
    torch.testing.assert_close(pred.eps.double(), want, rtol=1e-4, atol=1e-5)
    neutral, _ = run(RescaledCFG(w, 0.0, space), x, y, step)
    assert torch.equal(neutral.eps, run(ClassifierFreeGuidance(w), x, y, step)[0].eps)


# ------------------------------------------------------------------------------------------- thresholding


def test_dynamic_thresholding_by_hand_on_any_strategy():
    x0 = torch.tensor([[[[0.5, -3.0, 2.0, 0.1]]], [[[0.2, -0.4, 0.3, 0.9]]]])
    s0 = torch.quantile(x0[0].abs().flatten(), 0.9).item()  # > 1: scaled down by s
    want0 = x0[0].clamp(-s0, s0) / s0
    got = dynamic_threshold(x0, 0.9)
    torch.testing.assert_close(got[0], want0)
    assert torch.equal(got[1], x0[1])  # quantile <= 1: s = 1, nothing changes
    x, y, step = batch(t=900)
    guider = DynamicThresholding(ClassifierGuidance(2.0), percentile=0.95)
    pred, den = run(guider, x, y, step)
    inner, _ = run(ClassifierGuidance(2.0), x, y, step)
    torch.testing.assert_close(pred.x0, dynamic_threshold(inner.x0, 0.95))
    assert torch.equal(pred.grad, inner.grad) and guider.networks == ("unet", "classifier")
    assert guider.info()["strategy"] == "dynamic_threshold" and guider.info()["inner"]["strategy"] == "classifier"


# ------------------------------------------------------------------------------------------- CFG++


def test_cfgpp_ddim_step_by_hand_and_lambda_zero_is_the_unconditional_step():
    sampler = DDIMSampler(BASE, respacing="ddim10", clip_denoised=False)
    rng = PerImageRNG(0, range(8))
    y = rng.labels(K)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(1))
    lam, i = 0.6, 3
    step = sampler.step_at(i)
    j = sampler.steps - 1 - i
    ab_prev = float(sampler.diffusion.alphas_cumprod_prev[j])
    e_c, e_u = eps(x, y, step), eps(x, y, step, torch.full_like(y, K))
    want = math.sqrt(ab_prev) * x0_from(x, step, e_u + lam * (e_c - e_u)) + math.sqrt(1 - ab_prev) * e_u
    den = GuidedDenoiser(CFGPlusPlus(lam), NETS, K)
    torch.testing.assert_close(sampler.step(den, x, i, y, rng), want, rtol=1e-5, atol=1e-6)
    zero = sampler.sample(GuidedDenoiser(CFGPlusPlus(0.0), NETS, K), (8, 2), y, PerImageRNG(0, range(8)))
    uncond = sampler.sample(GuidedDenoiser(NoGuidance(conditional=False), NETS, K), (8, 2), y, PerImageRNG(0, range(8)))
    assert torch.equal(zero, uncond)


def test_cfgpp_euler_by_hand_and_refusals():
    sampler = EulerSampler(BASE, respacing="edm8", clip_denoised=False)
    y = torch.tensor([0, 1, 2, 0])
    xs = torch.randn(4, 2, generator=torch.Generator().manual_seed(2)) * 3  # the EDM-scaled variable
    step, sigma_next = sampler.step_at(2), sampler.next_sigma(2)
    x = xs / math.sqrt(1 + step.sigma**2)
    e_c, e_u = eps(x, y, step), eps(x, y, step, torch.full_like(y, K))
    want = x0_from(x, step, e_u + 0.5 * (e_c - e_u)) + sigma_next * e_u
    pred = sampler.predict(GuidedDenoiser(CFGPlusPlus(0.5), NETS, K), xs, y, step)
    torch.testing.assert_close(pred.x0 + sigma_next * pred.renoise_eps, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(GuidanceError, match="λ in \\[0, 1\\]"):
        CFGPlusPlus(2.0)


# ------------------------------------------------------------------------------------------- autoguidance


class Shifted(torch.nn.Module):
    """A "weak" denoiser: the exact model's ε, damped (a worse version of the same model)."""

    def forward(self, x, t, y):
        return 0.8 * MODEL(x, t, y) + 0.1 * x


def test_autoguidance_by_hand_same_condition_and_neutral():
    x, y, step = batch()
    w = 1.5
    weak = Shifted()
    pred, den = run(Autoguidance(w), x, y, step, {"unet": MODEL, "weak": weak})
    main_x0 = x0_from(x, step, eps(x, y, step))
    weak_x0 = x0_from(x, step, weak(x, torch.full_like(y, step.t), y))  # the SAME labels, not the null label
    torch.testing.assert_close(pred.x0, main_x0 + w * (main_x0 - weak_x0), rtol=1e-5, atol=1e-5)
    assert den.cost_per_sample() == {"nfe": 2.0, "classifier_forward": 0.0, "classifier_backward": 0.0, "nfe_weak": 1.0}
    same, _ = run(Autoguidance(w), x, y, step, {"unet": MODEL, "weak": MODEL})
    torch.testing.assert_close(same.eps, eps(x, y, step), rtol=1e-5, atol=1e-5)
    with pytest.raises(GuidanceError, match="weak"):
        GuidedDenoiser(Autoguidance(w), {"unet": MODEL}, K)


# ------------------------------------------------------------------------------------------- ICG


def test_icg_uses_per_image_random_labels_and_null_is_cfg():
    x, y, step = batch(n=12)
    seen = []

    class Recording(torch.nn.Module):
        def forward(self, x, t, labels):
            seen.append(labels.clone())
            return MODEL(x, t, labels)

    w = 2.0
    pred, den = run(IndependentConditionGuidance(w), x, y, step, {"unet": Recording()}, PerImageRNG(5, range(12)))
    random_labels = seen[-1]  # split batching on CPU: the cond pass, then the independent one
    assert random_labels.min() >= 0 and random_labels.max() < K and not torch.equal(random_labels, y)
    want = (1 + w) * eps(x, y, step) - w * eps(x, y, step, random_labels)
    torch.testing.assert_close(pred.eps, want, rtol=1e-5, atol=1e-6)
    # image i's draw depends on (seed, i) only: the last 4 images alone draw the same labels
    seen.clear()
    run(IndependentConditionGuidance(w), x[8:], y[8:], step, {"unet": Recording()}, PerImageRNG(5, range(8, 12)))
    assert torch.equal(seen[-1], random_labels[8:])
    null, _ = run(IndependentConditionGuidance(w, independent="null"), x, y, step)
    assert torch.equal(null.eps, run(ClassifierFreeGuidance(w), x, y, step)[0].eps)
    with pytest.raises(GuidanceError, match="random streams"):
        GuidedDenoiser(IndependentConditionGuidance(w), NETS, K)(x, y, step)


# ------------------------------------------------------------------------------------------- CFG-Zero*


@pytest.mark.parametrize("space", ["v", "eps"])
def test_cfg_zero_star_by_hand_neutral_and_zero_init(space):
    x, y, step = batch(index=2, count=10)
    w = 2.0
    e_c, e_u = eps(x, y, step).double(), eps(x, y, step, torch.full_like(y, K)).double()
    xd = x.double()
    if space == "v":  # the rectified-flow velocity v = ε − x̂0 of each pass
        c, u = e_c - x0_from(xd, step, e_c), e_u - x0_from(xd, step, e_u)
    else:
        c, u = e_c, e_u
    s = torch.stack([(c[i].flatten() @ u[i].flatten()) / (u[i].flatten() @ u[i].flatten() + 1e-8)
                     for i in range(len(x))]).reshape(-1, 1, 1, 1)
    out = s * u + (1 + w) * (c - s * u)
    if space == "v":  # back from v on x_f = x̃ / (1 + σ): ε = x_f + (1 − τ) v, τ = σ / (1 + σ)
        sig = step.sigma
        x_f = xd / math.sqrt(step.alpha_bar) / (1 + sig)
        want = x_f + out / (1 + sig)
    else:
        want = out
    pred, _ = run(CFGZeroStar(w, zero_steps=1, space=space), x, y, step)
    torch.testing.assert_close(pred.eps.double(), want, rtol=1e-5, atol=1e-6)
    plain, _ = run(CFGZeroStar(w, zero_steps=0, optimized_scale=False, space=space), x, y, step)
    torch.testing.assert_close(plain.eps, run(ClassifierFreeGuidance(w), x, y, step)[0].eps, rtol=1e-5, atol=1e-5)
    # Zeroed steps: no network pass; DDIM keeps x_f = x_t / (sqrt(ᾱ_t)(1 + σ_t)) (v = 0) or x̃ (ε = 0)
    sampler = DDIMSampler(BASE, respacing="ddim10")
    den = GuidedDenoiser(CFGZeroStar(w, zero_steps=2, space=space), NETS, K)
    den.reset(len(x))
    x_next = sampler.step(den, x, 0, y, None)
    a, b = sampler.step_at(0), sampler.step_at(1)
    kept = (lambda z, st: z / math.sqrt(st.alpha_bar) / (1 + st.sigma)) if space == "v" else \
        (lambda z, st: z / math.sqrt(st.alpha_bar))
    torch.testing.assert_close(kept(x_next, b), kept(x, a), rtol=1e-5, atol=1e-5)
    assert den.counts["unet"] == 0


# ------------------------------------------------------------------------------------------- PAG, TSG (real U-Net)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    net = UNet(28, 1, 16, 1, 1, attention_resolutions=[14, 7], channel_mult=[1, 2, 2], num_classes=K,
               num_head_channels=8).eval()
    with torch.no_grad():
        for p in net.parameters():  # the zero-initialised layers would hide attention and the output
            if p.abs().sum() == 0:
                p.normal_(0, 0.2)
    return net


def images(n=4, t=500):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % K, Step(t, float(BASE.alphas_cumprod[t]))


def test_identity_attention_is_attention_with_an_identity_map(unet):
    block = unet.attention_blocks()["middle"]
    h = torch.randn(2, block.qkv.in_channels, 7, 7)
    b, c = h.shape[:2]
    qkv = block.qkv(block.norm(h.reshape(b, c, -1)))
    heads, L = block.heads, 49
    q, k, v = qkv.reshape(b, 3, heads, c // heads, L).permute(1, 0, 2, 4, 3)
    eye_mask = torch.full((L, L), float("-inf")).fill_diagonal_(0.0)  # softmax -> identity map
    out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(c // heads) + eye_mask, dim=-1) @ v
    want = h + block.proj_out(out.permute(0, 1, 3, 2).reshape(b, c, L)).reshape(h.shape)
    with unet.identity_attention(["middle"]):
        got = block(h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not block.identity_attention and not torch.allclose(block(h), want)  # restored after the block
    with pytest.raises(GuidanceError, match="no self-attention block"):
        with unet.identity_attention(["output.99"]):
            pass


def test_pag_by_hand_and_neutral(unet):
    x, y, step = images()
    t = torch.full((4,), step.t)
    with unet.identity_attention(["middle", "input.3"]):
        perturbed = unet(x, t, y)
    base = unet(x, t, y)
    pred, den = run(PerturbedAttentionGuidance(2.0, blocks=["middle", "input.3"]), x, y, step, {"unet": unet})
    torch.testing.assert_close(pred.eps, base + 2.0 * (base - perturbed), rtol=1e-4, atol=1e-5)
    assert den.counts["unet"] == 8
    none, den = run(PerturbedAttentionGuidance(2.0, blocks=[]), x, y, step, {"unet": unet})
    assert torch.equal(none.eps, base) and den.counts["unet"] == 4


def test_tsg_by_hand_and_neutral(unet):
    x, y, step = images()
    w, s, alpha = 1.5, 2.0, 1.0
    rng = PerImageRNG(7, range(4))
    pred, den = run(TimeStepGuidance(w, noise_scale=s, alpha=alpha), x, y, step, {"unet": unet}, rng)
    n = rng.stream(2).randn((unet.time_embed[-1].out_features,))  # the noise the perturbed pass drew
    level = s * (step.t / 1000) ** alpha

    def perturb(module, inputs, emb):
        return emb + level * emb.std(dim=1, keepdim=True) * n

    handle = unet.time_embed.register_forward_hook(perturb)
    perturbed = unet(x, torch.full((4,), step.t), y)
    handle.remove()
    base = unet(x, torch.full((4,), step.t), y)
    torch.testing.assert_close(pred.eps, perturbed + (1 + w) * (base - perturbed), rtol=1e-4, atol=1e-5)
    assert den.counts["unet"] == 8
    neutral, den = run(TimeStepGuidance(w, noise_scale=0.0), x, y, step, {"unet": unet}, rng)
    assert torch.equal(neutral.eps, base) and den.counts["unet"] == 4
    outside, den = run(TimeStepGuidance(w, schedule="interval", sigma_hi=step.sigma / 2), x, y, step, {"unet": unet}, rng)
    assert torch.equal(outside.eps, base) and den.counts["unet"] == 4


def test_every_strategy_is_registered_with_a_config():
    from pathlib import Path

    from guidance.config import CONF_DIR
    assert {p.stem for p in (Path(CONF_DIR) / "guidance").glob("*.yaml")} == set(GUIDERS) | set(PRESETS)


def test_cfgpp_ddim_step_is_cfg_at_a_step_dependent_scale():
    """Independent check of CFG++ (η = 0): in EDM's variable x̃ = x / sqrt(ᾱ), its step x̃' = x̂0_λ + σ' ε_u equals
    CFG's x̃' = x̃ − (σ − σ') ε_ω with guidance scale ω = λ σ / (σ − σ') (ours: w = ω − 1). So with few, large steps
    ω stays near λ < 1, between the unconditional and the conditional model."""
    sampler = DDIMSampler(BASE, respacing="ddim10", clip_denoised=False)
    y = torch.tensor([0, 1, 2, 1, 0, 2])
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(4))
    for i, lam in [(2, 0.5), (6, 0.9)]:
        step, nxt = sampler.step_at(i), sampler.step_at(i + 1)
        omega = lam * step.sigma / (step.sigma - nxt.sigma)
        pp = sampler.step(GuidedDenoiser(CFGPlusPlus(lam), NETS, K), x, i, y, None)
        e_c, e_u = eps(x, y, step), eps(x, y, step, torch.full_like(y, K))
        e_w = e_u + omega * (e_c - e_u)
        xs = x / math.sqrt(step.alpha_bar)
        want = math.sqrt(nxt.alpha_bar) * (xs - (step.sigma - nxt.sigma) * e_w)
        torch.testing.assert_close(pp, want, rtol=1e-4, atol=1e-5)
        if omega >= 1:  # a CFG scale our cfg can express (w >= 0): the same step through the cfg guider
            cfg = sampler.step(GuidedDenoiser(ClassifierFreeGuidance(omega - 1), NETS, K), x, i, y, None)
            torch.testing.assert_close(pp, cfg, rtol=1e-4, atol=1e-5)
