"""Analytic tests of the Gaussian diffusion math: every expected value is derived here, not read from the code."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from guidance.diffusion import (GaussianDiffusion, create_diffusion, discretized_gaussian_log_likelihood,
                                get_named_beta_schedule, normal_kl)
from guidance.errors import GuidanceError

CONF = Path(__file__).resolve().parents[1] / "conf" / "diffusion"


def alpha_bars(betas):
    """ᾱ by an explicit running product (independent of np.cumprod in the code)."""
    out, acc = [], 1.0
    for b in betas:
        acc *= 1.0 - b
        out.append(acc)
    return np.array(out)


# ---- schedules ---------------------------------------------------------------------------------------------

def test_linear_schedule_endpoints_and_scaling():
    b = get_named_beta_schedule("linear", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    assert np.allclose(np.diff(b), (0.02 - 1e-4) / 999)  # evenly spaced
    b250 = get_named_beta_schedule("linear", 250)  # ADM: scale = 1000/T = 4
    assert b250[0] == pytest.approx(4e-4) and b250[-1] == pytest.approx(0.08)


@pytest.mark.parametrize("T", [1000, 100])
def test_cosine_alpha_bar_follows_f_ratio(T):
    s = 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    b = get_named_beta_schedule("cosine", T)
    assert b.dtype == np.float64 and b.shape == (T,) and b.max() <= 0.999 and b.min() > 0
    ab = alpha_bars(b)
    unclipped = b < 0.999  # only the last steps hit the 0.999 clip; before them ᾱ_t = f(t)/f(0) exactly
    n = int(np.argmin(unclipped)) if not unclipped.all() else T
    assert n >= T - 3
    expected = np.array([f(t) / f(0) for t in range(1, n + 1)])
    np.testing.assert_allclose(ab[:n], expected, rtol=1e-9, atol=1e-15)
    assert b[-1] == 0.999  # f(T) = cos²(π/2) = 0 would give β_T = 1 without the clip


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_bar_monotone(name):
    ab = alpha_bars(get_named_beta_schedule(name, 1000))
    assert np.all(np.diff(ab) < 0) and ab[0] < 1 and ab[-1] > 0
    assert ab[-1] < 1e-4  # both end near pure noise


def test_unknown_schedule_and_bad_steps():
    with pytest.raises(GuidanceError, match="at least 21"):
        get_named_beta_schedule("linear", 20)  # β_T = 0.02 * 1000/20 = 1 would zero ᾱ
    assert get_named_beta_schedule("cosine", 5).max() <= 0.999
    with pytest.raises(GuidanceError, match="unknown noise schedule"):
        get_named_beta_schedule("quadratic", 1000)
    with pytest.raises(GuidanceError, match="positive integer"):
        get_named_beta_schedule("linear", 0)


# ---- forward process and posterior -------------------------------------------------------------------------

def test_buffers_are_float64_and_extract_broadcasts():
    d = create_diffusion(steps=50)
    for name in ("alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "posterior_variance",
                 "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert getattr(d, name).dtype == np.float64 and getattr(d, name).shape == (50,)
    assert d.alphas_cumprod_prev[0] == 1.0
    t = torch.tensor([0, 7, 49])
    e = d.extract(d.alphas_cumprod, t, (3, 2, 4, 4))
    assert e.dtype == torch.float32 and e.shape == (3, 2, 4, 4) and e.device == t.device
    assert torch.allclose(e[:, 1, 2, 3], torch.tensor(alpha_bars(d.betas)[[0, 7, 49]], dtype=torch.float32))
    assert torch.equal(d.timestep_map, torch.arange(50)) and d.timestep_map.dtype == torch.long


@pytest.mark.parametrize("t_index", [0, 100, 500, 999])
def test_q_sample_moments(t_index):
    d = create_diffusion()
    torch.manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1), 0.7)
    xt = d.q_sample(x0, torch.full((n,), t_index)).double()
    ab = alpha_bars(d.betas)[t_index]
    mean, var = math.sqrt(ab) * 0.7, 1 - ab
    # 5-sigma bands: the sample mean has sd sqrt(var/n), the sample variance sd ≈ var sqrt(2/n).
    assert abs(xt.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(xt.var().item() - var) < 5 * var * math.sqrt(2 / n)
    m, v, lv = d.q_mean_variance(x0[:2], torch.full((2,), t_index))
    assert torch.allclose(m, torch.full_like(m, mean)) and torch.allclose(v, torch.full_like(v, var))
    assert torch.allclose(lv, torch.full_like(lv, math.log(var)))


def test_posterior_closed_form():
    d = create_diffusion(steps=200, noise_schedule="cosine")
    b = d.betas
    ab = alpha_bars(b)
    torch.manual_seed(1)
    t = torch.tensor([0, 1, 57, 199])
    x0, xt = torch.randn(4, 3, 2, 2).clamp(-1, 1), torch.randn(4, 3, 2, 2)
    mean, var, logvar = d.q_posterior_mean_variance(x0, xt, t)
    for i, ti in enumerate(t.tolist()):
        ab_prev = ab[ti - 1] if ti > 0 else 1.0
        c0 = math.sqrt(ab_prev) * b[ti] / (1 - ab[ti])  # DESIGN.md posterior mean
        ct = math.sqrt(1 - b[ti]) * (1 - ab_prev) / (1 - ab[ti])
        bt = (1 - ab_prev) / (1 - ab[ti]) * b[ti]
        assert torch.allclose(mean[i], (c0 * x0[i] + ct * xt[i]).float(), atol=1e-6)
        assert torch.allclose(var[i], torch.tensor(bt, dtype=torch.float32).expand(3, 2, 2), rtol=1e-5, atol=1e-12)
        b1 = (1 - ab[0]) / (1 - ab[1]) * b[1]  # β̃ of step 2 replaces the zero at step 1 in the log
        assert torch.allclose(logvar[i], torch.tensor(math.log(bt if ti > 0 else b1)).float().expand(3, 2, 2), rtol=1e-5)


@pytest.mark.parametrize("t_index", [1, 30, 250, 999])
def test_posterior_matches_bayes_rule_numerically(t_index):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0), integrated on a 1-D grid."""
    d = create_diffusion()
    b = d.betas[t_index]
    ab_prev = alpha_bars(d.betas)[t_index - 1]
    x0, xt = 0.4, -0.3
    sd_prior = math.sqrt(1 - ab_prev)
    grid = np.linspace(-8, 8, 400_001)
    logp = norm.logpdf(xt, math.sqrt(1 - b) * grid, math.sqrt(b)) + norm.logpdf(grid, math.sqrt(ab_prev) * x0, sd_prior)
    w = np.exp(logp - logp.max())
    w /= w.sum()
    num_mean = (w * grid).sum()
    num_var = (w * (grid - num_mean) ** 2).sum()
    mean, var, _ = d.q_posterior_mean_variance(torch.tensor([[x0]], dtype=torch.float64),
                                               torch.tensor([[xt]], dtype=torch.float64), torch.tensor([t_index]))
    spacing = grid[1] - grid[0]
    assert num_var > 100 * spacing**2  # the grid resolves the posterior
    assert mean.item() == pytest.approx(num_mean, abs=1e-5 + 1e-4 * math.sqrt(num_var))
    assert var.item() == pytest.approx(num_var, rel=1e-3)


