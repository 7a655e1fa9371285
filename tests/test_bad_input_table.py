"""Every bad input and fault named in issue 11 (and more), each run here, and the one line it gets: the table in
docs/bad_input.md is this test's output. Regenerate it with GUIDANCE_WRITE_DOCS=1 pytest tests/test_bad_input_table.py;
otherwise the test fails when the docs and the behaviour disagree."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from guidance.config import CONF_DIR
from guidance.errors import GuidanceError
from guidance.nn import EncoderClassifier, UNet
from guidance.checkpoint import save_snapshot

DOC = Path(__file__).resolve().parents[1] / "docs" / "bad_input.md"
SIZE, K = 8, 3
DIFFUSION = {"_target_": "guidance.diffusion.create_diffusion", "steps": 40, "noise_schedule": "linear",
             "model_var_type": "fixed_small", "loss_type": "mse", "timestep_respacing": ""}
UNET = {"_target_": "guidance.nn.UNet", "image_size": SIZE, "in_channels": 1, "model_channels": 8, "out_channels": 1,
        "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 2], "num_classes": K}
CLF = {"_target_": "guidance.nn.EncoderClassifier", "image_size": SIZE, "in_channels": 1, "model_channels": 8,
       "num_classes": K, "num_res_blocks": 1, "attention_resolutions": [], "channel_mult": [1, 2], "pool": "adaptive"}
DATA = lambda name: {"name": name, "path": None, "image_size": SIZE, "channels": 1, "num_classes": K}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    torch.manual_seed(0)
    kw = lambda c: {k: v for k, v in c.items() if k != "_target_"}
    save_snapshot(d / "unet.pt", "unet", UNet(**kw(UNET)), UNET, 1, diffusion_config=DIFFUSION,
                  data_config=DATA("fashion_mnist"))
    save_snapshot(d / "clf.pt", "classifier", EncoderClassifier(**kw(CLF)), CLF, 1, data_config=DATA("fashion_mnist"))
    save_snapshot(d / "mnist_clf.pt", "classifier", EncoderClassifier(**kw(CLF)), CLF, 1, data_config=DATA("mnist"))
    (d / "truncated.pt").write_bytes((d / "unet.pt").read_bytes()[:2000])
    (d / "blocker").write_text("a regular file")
    np.savez(d / "empty.npz", arr_0=np.zeros((0, SIZE, SIZE, 1), np.uint8))
    np.savez(d / "nchw.npz", arr_0=np.zeros((4, 1, SIZE, SIZE), np.uint8))
    np.savez(d / "float_labels.npz", arr_0=np.zeros((4, SIZE, SIZE, 1), np.uint8), arr_1=np.full(4, 0.5))
    np.savez(d / "unlabelled.npz", arr_0=np.zeros((4, SIZE, SIZE, 1), np.uint8))
    (d / "empty_root").mkdir()
    np.savez(d / "odd.npz", arr_0=np.zeros((16, 30, 30, 1), np.uint8), arr_1=np.arange(16) % 10)
    return d


def sample(world, *overrides, clf="clf.pt"):
    from guidance.sampling.point import run_sample

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[f"unet_ckpt={world / 'unet.pt'}", f"classifier_ckpt={world / clf}",
                                           "logger=none", "num_samples=4", "batch_size=4", "sampler.respacing=2",
                                           *overrides])
    run_sample(cfg, world / "out")


def evaluate(world, npz, **metrics):
    from guidance.metrics.evaluate import evaluate_folder

    evaluate_folder(world / npz, {"extractor": "evaluator", "evaluator_checkpoint": str(world / "none.pt"), **metrics},
                    {"name": "fashion_mnist", "image_size": SIZE, "channels": 1, "num_classes": K})


def train(world, *overrides):
    from guidance.training.loop import train as run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["experiment=debug", "logger=none", f"out_dir={world / 'train'}", *overrides])
    run(cfg, world / "train")


def second_writer(world):
    from guidance.io import exclusive_writer

    with exclusive_writer(world / "out"):  # as a running guidance-sample holds it
        sample(world)


def mid_write(world):
    """A sample folder between a new run's samples.npz and its sample_info.json (killed there, or still running)."""
    from guidance.io import atomic_save_npz
    from guidance.sampling.generate import save_samples

    save_samples(world / "window", torch.zeros(16, 1, SIZE, SIZE, dtype=torch.uint8), torch.zeros(16, dtype=torch.long),
                 {"num_samples": 16})
    atomic_save_npz(world / "window" / "samples.npz", arr_0=np.ones((24, SIZE, SIZE, 1), np.uint8),
                    arr_1=np.zeros(24, np.int64))
    evaluate(world, "window")


