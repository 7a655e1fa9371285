"""Issue 20 items 4-5 end to end: a tiny EDM2 pickle (written by edm2's own code), a tiny DiT .pt and a tiny SiT .pt
go through their importers into ONE snapshot schema (guidance.checkpoint's adapter + extra.latent as
LatentDecoder's fields) and are sampled by guidance-sample's library entry (run_sample) with the strategies they
allow, on their samplers, decoded by a random-weight diffusers AutoencoderKL; strategies they cannot run are
refused in one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

from guidance.config import CONF_DIR  # noqa: E402
from guidance.dit.importer import import_dit  # noqa: E402
from guidance.dit.releases import model_config  # noqa: E402
from guidance.edm2 import import_edm2  # noqa: E402
from guidance.engine.latent import LatentDecoder  # noqa: E402
from guidance.errors import GuidanceError  # noqa: E402
from guidance.sampling.point import run_sample  # noqa: E402

DATA = Path(__file__).parent / "data"
K = 4  # the tiny models' classes (EDM2 label_dim, DiT/SiT num_classes = null label)


def tiny_vae() -> AutoencoderKL:
    """4 latent channels, one 2x downsampling: 16x16 EDM2 latents -> 32 px, 8x8 DiT latents -> 16 px."""
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=4).eval()


def dit_arch(family: str) -> dict:
    ref = torch.load(DATA / f"{family.lower()}_tiny_reference.pt", weights_only=True)
    arch = {("image_size" if k == "input_size" else k): v for k, v in ref["arch"].items()}
    return ref["state_dict"], {**model_config(f"{family}-S/2"), **arch}


@pytest.fixture(scope="module")
def snaps(tmp_path_factory):
    d = tmp_path_factory.mktemp("imported")
    tiny_vae().save_pretrained(d / "vae")
    edm2_ref = torch.load(DATA / "edm2_tiny_reference.pt", weights_only=True)
    torch.save(edm2_ref["uncond_state"], d / "edm2_uncond.pt")  # EDM2's unconditional companion, as a state dict
    out = {"vae": d / "vae", "dir": d,
           "edm2": import_edm2(DATA / "edm2_tiny_network.pkl", d / "edm2.pt"),
           "edm2_uncond": import_edm2(d / "edm2_uncond.pt", d / "edm2_uncond_snap.pt")}
    for family in ("DiT", "SiT"):
        state, arch = dit_arch(family)
        torch.save(state, d / f"{family}-tiny.pt")
        out[family] = import_dit(d / f"{family}-tiny.pt", d / f"{family}.pt", source=family.lower(), arch=arch)
    return out


def sample(snaps, name, *overrides, vae=True):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[f"unet_ckpt={snaps[name]}", "logger=none", "num_samples=4",
                                           "batch_size=4", "labels=balanced",
                                           *([f"vae={snaps['vae']}"] if vae else []), *overrides])
    out = snaps["dir"] / "points" / "_".join([name, *overrides]).replace("/", "_")
    npz = run_sample(cfg, out)
    return np.load(npz), json.loads((out / "sample_info.json").read_text())


def check_images(npz, size):
    images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (4, size, size, 3) and images.dtype == np.uint8
    assert images.std() > 0 and list(labels) == [0, 1, 2, 3]  # balanced labels of the model's 4 classes


def test_edm2_autoguidance_with_its_unconditional_network_on_edm2_heun(snaps):
    """EDM2's CFG preset, as EDM2 runs it: the conditional network guided by the unconditional one (autoguidance's
    weak slot), EDM2's Heun on an edm grid, latents decoded with EDM2's standardization."""
    npz, info = sample(snaps, "edm2", "guidance=autoguidance", "guidance.scale=0.7",
                       f"weak_ckpt={snaps['edm2_uncond']}", "sampler=edm2_heun", "sampler.respacing=edm3")
    check_images(npz, 32)
    assert info["model"] == {"parameterization": "edm", "noise_input": "sigma", "time_scale": 1.0,
                             "levels": {"kind": "continuous", "sigma_min": 0.002, "sigma_max": 80.0},
                             "null_label": K, "null_trained": False}
    assert info["timesteps"][0] == pytest.approx(80.0)
    assert info["cost_per_sample"]["nfe"] == 2 * (2 * 3 - 1)  # Heun: 2N − 1 evaluations, two networks each
    edm2 = LatentDecoder.edm2()
    assert info["decoder"]["scale"] == list(edm2.scale) and info["decoder"]["shift"] == list(edm2.shift)
    assert info["decoder"]["vae_range"] == [0.0, 1.0] and info["weak_ckpt"]["path"] == str(snaps["edm2_uncond"])


def test_dit_cfg_on_ddpm_and_ddim_with_its_learned_variance(snaps):
    for sampler in (["sampler=ddpm", "sampler.respacing=3"], ["sampler=ddim", "sampler.respacing=ddim3"]):
        npz, info = sample(snaps, "DiT", "guidance=cfg", "guidance.scale=0.5", *sampler, "sampler.clip_denoised=false")
        check_images(npz, 16)
        assert info["model"] == {"parameterization": "eps", "noise_input": "timestep", "time_scale": 1.0,
                                 "levels": {"kind": "discrete"}, "null_label": K, "null_trained": True}
        assert info["cost_per_sample"]["nfe"] == 2 * 3 and info["num_classes"] == K
        assert info["decoder"]["scale"] == [0.18215] and info["decoder"]["vae_range"] == [-1.0, 1.0]


@pytest.mark.parametrize("sampler", ["flow_euler", "flow_sde"])  # SiT's ODE and SDE samplers
def test_sit_cfg_on_flow_samplers(snaps, sampler):
    npz, info = sample(snaps, "SiT", "guidance=cfg", "guidance.scale=0.5", f"sampler={sampler}",
                       "sampler.respacing=flow3")
    check_images(npz, 16)
    assert info["model"] == {"parameterization": "flow", "noise_input": "flow_time_reversed", "time_scale": 1.0,
                             "levels": {"kind": "continuous", "sigma_min": 0.0, "sigma_max": math.inf},
                             "null_label": K, "null_trained": True}
    assert info["cost_per_sample"]["nfe"] == 2 * 3 and info["timesteps"][0] == math.inf


@pytest.mark.parametrize("name, overrides, needle", [
    ("edm2", ["guidance=cfg", "sampler=edm2_heun", "sampler.respacing=edm3"], "never trained"),
    ("edm2", ["guidance=classifier", "sampler=edm2_heun", "sampler.respacing=edm3"],
     "levels are continuous: use a strategy without a classifier"),
    ("SiT", ["guidance=classifier", "sampler=flow_euler", "sampler.respacing=flow3"], "levels are continuous"),
    ("SiT", ["guidance=cfg", "sampler=ddim", "sampler.respacing=flow3"], "no step from σ = ∞"),
])
def test_strategies_a_model_cannot_run_are_refused_in_one_line(snaps, name, overrides, needle):
    with pytest.raises(GuidanceError, match=needle) as e:
        sample(snaps, name, *overrides)
    assert "\n" not in str(e.value)


def test_a_latent_import_without_vae_names_its_authors_decoder(snaps):
    for name, vae, sampler in (("edm2", "stabilityai/sd-vae-ft-mse", "edm2_heun"),
                               ("DiT", "stabilityai/sd-vae-ft-ema", "ddim")):
        with pytest.raises(GuidanceError, match=f"pass vae=PATH .*its authors use {vae}"):
            sample(snaps, name, "guidance=none", f"sampler={sampler}", "sampler.respacing=edm2", vae=False)


def test_the_schema_refuses_malformed_adapter_fields(tmp_path):
    from guidance.checkpoint import check_adapter

    for bad, needle in (({"sample_shape": [4, 16]}, "must be \\[C, H, W\\]"),
                        ({"null_label": "1000"}, "number of classes"),
                        ({"learned_variance": "yes"}, "true, false or null"), ({"latent": {}}, "unknown key")):
        with pytest.raises(GuidanceError, match=needle):
            check_adapter(bad, "adapter")
    check_adapter({"sample_shape": [4, 16, 16], "null_label": None, "learned_variance": False}, "adapter")


# --- Every preset end to end (issue 20 acceptance): experiment=edm2_guidance / dit_cfg / sit_cfg composed as the GPU
# user runs them, on the tiny imports above instead of the released files: each point of the preset's sweep samples,
# decodes, is evaluated with the preset's metrics (torch-fidelity's Inception with random weights, a local file as
# `metrics.inception_weights=` takes it) against a reference .npz, and guidance-tradeoff's report reads the sweep.

def reference_npz(path: Path, size: int) -> Path:
    rng = np.random.default_rng(size)
    np.savez(path, rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), rng.integers(0, K, 8))
    return path


def sweep_points(cfg) -> list[list[str]]:
    """The preset's own multirun grid (hydra.sweeper.params), one override list per point."""
    params = dict(cfg.hydra.sweeper.params or {})
    points = [[]]
    for key, values in params.items():
        points = [p + [f"{key}={v}"] for p in points for v in str(values).split(",")]
    return points


