"""Every parameterization (ε, x̂0, v, flow velocity, EDM D) of the analytic Gaussian mixture, on trained discrete
levels and on continuous σ, with every sampler: the exact denoiser of each (guidance.testbed.mixture_model) must
reproduce the mixture's class weights and per-class moments (tolerances of a few standard errors: a wrong
conversion or coefficient fails), CFG at w = 0 must be the conditional model exactly, CFG-Zero* on the flow model
must be its paper's update written out, and a v-model and an ε-model of one mixture must give the same samples."""

import functools
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from guidance.config import CONF_DIR
from guidance.diffusion import create_diffusion
from guidance.engine import Step
from guidance.engine.model import ContinuousLevels
from guidance.errors import GuidanceError
from guidance.guiders import ClassifierFreeGuidance, NoGuidance, build_guider
from guidance.sampling import SAMPLERS, BatchRNG, GuidedDenoiser
from guidance.testbed import GaussianMixture, MixtureClassifier, mixture_model

BASE = create_diffusion(1000)
CONT = ContinuousLevels(0.0, math.inf)  # every σ, σ = ∞ (a flow model's τ = 1) included
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
K, N = MIX.num_classes, 2000
PARAMS = ("eps", "x0", "v", "flow", "edm")
TAU_ONE = ("x0", "v", "flow")  # defined at σ = ∞: ε = x_t there determines no x̂0; EDM's x̃ is infinite

# sampler -> (kwargs, discrete grid, continuous grid): step counts keep the discretisation error well below the
# statistical tolerance (as tests/test_samplers.py). flow_euler, flow_sde: a flow grid from τ = 1 where the model
# is defined there, else an edm grid (flow_sde: SiT's last step from t_min = 0.04).
CHAINS = {
    "ddpm": ({}, "250", "edm250"),
    "ddim": ({}, "ddim100", "edm100"),
    "euler": ({}, "ddim100", "edm100"),
    "heun": ({"s_churn": 10.0}, "edm40", "edm40"),
    "edm2_heun": ({}, "edm32", "edm32"),
    "dpmpp_2m": ({}, "edm40", "edm40"),
    "euler_ancestral": ({}, "edm100", "edm100"),
    "dpmpp_2s_ancestral": ({}, "edm40", "edm40"),
    "dpmpp_2m_sde": ({}, "edm60", "edm60"),
    "dpmpp_3m_sde": ({}, "edm60", "edm60"),
    "unipc": ({}, "edm40", "edm40"),
    "deis": ({}, "edm40", "edm40"),
    "flow_euler": ({}, "flow100", "flow100"),
    "flow_sde": ({}, "flow100", "flow100"),
}
FLOW = ("flow_euler", "flow_sde")


def test_every_sampler_is_covered():
    assert set(CHAINS) == set(SAMPLERS) and len(SAMPLERS) == 14


def sampler(name, levels, steps=None):
    kwargs, discrete, continuous = CHAINS[name]
    grid = discrete if levels is BASE else continuous
    if steps is not None:  # a short chain of the same kind
        grid = grid.rstrip("0123456789") + str(steps)
    return SAMPLERS[name](levels, grid, clip_denoised=False, **kwargs)


def flow_grid_ok(name, parameterization, levels):
    return not (levels is CONT and name in FLOW and parameterization not in TAU_ONE)


def chain(name, parameterization, levels, steps=None):
    """The sampler for this model: flow_euler / flow_sde from τ = 1 only where the model is defined at σ = ∞."""
    if flow_grid_ok(name, parameterization, levels):
        return sampler(name, levels, steps)
    return SAMPLERS[name](levels, f"edm{steps or 100}", clip_denoised=False)


@functools.lru_cache(maxsize=None)
def model(parameterization, continuous, noise_input=None):
    return mixture_model(MIX, parameterization, CONT if continuous else BASE, noise_input=noise_input)


def run(guider, parameterization, levels, s, y, seed, noise_input=None):
    m = model(parameterization, levels is CONT, noise_input)
    return s.sample(GuidedDenoiser(guider, {"unet": m}), (len(y), MIX.dim, 1, 1), y, BatchRNG(seed, len(y)))


def classify(x):
    return MIX.posterior_logits(x, torch.ones(len(x))).argmax(1)