def test_eps_x0_round_trip():
    d = create_diffusion(steps=100)
    torch.manual_seed(2)
    x0, eps = torch.rand(5, 3, 4, 4) * 2 - 1, torch.randn(5, 3, 4, 4)
    t = torch.tensor([0, 10, 50, 90, 99])
    xt = d.q_sample(x0, t, eps)
    assert torch.allclose(d.predict_x0_from_eps(xt, t, eps), x0, atol=1e-4)
    assert torch.allclose(d.predict_eps_from_x0(xt, t, x0), eps, atol=1e-3)


# ---- p_mean_variance -----------------------------------------------------------------------------------------

def test_fixed_variances():
    b = get_named_beta_schedule("linear", 100)
    ab = alpha_bars(b)
    bt = lambda i: (1 - ab[i - 1]) / (1 - ab[i]) * b[i]
    t = torch.tensor([0, 1, 42, 99])
    x = torch.randn(4, 1, 2, 2)
    small = GaussianDiffusion(b, "fixed_small").p_mean_variance(torch.zeros_like(x), x, t)
    large = GaussianDiffusion(b, "fixed_large").p_mean_variance(torch.zeros_like(x), x, t)
    exp_small = [0.0, bt(1), bt(42), bt(99)]  # β̃_0 = 0 (ADM): no guidance shift on the last step
    log_small = np.log([bt(1), bt(1), bt(42), bt(99)])  # its log clipped to β̃ of step 2
    exp_large = [bt(1), b[1], b[42], b[99]]
    for out, exp, log_exp in ((small, exp_small, log_small), (large, exp_large, np.log(exp_large))):
        v = out["variance"][:, 0, 0, 0].double()
        assert torch.allclose(v, torch.tensor(exp, dtype=torch.float64), rtol=1e-5, atol=0)
        assert torch.allclose(out["log_variance"][:, 0, 0, 0].double(), torch.tensor(log_exp), rtol=1e-5)


