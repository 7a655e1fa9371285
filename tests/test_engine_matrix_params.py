"""The engine matrix on every parameterization: each conf/guidance strategy × conf/sampler × model kind (ε, x̂0, v,
flow velocity, EDM D; on trained discrete levels or continuous σ) runs on a tiny real U-Net wrapped as that
model (guidance.engine.model.DenoisingModel), and the cost the denoiser reports equals the rows counters wrapped
around the networks saw, or it is refused in one line for a stated reason, before or at the pass that cannot be
made. Default run: every strategy × parameterization on flow_euler from τ = 1 (continuous) and on ddim
(trained levels), every sampler × parameterization on CFG; the full product is @slow.

Refusals (the whole list; anything else must run):
- cfgpp off a sampler with RENOISE_EPS (capabilities, before any pass);
- classifier strategies on continuous levels (a noise-aware classifier is trained on timesteps);
- from σ = ∞ (flow_euler's / flow_sde's flow grid from τ = 1 on continuous levels): an ε model (ε = x_t there fixes
  no x̂0), an EDM model (x̃ is infinite), and a strategy whose nonlinear combination is in ε (tcfg's default space).
  Every affine ε combination (cfg, icg, pag, tsg, slg, seg, autoguidance) is taken of x̂0 there (base.affine), and
  the x̂0 / v / flow-space ones (apg, fdg, cfg_rescale, cfg_zero, mambo, apg_mix) are defined there.
"""

import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from guidance.config import CONF_DIR, build

from guidance.diffusion import create_diffusion
from guidance.engine import Eval
from guidance.engine.model import ContinuousLevels, DenoisingModel
from guidance.errors import GuidanceError
from guidance.sampling import GuidedDenoiser, PerImageRNG

GUIDANCE = sorted(p.stem for p in (Path(CONF_DIR) / "guidance").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml"))
PARAMS = ("eps", "x0", "v", "flow", "edm")
BASE = create_diffusion(1000)
CONT = ContinuousLevels(0.0, float("inf"))
B, K, SIZE, STEPS = 2, 10, 8, 4


class Counted(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.rows, self.backward_rows = net, 0, 0

    def __getattr__(self, name):  # PAG / TSG / SLG / SEG reach into the U-Net (attention blocks, time_embed, ...)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["net"], name)

    def forward(self, x, *args):
        self.rows += len(x)
        out = self.net(x, *args)
        if out.requires_grad:
            out.register_hook(lambda g: setattr(self, "backward_rows", self.backward_rows + len(g)))
        return out


@pytest.fixture(scope="module")
def nets():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "model=adm_tiny", "classifier=tiny", f"data.image_size={SIZE}", "model.model_channels=16",
            "classifier.model_channels=16", "model.num_head_channels=16", "classifier.num_head_channels=16",
            "model.channel_mult=[1,2]", "classifier.channel_mult=[1,2]", "model.attention_resolutions=[4]",
            "classifier.attention_resolutions=[4]"])
    torch.manual_seed(0)
    unet, weak = (instantiate(cfg.model, _convert_="all").eval() for _ in range(2))
    clf = instantiate(cfg.classifier, _convert_="all").eval()
    with torch.no_grad():
        for net in (unet, weak):
            for p in net.out.parameters():  # the zero-initialised output layer would make every output 0
                p.normal_(0, 0.1)
    return unet, clf, weak


def as_model(net, parameterization, continuous):
    """The U-Net as a `parameterization` model: on trained timesteps (edm: σ, flow: flow time) or on continuous σ
    (flow time for all but edm, so σ = ∞ is a finite input; edm: c_noise)."""
    if continuous:
        noise = "c_noise" if parameterization == "edm" else "flow_time"
    else:
        noise = {"edm": "sigma", "flow": "flow_time"}.get(parameterization, "timestep")
    return DenoisingModel(net, parameterization, CONT if continuous else BASE, noise_input=noise,
                          time_scale=1000 if noise == "flow_time" else 1, null_label=K)


@functools.lru_cache(maxsize=None)
def configs(guidance_name, sampler_name):
    """The conf/guidance and conf/sampler group files as they are (tests/test_engine_matrix.py composes them
    through Hydra with every pair; loading them alone keeps this matrix fast)."""
    cfg = OmegaConf.create({"guidance": OmegaConf.load(Path(CONF_DIR) / "guidance" / f"{guidance_name}.yaml"),
                            "sampler": OmegaConf.load(Path(CONF_DIR) / "sampler" / f"{sampler_name}.yaml")})
    if "scale" in cfg.guidance:
        cfg.guidance.scale = 0.5 if guidance_name == "cfgpp" else 1.5  # CFG++'s λ lies in [0, 1]
    if guidance_name == "slg":
        cfg.guidance.stop = 1.0  # SD 3.5's window holds no step of a 4-step chain: open it
    if guidance_name == "apg_mix":
        cfg.guidance.apg_start_step = 1
    return cfg