@functools.lru_cache(maxsize=1)
def reference(n=200_000, seed=123):
    """Exact data samples classified by the rule applied to sampler output (boundary errors cancel): per class,
    its share, mean and pooled variance."""
    x, _ = MIX.sample(n, torch.Generator().manual_seed(seed))
    x, labels = x.reshape(n, -1).double(), classify(x)
    return [((labels == k).double().mean().item(), x[labels == k].mean(0), x[labels == k].var(0).mean().item())
            for k in range(K)]


def check_mixture(x):
    """Class shares within 4.5 binomial SE; per class standardised residuals: means within 4.5/sqrt(n_k), pooled
    variance within 4.5 sqrt(2/(n d)) of 1."""
    n = len(x)
    labels, x = classify(x), x.reshape(n, -1).double()
    z = torch.empty_like(x)
    for k, (p, mean, var) in enumerate(reference()):
        sel = labels == k
        assert abs(sel.sum().item() - n * p) < 4.5 * math.sqrt(n * p * (1 - p)), (k, sel.sum().item(), n * p)
        z[sel] = (x[sel] - mean) / math.sqrt(var)
        assert z[sel].mean(0).abs().max() < 4.5 / math.sqrt(sel.sum().item()), (k, z[sel].mean(0))
    assert abs(z.pow(2).mean().item() - 1) < 4.5 * math.sqrt(2 / (n * x.shape[1])), z.pow(2).mean()


def matrix():
    """Every sampler × parameterization × (discrete, continuous); by default each sampler on two parameterizations
    (one per kind of levels, rotating so that every parameterization meets every kind), the rest @slow (every
    sampler × parameterization is also checked against the ε-model chain by chain below)."""
    for i, name in enumerate(sorted(CHAINS)):
        for j, p in enumerate(PARAMS):
            for continuous in (False, True):
                fast = j == (i + 2 * continuous) % len(PARAMS)
                yield pytest.param(name, p, continuous, marks=() if fast else pytest.mark.slow,
                                   id=f"{name}-{p}-{'continuous' if continuous else 'discrete'}")


@pytest.mark.parametrize("name, parameterization, continuous", list(matrix()))
def test_every_sampler_reproduces_the_mixture_on_every_parameterization(name, parameterization, continuous):
    levels = CONT if continuous else BASE
    y = torch.zeros(N, dtype=torch.long)  # the unconditional pass: the whole mixture
    check_mixture(run(NoGuidance(conditional=False), parameterization, levels, chain(name, parameterization, levels),
                      y, seed=0))


@pytest.mark.parametrize("name, parameterization", [("ddpm", "v"), ("heun", "edm"), ("dpmpp_2m_sde", "x0"),
                                                     ("flow_euler", "flow"), ("unipc", "eps")])
def test_conditional_model_reproduces_each_class(name, parameterization):
    y = torch.arange(N) % K
    x = run(NoGuidance(), parameterization, CONT, chain(name, parameterization, CONT), y, seed=1).reshape(N, -1)
    for k in range(K):
        z = (x[y == k].double() - MIX.means[k]) / MIX.stds[k]
        n_k = (y == k).sum().item()
        assert z.mean(0).abs().max() < 4.5 / math.sqrt(n_k) and abs(z.pow(2).mean() - 1) < 4.5 / math.sqrt(n_k)


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("parameterization", PARAMS)
def test_cfg_w0_equals_the_conditional_model_exactly(parameterization, continuous):
    levels, y = (CONT if continuous else BASE), torch.arange(48) % K
    for name in sorted(CHAINS):
        a = run(ClassifierFreeGuidance(0.0), parameterization, levels, chain(name, parameterization, levels, 8), y, 3)
        b = run(NoGuidance(), parameterization, levels, chain(name, parameterization, levels, 8), y, 3)
        assert torch.equal(a, b), name
    c = run(ClassifierFreeGuidance(1.0), parameterization, levels, chain(name, parameterization, levels, 8), y, 3)
    assert (c - a).abs().max() > 1e-3, name  # w = 1 is another chain: the comparison can fail