def test_learned_range_endpoints_and_midpoint():
    b = get_named_beta_schedule("linear", 100)
    ab = alpha_bars(b)
    d = GaussianDiffusion(b, "learned_range", "hybrid")
    t = torch.tensor([3, 60])
    x = torch.randn(2, 3, 2, 2)
    eps = torch.randn(2, 3, 2, 2)
    for v, expected in ((1.0, [b[3], b[60]]),
                        (-1.0, [(1 - ab[i - 1]) / (1 - ab[i]) * b[i] for i in (3, 60)])):
        out = d.p_mean_variance(torch.cat([eps, torch.full_like(eps, v)], 1), x, t)
        assert torch.allclose(out["variance"][:, 0, 0, 0].double(), torch.tensor(expected, dtype=torch.float64), rtol=1e-5)
        assert torch.equal(out["eps"], eps)
    # v = 0: geometric mean of β and β̃ (the interpolation is in log space, Improved DDPM eq. 15)
    out = d.p_mean_variance(torch.cat([eps, torch.zeros_like(eps)], 1), x, t)
    geo = [math.sqrt(b[i] * (1 - ab[i - 1]) / (1 - ab[i]) * b[i]) for i in (3, 60)]
    assert torch.allclose(out["variance"][:, 0, 0, 0].double(), torch.tensor(geo, dtype=torch.float64), rtol=1e-5)


def test_mean_uses_x0_form_and_clipping():
    b = get_named_beta_schedule("linear", 1000)
    ab = alpha_bars(b)
    d = GaussianDiffusion(b)
    t = torch.tensor([900, 900])
    xt = torch.tensor([3.0, -0.2]).reshape(2, 1, 1, 1)
    eps = torch.tensor([-2.0, 0.1]).reshape(2, 1, 1, 1)
    raw_x0 = (xt.double() - math.sqrt(1 - ab[900]) * eps.double()) / math.sqrt(ab[900])
    assert raw_x0[0].item() > 1  # first example overshoots [-1, 1]
    c0 = math.sqrt(ab[899]) * b[900] / (1 - ab[900])
    ct = math.sqrt(1 - b[900]) * (1 - ab[899]) / (1 - ab[900])
    for clip in (False, True):
        out = d.p_mean_variance(eps, xt, t, clip_denoised=clip)
        want_x0 = raw_x0.clamp(-1, 1) if clip else raw_x0
        assert torch.allclose(out["pred_x0"].double(), want_x0, rtol=1e-5)
        assert torch.allclose(out["mean"].double(), c0 * want_x0 + ct * xt.double(), rtol=1e-5, atol=1e-6)
        assert torch.equal(out["eps"], eps)  # the model's ε, even when x̂_0 was clipped
    assert d.p_mean_variance(eps, xt, t, clip_denoised=True)["pred_x0"].abs().max() <= 1.0
    out = d.p_mean_variance(eps, xt, t, clip_denoised=False, denoised_fn=lambda x: x * 0)
    assert torch.allclose(out["mean"], ct * xt, rtol=1e-5)


