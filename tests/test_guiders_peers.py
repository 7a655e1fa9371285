"""The guidance methods diffusers 0.42 ships (TCFG, FDG, MAMBO-G, APG-mix, SLG, SEG): each by hand against its
equation, and each combination against diffusers' guider fed the same predictions (scale conversion: diffusers'
guidance_scale = 1 + w for the CFG-like terms; the perturbed-pass scales s are the same number)."""

import math

import pytest
import torch
import torch.nn.functional as F

from guidance.diffusion import create_diffusion
from guidance.guiders import (AdaptiveProjectedMixGuidance, ClassifierFreeGuidance, FrequencyDecoupledGuidance,
                              MagnitudeAwareGuidance, SkipLayerGuidance, SmoothedEnergyGuidance, TangentialCFG)
from guidance.guiders.fdg import from_pyramid, laplacian_pyramid, pyr_down, pyr_up
from guidance.guiders.seg import BlurredQuery, blur_query
from guidance.guiders.spaces import from_space, to_space
from guidance.nn import UNet
from guidance.engine import Prediction, Step
from guidance.sampling import GuidedDenoiser

BASE = create_diffusion(1000)
K = 10


def step_at(t=500, index=0, count=1):
    return Step(t, float(BASE.alphas_cumprod[t]), index, count)


def pair(seed=0, shape=(3, 1, 28, 28), t=500, index=0, count=1):
    """x_t, its step, and conditional / unconditional predictions (ε_u = ε_c + a smaller random difference)."""
    g = torch.Generator().manual_seed(seed)
    x, ec = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    eu = ec + 0.3 * torch.randn(shape, generator=g)
    step = step_at(t, index, count)
    return x, step, Prediction.from_eps(x, step, ec), Prediction.from_eps(x, step, eu)


def dot(a, b):
    return (a * b).flatten(1).sum(1).reshape(-1, *([1] * (a.ndim - 1)))


@pytest.fixture(scope="module")
def dg():
    return pytest.importorskip("diffusers.guiders")


# ------------------------------------------------------------------------------------------- spaces


@pytest.mark.parametrize("space", ["eps", "x0", "flow"])
def test_spaces_round_trip_and_flow_is_eps_minus_x0(space):
    x, step, c, _ = pair()
    back = from_space(to_space(c, x, step, space), x, step, space)
    torch.testing.assert_close(back.eps, c.eps, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(to_space(c, x, step, "flow"), c.eps - c.x0)


# ------------------------------------------------------------------------------------------- TCFG


def test_tcfg_by_hand_neutral_and_parallel_case():
    x, step, c, u = pair()
    w = 1.5
    pred = TangentialCFG(w).combine({"cond": c, "uncond": u}, x, step)
    for i in range(len(x)):
        m = torch.stack([c.eps[i].flatten(), u.eps[i].flatten()]).double()       # 2 × D
        evals, evecs = torch.linalg.eigh(m @ m.T)                                # Gram: left singular vectors
        v1 = m.T @ evecs[:, -1]
        v1 = v1 / v1.norm()                                                      # top right-singular vector
        u_f = (m[1] @ v1) * v1
        want = m[0] + w * (m[0] - u_f)
        torch.testing.assert_close(pred.eps[i].flatten().double(), want, rtol=1e-5, atol=1e-5)
    # ε_u parallel to ε_c keeps it whole: TCFG is CFG
    par = Prediction.from_eps(x, step, 0.7 * c.eps)
    torch.testing.assert_close(TangentialCFG(w).combine({"cond": c, "uncond": par}, x, step).eps,
                               (1 + w) * c.eps - w * par.eps, rtol=1e-5, atol=1e-5)
    assert [r.name for r in TangentialCFG(0.0).requests(step)] == ["cond"]


def test_tcfg_equals_diffusers(dg):
    x, step, c, u = pair(1)
    w = 2.0
    ours = TangentialCFG(w).combine({"cond": c, "uncond": u}, x, step).eps
    theirs = dg.TangentialClassifierFreeGuidance(guidance_scale=1 + w).forward(c.eps, u.eps).pred
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- FDG


def blur_by_hand(img):
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    p = F.pad(img, (2, 2, 2, 2), mode="reflect")
    h, w = img.shape[-2:]
    return sum(k[a] * k[b] * p[..., a:a + h, b:b + w] for a in range(5) for b in range(5))


def up_by_hand(img):
    """Bilinear ×2 with half-pixel centres: out[2i] = ¾ x[i] + ¼ x[i−1], out[2i+1] = ¾ x[i] + ¼ x[i+1] (edges clamp)."""
    def along(t, dim):
        dim = dim % t.ndim
        prev = torch.cat([t.narrow(dim, 0, 1), t.narrow(dim, 0, t.shape[dim] - 1)], dim)
        nxt = torch.cat([t.narrow(dim, 1, t.shape[dim] - 1), t.narrow(dim, t.shape[dim] - 1, 1)], dim)
        even, odd = 0.75 * t + 0.25 * prev, 0.75 * t + 0.25 * nxt
        return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)
    return along(along(img, -2), -1)