@pytest.mark.parametrize("continuous", [False, True], ids=["discrete", "continuous"])
@pytest.mark.parametrize("parameterization", ["x0", "v", "flow", "edm"])
def test_every_parameterization_is_the_eps_model_on_the_same_chain(parameterization, continuous):
    """The same denoiser in another output: the same samples to float tolerance, sampler by sampler, guided."""
    levels, y = (CONT if continuous else BASE), torch.arange(64) % K
    for name in sorted(CHAINS):
        s = chain(name, "eps", levels, 8)  # eps cannot start at τ = 1: the grid every model takes
        a = run(ClassifierFreeGuidance(1.5), "eps", levels, s, y, 4)
        b = run(ClassifierFreeGuidance(1.5), parameterization, levels, s, y, 4)
        torch.testing.assert_close(b, a, rtol=2e-4, atol=2e-4, msg=name)


@pytest.mark.parametrize("noise_input", ["sigma", "c_noise"])
def test_edm_model_reads_sigma_or_c_noise(noise_input):
    y = torch.arange(64) % K
    s = SAMPLERS["edm2_heun"](CONT, "edm12")
    a = run(ClassifierFreeGuidance(1.0), "edm", CONT, s, y, 5, noise_input)
    torch.testing.assert_close(a, run(ClassifierFreeGuidance(1.0), "eps", CONT, s, y, 5), rtol=2e-4, atol=2e-4)