FLOW = ("flow_euler", "flow_sde")  # the samplers on the flow variable, from τ = 1 on continuous levels


def grid(sampler_name, respacing, continuous):
    if sampler_name in FLOW:
        return f"flow{STEPS}"  # from τ = 1 on continuous levels; snapped to trained timesteps on discrete ones
    return f"edm{STEPS}" if continuous or str(respacing).startswith("edm") else str(STEPS)


def refusals(guider, sampler, parameterization, continuous):
    """The reasons (message patterns) this case must be refused for; empty: it must run."""
    reasons = []
    if not guider.needs <= sampler.capabilities:
        reasons.append(f"needs .*sampler={sampler.name}")
    if continuous and "classifier" in guider.networks:
        reasons.append("noise-aware classifier")
    if continuous and sampler.name in FLOW:  # the chain starts at σ = ∞
        evaluated = bool(guider.requests(sampler.step_at(0)))  # CFG-Zero*'s zero-init step makes no pass there
        if evaluated and (parameterization in ("eps", "edm") or getattr(guider, "space", None) == "eps"):
            reasons.append("σ = ∞")
    return reasons


def run_case(nets, guidance_name, sampler_name, parameterization, continuous):
    cfg = configs(guidance_name, sampler_name)
    unet, clf, weak = Counted(nets[0]), Counted(nets[1]), Counted(nets[2])
    guider = instantiate(cfg.guidance)
    sampler = build(cfg.sampler, diffusion=CONT if continuous else BASE,
                          respacing=grid(sampler_name, cfg.sampler.respacing, continuous))
    denoiser = GuidedDenoiser(guider, {"unet": as_model(unet, parameterization, continuous), "classifier": clf,
                                       "weak": as_model(weak, parameterization, continuous)})
    rng = PerImageRNG(0, range(B))
    reasons = refusals(guider, sampler, parameterization, continuous)
    if reasons:
        with pytest.raises(GuidanceError, match="|".join(reasons)) as e:
            sampler.sample(denoiser, (B, 1, SIZE, SIZE), rng.labels(K), rng)
        assert "\n" not in str(e.value)
        if "needs" in reasons[0]:
            assert unet.rows == 0  # refused before any work
        return
    x = sampler.sample(denoiser, (B, 1, SIZE, SIZE), rng.labels(K), rng)
    assert x.shape == (B, 1, SIZE, SIZE) and torch.isfinite(x).all()
    cost = denoiser.cost_per_sample()
    assert cost["nfe"] == (unet.rows + weak.rows) / B
    assert cost["classifier_forward"] == clf.rows / B and cost["classifier_backward"] == clf.backward_rows / B
    evals = sampler.evaluation_steps()
    assert cost["nfe"] == sum(isinstance(r, Eval) for s in evals for r in guider.requests(s))
    assert cost["classifier_forward"] == sum(not isinstance(r, Eval) for s in evals for r in guider.requests(s))
    assert len(evals) >= sampler.steps >= STEPS - 1


def cases():
    """Default: every strategy × parameterization on continuous levels with flow_euler from τ = 1 and on trained
    levels with ddim; CFG with every sampler × parameterization (levels alternating). The rest: @slow."""
    for g in GUIDANCE:
        for i, s in enumerate(SAMPLERS):
            for j, p in enumerate(PARAMS):
                for continuous in (False, True):
                    fast = (s, continuous) in (("flow_euler", True), ("ddim", False)) or \
                        (g == "cfg" and continuous == bool((i + j) % 2))
                    yield pytest.param(g, s, p, continuous, marks=() if fast else pytest.mark.slow,
                                       id=f"{g}-{s}-{p}-{'continuous' if continuous else 'discrete'}")


def test_matrix_covers_every_config():
    assert len(SAMPLERS) >= 14 and set(FLOW) <= set(SAMPLERS) and len(GUIDANCE) >= 22


@pytest.mark.parametrize("guidance_name, sampler_name, parameterization, continuous", list(cases()))
def test_every_strategy_sampler_and_parameterization(nets, guidance_name, sampler_name, parameterization, continuous):
    run_case(nets, guidance_name, sampler_name, parameterization, continuous)