def full_disk(world):
    from guidance.io import _atomic_write

    def write(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    _atomic_write(world / "metrics.json", write, mode="w")


def app(name, *argv, **patches):
    """An app's check of its command line (guidance.apps.common.preflight), as `guidance-<name> argv` runs it."""
    from guidance.apps.common import preflight

    check = None
    if name == "train":
        from guidance.apps.train import _check as check
    with pytest.MonkeyPatch.context() as mp:
        for target, value in patches.items():  # "shutil.which": what the machine would answer
            module, attr = target.rsplit(".", 1)
            mp.setattr(__import__(module, fromlist=["x"]), attr, value)
        preflight(name, list(argv), check)


def main_study(world, *overrides):
    from guidance.study import run_study

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("main", overrides=["study=debug", "logger=none", *overrides])
    run_study(cfg, world / "study", None)


def train_evaluator(world, *overrides):
    from guidance.training.evaluator import train_evaluator as run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train_evaluator", overrides=["logger=none", f"out_dir={world / 'ev'}", *overrides])
    run(cfg)


def torch_save_full_disk(world):
    from guidance.io import atomic_torch_save

    with pytest.MonkeyPatch.context() as mp:  # what torch's zip writer raises on a short write (ENOSPC, EFBIG)
        mp.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(
            RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")))
        atomic_torch_save({}, world / "state.pt")


def resumed_with_another_architecture(world):
    """guidance-train into a run folder whose state.pt holds another architecture: refused before Hydra writes
    the run's .hydra/config.yaml (issue 23: the rejected settings overwrote it)."""
    from guidance.checkpoint import save_training_state
    from guidance.training.loop import planned_arch

    run = world / "arch_run"
    argv = ["experiment=debug", "logger=none", f"out_dir={run}", "training.train_classifier=false"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        arch = planned_arch(compose("train", overrides=argv))
    save_training_state(run / "checkpoints" / "state.pt", {"step": 1, "models": {}, "arch": arch})
    app("train", *argv, "model.model_channels=16")


def import_wrong_file(world, importer, wrong):
    """An importer given a file of another model (issue 20): the one line names the first tensor that does not fit.
    wrong: "adm" (an ADM-style U-Net state dict: the toolkit's), "dit" (DiT's tiny reference), "edm2" (EDM2's)."""
    data = Path(__file__).parent / "data"
    path = world / f"{wrong}_state.pt"
    if wrong == "adm":
        torch.save(UNet(**{k: v for k, v in UNET.items() if k != "_target_"}).state_dict(), path)
    else:
        ref = torch.load(data / f"{wrong}_tiny_reference.pt", weights_only=True)
        torch.save(ref["state_dict"] if wrong == "dit" else ref["uncond_state"], path)
    if importer == "adm":
        from guidance.adm.importer import import_adm

        import_adm(path, "64x64_diffusion", world / "imported.pt")  # checked on the meta device: no weights made
    elif importer == "diffusers":
        from guidance.dit.importer import import_dit

        folder = world / "sd_unet" / "unet"  # a Stable Diffusion U-Net folder where a DiT folder belongs
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text('{"_class_name": "UNet2DConditionModel", "sample_size": 64}')
        import_dit(folder, world / "imported.pt", source="diffusers")
    elif importer == "edm2":
        from guidance.edm2 import import_edm2

        import_edm2(path, world / "imported.pt")
    else:
        from guidance.dit.importer import import_dit

        import_dit(path, world / "imported.pt", source=importer)  # DiT-XL/2 / SiT-XL/2, checked on the meta device


CASES = [  # (what, input, call)
    ("sampling", "`seed=-3`", lambda w: sample(w, "seed=-3")),
    ("sampling", "`guidance.scale=nan`", lambda w: sample(w, "guidance=cfg", "guidance.scale=nan")),
    ("sampling", "`guidance.scale=-1` (classifier)", lambda w: sample(w, "guidance=classifier", "guidance.scale=-1")),
    ("sampling", "classifier guidance, `classifier_ckpt=null`", lambda w: sample(w, "guidance=classifier",
                                                                                 "classifier_ckpt=null")),
    ("sampling", "a classifier trained on MNIST for a Fashion-MNIST U-Net",
     lambda w: sample(w, "guidance=classifier", clf="mnist_clf.pt")),
    ("sampling", "`guidance=cfgpp sampler=heun`", lambda w: sample(w, "guidance=cfgpp", "sampler=heun")),
    ("sampling", "`guidance=autoguidance` without `weak_ckpt`", lambda w: sample(w, "guidance=autoguidance")),
    ("sampling", "`sampler.eta=2`", lambda w: sample(w, "sampler=ddim", "sampler.eta=2")),
    ("sampling", "`precision=half`", lambda w: sample(w, "precision=half")),
    ("sampling", "`guidance=apg guidance.eta=2`", lambda w: sample(w, "guidance=apg", "guidance.eta=2")),
    ("sampling", "`guidance=apg guidance.momentum=1`", lambda w: sample(w, "guidance=apg", "guidance.momentum=1")),
    ("sampling", "`guidance=cfg_zero guidance.zero_steps=2` on a 2-step chain",
     lambda w: sample(w, "guidance=cfg_zero", "guidance.zero_steps=2")),
    ("sampling", "`guidance=cfg_interval guidance.sigma_lo=500 guidance.sigma_hi=600` (no step inside)",
     lambda w: sample(w, "guidance=cfg_interval", "guidance.sigma_lo=500", "guidance.sigma_hi=600")),
    ("sampling", "`sampler=euler sampler.s_churn=10 sampler.s_tmin=500 sampler.s_tmax=600` (no step inside)",
     lambda w: sample(w, "sampler=euler", "sampler.s_churn=10", "sampler.s_tmin=500", "sampler.s_tmax=600")),
    ("sampling", "`sampler.respacing=edm5000` on 1000 trained timesteps",
     lambda w: __import__("guidance.sampling", fromlist=["x"]).EulerSampler(
         __import__("guidance.diffusion", fromlist=["x"]).create_diffusion(steps=1000), "edm5000")),
    ("sampling", "`compile=1`", lambda w: sample(w, "compile=1")),
    ("sampling", "`unet_ckpt` truncated", lambda w: sample(w, f"unet_ckpt={w / 'truncated.pt'}")),
    ("sampling", "a second run in a point folder being written (one `hydra.run.dir`)", second_writer),
    ("evaluation", "an npz with no images", lambda w: evaluate(w, "empty.npz")),
    ("evaluation", "an NCHW npz", lambda w: evaluate(w, "nchw.npz")),
    ("evaluation", "float labels in `arr_1`", lambda w: evaluate(w, "float_labels.npz")),
    ("evaluation", "`metrics.compute=[sfid]` with `metrics.extractor=dinov2`",
     lambda w: evaluate(w, "nchw.npz", extractor="dinov2", compute=["sfid"])),
    ("evaluation", "`metrics.compute=[fd]` (unknown metric)", lambda w: evaluate(w, "nchw.npz", compute=["fd"])),
    ("evaluation", "`metrics.compute=[]`", lambda w: evaluate(w, "nchw.npz", compute=[])),
    ("evaluation", "`metrics.compute=[class_acc]` on unlabelled samples",
     lambda w: evaluate(w, "unlabelled.npz", compute=["class_acc"])),
    ("evaluation", "a sample folder between a new `samples.npz` and its `sample_info.json`", mid_write),
    ("training", "`training.seed=-1`", lambda w: train(w, "training.seed=-1")),
    ("training", "`training.unet_lr=-0.001`", lambda w: train(w, "training.unet_lr=-0.001")),
    ("training", "`training.batch_size=12.5`", lambda w: train(w, "training.batch_size=12.5")),
    ("data", "`data.root=<an empty folder>`", lambda w: __import__("guidance.data", fromlist=["x"]).load_images(
        "fashion_mnist", "train", root=w / "empty_root")),
    ("files", "an output path under a regular file", lambda w: __import__("guidance.io", fromlist=["x"])
     .atomic_write_json({}, w / "blocker" / "metrics.json")),
    ("files", "a full disk while writing a result", full_disk),
    # issue 23: tracebacks, Hydra's multi-line messages and wrong hints, now one line before any work
    ("files", "a full disk inside `torch.save`", torch_save_full_disk),
    ("files", "a full disk before Hydra writes its config (any app)", lambda w: app(
        "sample", f"hydra.run.dir={w / 'full_disk_out'}", **{"shutil.disk_usage": lambda p: __import__("shutil")._ntuple_diskusage(
            10**9, 10**9 - 4096, 4096)})),
    ("files", "`hydra.run.dir` under a regular file (guidance-sample)", lambda w: app(
        "sample", f"hydra.run.dir={w / 'blocker' / 'x'}")),
    ("files", "`out_dir` under a regular file (guidance-train)", lambda w: app(
        "train", f"out_dir={w / 'blocker' / 'x'}")),
    ("files", "`out_dir` under a regular file (guidance-main)", lambda w: app(
        "main", f"out_dir={w / 'blocker' / 'x'}")),
    ("config", "`guidance=nope` (an unknown option of a config group)", lambda w: app("sample", "guidance=nope")),
    ("config", "`guidance=none guidance.scale=2`", lambda w: app("sample", "guidance=none", "guidance.scale=2")),
    ("config", "`num_sample=8` (a misspelt option)", lambda w: app("sample", "num_sample=8")),
    ("config", "`guidance-import-adm` without its options", lambda w: app("import_adm")),
    ("config", "`-m hydra/launcher=submitit_slurm` without SLURM", lambda w: app(
        "sample", "-m", "hydra/launcher=submitit_slurm", "guidance.scale=1,2", f"hydra.sweep.dir={w / 'sw'}",
        **{"shutil.which": lambda name: None})),
    ("sampling", "`batch_size=2.5`", lambda w: sample(w, "batch_size=2.5")),
    ("sampling", "`guidance=autoguidance weak_ckpt=<a classifier>` (the hint names weak_ckpt)",
     lambda w: sample(w, "guidance=autoguidance", f"weak_ckpt={w / 'clf.pt'}")),
    ("sampling", "`+num_steps=10` (an option sampling does not have)", lambda w: sample(w, "+num_steps=10")),
    ("sampling", "`unet_model={_target_: ...}` without `sample_shape`",
     lambda w: sample(w, "+unet_model._target_=mymodel.build")),
    ("sampling", "`unet_model` whose `_target_` returns a bare network, not a DenoisingModel",
     lambda w: sample(w, "+unet_model._target_=torch.nn.Identity", "sample_shape=[1,8,8]")),
    ("evaluation", "`metrics.k_prc=0`", lambda w: evaluate(w, "nchw.npz", k_prc=0)),
    ("evaluation", "`metrics.batch_size=abc`", lambda w: evaluate(w, "nchw.npz", batch_size="abc")),
    ("training", "a run folder whose state holds another architecture", resumed_with_another_architecture),
    ("training", "`data=npz` of 30x30 images (the U-Net halves the size twice)", lambda w: train(
        w, "data=npz", f"data.path={w / 'odd.npz'}", "data.image_size=30", "data.channels=1")),
    ("sampling", "`sampler.respacing=ddim5000` on a 40-step model", lambda w: sample(w, "sampler=ddim",
                                                                                      "sampler.respacing=ddim5000")),
    ("evaluator", "`lr=-0.001` (guidance-train-evaluator)", lambda w: train_evaluator(w, "lr=-0.001")),
    ("evaluator", "`batch_size=64.5` (guidance-train-evaluator)", lambda w: train_evaluator(w, "batch_size=64.5")),
    ("evaluator", "`out_dir` under a regular file (guidance-train-evaluator)", lambda w: train_evaluator(
        w, f"out_dir={w / 'blocker' / 'ev'}")),
    ("main", "`study.num_samples=0`", lambda w: main_study(w, "study.num_samples=0")),
    ("main", "`study.sweep=[]`", lambda w: main_study(w, "study.sweep=[]")),
    ("import", "a DiT `.pt` to `guidance-import-edm2`", lambda w: import_wrong_file(w, "edm2", "dit")),
    ("import", "an ADM U-Net `.pt` to `guidance-import-dit`", lambda w: import_wrong_file(w, "dit", "adm")),
    ("import", "an EDM2 `.pt` to `guidance-import-dit source=sit`", lambda w: import_wrong_file(w, "sit", "edm2")),
    ("import", "a DiT `.pt` to `guidance-import-adm release=64x64_diffusion`",
     lambda w: import_wrong_file(w, "adm", "dit")),
    ("import", "a Stable Diffusion U-Net folder to `guidance-import-dit source=diffusers`",
     lambda w: import_wrong_file(w, "diffusers", "dit")),
]


def run_cases(world) -> list[tuple[str, str, str]]:
    rows = []
    for what, given, call in CASES:
        with pytest.raises(GuidanceError) as e:
            call(world)
        line = str(e.value)
        assert "\n" not in line, (given, line)
        line = re.sub(r"\(host [^)]*, pid \d+, since [^)]*\)", "(host H, pid P, since T)", line)  # varies per run
        rows.append((what, given, re.sub(re.escape(str(world)), "<dir>", line)))
    return rows


def table(rows) -> str:
    out = ["# Bad input and faults: the one line each gets", "",
           "Generated by `tests/test_bad_input_table.py` (which runs every case; `GUIDANCE_WRITE_DOCS=1` rewrites this",
           "file). Every app prints the line as `error: <line>` and exits with status 2; nothing half-written is left.",
           "", "| where | input | the line |", "|---|---|---|"]
    pipe = "\\|"
    out += [f"| {w} | {g} | {line.replace('|', pipe)} |" for w, g, line in rows]
    return "\n".join(out) + "\n"


def test_every_bad_input_gets_one_line_and_the_docs_table_is_current(world, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(world / "hub"))  # offline: no DINOv2 weights cached
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    text = table(run_cases(world))
    if os.environ.get("GUIDANCE_WRITE_DOCS"):
        DOC.write_text(text)
    assert DOC.is_file() and DOC.read_text() == text, "docs/bad_input.md is stale: rerun with GUIDANCE_WRITE_DOCS=1"