def run_preset(snaps, random_inception_weights, preset, size, tiny, rows=([],)):
    """Every point of `preset` (its sweep grid x `rows`) with the tiny files, evaluated; returns the report's rows."""
    from guidance.apps.sample import evaluate_point
    from guidance.guiders import describe_point
    from guidance.report import build_report

    sweep = snaps["dir"] / "sweeps" / preset
    base = [f"experiment={preset}", "logger=none", "num_samples=8", "batch_size=4", f"vae={snaps['vae']}",
            f"reference_npz={reference_npz(snaps['dir'] / f'ref{size}.npz', size)}", "metrics.device=cpu",
            f"metrics.inception_weights={random_inception_weights}", f"metrics.cache_dir={snaps['dir'] / 'cache'}",
            "metrics.compute=[fid,is,kid,precision,recall]",  # sFID's and Vendi's 2k eigensolves: minutes on a CPU
            "metrics.kid_subset_size=4", "metrics.kid_subsets=2", "metrics.isc_splits=2", "metrics.progress=false",
            *tiny]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        grid = sweep_points(compose("sample", overrides=base, return_hydra_config=True))
        n = 0
        for row in rows:
            for point in grid:
                cfg = compose("sample", overrides=[*base, *row, *point])
                assert cfg.evaluate and cfg.num_samples == 8 and cfg.sweep_name == preset
                evaluate_point(cfg, run_sample(cfg, sweep / str(n)))
                n += 1
    paths = build_report(sweep, describe=describe_point, progress=False)
    lines = [r for r in paths["csv"].read_text().splitlines()[1:] if r]
    assert len(lines) >= n and all(",ok," in r for r in lines)
    return n, lines


