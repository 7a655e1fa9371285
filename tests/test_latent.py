"""Latent models (issue 19 item 4): a U-Net on 4-channel latents with a random-weight diffusers AutoencoderKL samples
with CFG, decodes (counted apart from the NFE, its FLOPs in GFLOP/sample), writes decoded images, is not reused
with another VAE, and is evaluated; the standardizations restate EDM2's StabilityVAEEncoder and DiT's 0.18215."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("diffusers")
from diffusers import AutoencoderKL  # noqa: E402

from guidance.checkpoint import load_snapshot, save_snapshot  # noqa: E402
from guidance.config import build, compose_config  # noqa: E402
from guidance.data import to_uint8  # noqa: E402
from guidance.diffusion import create_diffusion  # noqa: E402
from guidance.engine.latent import EDM2_RAW_MEAN, EDM2_RAW_STD, LatentDecoder, weights_sha256  # noqa: E402
from guidance.engine.model import DenoisingModel  # noqa: E402
from guidance.errors import GuidanceError  # noqa: E402
from guidance.nn import UNet  # noqa: E402
from guidance.sampling.denoiser import GuidedDenoiser  # noqa: E402
from guidance.sampling.rng import PerImageRNG  # noqa: E402

LATENT, LATENT_SIZE, IMAGE_SIZE, K, STEPS = 4, 8, 16, 3, 3
DIFFUSION = {"_target_": "guidance.diffusion.create_diffusion", "steps": 40, "noise_schedule": "linear",
             "model_var_type": "fixed_small", "loss_type": "mse", "timestep_respacing": ""}
UNET = {"_target_": "guidance.nn.UNet", "image_size": LATENT_SIZE, "in_channels": LATENT, "model_channels": 8,
        "out_channels": LATENT, "num_res_blocks": 1, "attention_resolutions": [], "dropout": 0.0,
        "channel_mult": [1, 2], "num_classes": K, "num_heads": 1, "num_head_channels": -1,
        "use_scale_shift_norm": True, "resblock_updown": False, "learn_sigma": False}
EDM2 = LatentDecoder.edm2(batch_size=3)  # 3: the decoder's chunks cut across the sampler's batches of 4
LATENT_EXTRA = {"scale": list(EDM2.scale), "shift": list(EDM2.shift), "vae_range": [0.0, 1.0], "batch_size": 3}


def tiny_vae(seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                         latent_channels=LATENT, norm_num_groups=4, sample_size=IMAGE_SIZE).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("latent")
    tiny_vae(0).save_pretrained(d / "vae")
    torch.manual_seed(0)
    save_snapshot(d / "unet.pt", "unet", UNet(**{k: v for k, v in UNET.items() if k != "_target_"}), UNET, step=5,
                  diffusion_config=DIFFUSION, extra={"latent": LATENT_EXTRA})
    torch.manual_seed(0)
    save_snapshot(d / "pixel.pt", "unet", UNet(**{k: v for k, v in UNET.items() if k != "_target_"}), UNET, step=5,
                  diffusion_config=DIFFUSION)
    return d


# ---- the standardizations, restated from their sources ----

def test_edm2_standardization_and_decode_are_edm2s(files):
    """training/encoders.py: scale = float32(final_std) / float32(raw_std), bias = final_mean − raw_mean · scale;
    decode: x = (x − bias) / scale, vae.decode(x).sample, clamp(0, 1)."""
    scale = np.float32(0.5) / np.float32(EDM2_RAW_STD)
    bias = np.float32(0) - np.float32(EDM2_RAW_MEAN) * scale
    assert EDM2.scale == tuple(scale.tolist()) and EDM2.shift == tuple(bias.tolist())
    decoder = EDM2.loaded(files / "vae")
    z = torch.randn(5, LATENT, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(1))
    raw = (z - torch.from_numpy(bias).reshape(1, -1, 1, 1)) / torch.from_numpy(scale).reshape(1, -1, 1, 1)
    with torch.no_grad():
        edm2 = decoder.vae.decode(raw).sample.clamp(0, 1)
    ours = decoder(z)
    assert ours.shape == (5, 3, IMAGE_SIZE, IMAGE_SIZE)
    torch.testing.assert_close(((ours + 1) / 2).clamp(0, 1), edm2, rtol=0, atol=1e-6)
    # uint8: EDM2 truncates (floor 255 u), the toolkit rounds: never below, at most one level above
    diff = to_uint8(ours).int() - edm2.mul(255).to(torch.uint8).int()
    assert diff.min() >= 0 and diff.max() <= 1 and diff.any()


def test_dit_scaling_is_dits(files):
    """DiT's sample_ddp.py: vae.decode(z / 0.18215).sample, then clamp(127.5 x + 128, 0, 255) truncated to uint8."""
    decoder = LatentDecoder.dit().loaded(files / "vae")
    assert decoder.scale == (0.18215,) and decoder.shift == (0.0,)
    z = torch.randn(4, LATENT, LATENT_SIZE, LATENT_SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        dit = decoder.vae.decode(z / 0.18215).sample
    ours = decoder(z)
    torch.testing.assert_close(ours, dit, rtol=0, atol=1e-6)
    dit_u8 = torch.clamp(127.5 * dit + 128.0, 0, 255).to(torch.uint8)
    diff = (to_uint8(ours).int() - dit_u8.int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # the same rounding but at exact halves


def test_single_file_loads_the_same_weights_and_bad_paths_are_one_line(files, tmp_path):
    z = torch.randn(2, LATENT, LATENT_SIZE, LATENT_SIZE)
    folder = LatentDecoder.from_path(files / "vae", scale=0.5)
    single = LatentDecoder.from_path(files / "vae" / "diffusion_pytorch_model.safetensors", scale=0.5)
    torch.testing.assert_close(single(z), folder(z), rtol=0, atol=0)
    assert single.sha256 == weights_sha256(files / "vae" / "diffusion_pytorch_model.safetensors") != folder.sha256
    for bad, match in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "junk.safetensors", "not a loadable")):
        if bad.suffix:
            bad.write_bytes(b"not weights")
        with pytest.raises(GuidanceError, match=match) as e:
            LatentDecoder.from_path(bad)
        assert "\n" not in str(e.value)
    with pytest.raises(GuidanceError, match="4 channels but the latents have 2"):
        LatentDecoder.edm2().loaded(files / "vae")(torch.zeros(1, 2, 4, 4))
    with pytest.raises(GuidanceError, match="pass vae=PATH"):  # declared, never loaded: refused before sampling
        GuidedDenoiser(build({"_target_": "guidance.guiders.NoGuidance"}),
                       {"unet": DenoisingModel(torch.nn.Identity(), null_label=K, decoder=LatentDecoder())})


