"""Every conf/guidance × conf/sampler pair, composed through Hydra, runs on a tiny real U-Net + classifier, and
the cost the denoiser reports equals the rows that counters wrapped around the networks saw."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from guidance.config import CONF_DIR
from guidance.diffusion import create_diffusion
from guidance.errors import GuidanceError
from guidance.engine import RENOISE_EPS, Eval
from guidance.sampling import GuidedDenoiser, PerImageRNG

GUIDANCE = sorted(p.stem for p in (Path(CONF_DIR) / "guidance").glob("*.yaml"))
SAMPLERS = sorted(p.stem for p in (Path(CONF_DIR) / "sampler").glob("*.yaml"))
B, K = 3, 10


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
        if out.requires_grad:  # a classifier pass that will be differentiated
            out.register_hook(lambda g: setattr(self, "backward_rows", self.backward_rows + len(g)))
        return out


@pytest.fixture(scope="module")
def nets():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["model=adm_tiny", "classifier=tiny", "model.model_channels=16",
                                          "classifier.model_channels=16", "model.num_head_channels=16",
                                          "classifier.num_head_channels=16"])
    torch.manual_seed(0)
    unet = instantiate(cfg.model, _convert_="all").eval()
    clf = instantiate(cfg.classifier, _convert_="all").eval()
    with torch.no_grad():
        for p in unet.out.parameters():  # the zero-initialised output layer would make ε = 0 everywhere
            p.normal_(0, 0.1)
    weak = instantiate(cfg.model, _convert_="all").eval()  # autoguidance's weak model: other random weights
    with torch.no_grad():
        for p in weak.out.parameters():
            p.normal_(0, 0.1)
    return unet, clf, weak


def test_matrix_covers_every_config():
    assert set(GUIDANCE) >= {"none", "classifier", "cfg", "cfg_classifier", "cfg_interval"}
    assert set(SAMPLERS) >= {"ddpm", "ddim", "euler", "heun", "dpmpp_2m", "edm2_heun", "euler_ancestral",
                             "dpmpp_2s_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc", "deis"}


@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("guidance_name", GUIDANCE)
def test_every_guider_with_every_sampler_reports_its_counted_cost(nets, guidance_name, sampler_name):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[f"guidance={guidance_name}", f"sampler={sampler_name}"])
    short = "edm5" if str(cfg.sampler.respacing).startswith("edm") else "5"
    cfg.sampler.respacing = short
    if "scale" in cfg.guidance:
        cfg.guidance.scale = 0.5 if guidance_name == "cfgpp" else 1.5  # CFG++'s λ lies in [0, 1]
    if guidance_name == "slg":
        cfg.guidance.stop = 1.0  # SD 3.5's window (1%-20%) holds no step of a 5-step chain: open it
    if guidance_name == "apg_mix":
        cfg.guidance.apg_start_step = 1  # reach the APG phase within 5 steps
    unet, clf, weak = Counted(nets[0]), Counted(nets[1]), Counted(nets[2])
    guider = instantiate(cfg.guidance)
    sampler = instantiate(cfg.sampler, diffusion=create_diffusion(1000))
    denoiser = GuidedDenoiser(guider, {"unet": unet, "classifier": clf, "weak": weak}, null_label=K)
    rng = PerImageRNG(0, range(B))
    if not guider.needs <= sampler.capabilities:  # CFG++ off DDIM η = 0 / Euler without churn: refused, no pass run
        with pytest.raises(GuidanceError, match=f"guidance={guidance_name} needs .*sampler={sampler.name}"):
            sampler.sample(denoiser, (B, 1, 28, 28), rng.labels(K), rng)
        assert unet.rows == 0 and guidance_name == "cfgpp" and RENOISE_EPS not in sampler.capabilities
        return
    x = sampler.sample(denoiser, (B, 1, 28, 28), rng.labels(K), rng)
    assert x.shape == (B, 1, 28, 28) and torch.isfinite(x).all()
    cost = denoiser.cost_per_sample()
    assert cost["nfe"] == (unet.rows + weak.rows) / B
    assert cost["classifier_forward"] == clf.rows / B and cost["classifier_backward"] == clf.backward_rows / B
    # ... and equals what the guider asked for at every evaluation the sampler lists
    evals = sampler.evaluation_steps()
    assert cost["nfe"] == sum(isinstance(r, Eval) for s in evals for r in guider.requests(s))
    assert cost["classifier_forward"] == sum(not isinstance(r, Eval) for s in evals for r in guider.requests(s))
    assert len(evals) >= sampler.steps >= 4