def test_edm2_guidance_preset_end_to_end(snaps, random_inception_weights):
    """Two of EDM2's table rows on the tiny EDM2 net: none, and CFG in an interval as EDM2 runs CFG (its
    unconditional companion in the weak slot; the autoguidance and plain CFG rows differ only in files and g),
    EDM2's Heun (edm3 instead of edm32), the preset's FID extractor, reference features cached between points."""
    rows = (["guidance=none", "weak_ckpt=null"],
            [f"weak_ckpt={snaps['edm2_uncond']}", "guidance.scale=1.1", "+guidance.schedule=interval",
             "+guidance.sigma_lo=0.28", "+guidance.sigma_hi=5.42"])
    n, lines = run_preset(snaps, random_inception_weights, "edm2_guidance", 32,
                          [f"unet_ckpt={snaps['edm2']}", "sampler.respacing=edm3"], rows)
    assert n == 2 and len({r.split(",")[6] for r in lines}) == 2  # two different FIDs


def test_dit_cfg_preset_end_to_end(snaps, random_inception_weights):
    """DiT's sweep (w = 0 and DiT's 1.5 = w 0.5) on the tiny DiT: DDPM with its learned variance, 3 steps."""
    n, lines = run_preset(snaps, random_inception_weights, "dit_cfg", 16, [f"unet_ckpt={snaps['DiT']}", "sampler.respacing=3"])
    assert n == 2


def test_sit_cfg_preset_end_to_end(snaps, random_inception_weights):
    n, lines = run_preset(snaps, random_inception_weights, "sit_cfg", 16, [f"unet_ckpt={snaps['SiT']}", "sampler.respacing=flow3"])
    assert n == 2