# ---- a latent point end to end ----

def sample_cfg(files, *overrides):
    return compose_config("sample", [f"unet_ckpt={files / 'unet.pt'}", f"vae={files / 'vae'}", "logger=none",
                                     "guidance=cfg", "guidance.scale=2", "sampler=ddim",
                                     f"sampler.respacing=ddim{STEPS}", "num_samples=10", "batch_size=4",
                                     "precision=fp32", "channels_last=false", "batching=stacked", "device=cpu",
                                     *overrides])


def latents_by_hand(files, cfg, start, end):
    """The point's latents for images start..end-1: the same snapshot, strategy, sampler and seeds, no decoder."""
    unet, _ = load_snapshot(files / "unet.pt", role="unet")
    sampler = build(cfg.sampler, diffusion=create_diffusion(**{k: v for k, v in DIFFUSION.items()
                                                                if k not in ("_target_", "timestep_respacing")}))
    denoiser = GuidedDenoiser(build(cfg.guidance), {"unet": DenoisingModel(unet, null_label=K)}, batching="stacked")
    rng = PerImageRNG(int(cfg.seed), range(start, end))
    y = rng.labels(K, cfg.labels)
    return sampler.sample(denoiser, (end - start, LATENT, LATENT_SIZE, LATENT_SIZE), y, rng), y