def test_mixture_networks_return_their_parameterization_exactly():
    """Each network's raw output against the formulas, from the ε-model's ε and the mixture's x̂0 at one x_t."""
    x = torch.randn(5, 2, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 3])
    for sigma in (0.05, 1.3, 40.0):
        st = Step.at_sigma(sigma)
        ab, tau = st.alpha_bar, st.tau
        ab_b = torch.full((5,), ab, dtype=torch.float64)
        eps, x0 = (t.reshape(x.shape) for t in MIX.denoise(x, ab_b, y))
        torch.testing.assert_close(eps, MIX.eps(x, ab_b, y), rtol=1e-12, atol=1e-12)
        # Tweedie: x̂0 = (x_t − sqrt(1 − ᾱ) ε)/sqrt(ᾱ) for the exact pair
        torch.testing.assert_close(x0, (x - math.sqrt(1 - ab) * eps) / math.sqrt(ab), rtol=1e-9, atol=1e-9)
        want = {"eps": eps, "x0": x0, "v": math.sqrt(ab) * eps - math.sqrt(1 - ab) * x0, "flow": eps - x0, "edm": x0}
        x_in = {"edm": x * math.sqrt(1 + sigma ** 2), "flow": x * math.sqrt(1 + sigma ** 2) / (1 + sigma)}
        noise = {"edm": sigma, "flow": tau * 1000}
        for p in PARAMS:
            m = model(p, True)
            out = m.network(x_in.get(p, x), torch.full((5,), noise.get(p, sigma), dtype=torch.float64), y)
            torch.testing.assert_close(out, want[p], rtol=1e-9, atol=1e-9, msg=p)
    # σ = ∞: x_t = ε, and x̂0 is the prior mean (the class mean; the weighted mean unconditionally)
    out = model("flow", True).network(x, torch.full((5,), 1000.0, dtype=torch.float64), y).reshape(5, -1)
    prior = torch.stack([MIX.means[0], MIX.means[1], MIX.means[2], MIX.weights @ MIX.means, MIX.weights @ MIX.means])
    torch.testing.assert_close(out, x.reshape(5, -1) - prior, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", FLOW)
def test_flow_samplers_from_tau_one_refuse_models_undefined_there(name):
    y = torch.arange(4) % K
    for p in ("eps", "edm"):
        with pytest.raises(GuidanceError, match="σ = ∞"):
            run(NoGuidance(), p, CONT, SAMPLERS[name](CONT, "flow10"), y, 0)


@pytest.mark.parametrize("kwargs", [{}, {"diffusion_form": "constant", "last_step": "tweedie"},
                                    {"diffusion_form": "decreasing"},
                                    {"diffusion_form": "increasing-decreasing", "diffusion_norm": 2.0},
                                    {"diffusion_norm": 3.0}, {"last_step": "euler"},
                                    {"last_step": None, "t_min": None}],
                         ids=lambda kw: "-".join(map(str, kw.values())) or "sit")
def test_flow_sde_reproduces_each_class_from_tau_one(kwargs):
    """SiT's SDE on the flow model from τ = 1 (pure noise), each class: every diffusion coefficient w gives the flow
    path's marginals, so each must reproduce the class's mean and variance; a wrong factor in the noise
    sqrt(2 w dt) or in the score term w s = −(w/τ) ε fails (checked by breaking each). flow200: Euler–Maruyama's
    error at w = 3τ needs the finer grid."""
    s = SAMPLERS["flow_sde"](CONT, "flow200", **kwargs)
    y = torch.arange(N) % K
    x = run(NoGuidance(), "flow", CONT, s, y, seed=11).reshape(N, -1)
    for k in range(K):
        z = (x[y == k].double() - MIX.means[k]) / MIX.stds[k]
        n_k = (y == k).sum().item()
        assert z.mean(0).abs().max() < 4.5 / math.sqrt(n_k), (k, z.mean(0))
        assert abs(z.pow(2).mean() - 1) < 4.5 / math.sqrt(n_k), (k, z.pow(2).mean())


@pytest.mark.parametrize("parameterization, levels", [("flow", CONT), ("eps", BASE)], ids=["flow", "eps-discrete"])
def test_flow_sde_without_diffusion_is_flow_euler(parameterization, levels):
    """w = 0 (diffusion_norm 0): no score term, no noise, and the "mean" last step is an Euler step: flow_euler's
    chain on the same grid; a noisy run differs."""
    y = torch.arange(12) % K
    grid = {"respacing": "flow12", "t_min": 0.04}
    ode = run(NoGuidance(), parameterization, levels, SAMPLERS["flow_euler"](levels, **grid, clip_denoised=False), y, 4)
    for last in ("mean", "euler"):
        s = SAMPLERS["flow_sde"](levels, **grid, diffusion_norm=0.0, last_step=last)
        torch.testing.assert_close(run(NoGuidance(), parameterization, levels, s, y, 4), ode, rtol=1e-6, atol=1e-6)
    noisy = run(NoGuidance(), parameterization, levels, SAMPLERS["flow_sde"](levels, **grid), y, 4)
    assert (noisy - ode).abs().max() > 0.1


def test_flow_sde_diffusion_forms_are_sits():
    """w(τ) against SiT's path.ICPlan.compute_diffusion written in its time t = 1 − τ, norm c = 0.7."""
    t, c = 0.3, 0.7
    sits = {"constant": c, "sigma": c * (1 - t), "linear": c * (1 - t),
            "SBDM": c * ((1 - t) ** 2 / t + (1 - t)),  # c (α'/α σ² − σ σ'), α = t, σ = 1 − t
            "decreasing": 0.25 * (c * math.cos(math.pi * t) + 1) ** 2,
            "increasing-decreasing": c * math.sin(math.pi * t) ** 2}
    for form, w in sits.items():
        s = SAMPLERS["flow_sde"](BASE, "flow10", diffusion_form=form, diffusion_norm=c)
        assert s.w(1 - t) == pytest.approx(w, rel=1e-12), form


def test_flow_sde_settings_and_refusals():
    s = SAMPLERS["flow_sde"](CONT)
    assert s.steps == 250 and s.step_at(0).tau == 1 and s.step_at(249).tau == pytest.approx(0.04)  # SiT's defaults
    assert s.label == "flow_sde" and SAMPLERS["flow_sde"](CONT, diffusion_form="constant").label == "flow_sde constant"
    for kwargs, match in [({"diffusion_form": "SBDM"}, "infinite at τ = 1"), ({"diffusion_form": "cosine"}, "one of"),
                          ({"last_step": "Heun"}, "last_step"), ({"sampling_method": "Heun"}, "Euler–Maruyama only"),
                          ({"diffusion_norm": -1}, "diffusion_norm")]:
        with pytest.raises(GuidanceError, match=match) as e:
            SAMPLERS["flow_sde"](CONT, "flow10", **kwargs)
        assert "\n" not in str(e.value)
    sbdm = SAMPLERS["flow_sde"](BASE, "flow50", diffusion_form="SBDM")  # a finite noisiest level: w = σ there
    assert sbdm.w(sbdm.step_at(0).tau) == pytest.approx(sbdm.step_at(0).sigma)


def test_cfg_zero_star_on_the_flow_model_is_the_papers_update_by_hand():
    """Fan et al. 2025 eqs. 8-10 on the velocity network, Euler from τ = 1, written out: zero-init steps keep
    x_f; then s* = <v_c, v_u>/(‖v_u‖² + 1e-8), v~ = s* v_u + (1 + w)(v_c − s* v_u), x_f' = x_f + (τ' − τ) v~."""
    n, w, zero = 16, 2.0, 2
    y = torch.arange(n) % K
    s = SAMPLERS["flow_euler"](CONT, "flow10")
    guider = build_guider("cfg_zero", scale=w, zero_steps=zero, space="v")
    got = run(guider, "flow", CONT, s, y, 6)
    net = model("flow", True).network
    x_f = BatchRNG(6, n).randn((MIX.dim, 1, 1)).double()
    taus = [s.step_at(i).tau for i in range(s.steps)] + [0.0]
    assert taus[0] == 1.0
    for i in range(s.steps):
        if i < zero:
            v = torch.zeros_like(x_f)
        else:
            t = torch.full((n,), taus[i] * 1000)
            v_c, v_u = net(x_f, t, y), net(x_f, t, torch.full_like(y, K))
            dot = lambda a, b: (a * b).flatten(1).sum(1).reshape(-1, 1, 1, 1)
            s_star = dot(v_c, v_u) / (dot(v_u, v_u) + 1e-8)
            v = s_star * v_u + (1 + w) * (v_c - s_star * v_u)
        x_f = x_f + (taus[i + 1] - taus[i]) * v
    torch.testing.assert_close(got.double(), x_f, rtol=1e-4, atol=1e-4)
    plain = run(ClassifierFreeGuidance(w), "flow", CONT, s, y, 6)
    assert (plain - got).abs().max() > 1e-2  # CFG-Zero* is not CFG here: the comparison can fail


# --- strategies in their own space on every model ---------------------------------------------------------------

WEAK = GaussianMixture(means=MIX.means.tolist(), stds=(1.6 * MIX.stds).tolist(), weights=MIX.weights.tolist())
# 4x4 one-channel "images" (d = 16) for the strategy tests: FDG's pyramid needs pixels, TCFG/MAMBO norms more than 2
IMAGE = (1, 4, 4)
MIX16 = GaussianMixture(means=torch.randn(K, 16, generator=torch.Generator().manual_seed(0)).mul(1.5).tolist(),
                        stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
WEAK16 = GaussianMixture(means=MIX16.means.tolist(), stds=(1.6 * MIX16.stds).tolist(), weights=MIX16.weights.tolist())
INTERNALS = ("pag", "tsg", "slg", "seg")  # perturb the toolkit U-Net's modules: refused on any other network


def strategies():
    return sorted(p.stem for p in (Path(CONF_DIR) / "guidance").glob("*.yaml"))


def strategy(name, scale=1.5):
    cfg = OmegaConf.load(Path(CONF_DIR) / "guidance" / f"{name}.yaml")
    if "scale" in cfg:
        cfg.scale = 0.5 if name == "cfgpp" else scale
    if name == "slg":
        cfg.stop = 1.0
    if name == "apg_mix":
        cfg.apg_start_step = 1
    return instantiate(cfg)


def networks(parameterization, levels):
    return {"unet": mixture_model(MIX16, parameterization, levels),
            "weak": mixture_model(WEAK16, parameterization, levels),
            "classifier": MixtureClassifier(MIX16, BASE.alphas_cumprod)}


def guided(name, parameterization, levels, s, y, seed=0):
    den = GuidedDenoiser(strategy(name), networks(parameterization, levels))
    return s.sample(den, (len(y), *IMAGE), y, BatchRNG(seed, len(y)))


@pytest.mark.parametrize("parameterization", ["x0", "v", "flow", "edm"])
def test_every_strategy_is_the_same_on_every_parameterization(parameterization):
    """A strategy combines in its own space (ε, x̂0, v, flow velocity) whatever the network predicts: the same
    samples as on the ε model, on trained levels (ddim) and on continuous σ (euler, edm grid; both re-noise for
    CFG++). Strategies that reach into the U-Net and classifier ones on continuous levels: refusal tests below."""
    y = torch.arange(24) % K
    for levels, make in ((BASE, lambda: SAMPLERS["ddim"](BASE, "ddim8", clip_denoised=False)),
                         (CONT, lambda: SAMPLERS["euler"](CONT, "edm8", clip_denoised=False))):
        for name in strategies():
            if name in INTERNALS or (levels is CONT and "classifier" in strategy(name).networks):
                continue
            a = guided(name, "eps", levels, make(), y)
            b = guided(name, parameterization, levels, make(), y)
            torch.testing.assert_close(b, a, rtol=5e-4, atol=5e-4, msg=f"{name} on {levels}")


@pytest.mark.parametrize("name", INTERNALS)
def test_strategies_perturbing_the_unet_refuse_another_network_in_one_line(name):
    with pytest.raises(GuidanceError, match="needs guidance.nn.UNet") as e:
        guided(name, "flow", CONT, SAMPLERS["flow_euler"](CONT, "flow6"), torch.arange(4) % K)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["classifier", "cfg_classifier", "classifier_schedule"])
def test_classifier_strategies_are_refused_on_continuous_levels(name):
    with pytest.raises(GuidanceError, match="noise-aware classifier on the model's trained timesteps"):
        guided(name, "edm", CONT, SAMPLERS["heun"](CONT, "edm6", clip_denoised=False), torch.arange(4) % K)


# From σ = ∞ (flow_euler on a flow grid from τ = 1, a flow model): what runs, and what is refused (one line).
FROM_TAU_ONE = {"none", "cfg", "cfg_interval", "cfg_schedule", "cfg_rescale", "cfg_zero", "apg", "apg_mix", "fdg",
                "mambo", "icg", "autoguidance", "dynamic_threshold", "pag", "tsg", "slg", "seg"}
REFUSED_AT_TAU_ONE = {"tcfg": "σ = ∞",  # its tangential filter acts on ε (default space), undefined at ε = x_t
                      "cfgpp": "needs",  # re-noises with ε_u: needs RENOISE_EPS, which flow_euler lacks
                      "classifier": "classifier", "cfg_classifier": "classifier", "classifier_schedule": "classifier"}


def test_which_strategies_run_from_tau_one():
    assert FROM_TAU_ONE | set(REFUSED_AT_TAU_ONE) == set(strategies()) and not FROM_TAU_ONE & set(REFUSED_AT_TAU_ONE)
    y = torch.arange(24) % K
    for name in strategies():
        if name in INTERNALS:  # on the toolkit U-Net: tests/test_engine_matrix_params.py (flow_euler, continuous)
            continue
        flow_grid = SAMPLERS["flow_euler"](CONT, "flow8")
        if name in REFUSED_AT_TAU_ONE:
            with pytest.raises(GuidanceError, match=REFUSED_AT_TAU_ONE[name]) as e:
                guided(name, "flow", CONT, flow_grid, y)
            assert "\n" not in str(e.value)
            continue
        a = guided(name, "flow", CONT, flow_grid, y)
        b = guided(name, "x0", CONT, SAMPLERS["flow_euler"](CONT, "flow8"), y)  # the same denoiser, x̂0 output
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=5e-4, atol=5e-4, msg=name)
    for space in ("eps",):  # the ε-space options of the space-taking strategies are refused there
        for name in ("cfg_rescale", "cfg_zero", "fdg", "mambo", "apg_mix"):
            cfg = OmegaConf.load(Path(CONF_DIR) / "guidance" / f"{name}.yaml")
            cfg.space, cfg.scale = space, 1.5
            if name == "cfg_zero":
                cfg.zero_steps = 0
            if name == "fdg":
                cfg.parallel_weight = 0.5  # η = 1 is affine (CFG's prediction); η ≠ 1 depends on the space
            den = GuidedDenoiser(instantiate(cfg), networks("flow", CONT))
            with pytest.raises(GuidanceError, match="σ = ∞"):
                SAMPLERS["flow_euler"](CONT, "flow8").sample(den, (4, *IMAGE), y[:4], BatchRNG(0, 4))