def test_pyramid_by_hand_and_exact_inverse():
    img = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    down = blur_by_hand(img).unflatten(-1, (14, 2)).unflatten(-3, (14, 2)).mean(dim=(-3, -1))  # 2×2 means
    torch.testing.assert_close(pyr_down(img), down, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pyr_up(down), blur_by_hand(up_by_hand(down)), rtol=1e-5, atol=1e-6)
    pyr = laplacian_pyramid(img, 3)
    assert [tuple(p.shape[-2:]) for p in pyr] == [(28, 28), (14, 14), (7, 7)]
    torch.testing.assert_close(pyr[0], img - blur_by_hand(up_by_hand(down)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_pyramid(pyr), img, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("levels", [2, 3, 4])  # 4 levels: 28 px is padded to 32 and cropped back
def test_fdg_equal_scales_is_cfg_and_split_scales_by_hand(levels):
    x, step, c, u = pair(2)
    w = 1.5
    same = FrequencyDecoupledGuidance(w, high_scale=w, levels=levels).combine({"cond": c, "uncond": u}, x, step)
    cfg = ClassifierFreeGuidance(w).combine({"cond": c, "uncond": u}, x, step)
    torch.testing.assert_close(same.x0, cfg.x0, rtol=1e-4, atol=1e-4)
    # w_low = 0: only the finest band is guided; with 2 levels that band is Δ − up(down(Δ)) in x̂0
    split = FrequencyDecoupledGuidance(0.0, high_scale=w, levels=2).combine({"cond": c, "uncond": u}, x, step)
    d = c.x0 - u.x0
    high = d - blur_by_hand(up_by_hand(blur_by_hand(d).unflatten(-1, (14, 2)).unflatten(-3, (14, 2)).mean(dim=(-3, -1))))
    torch.testing.assert_close(split.x0, c.x0 + w * high, rtol=1e-4, atol=1e-4)
    assert [r.name for r in FrequencyDecoupledGuidance(0.0, high_scale=0.0).requests(step)] == ["cond"]


def _fdg_with_our_pyramid(dg, monkeypatch):
    fdg_mod = pytest.importorskip("diffusers.guiders.frequency_decoupled_guidance")
    if not fdg_mod._CAN_USE_KORNIA:  # kornia is not in the bench extra: diffusers' combination on our pyramid
        monkeypatch.setattr(fdg_mod, "_CAN_USE_KORNIA", True)
        monkeypatch.setattr(fdg_mod, "build_laplacian_pyramid_func", laplacian_pyramid)
        monkeypatch.setattr(fdg_mod, "upsample_and_blur_func", pyr_up)
    return fdg_mod.FrequencyDecoupledGuidance


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_fdg_equals_diffusers_combination(dg, monkeypatch, eta):
    """diffusers' per-level update, band order and projection, fed x̂0 (the paper's space)."""
    peer = _fdg_with_our_pyramid(dg, monkeypatch)
    x, step, c, u = pair(3)
    w_low, w_high = 0.5, 3.0
    ours = FrequencyDecoupledGuidance(w_low, high_scale=w_high, levels=3, parallel_weight=eta)
    got = ours.combine({"cond": c, "uncond": u}, x, step).x0
    theirs = peer(guidance_scales=[1 + w_high, 1 + w_high, 1 + w_low], parallel_weights=eta).forward(c.x0, u.x0).pred
    torch.testing.assert_close(got, theirs, rtol=1e-4, atol=1e-4)


def test_fdg_pyramid_equals_kornia():
    kornia = pytest.importorskip("kornia")
    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    for ours, theirs in zip(laplacian_pyramid(img, 3), kornia.geometry.transform.build_laplacian_pyramid(img, 3)):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- MAMBO-G


@pytest.mark.parametrize("space", ["flow", "eps"])
def test_mambo_by_hand_and_alpha_zero_is_cfg(space):
    x, step, c, u = pair(4)
    w, alpha = 3.0, 2.0
    pred = MagnitudeAwareGuidance(w, alpha=alpha, space=space).combine({"cond": c, "uncond": u}, x, step)
    oc, ou = (c.eps - c.x0, u.eps - u.x0) if space == "flow" else (c.eps, u.eps)
    for i in range(len(x)):
        r = (oc[i] - ou[i]).norm() / ou[i].norm()
        want = oc[i] + w * math.exp(-alpha * r.item()) * (oc[i] - ou[i])
        torch.testing.assert_close(to_space(pred, x, step, space)[i], want, rtol=1e-4, atol=1e-4)
    cfg = ClassifierFreeGuidance(w).combine({"cond": c, "uncond": u}, x, step)
    torch.testing.assert_close(MagnitudeAwareGuidance(w, alpha=0.0, space=space).combine(
        {"cond": c, "uncond": u}, x, step).eps, cfg.eps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("space", ["flow", "eps"])
def test_mambo_equals_diffusers(dg, space):
    x, step, c, u = pair(5)
    w, alpha = 4.0, 3.0
    pred = MagnitudeAwareGuidance(w, alpha=alpha, space=space).combine({"cond": c, "uncond": u}, x, step)
    # flattened per image: diffusers' torch.norm(dim=[1, 2, 3]) is refused by torch 2.14 on 4-D tensors
    theirs = dg.MagnitudeAwareGuidance(guidance_scale=1 + w, alpha=alpha).forward(
        to_space(c, x, step, space).flatten(1), to_space(u, x, step, space).flatten(1)).pred
    torch.testing.assert_close(to_space(pred, x, step, space).flatten(1), theirs, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- APG mix


def chain(n=6, seed=6):
    return [pair(seed + i, t=900 - 100 * i, index=i, count=n) for i in range(n)]


def test_apg_mix_by_hand():
    w, wa, beta, r, eta, k = 1.0, 3.0, -0.5, 20.0, 0.2, 1
    g = AdaptiveProjectedMixGuidance(w, apg_scale=wa, momentum=beta, norm_threshold=r, eta=eta, apg_start_step=k,
                                     space="eps")
    g.reset(3)
    running = None
    for x, step, c, u in chain():
        got = g.combine({"cond": c, "uncond": u}, x, step).eps
        d = (c.eps - u.eps).double()
        running = d if running is None else d + beta * running
        if step.index <= k:
            torch.testing.assert_close(got, c.eps + w * (c.eps - u.eps))
            continue
        delta = running * torch.clamp(r / dot(running, running).sqrt(), max=1.0)
        cc = c.eps.double()
        par = dot(delta, cc) / dot(cc, cc) * cc
        torch.testing.assert_close(got.double(), u.eps + (1 + wa) * (delta - par + eta * par), rtol=1e-5, atol=1e-5)
    # η = 1, no momentum, no threshold: the APG phase is CFG at w_apg
    plain = AdaptiveProjectedMixGuidance(w, apg_scale=wa, momentum=None, norm_threshold=None, eta=1.0,
                                         apg_start_step=0, space="eps")
    x, step, c, u = chain()[3]
    torch.testing.assert_close(plain.combine({"cond": c, "uncond": u}, x, step).eps,
                               c.eps + wa * (c.eps - u.eps), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("space", ["flow", "eps", "x0"])
def test_apg_mix_equals_diffusers_over_a_chain(dg, space):
    from diffusers.guiders.adaptive_projected_guidance_mix import MomentumBuffer

    w, wa, beta, r, eta, k = 1.5, 4.0, -0.5, 15.0, 0.0, 2
    ours = AdaptiveProjectedMixGuidance(w, apg_scale=wa, momentum=beta, norm_threshold=r, eta=eta,
                                        apg_start_step=k, space=space)
    peer = dg.AdaptiveProjectedMixGuidance(guidance_scale=1 + w, adaptive_projected_guidance_scale=1 + wa,
                                           adaptive_projected_guidance_momentum=beta,
                                           adaptive_projected_guidance_rescale=r, eta=eta,
                                           adaptive_projected_guidance_start_step=k)
    ours.reset(3)
    links = chain()
    for x, step, c, u in links:
        peer.set_state(step.index, len(links), torch.tensor(step.t))
        if step.index == 0:  # what diffusers' prepare_inputs does at step 0
            peer.momentum_buffer = MomentumBuffer(beta)
        got = to_space(ours.combine({"cond": c, "uncond": u}, x, step), x, step, space)
        theirs = peer.forward(to_space(c, x, step, space), to_space(u, x, step, space)).pred
        torch.testing.assert_close(got, theirs, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- SLG, SEG (real U-Net)


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


def images(n=4, t=500, index=0, count=1):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % K, step_at(t, index, count)


def run(guider, net, x, y, step):
    den = GuidedDenoiser(guider, {"unet": net}, K)
    den.reset(len(x))
    return den(x, y, step), den


def test_residual_layers_keep_shape(unet):
    layers = unet.residual_layers()
    assert {"middle.0", "middle.1", "middle.2"} <= set(layers)
    assert "input.3.0" not in layers and "output.0.0" not in layers  # ResBlocks that change channels
    assert "input.3.1" in layers and "input.1.0" in layers  # the 14-px attention after it; a 16 -> 16 ResBlock


def test_slg_by_hand_window_and_cost(unet):
    x, y, _ = images()
    w, s, n = 1.0, 2.0, 10
    g = SkipLayerGuidance(s, cfg_scale=w, blocks=["middle.1", "middle.2"], start=0.1, stop=0.5)
    t = torch.full((4,), 500)
    cond, uncond = unet(x, t, y), unet(x, t, torch.full_like(y, K))
    saved = unet.middle_block[1], unet.middle_block[2]
    unet.middle_block[1] = torch.nn.Identity()
    unet.middle_block[2] = torch.nn.Identity()  # EmbedSequential hands emb only to ResBlocks
    try:
        skipped = unet(x, t, y)
    finally:
        unet.middle_block[1], unet.middle_block[2] = saved
    for i in range(n):
        step = step_at(500, i, n)
        pred, den = run(g, unet, x, y, step)
        inside = 1 < i < 5  # 0.1·10 < i < 0.5·10
        want = cond + w * (cond - uncond) + (s * (cond - skipped) if inside else 0)
        torch.testing.assert_close(pred.eps, want, rtol=1e-4, atol=1e-5)
        assert den.counts["unet"] == 4 * (3 if inside else 2)


def test_slg_equals_diffusers_and_its_truncated_window(dg):
    x, step, c, u = pair(7)
    skip = Prediction.from_eps(x, step, c.eps + 0.2 * torch.randn_like(c.eps))
    w, s, n = 1.5, 2.8, 28
    ours = SkipLayerGuidance(s, cfg_scale=w, start=0.01, stop=0.2)
    peer = dg.SkipLayerGuidance(guidance_scale=1 + w, skip_layer_guidance_scale=s, skip_layer_guidance_start=0.01,
                                skip_layer_guidance_stop=0.2, skip_layer_guidance_layers=[0])
    guided = []
    for i in range(n):
        st = step_at(step.t, i, n)
        peer.set_state(i, n, torch.tensor(st.t))
        preds = {"model": c, "uncond": u} | ({"skip": skip} if ours.skipping(st) else {})
        got = ours.combine(preds, x, st).eps
        theirs = peer.forward(c.eps, u.eps, skip.eps if peer._is_slg_enabled() else None).pred
        if ours.skipping(st) == peer._is_slg_enabled():
            torch.testing.assert_close(got, theirs, rtol=1e-5, atol=1e-5)
        guided.append((i, ours.skipping(st), peer._is_slg_enabled()))
    # SD 3.5: 0.28 < i < 5.6 -> steps 1..5; diffusers: 0 < i < 5 -> steps 1..4 (the stated difference)
    assert [i for i, o, _ in guided if o] == [1, 2, 3, 4, 5]
    assert [i for i, _, p in guided if p] == [1, 2, 3, 4]


def test_seg_blur_by_hand():
    q = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(8))
    sigma = 0.5  # kernel ⌈3⌉ + 1 − 1 = 3 taps: e^{-2}, 1, e^{-2}, normalised
    k = torch.tensor([math.exp(-2), 1.0, math.exp(-2)])
    k = k / k.sum()
    p = F.pad(q, (1, 1, 1, 1), mode="reflect")
    want = sum(k[a] * k[b] * p[..., a:a + 7, b:b + 7] for a in range(3) for b in range(3))
    torch.testing.assert_close(blur_query(q, sigma), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(blur_query(q, math.inf), q.mean(dim=(-2, -1), keepdim=True).expand_as(q))
    assert blur_query(q, 40.0).shape == q.shape  # kernel cut to 13 taps on a 7×7 map


def test_seg_blur_against_diffusers_and_its_swapped_branches():
    utils = pytest.importorskip("diffusers.hooks.smoothed_energy_guidance_utils")
    q = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(9))
    tokens = q.flatten(2).transpose(1, 2).clone()  # diffusers' [B, L, C]

    def theirs(sigma, threshold):
        size = math.ceil(6 * sigma) + 1 - math.ceil(6 * sigma) % 2
        out = utils._gaussian_blur_2d(tokens.clone(), size, sigma, threshold)
        return out.transpose(1, 2).reshape(q.shape)

    # its Gaussian branch (reached only with σ above its threshold) is the official kernel, as ours
    torch.testing.assert_close(blur_query(q, 1.0), theirs(1.0, 0.0), rtol=1e-5, atol=1e-6)
    # its σ <= 9999 branch is the spatial mean, i.e. our (and the official) infinite blur ...
    torch.testing.assert_close(blur_query(q, math.inf), theirs(1.0, 9999.0), rtol=1e-5, atol=1e-6)
    # ... so at σ = 1 diffusers' SEG perturbs differently from the paper's by this much (the stated difference)
    gap = (blur_query(q, 1.0) - theirs(1.0, 9999.0)).norm() / blur_query(q, 1.0).norm()
    assert gap > 0.3


def test_seg_attention_by_hand_and_guider(unet):
    block = unet.attention_blocks()["middle"]
    h = torch.randn(2, block.qkv.in_channels, 7, 7)
    b, c = h.shape[:2]
    qkv = block.qkv(block.norm(h.reshape(b, c, -1)))
    q = blur_query(qkv[:, :c].reshape(b, c, 7, 7), 1.0).reshape(b, c, 49)
    heads, d = block.heads, c // block.heads
    qh, kh, vh = (t.reshape(b, heads, d, 49).transpose(-1, -2) for t in (q, qkv[:, c:2 * c], qkv[:, 2 * c:]))
    att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1) @ vh
    want = h + block.proj_out(att.transpose(-1, -2).reshape(b, c, 49)).reshape(h.shape)
    with BlurredQuery(("middle",), 1.0).applied(unet):
        got = block(h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block(h), h + block.proj_out(
        __import__("guidance.nn.layers", fromlist=["x"]).multi_head_attention(qkv, heads)).reshape(h.shape))

    x, y, step = images()
    t = torch.full((4,), step.t)
    with BlurredQuery(("middle", "input.3"), 1.0).applied(unet):
        seg = unet(x, t, y)
    base, uncond = unet(x, t, y), unet(x, t, torch.full_like(y, K))
    pred, den = run(SmoothedEnergyGuidance(2.0, cfg_scale=0.5, blur_sigma=1.0, blocks=["middle", "input.3"]),
                    unet, x, y, step)
    torch.testing.assert_close(pred.eps, base + 0.5 * (base - uncond) + 2.0 * (base - seg), rtol=1e-4, atol=1e-5)
    assert den.counts["unet"] == 12
    none, den = run(SmoothedEnergyGuidance(2.0, blocks=[]), unet, x, y, step)
    assert torch.equal(none.eps, base) and den.counts["unet"] == 4


def test_seg_equals_diffusers(dg):
    x, step, c, u = pair(10)
    seg = Prediction.from_eps(x, step, c.eps + 0.2 * torch.randn_like(c.eps))
    w, s = 1.0, 3.0
    got = SmoothedEnergyGuidance(s, cfg_scale=w).combine({"model": c, "uncond": u, "seg": seg}, x, step).eps
    peer = dg.SmoothedEnergyGuidance(guidance_scale=1 + w, seg_guidance_scale=s, seg_guidance_layers=[0])
    peer.set_state(3, 10, torch.tensor(step.t))  # inside its window (its step 0 is never guided)
    torch.testing.assert_close(got, peer.forward(c.eps, u.eps, seg.eps).pred, rtol=1e-5, atol=1e-5)


def test_unknown_blocks_are_one_line_errors(unet):
    from guidance.errors import GuidanceError
    x, y, step = images()
    with pytest.raises(GuidanceError, match="no skippable layer"):
        run(SkipLayerGuidance(1.0, blocks=["input.3.0"], start=0.0, stop=1.0), unet, x, y, step_at(500, 1, 4))
    with pytest.raises(GuidanceError, match="no self-attention block"):
        run(SmoothedEnergyGuidance(1.0, blocks=["output.99"]), unet, x, y, step)
    with pytest.raises(GuidanceError, match="cfg_scale must be 0"):
        SmoothedEnergyGuidance(1.0, cfg_scale=1.0, conditional=False)


@pytest.mark.parametrize("name", ["tcfg", "fdg", "mambo", "apg_mix", "slg", "seg"])
def test_config_builds_and_report_reads_its_info(name):
    import json
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from guidance.config import CONF_DIR
    from guidance.guiders import GUIDERS, describe_point

    guider = instantiate(OmegaConf.load(Path(CONF_DIR) / "guidance" / f"{name}.yaml"))
    assert isinstance(guider, GUIDERS[name])
    info = json.loads(json.dumps(guider.info(), allow_nan=False))  # sample_info.json stays plain JSON
    d = describe_point(info)
    assert d.table.kind == name and len(d.cells) == len(d.table.key_headers) and not d.unguided
    assert describe_point({**info, "scale": 0.0, "cfg_scale": 0.0, "high_scale": 0.0}).unguided