def test_latent_point_samples_decodes_counts_reuses_and_evaluates(files, tmp_path, capsys):
    from guidance.metrics.evaluate import evaluate_folder
    from guidance.nn.evaluator import EvaluatorNet
    from guidance.sampling.point import run_sample

    out = tmp_path / "point"
    cfg = sample_cfg(files)
    run_sample(cfg, out)
    with np.load(out / "samples.npz") as f:
        images, labels = f["arr_0"], f["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (10, IMAGE_SIZE, IMAGE_SIZE, 3)  # decoded, not latent

    # The images are the sampler's latents through EDM2's decode (by hand) and the toolkit's rounding.
    z, y = latents_by_hand(files, cfg, 4, 8)
    assert np.array_equal(labels[4:8], y.numpy())
    vae = AutoencoderKL.from_pretrained(files / "vae", low_cpu_mem_usage=False).eval()
    scale, bias = (torch.tensor(v).reshape(1, -1, 1, 1) for v in (EDM2.scale, EDM2.shift))
    with torch.no_grad():
        by_hand = vae.decode((z - bias) / scale).sample * 2 - 1
    diff = (torch.from_numpy(images[4:8]).permute(0, 3, 1, 2).int() - to_uint8(by_hand).int()).abs()
    assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # batch-size rounding at most

    info = json.loads((out / "sample_info.json").read_text())
    assert info["decoder"] == {"class": "diffusers.AutoencoderKL", "sha256": weights_sha256(files / "vae"),
                               "scale": LATENT_EXTRA["scale"], "shift": LATENT_EXTRA["shift"],
                               "vae_range": [0.0, 1.0], "batch_size": 3}
    assert info["vae"] == str(files / "vae")
    cost = info["cost_per_sample"]
    assert cost["nfe"] == 2 * STEPS and cost["decoder"] == 1.0  # one decode per sample, not an NFE
    with FlopCounterMode(display=False) as mode, torch.no_grad():
        vae.decode(torch.zeros(1, LATENT, LATENT_SIZE, LATENT_SIZE))
    assert info["flops_per_pass"]["decoder"] == mode.get_total_flops() > 0
    assert cost["gflop_decoder"] == pytest.approx(mode.get_total_flops() / 1e9, rel=1e-12)
    assert cost["gflop"] == pytest.approx(cost["gflop_unet"] + cost["gflop_decoder"], rel=1e-12)
    assert cost["gflop_unet"] == pytest.approx(2 * STEPS * info["flops_per_pass"]["unet"] / 1e9, rel=1e-12)

    # Reuse: the same VAE is reused; a retrained VAE in the same folder is new samples.
    capsys.readouterr()
    run_sample(cfg, out)
    assert "already holds these samples" in capsys.readouterr().out
    tiny_vae(1).save_pretrained(files / "vae")
    run_sample(cfg, out)
    assert "already holds" not in capsys.readouterr().out
    info2 = json.loads((out / "sample_info.json").read_text())
    assert info2["decoder"]["sha256"] == weights_sha256(files / "vae") != info["decoder"]["sha256"]
    with np.load(out / "samples.npz") as f:
        assert not np.array_equal(f["arr_0"], images) and np.array_equal(f["arr_1"], labels)

    # Metrics on the decoded samples (a tiny untrained evaluator on 3 x 16 x 16 images).
    ev_cfg = {"_target_": "guidance.nn.evaluator.EvaluatorNet", "image_size": IMAGE_SIZE, "in_channels": 3,
              "num_classes": K, "channels": [4, 8, 8], "feature_dim": 6, "spatial_channels": 2, "dropout": 0.0}
    torch.manual_seed(0)
    save_snapshot(tmp_path / "evaluator.pt", "evaluator",
                  EvaluatorNet(**{k: v for k, v in ev_cfg.items() if k != "_target_"}), ev_cfg, step=0)
    ref = tmp_path / "ref.npz"
    rng = np.random.default_rng(0)
    np.savez(ref, arr_0=rng.integers(0, 256, (12, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
             arr_1=rng.integers(0, K, 12))
    data = {"name": "npz", "root": None, "download": False, "path": str(ref), "image_size": IMAGE_SIZE,
            "channels": 3, "num_classes": K}
    metrics = {"extractor": "evaluator", "evaluator_checkpoint": str(tmp_path / "evaluator.pt"),
               "cache_dir": str(tmp_path / "cache"), "kid_subsets": 3, "kid_subset_size": 5, "isc_splits": 2,
               "bootstrap": 0, "progress": False}
    result = evaluate_folder(out, metrics, data, ref)
    assert result["num_samples"] == 10 and result["num_reference"] == 12 and np.isfinite(result["fid"])
    written = json.loads((out / "metrics.json").read_text())
    assert written["samples_sha256"] == info2["samples_file"]["sha256"]


def test_latent_and_pixel_models_refuse_a_missing_or_stray_vae(files, tmp_path):
    from guidance.sampling.point import run_sample

    with pytest.raises(GuidanceError, match="latent space of an autoencoder: pass vae=PATH"):
        run_sample(sample_cfg(files, "vae=null"), tmp_path / "a")
    with pytest.raises(GuidanceError, match="samples pixels"):
        run_sample(sample_cfg(files, f"unet_ckpt={files / 'pixel.pt'}"), tmp_path / "b")
    assert not (tmp_path / "a" / "samples.npz").exists() and not (tmp_path / "b" / "samples.npz").exists()


def test_a_denoising_model_carries_its_decoder_and_vae_replaces_its_weights(files):
    """A DenoisingModel built with its decoder (a model config's) keeps it; vae=PATH loads a declared one's weights."""
    from guidance.sampling.point import latent_decoder

    net = torch.nn.Identity()
    loaded = LatentDecoder.dit().loaded(files / "vae")
    cfg = sample_cfg(files, "vae=null")
    assert latent_decoder(cfg, DenoisingModel(net, null_label=K, decoder=loaded), {}, "cpu") is loaded
    assert latent_decoder(cfg, DenoisingModel(net, null_label=K), {}, "cpu") is None
    declared = DenoisingModel(net, null_label=K, decoder=LatentDecoder.dit())
    got = latent_decoder(sample_cfg(files), declared, {}, "cpu")
    assert got.is_loaded and got.scale == (0.18215,) and got.sha256 == weights_sha256(files / "vae")
    assert GuidedDenoiser(build({"_target_": "guidance.guiders.NoGuidance"}),
                          {"unet": DenoisingModel(net, null_label=K, decoder=got)}).decoder is got
