"""Issue 20 (EDM2): the restated network equals NVlabs/edm2's own module, and its files import safely.

tests/data/edm2_tiny_reference.pt and edm2_tiny_network.pkl were written by edm2's own code
(tests/data/make_edm2_reference.py, edm2 4bf8162): two tiny random-weight Precond networks, their outputs at
σ from 0.002 to 80, a guided chain of edm2's generate_images.edm_sampler, and a network pickle exactly as edm2's
training loop writes one (persistent classes with their source embedded)."""

from __future__ import annotations

import collections
import math
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from guidance.edm2 import (ARCHITECTURES, GENERATION_PRESETS, STABILITY_VAE, architecture, denoising_model,
                           import_edm2, infer_config, load_edm2_snapshot, parse_file_name, read_edm2_file)
from guidance.edm2.releases import PARAMETERS
from guidance.engine.prediction import Step
from guidance.errors import GuidanceError
from guidance.nn.edm2 import EDM2Denoiser

DATA = Path(__file__).parent / "data"
REF = torch.load(DATA / "edm2_tiny_reference.pt", weights_only=True)
PKL = DATA / "edm2_tiny_network.pkl"


def net(kind: str) -> EDM2Denoiser:
    n = EDM2Denoiser(**REF[f"{kind}_config"]).eval()
    n.load_state_dict(REF[f"{kind}_state"])
    return n


# --- the network ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cond", "uncond"])
def test_equals_edm2_precond_on_random_weights(kind):
    """D(x; σ) of edm2's Precond (σ from 0.002 to 80, four classes / unconditional) with edm2's state dict loaded
    into ours: float tolerance (the reference's own code made the outputs)."""
    labels = REF["labels"] if kind == "cond" else None
    with torch.no_grad():
        d = net(kind)(REF["x"], REF["sigma"], labels)
    torch.testing.assert_close(d, REF[f"d_{kind}"], rtol=1e-5, atol=2e-5)
    assert (d - REF["x"]).abs().max() > 0.1  # the U-Net branch matters (random gains, not edm2's zero init)


def test_labels_indices_onehot_and_refusals():
    cond, uncond = net("cond"), net("uncond")
    x, s, y = REF["x"], REF["sigma"], REF["labels"]
    with torch.no_grad():
        torch.testing.assert_close(cond(x, s, y), cond(x, s, torch.eye(4)[y]))  # edm2's one-hot rows accepted
        assert not torch.allclose(cond(x, s, y), cond(x, s, (y + 1) % 4))      # and the class matters
        torch.testing.assert_close(uncond(x, s, y), uncond(x, s))               # unconditional: labels ignored
        with pytest.raises(GuidanceError, match="no unconditional mode"):
            cond(x, s, None)
        with pytest.raises(GuidanceError, match="0..3"):
            cond(x, s, torch.full_like(y, 4))  # the toolkit's null label: EDM2 has none
        with pytest.raises(GuidanceError, match=r"\[N, 4, 16, 16\]"):
            cond(x[:, :3], s, y)
    with pytest.raises(GuidanceError, match="attn_resolutions"):
        EDM2Denoiser(16, 4, 0, model_channels=8, channel_mult=[1, 2], attn_resolutions=[32])


def test_engine_model_and_edm2_guided_chain():
    """The adapter: x̂0 = D(x̃; σ) at x̃ = x_t sqrt(1 + σ²); a conditional EDM2 network's null label is untrained.
    Then the whole chain: the toolkit's edm2_heun + autoguidance (w = guidance − 1) with the unconditional network
    as the guiding one equals edm2's generate_images.edm_sampler(net, gnet=..., guidance=1.7) on the same noise."""
    from guidance.engine.model import ContinuousLevels
    from guidance.guiders.autoguidance import Autoguidance
    from guidance.sampling import EDM2HeunSampler, GuidedDenoiser

    cond, uncond = denoising_model(net("cond")), denoising_model(net("uncond"))
    assert (cond.null_label, cond.null_trained, uncond.null_label) == (4, False, None)
    assert cond.levels == ContinuousLevels(0.002, 80) and cond.parameterization == "edm"
    step, sigma = Step.at_sigma(7.0), 7.0
    x_t = REF["x"][:2] / math.sqrt(1 + sigma ** 2)
    with torch.no_grad():
        pred = cond(x_t, step, REF["labels"][:2])
        torch.testing.assert_close(pred.x0, cond.network(REF["x"][:2], torch.full((2,), sigma), REF["labels"][:2]))

    c = REF["chain"]

    class Noise:  # edm2's per-seed noise, drawn once by the reference script
        def __len__(self):
            return len(c["noise"])

        def randn(self, shape):
            return c["noise"].clone()

    sampler = EDM2HeunSampler(ContinuousLevels(c["sigma_min"], c["sigma_max"]), f"edm{c['num_steps']}")
    den = GuidedDenoiser(Autoguidance(scale=c["guidance"] - 1), {"unet": cond, "weak": uncond})
    out = sampler.sample(den, tuple(c["noise"].shape), c["labels"], Noise())
    torch.testing.assert_close(out, c["out"], rtol=1e-4, atol=1e-3)  # 8 guided passes in fp32, |x| up to 24


