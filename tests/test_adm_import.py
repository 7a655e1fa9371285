"""Issue 13: guided-diffusion's released checkpoints. ADM's state-dict layout and its legacy attention are written
here from their definitions (guided_diffusion/unet.py), independently of guidance.adm, and every release's
synthetic checkpoint (ADM's names and shapes, on the meta device) converts and loads; tiny checkpoints of the same
layouts import and sample with classifier guidance end to end."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate

from guidance.adm import RELEASES, Release, convert_state_dict, legacy_to_new_qkv, release
from guidance.errors import GuidanceError
from guidance.nn.layers import AttentionBlock


def adm_layout(model: dict, classifier: bool) -> dict[str, tuple[int, ...]]:
    """ADM's parameter names and shapes for a release's flags (UNetModel / EncoderUNetModel, attention pool head)."""
    mc, mult, n, size = model["model_channels"], model["channel_mult"], model["num_res_blocks"], model["image_size"]
    classes, emb = model["num_classes"], 4 * model["model_channels"]
    attn_ds = {size // r for r in model["attention_resolutions"]}
    shapes: dict[str, tuple[int, ...]] = {}

    def param(name, *shape, bias=True):
        shapes[f"{name}.weight"] = shape
        if bias:
            shapes[f"{name}.bias"] = (shape[0],)

    def res(p, a, b):
        param(f"{p}.in_layers.0", a), param(f"{p}.in_layers.2", b, a, 3, 3), param(f"{p}.emb_layers.1", 2 * b, emb)
        param(f"{p}.out_layers.0", b), param(f"{p}.out_layers.3", b, b, 3, 3)
        if a != b:
            param(f"{p}.skip_connection", b, a, 1, 1)

    def attn(p, c):
        param(f"{p}.norm", c), param(f"{p}.qkv", 3 * c, c, 1), param(f"{p}.proj_out", c, c, 1)

    param("time_embed.0", emb, mc), param("time_embed.2", emb, emb)
    if classes is not None and not classifier:
        shapes["label_emb.weight"] = (classes, emb)
    ch = int(mult[0] * mc)
    param("input_blocks.0.0", ch, model["in_channels"], 3, 3)
    skips, i, ds = [ch], 1, 1
    for level, m in enumerate(mult):
        for _ in range(n):
            res(f"input_blocks.{i}.0", ch, int(m * mc))
            ch = int(m * mc)
            if ds in attn_ds:
                attn(f"input_blocks.{i}.1", ch)
            skips.append(ch)
            i += 1
        if level != len(mult) - 1:
            res(f"input_blocks.{i}.0", ch, ch)  # resblock_updown: a ResBlock(down=True)
            skips.append(ch)
            i, ds = i + 1, ds * 2
    res("middle_block.0", ch, ch), attn("middle_block.1", ch), res("middle_block.2", ch, ch)
    if classifier:  # GroupNorm, SiLU, AttentionPool2d over the (size/ds)^2 tokens and their mean
        param("out.0", ch)
        shapes["out.2.positional_embedding"] = (ch, (size // ds) ** 2 + 1)
        param("out.2.qkv_proj", 3 * ch, ch, 1), param("out.2.c_proj", classes, ch, 1)
        return shapes
    i = 0
    for level in reversed(range(len(mult))):
        for j in range(n + 1):
            res(f"output_blocks.{i}.0", ch + skips.pop(), int(mult[level] * mc))
            ch, k = int(mult[level] * mc), 1
            if ds in attn_ds:
                attn(f"output_blocks.{i}.1", ch)
                k = 2
            if level and j == n:
                res(f"output_blocks.{i}.{k}", ch, ch)  # ResBlock(up=True)
                ds //= 2
            i += 1
    param("out.0", ch), param("out.2", 2 * model["out_channels"], ch, 3, 3)  # learned σ: [ε, v]
    return shapes


def legacy_attention_block(block: AttentionBlock, w_qkv, b_qkv, x):
    """ADM's AttentionBlock with QKVAttentionLegacy: qkv rows per head [q_h; k_h; v_h], scale ch^-1/4 on q and k."""
    b, c, *spatial = x.shape
    h = block.norm(x.reshape(b, c, -1))
    qkv = torch.einsum("oc,bct->bot", w_qkv[..., 0], h) + b_qkv[None, :, None]
    heads = block.heads
    ch = c // heads
    q, k, v = qkv.reshape(b * heads, 3 * ch, -1).split(ch, dim=1)
    scale = 1 / math.sqrt(math.sqrt(ch))
    weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
    a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
    return (x.reshape(b, c, -1) + block.proj_out(a)).reshape(b, c, *spatial)


