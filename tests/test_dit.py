"""DiT on diffusers' DiTTransformer2DModel against DiT's own code (tests/data/dit_tiny_reference.pt, written by
make_dit_reference.py with facebookresearch/DiT's models.py and diffusion/ on a tiny random-weight DiT):
network outputs, CFG, DiT's DDPM chain with its learned variance, the import into a snapshot and its refusals."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from guidance.diffusion import create_diffusion  # noqa: E402
from guidance.dit import convert_state_dict  # noqa: E402
from guidance.dit.importer import import_dit  # noqa: E402
from guidance.dit.releases import model_config  # noqa: E402
from guidance.engine.model import DenoisingModel  # noqa: E402
from guidance.engine.prediction import Step  # noqa: E402
from guidance.errors import GuidanceError  # noqa: E402
from guidance.guiders.cfg import ClassifierFreeGuidance  # noqa: E402
from guidance.nn.dit import DiTNetwork  # noqa: E402
from guidance.sampling.ddim import DDIMSampler  # noqa: E402
from guidance.sampling.ddpm import DDPMSampler  # noqa: E402
from guidance.sampling.denoiser import GuidedDenoiser  # noqa: E402

REF = torch.load(Path(__file__).parent / "data" / "dit_tiny_reference.pt", weights_only=True)
NULL = REF["arch"]["num_classes"]
ARCH = {("image_size" if k == "input_size" else k): v for k, v in REF["arch"].items()}  # DiT's input_size
ATOL = 2e-5 * float(REF["out"].abs().max())  # float32 tolerance on outputs of magnitude ~30


def network(conventions="dit", shared_embedding=True):
    net = DiTNetwork(**ARCH, conventions=conventions, shared_embedding=shared_embedding).eval()
    net.load_state_dict(convert_state_dict(REF["state_dict"], net))
    return net


def model(net=None):
    diffusion = create_diffusion(1000, "linear", "learned_range", "hybrid")
    return DenoisingModel(net or network(), "eps", diffusion, "timestep", null_label=NULL, learned_variance=True)


class Replay:
    """The noise DiT drew: the chain's start first, then one draw per step (a sampler's rng interface)."""

    def __init__(self, z, draws):
        self.draws = [z] + list(draws)

    def __len__(self):
        return len(self.draws[0])

    def randn(self, shape):
        return self.draws.pop(0)


@torch.no_grad()
def test_network_equals_dit_module():
    out = network()(REF["x"], REF["t"], REF["y"])
    assert out.shape == REF["out"].shape == (3, 8, 8, 8)  # [ε, v]: DiT learns the variance
    torch.testing.assert_close(out, REF["out"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_diffusers_own_conventions_are_not_dits():
    """diffusers' DiT (time frequencies i/127, MLP LayerNorm eps 1e-5) computes something else on DiT's weights:
    why DiTNetwork defaults to conventions="dit"."""
    out = network("diffusers")(REF["x"], REF["t"], REF["y"])
    assert (out - REF["out"]).abs().max() > 100 * ATOL


@torch.no_grad()
def test_cfg_at_w_half_is_dits_scale_one_and_a_half():
    """DiT's forward_with_cfg at scale 1.5 = our CFG at w = 0.5 — on the 3 channels DiT's released code guides;
    its 4th ε channel stays conditional there (DiT's comment: 'for exact reproducibility'), ours is guided."""
    c = REF["cfg"]
    den = GuidedDenoiser(ClassifierFreeGuidance(c["scale"] - 1), {"unet": model()})
    diffusion = create_diffusion(1000, "linear")
    for row in range(2):
        t = int(c["t"][row])
        step = Step(t, float(diffusion.alphas_cumprod[t]), 0, 1)
        den.reset(1)
        pred = den(c["x"][row:row + 1], c["y"][row:row + 1], step, clip=False)
        released = c["out"][row:row + 1]
        torch.testing.assert_close(pred.eps[:, :3], released[:, :3], atol=ATOL, rtol=0)
        torch.testing.assert_close(pred.var_v, released[:, 4:], atol=ATOL, rtol=0)  # the conditional variance
        cond = model()(c["x"][row:row + 1], step, c["y"][row:row + 1])
        torch.testing.assert_close(released[:, 3], cond.eps[:, 3], atol=ATOL, rtol=0)
        assert (pred.eps[:, 3] - released[:, 3]).abs().max() > 100 * ATOL


@torch.no_grad()
def test_ddpm_chain_with_learned_variance_equals_dits():
    """DiT's p_sample_loop (create_diffusion("10"), learned range variance, clip_denoised=False) with CFG on all
    channels, same weights and noise = the toolkit's DDPM with cfg w = 0.5; DiT's released 3-channel CFG differs."""
    ch = REF["chain"]
    sampler = DDPMSampler(create_diffusion(1000, "linear", "learned_range", "hybrid"), respacing=ch["respacing"],
                          clip_denoised=False)
    den = GuidedDenoiser(ClassifierFreeGuidance(ch["scale"] - 1), {"unet": model()})
    x = sampler.sample(den, ch["z"].shape, ch["y"], Replay(ch["z"], ch["noise_all_channels"]))
    scale = float(ch["all_channels"].abs().max())
    torch.testing.assert_close(x, ch["all_channels"], atol=1e-5 * scale, rtol=0)
    assert (ch["released"] - ch["all_channels"]).abs().max() > 1e-3 * scale


@torch.no_grad()
def test_import_writes_a_snapshot_that_rebuilds_the_model(tmp_path):
    from guidance.checkpoint import load_model

    src = tmp_path / "DiT-tiny.pt"
    import argparse

    train_py = {"model": {}, "ema": REF["state_dict"], "opt": {}, "args": argparse.Namespace(model="DiT-S/2")}
    torch.save(train_py, src)  # a DiT train.py checkpoint: its EMA weights are imported
    arch = {**model_config("DiT-S/2"), **ARCH}
    out = import_dit(src, tmp_path / "dit.pt", source="dit", arch=arch)
    m, meta = load_model(out)  # the one loader of every snapshot: guidance.checkpoint's adapter schema
    extra = meta["extra"]
    assert meta["adapter"] == {"parameterization": "eps", "noise_input": "timestep", "time_scale": 1.0,
                               "null_label": NULL, "learned_variance": True, "levels": None}
    assert extra["null_class_trained"] is True and len(extra["source_sha256"]) == 64
    assert extra["latent"] == {"scale": [0.18215], "shift": [0.0], "vae_range": [-1.0, 1.0], "batch_size": 8}
    assert extra["vae"] == {"name": "stabilityai/sd-vae-ft-ema", "path": None}
    assert meta["diffusion_config"]["model_var_type"] == "learned_range"
    assert (m.parameterization, m.noise_input, m.null_label, m.null_trained, m.learned_variance) == (
        "eps", "timestep", NULL, True, True)
    assert m.levels.num_timesteps == 1000 and m.levels.model_var_type == "learned_range"
    torch.testing.assert_close(m.network(REF["x"], REF["t"], REF["y"]), REF["out"], atol=ATOL, rtol=0)


def test_a_file_of_another_model_gets_one_line(tmp_path):
    arch = {**model_config("DiT-S/2"), **ARCH}
    wrong = dict(REF["state_dict"])
    wrong["blocks.1.mlp.fc1.weight"] = torch.zeros(64, 32)
    (tmp_path / "a.pt").write_bytes(b"")
    torch.save(wrong, tmp_path / "a.pt")
    with pytest.raises(GuidanceError, match=r"tensor blocks\.1\.mlp\.fc1\.weight is \[64, 32\] but this model needs"):
        import_dit(tmp_path / "a.pt", tmp_path / "o.pt", arch=arch)
    extra = dict(REF["state_dict"], **{"input_blocks.0.0.weight": torch.zeros(3)})  # an ADM U-Net tensor
    torch.save(extra, tmp_path / "b.pt")
    with pytest.raises(GuidanceError, match=r"tensor input_blocks\.0\.0\.weight \[3\] has no place"):
        import_dit(tmp_path / "b.pt", tmp_path / "o.pt", arch=arch)
    with pytest.raises(GuidanceError, match="is not a file"):
        import_dit(tmp_path / "missing.pt", tmp_path / "o.pt")
    with pytest.raises(GuidanceError, match="model=DiT-XXL/2 is not a DiT/SiT model"):
        import_dit(tmp_path / "a.pt", tmp_path / "o.pt", model="DiT-XXL/2")


@torch.no_grad()
def test_diffusers_folder_imports(tmp_path):
    """A diffusers DiT folder (transformer/ + scheduler/) -> the same network; a non-DiT schedule is refused."""
    from diffusers import DDPMScheduler

    net = network(shared_embedding=False)  # diffusers' layout: a copy of the embedder in every block
    net.transformer.save_pretrained(tmp_path / "pipe" / "transformer")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").save_pretrained(tmp_path / "pipe" / "scheduler")
    out = import_dit(tmp_path / "pipe", tmp_path / "dit.pt", source="diffusers")
    from guidance.checkpoint import load_snapshot

    loaded, meta = load_snapshot(out, role="unet")
    assert meta["model_config"]["shared_embedding"] is True  # every block holds DiT's one embedder
    torch.testing.assert_close(loaded(REF["x"], REF["t"], REF["y"]), REF["out"], atol=ATOL, rtol=0)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear").save_pretrained(tmp_path / "pipe" / "scheduler")
    with pytest.raises(GuidanceError, match="beta_schedule='scaled_linear'"):
        import_dit(tmp_path / "pipe", tmp_path / "dit.pt", source="diffusers")
    with pytest.raises(GuidanceError, match="is not a folder"):
        import_dit(tmp_path / "dit.pt", tmp_path / "o.pt", source="diffusers")


def test_import_app_refuses_another_models_file_in_one_line(tmp_path):
    import subprocess
    import sys

    torch.save(REF["state_dict"], tmp_path / "tiny.pt")
    run = lambda *a: subprocess.run([sys.executable, "-m", "guidance.apps.import_dit", f"checkpoint={tmp_path / 'tiny.pt'}",
                                     f"out={tmp_path / 'x.pt'}", *a], capture_output=True, text=True, cwd=tmp_path,
                                    timeout=120)
    r = run("release=DiT-S/2")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and not (tmp_path / "x.pt").exists()
    assert "tensor x_embedder.proj.weight is [32, 4, 2, 2] but this model needs [384, 4, 2, 2]" in r.stderr
    r = run("source=edm2")
    assert r.returncode == 2 and "source=edm2 is unknown" in r.stderr


@torch.no_grad()
def test_ddim_chain_equals_diffusers_dit_pipeline():
    """diffusers' DiTPipeline (DDIMScheduler, 10 steps, eta 0, guidance_scale 1.5 on every latent channel, its VAE
    decoding latents / 0.18215) on our network = the toolkit's DDIM with cfg w = 0.5, decoded by the same VAE.
    The pipeline's null label is 1000, so this DiT has ImageNet's 1000 classes (random weights)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline

    torch.manual_seed(3)
    net = DiTNetwork(**{**ARCH, "num_classes": 1000}).eval()
    for p in net.parameters():
        p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1))
    vae = AutoencoderKL(block_out_channels=(8,), layers_per_block=1, norm_num_groups=8, latent_channels=4,
                        scaling_factor=0.18215).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    pipe = DiTPipeline(transformer=net.transformer, vae=vae, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    labels = [7, 999]
    images = pipe(labels, guidance_scale=1.5, num_inference_steps=10, generator=torch.Generator().manual_seed(5),
                  output_type="pt").images
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))  # the pipeline's latents
    sampler = DDIMSampler(create_diffusion(1000, "linear", "learned_range", "hybrid"), respacing="ddim10",
                          clip_denoised=False)
    den = GuidedDenoiser(ClassifierFreeGuidance(0.5), {"unet": DenoisingModel(net, "eps", create_diffusion(
        1000, "linear"), "timestep", null_label=1000, learned_variance=True)})
    latents = sampler.sample(den, z.shape, torch.tensor(labels), Replay(z, []))
    ours = (vae.decode(latents / 0.18215).sample / 2 + 0.5).clamp(0, 1)
    torch.testing.assert_close(ours, images, atol=1e-4, rtol=0)
    assert images.std() > 0.01  # not a constant image


@pytest.mark.parametrize("size", [256, 512])
def test_released_dit_xl_2_converts_at_full_size(size):
    """DiT-XL/2's own tensor names and shapes (recorded from DiT's models.py) fit model_config("DiT-XL/2") tensor
    for tensor, built on the meta device; with DiT's pos_embed the count is DiT's (675,129,632 at 256 px)."""
    from guidance.config import build

    shapes = REF["releases"][f"DiT-XL/2-{size}"]
    with torch.device("meta"):
        net = build(model_config("DiT-XL/2", size))
        state = {k: torch.empty(s) for k, s in shapes.items()}
    assert set(convert_state_dict(state, net)) == set(net.state_dict())
    dits = sum(torch.Size(s).numel() for s in shapes.values())
    assert sum(p.numel() for p in net.parameters()) + torch.Size(shapes["pos_embed"]).numel() == dits
    assert size != 256 or dits == 675_129_632


@pytest.mark.parametrize("name", ["dit_cfg", "sit_cfg"])
def test_presets_compose(name):
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[f"experiment={name}", "reference_npz=x.npz"], return_hydra_config=True)
    assert cfg.guidance._target_.endswith("ClassifierFreeGuidance") and cfg.sampler.clip_denoised is False
    assert cfg.hydra.sweeper.params["guidance.scale"] == "0,0.5"  # DiT's/SiT's scale 1.5 is w = 0.5
    assert cfg.unet_ckpt.endswith({"dit_cfg": "DiT-XL-2-256.pt", "sit_cfg": "SiT-XL-2-256.pt"}[name])
    if name == "sit_cfg":  # SiT's SDE sampler at its sample.py defaults (tests/test_sit.py)
        s = cfg.sampler
        assert s._target_.endswith("FlowSDESampler") and (s.respacing, s.t_min, s.last_step, s.diffusion_form,
                                                          s.diffusion_norm) == ("flow250", 0.04, "mean", "sigma", 1.0)


@torch.no_grad()
def test_time_embedding_runs_once_per_forward_and_pag_identity_attention():
    """TSG's hook point: DiT computes the time embedding once per forward (diffusers once per block): one hook
    call. PAG's identity attention: on a one-token DiT softmax over one key is already the identity (no change);
    on 16 tokens it changes the output; the processors are restored after."""
    net = network()
    calls = []
    handle = net.time_embed.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    out = net(REF["x"], REF["t"], REF["y"])
    handle.remove()
    assert len(calls) == 1 and calls[0] == (3, 32)
    torch.testing.assert_close(out, REF["out"], atol=ATOL, rtol=0)
    with net.identity_attention(["0", "1"]):
        assert (net(REF["x"], REF["t"], REF["y"]) - out).abs().max() > 100 * ATOL
    torch.testing.assert_close(net(REF["x"], REF["t"], REF["y"]), out, atol=0, rtol=0)
    torch.manual_seed(0)
    one = DiTNetwork(**{**ARCH, "image_size": 2}).eval()
    for p in one.parameters():
        p.copy_(torch.randn_like(p))
    x = torch.randn(2, 4, 2, 2)
    plain = one(x, torch.tensor([3, 900]), torch.tensor([0, 4]))
    with one.identity_attention(["1"]):
        torch.testing.assert_close(one(x, torch.tensor([3, 900]), torch.tensor([0, 4])), plain, atol=1e-4, rtol=1e-5)
    with pytest.raises(GuidanceError, match=r"no self-attention block \['7'\]"):
        with net.identity_attention(["7"]):
            pass


@torch.no_grad()
def test_tsg_and_pag_run_on_dit():
    """The toolkit's TSG (its paper's model is DiT) and PAG (on named blocks) guide a DiT: s = 0 is the model itself,
    s > 0 moves the prediction."""
    from guidance.guiders.pag import PerturbedAttentionGuidance
    from guidance.guiders.tsg import TimeStepGuidance
    from guidance.sampling.rng import PerImageRNG

    diffusion = create_diffusion(1000, "linear")
    step, x, y = Step(700, float(diffusion.alphas_cumprod[700]), 0, 1), REF["x"][:2], REF["y"][:2]
    base = model()(x, step, y).eps
    for guider, neutral in [(TimeStepGuidance(1.5, noise_scale=2.0), TimeStepGuidance(1.5, noise_scale=0.0)),
                            (PerturbedAttentionGuidance(1.0, blocks=["1"]), PerturbedAttentionGuidance(0.0, blocks=["1"]))]:
        preds = []
        for g in (guider, neutral):
            den = GuidedDenoiser(g, {"unet": model()})
            den.reset(2, PerImageRNG(0, range(2)))
            preds.append(den(x, y, step, clip=False).eps)
        torch.testing.assert_close(preds[1], base, atol=ATOL, rtol=0)
        assert (preds[0] - base).abs().max() > 100 * ATOL



@torch.no_grad()
def test_diffusers_folder_with_diffusers_conventions_and_a_foreign_tensor(tmp_path):
    """conventions=diffusers imports a folder as diffusers computes it (its module itself, per-block embedders
    kept); a weights file with a tensor DiT has not gets one line naming it."""
    from diffusers import DiTTransformer2DModel
    from safetensors.torch import save_file

    from guidance.checkpoint import load_snapshot

    torch.manual_seed(1)
    theirs = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                   num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=4).eval()
    for p in theirs.parameters():
        p.copy_(torch.randn_like(p) * 0.3)
    theirs.save_pretrained(tmp_path / "t")
    out = import_dit(tmp_path / "t", tmp_path / "d.pt", source="diffusers", conventions="diffusers")
    net, meta = load_snapshot(out, role="unet")
    assert meta["model_config"]["shared_embedding"] is False  # random per-block embedders: kept apart
    expected = theirs(REF["x"], timestep=REF["t"], class_labels=REF["y"]).sample
    torch.testing.assert_close(net(REF["x"], REF["t"], REF["y"]), expected, atol=1e-5 * float(expected.abs().max()),
                               rtol=0)
    state = dict(theirs.state_dict(), **{"down_blocks.0.resnets.0.conv1.weight": torch.zeros(3)})
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "t" / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(GuidanceError, match=r"tensor down_blocks\.0\.resnets\.0\.conv1\.weight has no place"):
        import_dit(tmp_path / "t", tmp_path / "d.pt", source="diffusers")


def test_release_of_the_other_family_is_refused(tmp_path):
    torch.save(REF["state_dict"], tmp_path / "a.pt")
    with pytest.raises(GuidanceError, match="release=SiT-XL/2 is not a DiT model but source=dit"):
        import_dit(tmp_path / "a.pt", tmp_path / "o.pt", source="dit", model="SiT-XL/2")