# --- the files -----------------------------------------------------------------------------------------------

def test_reads_edm2_pickle_written_by_edm2():
    f = read_edm2_file(PKL)
    assert f.kind == "pickle" and f.key == "ema"
    assert f.config == REF["cond_config"]  # persistence's recorded constructor arguments
    assert f.state.keys() == REF["cond_state"].keys()
    assert all(torch.equal(f.state[k], REF["cond_state"][k]) for k in f.state)
    # edm2's StabilityVAEEncoder as pickled equals the table's restated constants (float32 arithmetic)
    assert f.encoder["vae_name"] == STABILITY_VAE["vae_name"]
    assert f.encoder["scale"] == STABILITY_VAE["scale"] and f.encoder["bias"] == STABILITY_VAE["bias"]
    inferred = infer_config(REF["cond_state"], "ref")  # without the recorded arguments: off the shapes
    assert inferred == {**REF["cond_config"], "channels_per_head": 32}  # one head per attention block (32 wide)


class _Planted:
    """Pickles as edm2's persistence does: a call of torch_utils.persistence._reconstruct_persistent_obj(meta)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,)


def _planted_tree(module: torch.nn.Module, src: str, init_kwargs=None):
    def state_of(m):
        children = {}
        for name, child in m._modules.items():
            if isinstance(child, torch.nn.ModuleDict):  # pickled as edm2's ModuleDicts are: torch's own class
                md = torch.nn.ModuleDict.__new__(torch.nn.ModuleDict)
                md.__dict__.update(training=False, _parameters=collections.OrderedDict(),
                                   _buffers=collections.OrderedDict(), _non_persistent_buffers_set=set(),
                                   _modules={k: planted(v) for k, v in child.items()})
                children[name] = md
            else:
                children[name] = planted(child)
        return {"training": False, "_parameters": collections.OrderedDict(m._parameters),
                "_buffers": collections.OrderedDict(m._buffers), "_non_persistent_buffers_set": set(),
                "_modules": children}

    def planted(m, kwargs=None):
        state = state_of(m)
        if kwargs is not None:
            state.update(_init_args=(), _init_kwargs=kwargs)
        return _Planted({"type": "class", "version": 6, "module_src": src, "class_name": type(m).__name__,
                         "state": state})

    return planted(module, init_kwargs)


def test_planted_code_never_runs(tmp_path, monkeypatch):
    """A pickle laid out as edm2 writes it, whose embedded module source writes a marker file and raises. Loaded the
    way edm2 loads it (persistence exec's module_src) the code runs — the control; our reader gets the tensors and
    the marker never appears."""
    marker = tmp_path / "planted_code_ran"
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nraise RuntimeError('planted')\n"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # edm2's behaviour: run the embedded module source
        exec(compile(meta["module_src"], "<pickled module>", "exec"), {})

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    model = net("cond").half()
    model.__class__ = type("Precond", (EDM2Denoiser,), {})
    enc = _Planted({"type": "class", "version": 6, "module_src": src, "class_name": "StabilityVAEEncoder",
                    "state": {"vae_name": "stabilityai/sd-vae-ft-mse", "_vae": None, "batch_size": 8,
                              "scale": np.float32(0.5) / np.float32([4.17, 4.62, 3.71, 3.28]),
                              "bias": np.float32([0.1, 0.2, 0.3, 0.4])}})
    data = {"ema": _planted_tree(model, src, dict(REF["cond_config"])), "encoder": enc}
    path = tmp_path / "edm2-planted.pkl"
    path.write_bytes(pickle.dumps(data))

    with pytest.raises(RuntimeError, match="planted"):  # the control: edm2's way of loading runs it
        pickle.loads(path.read_bytes())
    assert marker.exists()
    marker.unlink()
    monkeypatch.delitem(sys.modules, "torch_utils.persistence")  # our reader needs nothing of edm2's

    f = read_edm2_file(path)
    assert not marker.exists()
    assert all(torch.equal(f.state[k], REF["cond_state"][k]) for k in REF["cond_state"])
    assert f.encoder["bias"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    out = import_edm2(path, tmp_path / "snap.pt")
    assert not marker.exists()
    model, meta = load_edm2_snapshot(out)
    with torch.no_grad():
        torch.testing.assert_close(model.network(REF["x"], REF["sigma"], REF["labels"]), REF["d_cond"],
                                   rtol=1e-5, atol=2e-5)


class _Evil:
    def __reduce__(self):
        return os.system, ("echo should-not-run",)


def test_refuses_any_other_global(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"ema": _Evil()}))
    with pytest.raises(GuidanceError, match=r"references (posix|nt|os)\.system.*nothing in it was executed"):
        read_edm2_file(path)


def test_import_snapshot_records_origin_and_conditioning(tmp_path):
    out = import_edm2(PKL, tmp_path / "edm2.pt")
    model, meta = load_edm2_snapshot(out)
    extra = meta["extra"]
    assert meta["model_config"]["_target_"] == "guidance.nn.edm2.EDM2Denoiser"
    assert extra["edm2"]["origin"] == PKL.name and extra["edm2"]["weights_dtype"] == "float16"
    assert len(extra["source_sha256"]) == 64 and extra["parameterization"] == "edm"
    assert extra["denoising_model"] == {"parameterization": "edm", "noise_input": "sigma", "null_label": 4,
                                        "null_trained": False, "levels": {
                                            "_target_": "guidance.engine.model.ContinuousLevels",
                                            "sigma_min": 0.002, "sigma_max": 80.0}}
    assert extra["class_conditional"] and extra["null_class_trained"] is False
    assert extra["latent"]["scale"] == STABILITY_VAE["scale"]
    assert meta["diffusion_config"]["_target_"] == "guidance.engine.model.ContinuousLevels"
    assert model.null_label == 4 and not model.null_trained


def test_state_dict_file_and_wrong_files(tmp_path):
    """A .pt state dict imports (config read off the shapes); another model's file names its first foreign tensor;
    a declared architecture the file is not is refused."""
    pt = tmp_path / "uncond.pt"
    torch.save(REF["uncond_state"], pt)
    cfg = dict(REF["uncond_config"])
    model, meta = load_edm2_snapshot(import_edm2(pt, tmp_path / "u.pt", architecture=None))
    assert meta["extra"]["edm2"]["kind"] == "state_dict" and meta["extra"]["null_class_trained"] is None
    blocks = [b for b in model.network.modules() if getattr(b, "num_heads", 0)]
    assert blocks and all(b.num_heads == 1 for b in blocks)  # the shapes cannot show heads: one per block
    for b in blocks:
        b.num_heads = b.out_channels // cfg["channels_per_head"]  # this tiny network's (edm2 4bf8162's made it)
    with torch.no_grad():
        torch.testing.assert_close(model.network(REF["x"], REF["sigma"]), REF["d_uncond"], rtol=1e-5, atol=2e-5)

    from guidance.nn import UNet
    adm = UNet(8, 3, 16, 3, 1, channel_mult=[1, 2], num_classes=4)
    torch.save(adm.state_dict(), tmp_path / "adm.pt")
    with pytest.raises(GuidanceError, match=r"tensor time_embed\.0\.weight \[64, 16\] has no place in an EDM2"):
        import_edm2(tmp_path / "adm.pt", tmp_path / "x.pt")
    torch.save({"x_embedder.proj.weight": torch.zeros(8, 4, 2, 2), "pos_embed": torch.zeros(1, 4, 8)},
               tmp_path / "dit.pt")
    with pytest.raises(GuidanceError, match=r"tensor x_embedder\.proj\.weight \[8, 4, 2, 2\] has no place"):
        import_edm2(tmp_path / "dit.pt", tmp_path / "x.pt")
    state = dict(REF["uncond_state"])
    state["unet.out_conv.weight"] = torch.zeros(4, 9, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(GuidanceError, match=r"unet\.out_conv\.weight is \[4, 9, 3, 3\] but the network needs"):
        import_edm2(tmp_path / "bad.pt", tmp_path / "x.pt")
    with pytest.raises(GuidanceError, match="is not edm2-img512-xs"):
        import_edm2(PKL, tmp_path / "x.pt", architecture="edm2-img512-xs")
    with pytest.raises(GuidanceError, match="does not exist"):
        import_edm2(tmp_path / "missing.pkl", tmp_path / "x.pt")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(GuidanceError, match="not a readable EDM2 pickle"):
        import_edm2(tmp_path / "junk.pkl", tmp_path / "x.pt")


# --- the release tables --------------------------------------------------------------------------------------

def test_release_table_parameter_counts_match_config_and_paper():
    """Each table count is the count of the network its config builds (meta device: no memory), and the img512
    conditional ones round to EDM2's Table 2 (125M, 280M, 498M, 777M, 1119M, 1523M)."""
    for (ds, size, cond), count in PARAMETERS.items():
        arch = architecture(f"edm2-{ds}-{size}" + ("" if cond else "-uncond"))
        cfg = {k: v for k, v in arch.model.items() if k != "_target_"}
        with torch.device("meta"):
            n = EDM2Denoiser(**cfg)
        assert sum(p.numel() for p in n.parameters()) == count == arch.parameters
    paper = {"xs": 125, "s": 280, "m": 498, "l": 777, "xl": 1119, "xxl": 1523}
    assert {s: round(PARAMETERS[("img512", s, True)] / 1e6) for s in paper} == paper


def test_generation_presets_name_known_files():
    for p in GENERATION_PRESETS.values():
        for f in filter(None, (p.net, p.gnet)):
            parsed = parse_file_name(f)
            assert parsed and parsed["architecture"] in ARCHITECTURES, f
    assert GENERATION_PRESETS["edm2-img512-xxl-autog-fid"].kind == "autoguidance"
    assert GENERATION_PRESETS["edm2-img512-s-guid-fid"].kind == "cfg"
    assert parse_file_name("edm2-img512-xs-uncond-2147483-0.045.pkl") == {
        "architecture": "edm2-img512-xs-uncond", "kimg": 2147483, "ema_std": 0.045}
    with pytest.raises(GuidanceError, match="unknown"):
        architecture("edm2-img256-s")


def test_import_app(tmp_path):
    """guidance-import-edm2: the pickle -> a snapshot; another model's file -> one line naming its first tensor."""
    import subprocess

    from guidance.nn import UNet
    torch.save(UNet(8, 3, 16, 3, 1, channel_mult=[1, 2], num_classes=4).state_dict(), tmp_path / "adm.pt")
    run = lambda *a: subprocess.run([sys.executable, "-m", "guidance.apps.import_edm2", *a], capture_output=True,
                                    text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(DATA.parents[1])})
    ok = run(f"checkpoint={PKL}", "out=snap.pt")
    assert ok.returncode == 0, ok.stderr
    assert "nothing in the file executed" in ok.stdout and (tmp_path / "snap.pt").is_file()
    bad = run("checkpoint=adm.pt")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode != 0 and len(lines) == 1 and "tensor time_embed.0.weight" in lines[0], bad.stderr