def test_output_channel_mismatch_is_a_clear_error():
    x = torch.randn(2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(GuidanceError, match="learn_sigma=false"):
        create_diffusion(steps=50).p_mean_variance(torch.randn(2, 6, 4, 4), x, t)
    learned = create_diffusion(steps=50, model_var_type="learned_range", loss_type="hybrid")
    with pytest.raises(GuidanceError, match="learn_sigma=true"):
        learned.p_mean_variance(torch.randn(2, 3, 4, 4), x, t)
    with pytest.raises(GuidanceError, match="learn_sigma=true"):
        learned.training_losses(lambda x, t, y: x, x, t)


def test_bad_config_values():
    with pytest.raises(GuidanceError, match="needs model_var_type=learned_range"):
        create_diffusion(steps=50, loss_type="hybrid")
    with pytest.raises(GuidanceError, match="unknown model_var_type"):
        create_diffusion(steps=50, model_var_type="learned")
    with pytest.raises(GuidanceError, match="unknown loss_type"):
        create_diffusion(steps=50, loss_type="l1")
    with pytest.raises(GuidanceError, match="untrained"):
        create_diffusion(steps=50, model_var_type="learned_range").training_losses(
            lambda x, t, y: torch.cat([x, x], 1), torch.zeros(1, 1, 2, 2), torch.tensor([1]))


# ---- losses --------------------------------------------------------------------------------------------------

def test_normal_kl_closed_form_and_zero():
    m1, lv1, m2, lv2 = 0.3, math.log(0.5), -0.1, math.log(2.0)
    s1, s2 = math.sqrt(0.5), math.sqrt(2.0)
    expected = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert normal_kl(torch.tensor(m1), torch.tensor(lv1), torch.tensor(m2), torch.tensor(lv2)).item() == pytest.approx(expected, rel=1e-6)
    assert normal_kl(torch.tensor(1.0), torch.tensor(0.2), torch.tensor(1.0), torch.tensor(0.2)).item() == pytest.approx(0, abs=1e-7)


@pytest.mark.parametrize("mean,sd", [(0.95, 0.05), (-0.97, 0.03), (0.1, 0.4)])  # top edge, bottom edge, interior
def test_discretized_likelihood_matches_scipy_and_normalises(mean, sd):
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # the 256 8-bit values in [-1, 1]
    logp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), torch.full_like(levels, math.log(sd)))
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-9)
    x = levels.numpy()
    hi = np.where(x > 0.999, np.inf, x + 1 / 255)
    lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
    expected = norm.cdf(hi, mean, sd) - norm.cdf(lo, mean, sd)
    mask = expected > 1e-10
    # atol: the bin mass is a difference of CDFs, exact to ~1e-16 absolute
    np.testing.assert_allclose(torch.exp(logp).numpy()[mask], expected[mask], rtol=1e-7, atol=1e-15)


# ---- training losses -----------------------------------------------------------------------------------------

def test_mse_is_zero_for_the_true_noise_and_model_sees_mapped_t():
    d = create_diffusion(steps=1000, timestep_respacing="ddim25")
    torch.manual_seed(4)
    x0, noise = torch.rand(3, 1, 4, 4) * 2 - 1, torch.randn(3, 1, 4, 4)
    t = torch.tensor([0, 1, 24])
    seen = {}

    def oracle(x_t, t_model, y):
        seen["t"], seen["y"] = t_model, y
        return noise

    out = d.training_losses(oracle, x0, t, y=torch.tensor([5, 6, 7]), noise=noise)
    assert torch.equal(out["mse"], torch.zeros(3)) and torch.equal(out["loss"], out["mse"]) and "vb" not in out
    assert seen["t"].tolist() == [0, 40, 960] and seen["y"].tolist() == [5, 6, 7]
    wrong = d.training_losses(lambda x, t, y: noise + 0.5, x0, t, noise=noise)
    assert torch.allclose(wrong["mse"], torch.full((3,), 0.25))