@pytest.mark.parametrize("heads", [1, 3, 4])
def test_converted_legacy_attention_computes_adms_function(heads):
    torch.manual_seed(0)
    c = 12 * heads
    block = AttentionBlock(c, num_heads=heads)
    torch.nn.init.normal_(block.proj_out.weight, std=0.2)
    w, b = torch.randn(3 * c, c, 1) * 0.3, torch.randn(3 * c) * 0.3  # ADM's weights, in legacy row order
    x = torch.randn(2, c, 4, 4)
    expected = legacy_attention_block(block, w, b, x)
    with torch.no_grad():
        block.qkv.weight.copy_(legacy_to_new_qkv(w, heads)), block.qkv.bias.copy_(legacy_to_new_qkv(b, heads))
        got = block(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        if heads > 1:  # without the conversion the block computes something else
            block.qkv.weight.copy_(w), block.qkv.bias.copy_(b)
            assert (block(x) - expected).abs().max() > 1e-3


def test_every_readme_release_has_an_entry():
    readme_files = {"64x64_classifier", "64x64_diffusion", "128x128_classifier", "128x128_diffusion",
                    "256x256_classifier", "256x256_diffusion", "256x256_diffusion_uncond", "512x512_classifier",
                    "512x512_diffusion", "64_256_upsampler", "128_512_upsampler", "lsun_bedroom", "lsun_cat",
                    "lsun_horse", "lsun_horse_nodropout"}
    assert set(RELEASES) == readme_files


@pytest.mark.parametrize("name", sorted(RELEASES))
def test_synthetic_release_checkpoint_converts_and_loads_with_the_published_size(name):
    rel = RELEASES[name]
    layout = adm_layout(rel.model, rel.role == "classifier")
    assert sum(math.prod(s) for s in layout.values()) == rel.adm_parameters  # guided-diffusion's own count
    adm = {k: torch.empty(s, device="meta") for k, s in layout.items()}
    with torch.device("meta"):
        model = instantiate(rel.model, _convert_="all")
    state = convert_state_dict(adm, model, rel.legacy_attention)
    model.load_state_dict(state, assign=True, strict=True)
    null_row = 4 * rel.model["model_channels"] if rel.role == "unet" and rel.class_conditional else 0
    assert sum(p.numel() for p in model.parameters()) == rel.adm_parameters + null_row


def test_a_file_of_another_release_names_the_tensor_that_differs():
    rel = RELEASES["128x128_diffusion"]
    adm = {k: torch.empty(s, device="meta") for k, s in adm_layout(RELEASES["256x256_diffusion"].model, False).items()}
    with torch.device("meta"):
        model = instantiate(rel.model, _convert_="all")
    with pytest.raises(GuidanceError, match=r"tensor \S+ (is \[|\[.*has no place)"):
        convert_state_dict(adm, model, rel.legacy_attention)
    with pytest.raises(GuidanceError, match="release=64x64 is not a guided-diffusion release"):
        release("64x64")


TINY_UNET = {"_target_": "guidance.nn.UNet", "image_size": 16, "in_channels": 3, "out_channels": 3, "num_classes": 10,
             "model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
             "num_heads": 2, "num_head_channels": -1, "dropout": 0.0, "use_scale_shift_norm": True,
             "resblock_updown": True, "learn_sigma": True}
TINY_CLASSIFIER = {"_target_": "guidance.nn.EncoderClassifier", "image_size": 16, "in_channels": 3, "num_classes": 10,
                   "model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [8],
                   "num_heads": 1, "num_head_channels": 8, "dropout": 0.0, "use_scale_shift_norm": True,
                   "resblock_updown": True, "pool": "attention"}
LEARNED = {"_target_": "guidance.diffusion.create_diffusion", "steps": 1000, "noise_schedule": "linear",
           "model_var_type": "learned_range", "loss_type": "hybrid", "timestep_respacing": ""}


@pytest.fixture
def imported(tmp_path, monkeypatch):
    """Tiny releases with ADM's layouts (legacy attention, learned σ, null-less labels), written as ADM files with
    random weights and imported through guidance-import-adm's function."""
    from guidance.adm.importer import import_adm

    tiny = {"tiny_cond": ("unet", TINY_UNET), "tiny_uncond": ("unet", {**TINY_UNET, "num_classes": None}),
            "tiny_classifier": ("classifier", TINY_CLASSIFIER)}
    out = {}
    g = torch.Generator().manual_seed(0)
    for name, (role, model) in tiny.items():
        data = {"name": "tiny", "image_size": 16, "channels": 3, "num_classes": model["num_classes"]}
        monkeypatch.setitem(RELEASES, name, Release(name, role, model, True, 0, data, LEARNED))
        adm = {k: torch.randn(s, generator=g) * 0.05 for k, s in adm_layout(model, role == "classifier").items()}
        torch.save(adm, tmp_path / f"{name}.pt")
        out[name] = import_adm(tmp_path / f"{name}.pt", name, tmp_path / "snap" / f"{name}.pt")
    return out


def _sample(imported, tmp_path, unet, *overrides):
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR
    from guidance.sampling.point import run_sample

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[f"unet_ckpt={imported[unet]}", f"classifier_ckpt={imported['tiny_classifier']}",
                                           "sampler=ddpm", "sampler.respacing=4", "num_samples=4", "batch_size=4",
                                           "logger=none", "precision=fp32", *overrides])
    return run_sample(cfg, tmp_path / "out" / "-".join([unet, *overrides]))