def test_pag_identity_attention_on_edm2():
    """PAG's perturbed pass: attention output = v in the named blocks (here by hand: the block's attend() with
    softmax replaced by the identity), restored afterwards; PAG through the guided denoiser runs on EDM2."""
    from guidance.guiders.pag import PerturbedAttentionGuidance
    from guidance.sampling import GuidedDenoiser

    n = net("cond")
    assert list(n.attention_layers()) == ["enc.8x8_block0", "dec.8x8_in0", "dec.8x8_block0", "dec.8x8_block1"]
    block = n.unet.dec["8x8_in0"]
    h = torch.randn(2, 32, 8, 8)
    qkv = block.attn_qkv(h).reshape(2, block.num_heads, 32 // block.num_heads, 3, 64)
    v = qkv[:, :, :, 2] / (torch.linalg.vector_norm(qkv[:, :, :, 2], dim=2, keepdim=True)
                           / math.sqrt(32 // block.num_heads) + 1e-4)
    with torch.no_grad(), n.identity_attention(["dec.8x8_in0"]):
        torch.testing.assert_close(block.attend(h), block.attn_proj(v.reshape(2, 32, 8, 8)))
        perturbed = n(REF["x"], REF["sigma"], REF["labels"])
    assert not block.identity_attention
    with torch.no_grad():
        assert (perturbed - n(REF["x"], REF["sigma"], REF["labels"])).abs().max() > 1e-3
    with pytest.raises(GuidanceError, match="no self-attention block"):
        with n.identity_attention(["middle"]):
            pass
    model = denoising_model(n)
    den = GuidedDenoiser(PerturbedAttentionGuidance(scale=1.0, blocks=["dec.8x8_in0"]), {"unet": model})
    step = Step.at_sigma(1.0)
    x_t = REF["x"][:2] / math.sqrt(2)
    den.reset(2, None)
    out = den(x_t, REF["labels"][:2], step)
    with torch.no_grad():
        plain = model(x_t, step, REF["labels"][:2]).eps
        with n.identity_attention(["dec.8x8_in0"]):
            pert = model(x_t, step, REF["labels"][:2]).eps
    torch.testing.assert_close(out.eps, 2 * plain - pert, rtol=1e-5, atol=1e-5)