def test_tsg_time_is_t_over_1000_on_trained_levels_and_tau_on_continuous_ones():
    from guidance.guiders.tsg import TimeStepGuidance

    g = TimeStepGuidance(scale=1.5, noise_scale=2.0, alpha=2.0)
    perturbed = lambda step: g.requests(step)[1].perturb.scale
    assert perturbed(Step(250, float(BASE.alphas_cumprod[250]))) == pytest.approx(2.0 * 0.25 ** 2)
    assert perturbed(Step.at_sigma(3.0)) == pytest.approx(2.0 * 0.75 ** 2)
    assert perturbed(Step.at_sigma(math.inf)) == pytest.approx(2.0)


def two_passes(parameterization, step, x, y, weak=False):
    """(conditional, unconditional) Predictions and raw network outputs of one model at the VP x."""
    m = mixture_model(WEAK if weak else MIX, parameterization, CONT)
    preds, raws = [], []
    for labels in (y, torch.full_like(y, K)):
        raws.append(m.network(m.network_input(x, step), m.noise_level(step, len(x), x.device), labels))
        preds.append(m.prediction(x, step, raws[-1]))
    return preds, raws


SIGMAS = (0.3, 2.0, 30.0, math.inf)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cfg_rescale_rescales_the_v_models_own_output(sigma):
    """Lin et al. 2024 eqs. 13-16 on the v network's raw outputs, by hand: the guider's v is the model's v."""
    from guidance.guiders.cfg_rescale import RescaledCFG

    step, w, phi = Step.at_sigma(sigma), 2.0, 0.7
    x = torch.randn(6, 2, 1, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(6) % K
    (c, u), (v_c, v_u) = two_passes("v", step, x, y)
    g = RescaledCFG(scale=w, phi=phi)
    torch.testing.assert_close(g.output(c, step), v_c, rtol=1e-10, atol=1e-10)  # the network's own v
    out = g.combine({"cond": c, "uncond": u}, x, step)
    v_cfg = (1 + w) * v_c - w * v_u
    std = lambda o: o.flatten(1).std(dim=1).reshape(-1, 1, 1, 1)
    v = phi * v_cfg * std(v_c) / std(v_cfg) + (1 - phi) * v_cfg
    torch.testing.assert_close(g.output(out, step), v, rtol=1e-9, atol=1e-9)
    a, b = math.sqrt(step.alpha_bar), math.sqrt(1 - step.alpha_bar)
    torch.testing.assert_close(out.x0, a * x - b * v, rtol=1e-9, atol=1e-9)  # x̂0 = sqrt(ᾱ) x_t − sqrt(1 − ᾱ) v


@pytest.mark.parametrize("sigma", SIGMAS)
def test_apg_projects_the_x0_models_own_output(sigma):
    """Sadat et al. 2025 Alg. 1 (η = 0, no threshold, no momentum) on the x̂0 network's raw outputs, by hand."""
    from guidance.guiders.apg import AdaptiveProjectedGuidance

    step, w = Step.at_sigma(sigma), 3.0
    x = torch.randn(6, 2, 1, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.arange(6) % K
    (c, u), (d_c, d_u) = two_passes("x0", step, x, y)
    out = AdaptiveProjectedGuidance(scale=w).combine({"cond": c, "uncond": u}, x, step)
    diff = d_c - d_u
    dot = lambda a, b: (a * b).flatten(1).sum(1).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(out.x0, d_c + w * (diff - dot(diff, d_c) / dot(d_c, d_c) * d_c), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sigma", SIGMAS[:3])
def test_autoguidance_is_edm2s_lerp_of_d_and_the_eps_extrapolation(sigma):
    """EDM2 (Karras et al. 2024, eq. 1; generate_images.py: D = lerp(D_ref, D, g), g = w + 1) on the EDM
    networks' raw D, by hand; and the same prediction as extrapolating ε (the combination is affine)."""
    from guidance.guiders.autoguidance import Autoguidance

    step, w = Step.at_sigma(sigma), 1.5
    x = torch.randn(6, 2, 1, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.arange(6) % K
    (main, _), (d, _) = two_passes("edm", step, x, y)
    (weak, _), (d_weak, _) = two_passes("edm", step, x, y, weak=True)
    out = Autoguidance(scale=w).combine({"main": main, "weak": weak}, x, step)
    torch.testing.assert_close(out.x0, torch.lerp(d_weak, d, 1 + w), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out.eps, main.eps + w * (main.eps - weak.eps), rtol=1e-7, atol=1e-7)
    assert (out.x0 - d).abs().max() > 1e-3  # the weak model differs: the check can fail