class ToyLearnedModel(torch.nn.Module):
    """Output [a * x_t, v] with scalar parameters: ε-part and variance-part have separate parameters."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.v = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t, y=None):
        return torch.cat([self.a * x, self.v.expand_as(x)], 1)


def test_hybrid_vlb_does_not_train_the_mean():
    d = create_diffusion(steps=1000, model_var_type="learned_range", loss_type="hybrid")
    torch.manual_seed(5)
    x0, noise = torch.rand(4, 2, 3, 3) * 2 - 1, torch.randn(4, 2, 3, 3)
    t = torch.tensor([1, 10, 300, 800])
    model = ToyLearnedModel()
    out = d.training_losses(model, x0, t, noise=noise)
    out["loss"].sum().backward()
    # Only L_simple reaches a: d/da Σ_i mean((ε − a x_t)²) computed by hand.
    xt = d.q_sample(x0, t, noise)
    grad_a = (-2 * (noise - model.a.detach() * xt) * xt).mean(dim=(1, 2, 3)).sum()
    assert model.a.grad.item() == pytest.approx(grad_a.item(), rel=1e-5)
    assert model.v.grad.abs().item() > 1e-6  # the VLB still trains the variance

    # Guard that the test can fail: without the stop-gradient the VLB would move `a` too.
    model.zero_grad()
    full = d.vb_terms_bpd(model(xt, t), x0, xt, t).sum()
    full.backward()
    assert model.a.grad.abs().item() > 1e-6


def test_vb_at_t0_is_decoder_nll_and_kl_elsewhere():
    T = 1000
    d = create_diffusion(steps=T, model_var_type="learned_range", loss_type="hybrid")
    ab = alpha_bars(d.betas)
    torch.manual_seed(6)
    x0 = (torch.randint(0, 256, (2, 1, 2, 2)) / 127.5 - 1).double()
    noise = torch.randn(2, 1, 2, 2, dtype=torch.float64)
    t = torch.tensor([0, 500])
    v_out, a_eps = -0.4, 0.9
    model = lambda x, tt, y: torch.cat([a_eps * noise, torch.full_like(x, v_out)], 1)
    vb = d.training_losses(model, x0, t, noise=noise)["vb"]

    # t = 0: x_0 decoded from N(μ, σ²) with μ = x̂_0-posterior mean, log σ² between log β̃_2 and log β_1.
    b = d.betas
    bt2 = (1 - ab[0]) / (1 - ab[1]) * b[1]
    frac = (v_out + 1) / 2
    var0 = math.exp(frac * math.log(b[0]) + (1 - frac) * math.log(bt2))
    xt0 = math.sqrt(ab[0]) * x0[0] + math.sqrt(1 - ab[0]) * noise[0]
    x0hat = (xt0 - math.sqrt(1 - ab[0]) * a_eps * noise[0]) / math.sqrt(ab[0])
    mu0 = (b[0] / (1 - ab[0])) * x0hat  # coef1 with ᾱ_prev = 1; coef2 = 0 at the first step
    x = x0[0].numpy().ravel()
    m = mu0.numpy().ravel()
    hi = np.where(x > 0.999, np.inf, x + 1 / 255)
    lo = np.where(x < -0.999, -np.inf, x - 1 / 255)
    p = norm.cdf(hi, m, math.sqrt(var0)) - norm.cdf(lo, m, math.sqrt(var0))
    nll_bits = -np.log(np.maximum(p, 1e-12)).mean() / math.log(2)
    assert vb[0].item() == pytest.approx(nll_bits * T / 1000, rel=1e-4)

    # t = 500: KL between the true posterior and p, closed form, in bits, times T/1000.
    i = 500
    bt = (1 - ab[i - 1]) / (1 - ab[i]) * b[i]
    var = math.exp(frac * math.log(b[i]) + (1 - frac) * math.log(bt))
    xt = math.sqrt(ab[i]) * x0[1] + math.sqrt(1 - ab[i]) * noise[1]
    x0hat = (xt - math.sqrt(1 - ab[i]) * a_eps * noise[1]) / math.sqrt(ab[i])
    c0 = math.sqrt(ab[i - 1]) * b[i] / (1 - ab[i])
    ct = math.sqrt(1 - b[i]) * (1 - ab[i - 1]) / (1 - ab[i])
    mu_q, mu_p = c0 * x0[1] + ct * xt, c0 * x0hat + ct * xt
    kl = (0.5 * math.log(var / bt) + (bt + (mu_q - mu_p) ** 2) / (2 * var) - 0.5).mean().item() / math.log(2)
    assert vb[1].item() == pytest.approx(kl * T / 1000, rel=1e-4)


# ---- configs -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear_1000", "cosine_1000", "linear_1000_learned"])
def test_configs_instantiate(name):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg._target_ == "guidance.diffusion.create_diffusion" and cfg.timestep_respacing == ""
    d = instantiate(cfg)
    assert isinstance(d, GaussianDiffusion) and d.num_timesteps == 1000
    assert (d.model_var_type, d.loss_type) == (cfg.model_var_type, cfg.loss_type)
    if name == "linear_1000_learned":
        assert (d.model_var_type, d.loss_type) == ("learned_range", "hybrid")
    respaced = instantiate(cfg, timestep_respacing=250)  # a command-line override arrives as an int
    assert respaced.num_timesteps == 250 and respaced.timestep_map[-1].item() == 999


def test_hybrid_vlb_weight_is_lambda_times_T():
    # λ = 0.001 per term of the T-term bound: a single sampled term is weighted by λ·T = T/1000.
    d = create_diffusion(steps=250, model_var_type="learned_range", loss_type="hybrid")
    torch.manual_seed(7)
    x0, noise = torch.rand(3, 1, 2, 2) * 2 - 1, torch.randn(3, 1, 2, 2)
    t = torch.tensor([0, 5, 200])
    model = ToyLearnedModel()
    out = d.training_losses(model, x0, t, noise=noise)
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(out["vb"], 0.25 * d.vb_terms_bpd(model(xt, t), x0, xt, t), rtol=1e-6)
    assert torch.allclose(out["loss"], out["mse"] + out["vb"])
