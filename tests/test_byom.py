"""Every model guidance-sample loads is a DenoisingModel (issue 19 items 1 and 6): snapshots and ADM imports from
their metadata (bitwise the bare ε network), `_target_` models (unet_model / weak_model) identified by content,
and points sampled before the adapters still reused."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from guidance.checkpoint import denoising_model, load_model, save_snapshot
from guidance.config import CONF_DIR
from guidance.diffusion import create_diffusion
from guidance.engine.model import ContinuousLevels, DenoisingModel
from guidance.errors import GuidanceError
from guidance.guiders import build_guider
from guidance.nn import UNet
from guidance.sampling import DDPMSampler, GuidedDenoiser, PerImageRNG
from guidance.sampling.generate import same_setting
from guidance.sampling.point import MATCH_KEYS, run_sample

ROOT = Path(__file__).resolve().parents[1]
SIZE, K = 8, 3
DIFFUSION = {"_target_": "guidance.diffusion.create_diffusion", "steps": 40, "noise_schedule": "linear",
             "model_var_type": "learned_range", "loss_type": "hybrid", "timestep_respacing": ""}
UNET = {"image_size": SIZE, "in_channels": 1, "model_channels": 8, "out_channels": 1, "num_res_blocks": 1,
        "attention_resolutions": [], "channel_mult": [1, 2], "num_classes": K, "learn_sigma": True}

# A `_target_` model: a velocity field with one learnable image per class (exact for that dataset), weights from
# a file when given. Written into each test's folder as byo.py and imported from there.
BYO = '''
import torch
from torch import nn

from guidance.diffusion import create_diffusion
from guidance.engine.model import ContinuousLevels, DenoisingModel


class Prototypes(nn.Module):
    def __init__(self, classes=3, shape=(1, 8, 8)):
        super().__init__()
        self.images = nn.Parameter(torch.rand(classes, *shape) * 2 - 1)

    def forward(self, x, t, labels):
        x0 = torch.cat([self.images, self.images.mean(0, keepdim=True)])[labels]
        return (x - x0) / (t / 1000).view(-1, 1, 1, 1)


def build(seed=0, weights=None):
    torch.manual_seed(seed)
    net = Prototypes()
    if weights is not None:
        net.load_state_dict(torch.load(weights))
    return DenoisingModel(net, "flow", ContinuousLevels(), noise_input="flow_time", time_scale=1000, null_label=3)


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x, t, labels):
        return self.conv(x)


def discrete():  # an ε model on the 40 linear timesteps of the test snapshots
    return DenoisingModel(Plain(), "eps", create_diffusion(steps=40), null_label=3)


def not_a_model():
    return Prototypes()
'''


@pytest.fixture
def byo(tmp_path):
    (tmp_path / "byo.py").write_text(BYO)
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    sys.modules.pop("byo", None)


def snapshot(path, num_classes=K, **kwargs):
    torch.manual_seed(0)
    config = {**UNET, "num_classes": num_classes}
    save_snapshot(path, "unet", UNet(**config), {"_target_": "guidance.nn.UNet", **config}, 7,
                  diffusion_config=DIFFUSION, **kwargs)
    return str(path)


def sample_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("sample", overrides=["logger=none", "num_samples=4", "batch_size=4", "device=cpu",
                                            *overrides])


def info(folder) -> dict:
    return json.loads((Path(folder) / "sample_info.json").read_text())


# ---- snapshots: adapters from their metadata ----

def test_a_snapshot_is_the_eps_model_on_its_trained_timesteps_and_samples_bitwise_as_the_bare_network(tmp_path):
    model, meta = load_model(snapshot(tmp_path / "unet.pt"))
    levels = create_diffusion(steps=40, noise_schedule="linear", model_var_type="learned_range", loss_type="hybrid")
    assert (model.parameterization, model.noise_input, model.null_label, model.null_trained,
            model.learned_variance) == ("eps", "timestep", K, True, True)
    assert np.array_equal(model.levels.alphas_cumprod, levels.alphas_cumprod)
    assert model.levels.model_var_type == "learned_range"
    outs = []
    for net in (model, model.network):  # the adapter, and the bare module as every sampler saw it before
        den = GuidedDenoiser(build_guider("cfg", scale=2.0), {"unet": net}, null_label=K)
        rng = PerImageRNG(0, range(4))
        outs.append(DDPMSampler(model.levels, "5").sample(den, (4, 1, SIZE, SIZE), rng.labels(K), rng))
    assert torch.equal(*outs)


def test_snapshot_metadata_declares_conditioning_and_a_parameterization(tmp_path):
    uncond, _ = load_model(snapshot(tmp_path / "u.pt", num_classes=None))
    adm, _ = load_model(snapshot(tmp_path / "a.pt", extra={"null_class_trained": False}))
    assert uncond.null_label is None and adm.null_label == K and adm.null_trained is False
    v, meta = load_model(snapshot(tmp_path / "v.pt", adapter={"parameterization": "v", "noise_input": "c_noise",
                                                               "levels": {"sigma_min": 0.01, "sigma_max": 50.0}}))
    assert (v.parameterization, v.noise_input, v.levels) == ("v", "c_noise", ContinuousLevels(0.01, 50.0))
    assert meta["adapter"]["parameterization"] == "v"
    with pytest.raises(GuidanceError, match="unknown key\\(s\\) param; known are parameterization"):
        snapshot(tmp_path / "bad.pt", adapter={"param": "v"})
    meta = {"model_config": UNET, "path": "x.pt", "adapter": {"parameterization": "velocity"},
            "diffusion_config": DIFFUSION}
    with pytest.raises(GuidanceError, match="parameterization='velocity' is unknown"):
        denoising_model(UNet(**UNET), meta)


def test_a_continuous_v_snapshot_samples_through_guidance_sample_on_an_edm_grid(tmp_path):
    path = snapshot(tmp_path / "v.pt", adapter={"parameterization": "v", "noise_input": "sigma",
                                                 "levels": {"sigma_min": 0.002, "sigma_max": 80.0}})
    run_sample(sample_cfg(f"unet_ckpt={path}", "guidance=cfg", "sampler=euler", "sampler.respacing=edm4"), tmp_path)
    got = info(tmp_path)
    assert got["model"]["parameterization"] == "v" and got["model"]["levels"] == {
        "kind": "continuous", "sigma_min": 0.002, "sigma_max": 80.0}
    assert got["timesteps"][0] == pytest.approx(80.0) and got["cost_per_sample"]["nfe"] == 8


# ---- points sampled before the adapters ----

def test_a_point_without_a_model_record_is_reused_and_other_models_are_not(tmp_path, capsys):
    path = snapshot(tmp_path / "unet.pt")
    cfg = sample_cfg(f"unet_ckpt={path}", "guidance=cfg", "sampler=ddim", "sampler.respacing=ddim3")
    npz = run_sample(cfg, tmp_path / "p")
    new = info(tmp_path / "p")
    assert new["model"] == {"parameterization": "eps", "noise_input": "timestep", "time_scale": 1.0,
                            "levels": {"kind": "discrete"}, "null_label": K, "null_trained": True}
    old = {k: v for k, v in new.items() if k not in ("model", "unet_model", "weak_model")}  # as written before
    (tmp_path / "p/sample_info.json").write_text(json.dumps(old))
    mtime = npz.stat().st_mtime_ns
    run_sample(cfg, tmp_path / "p")
    assert npz.stat().st_mtime_ns == mtime and "already holds these samples" in capsys.readouterr().out
    for other in ({**new["model"], "parameterization": "v"}, {**new["model"], "noise_input": "sigma"},
                  {**new["model"], "levels": {"kind": "continuous", "sigma_min": 0.0, "sigma_max": float("inf")}}):
        assert not same_setting("model", None, other, MATCH_KEYS)
    assert same_setting("model", None, {**new["model"], "null_label": None}, MATCH_KEYS)  # from the content


def test_the_stored_points_of_the_cpu_study_match_the_shipped_model_s_adapter():
    """The experiment's stored points (sampled before the adapters) agree on every new reuse key with what
    run_sample records now for the shipped U-Net."""
    model, _ = load_model(ROOT / "pretrained/fashion_mnist/cpu/unet.pt")
    points = sorted((ROOT / "experiments/fmnist_cpu_study/points").glob("*/sample_info.json"))
    assert points
    for p in points:
        old = json.loads(p.read_text())
        assert "model" not in old
        new = {**old, "model": model.info(), "unet_model": None, "weak_model": None}
        assert all(same_setting(k, old.get(k), new.get(k), MATCH_KEYS) for k in MATCH_KEYS), p


# ---- bring your own model: `_target_` configs ----

def test_a_target_model_samples_and_is_identified_by_its_content(byo, capsys):
    weights = byo / "w.pt"
    torch.manual_seed(1)
    torch.save({"images": torch.rand(K, 1, SIZE, SIZE)}, weights)
    common = [f"+unet_model._target_=byo.build", f"+unet_model.weights={weights}", "sample_shape=[1,8,8]",
              "guidance=cfg", "guidance.scale=1", "sampler=flow_euler", "sampler.respacing=flow5", "labels=balanced"]
    npz = run_sample(sample_cfg(*common), byo / "p")
    got = info(byo / "p")
    assert got["unet_model"] == {"_target_": "byo.build", "weights": str(weights)} and got["num_classes"] == K
    assert got["model"]["parameterization"] == "flow" and got["cost_per_sample"]["nfe"] == 10
    images = torch.load(weights)["images"]
    labels = torch.arange(4) % K
    expected = ((2 * images[labels] - images.mean(0)).clamp(-1, 1) + 1) * 127.5  # CFG w = 1 of an exact model
    assert np.abs(np.load(npz)["arr_0"].astype(float) - expected.permute(0, 2, 3, 1).numpy()).max() <= 1
    mtime = npz.stat().st_mtime_ns
    run_sample(sample_cfg(*common), byo / "p")  # same config, same content: reused
    assert npz.stat().st_mtime_ns == mtime and "already holds these samples" in capsys.readouterr().out
    torch.save({"images": torch.rand(K, 1, SIZE, SIZE)}, weights)  # same path, other weights: resampled
    run_sample(sample_cfg(*common), byo / "p")
    assert npz.stat().st_mtime_ns != mtime and info(byo / "p")["unet_sha256"] != got["unet_sha256"]


def test_autoguidance_with_a_target_weak_model_and_refusals(byo, tmp_path):
    base = ["+unet_model._target_=byo.build", "sample_shape=[1,8,8]", "sampler=flow_euler",
            "sampler.respacing=flow4", "guidance=autoguidance", "guidance.scale=1"]
    run_sample(sample_cfg(*base, "+weak_model._target_=byo.build", "+weak_model.seed=1"), tmp_path / "ag")
    got = info(tmp_path / "ag")
    assert got["weak_model"]["target"] == {"_target_": "byo.build", "seed": 1} and got["weak_ckpt"] is None
    assert got["cost_per_sample"]["nfe"] == 8 and got["cost_per_sample"]["nfe_weak"] == 4  # 4 steps, both models

    def refused(*overrides):
        with pytest.raises(GuidanceError) as e:
            run_sample(sample_cfg(*overrides), tmp_path / "x")
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "not the main model's" in refused(*base, "+weak_model._target_=byo.discrete")
    assert "needs the shape of its samples: set sample_shape" in refused("+unet_model._target_=byo.build")
    assert "returned a Prototypes, not a guidance.engine.model.DenoisingModel" in refused(
        "+unet_model._target_=byo.not_a_model", "sample_shape=[1,8,8]")
    assert "cannot build nowhere.build" in refused("+unet_model._target_=nowhere.build", "sample_shape=[1,8,8]")
    assert "sample_shape is for a unet_model" in refused(f"unet_ckpt={snapshot(tmp_path / 'u.pt')}",
                                                         "sample_shape=[1,8,8]")
    assert "sample_shape=[1, 8] must be [C, H, W]" in refused("+unet_model._target_=byo.build", "sample_shape=[1,8]")
    assert "unet_model='byo.build' must be a config with _target_" in refused("unet_model=byo.build")


def test_a_target_model_on_trained_timesteps_takes_a_classifier_and_a_weak_snapshot(byo, tmp_path):
    """A `_target_` ε model on the snapshots' timesteps: classifier guidance with a classifier snapshot of its
    shape and classes (another shape refused, naming the target), autoguidance with a weak U-Net snapshot."""
    from guidance.nn import EncoderClassifier

    clf = {"image_size": SIZE, "in_channels": 1, "model_channels": 8, "num_classes": K, "num_res_blocks": 1,
           "attention_resolutions": [], "channel_mult": [1, 2], "pool": "adaptive"}
    save_snapshot(tmp_path / "clf.pt", "classifier", EncoderClassifier(**clf),
                  {"_target_": "guidance.nn.EncoderClassifier", **clf}, 1)
    base = ["+unet_model._target_=byo.discrete", "sampler=ddim", "sampler.respacing=ddim3",
            f"classifier_ckpt={tmp_path / 'clf.pt'}"]
    run_sample(sample_cfg(*base, "sample_shape=[1,8,8]", "guidance=classifier", "guidance.scale=2"), tmp_path / "c")
    cost = info(tmp_path / "c")["cost_per_sample"]
    assert (cost["nfe"], cost["classifier_backward"]) == (3, 3)
    with pytest.raises(GuidanceError, match="U-Net unet_model byo.discrete has image_size=16 but classifier"):
        run_sample(sample_cfg(*base, "sample_shape=[1,16,16]", "guidance=classifier"), tmp_path / "d")
    weak = snapshot(tmp_path / "weak.pt")
    run_sample(sample_cfg(*base, "sample_shape=[1,8,8]", "guidance=autoguidance", f"weak_ckpt={weak}"), tmp_path / "w")
    got = info(tmp_path / "w")
    assert got["weak_ckpt"]["sha256"] and got["weak_model"] is None and got["cost_per_sample"]["nfe_weak"] == 3