def test_classifier_guidance_runs_end_to_end_on_imported_checkpoints(imported, tmp_path):
    import json

    import numpy as np

    for unet, conditional in (("tiny_cond", "true"), ("tiny_uncond", "false")):
        npz = _sample(imported, tmp_path, unet, "guidance=classifier", "guidance.scale=4",
                      f"guidance.conditional={conditional}")
        with np.load(npz) as z:
            assert z["arr_0"].shape == (4, 16, 16, 3) and z["arr_1"].max() < 10
        info = json.loads((npz.parent / "sample_info.json").read_text())
        assert info["cost_per_sample"]["classifier_backward"] == 4 and info["num_classes"] == 10


def test_imported_conditional_model_refuses_its_untrained_null_class(imported, tmp_path):
    with pytest.raises(GuidanceError, match="never trained"):
        _sample(imported, tmp_path, "tiny_cond", "guidance=cfg", "guidance.scale=1")
    with pytest.raises(GuidanceError, match="never trained"):
        _sample(imported, tmp_path, "tiny_cond", "guidance=classifier", "guidance.conditional=false")
    with pytest.raises(GuidanceError, match="U-Net is unconditional"):
        _sample(imported, tmp_path, "tiny_uncond", "guidance=classifier", "guidance.conditional=true")


def test_import_app_writes_a_snapshot_and_refuses_bad_input_in_one_line(imported, tmp_path):
    import subprocess
    import sys

    from guidance.checkpoint import load_snapshot

    model, meta = load_snapshot(imported["tiny_cond"], role="unet")
    assert meta["extra"]["null_class_trained"] is False and meta["diffusion_config"]["model_var_type"] == "learned_range"
    assert torch.count_nonzero(model.label_emb.weight[10]) == 0  # the zero null row
    # sampled as ADM's ε on integer timesteps with a learned variance, its null class untrained (engine v3 adapter)
    from guidance.checkpoint import denoising_model

    adapter = denoising_model(model, meta)
    assert meta["adapter"] == {"parameterization": "eps", "noise_input": "timestep"}
    assert (adapter.parameterization, adapter.noise_input, adapter.null_label, adapter.null_trained,
            adapter.learned_variance, adapter.levels.num_timesteps) == ("eps", "timestep", 10, False, True, 1000)
    run = lambda *a: subprocess.run([sys.executable, "-m", "guidance.apps.import_adm", *a], capture_output=True,
                                    text=True, cwd=tmp_path, timeout=120)
    r = run(f"checkpoint={tmp_path / 'tiny_cond.pt'}", "release=256x256_diffusion", f"out={tmp_path / 'x.pt'}")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "tensor" in r.stderr and not (tmp_path / "x.pt").exists()
    r = run(f"checkpoint={tmp_path / 'tiny_cond.pt'}", "release=64x64", f"out={tmp_path / 'x.pt'}")
    assert r.returncode == 2 and "is not a guided-diffusion release" in r.stderr


def test_table4_preset_is_adms_protocol():
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=["experiment=adm_release_table4"], return_hydra_config=True)
    assert cfg.guidance._target_.endswith("ClassifierGuidance") and cfg.guidance.conditional
    assert cfg.sampler._target_.endswith("DDPMSampler") and cfg.sampler.respacing == "250"
    assert cfg.num_samples == 50000 and cfg.labels == "uniform" and cfg.metrics.extractor == "inception"
    assert cfg.hydra.sweeper.params["guidance.scale"] == "0,1,10"  # Table 4's scales
    assert cfg.data.image_size == RELEASES["256x256_diffusion"].model["image_size"]
