"""guidance-sample end to end on tiny random snapshots: a 2 x 2 sweep as a subprocess, resume, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from guidance.config import CONF_DIR
from guidance.errors import GuidanceError
from guidance.nn import EncoderClassifier, UNet
from guidance.checkpoint import save_snapshot

REPO = Path(__file__).resolve().parents[1]
SIZE, CH, K = 8, 1, 3
DIFFUSION = {"_target_": "guidance.diffusion.create_diffusion", "steps": 40, "noise_schedule": "linear",
             "model_var_type": "learned_range", "loss_type": "hybrid", "timestep_respacing": ""}


def unet_config(num_classes=K):
    return {"_target_": "guidance.nn.UNet", "image_size": SIZE, "in_channels": CH, "model_channels": 8,
            "out_channels": CH, "num_res_blocks": 1, "attention_resolutions": [], "dropout": 0.0,
            "channel_mult": [1, 2], "num_classes": num_classes, "num_heads": 1, "num_head_channels": -1,
            "use_scale_shift_norm": True, "resblock_updown": False, "learn_sigma": True}


def classifier_config(num_classes=K, image_size=SIZE):
    return {"_target_": "guidance.nn.EncoderClassifier", "image_size": image_size, "in_channels": CH,
            "model_channels": 8, "num_classes": num_classes, "num_res_blocks": 1, "attention_resolutions": [],
            "channel_mult": [1, 2], "pool": "adaptive"}


def save(path, role, cfg, step=7):
    torch.manual_seed(0)
    cls = UNet if role == "unet" else EncoderClassifier
    kwargs = {k: v for k, v in cfg.items() if k != "_target_"}
    save_snapshot(path, role, cls(**kwargs), cfg, step=step, diffusion_config=DIFFUSION if role == "unet" else None)
    return str(path)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    return {"unet": save(d / "unet.pt", "unet", unet_config()),
            "classifier": save(d / "classifier.pt", "classifier", classifier_config()),
            "bad_classifier": save(d / "bad.pt", "classifier", classifier_config(num_classes=5))}


def cli(*args, cwd):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "guidance.apps.sample", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def common(ckpts, tmp_path):
    return [f"unet_ckpt={ckpts['unet']}", f"classifier_ckpt={ckpts['classifier']}", "logger=none",
            "num_samples=8", "batch_size=5", "sampler=ddim", "sampler.respacing=ddim3", f"hydra.run.dir={tmp_path}/run"]


def test_sweep_two_strategies_two_scales(ckpts, tmp_path):
    r = cli("-m", "guidance=classifier,cfg", "guidance.scale=0,2", "sweep_name=t", f"hydra.sweep.dir={tmp_path}/sw",
            *common(ckpts, tmp_path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sw").glob("*/sample_info.json"))
    # one folder per point, named by override_dirname (checkpoint paths and logger excluded)
    assert [j.name.split(",")[:2] for j in jobs] == [["guidance.scale=0", "guidance=cfg"],
                                                     ["guidance.scale=0", "guidance=classifier"],
                                                     ["guidance.scale=2", "guidance=cfg"],
                                                     ["guidance.scale=2", "guidance=classifier"]]
    assert not any("ckpt" in j.name or "logger" in j.name for j in jobs)
    labels = None
    for job in jobs:
        with np.load(job / "samples.npz") as f:
            x, y = f["arr_0"], f["arr_1"]
        assert x.dtype == np.uint8 and x.shape == (8, SIZE, SIZE, CH)
        assert y.dtype == np.int64 and y.shape == (8,) and y.min() >= 0 and y.max() < K
        labels = y if labels is None else labels
        assert np.array_equal(y, labels)  # per-image seeds: same labels at every sweep point
        assert (job / "grid.png").stat().st_size > 0
        info = json.loads((job / "sample_info.json").read_text())
        assert info["strategy"] in ("cfg", "classifier") and info["steps"] == 3 and info["num_samples"] == 8
        assert info["unet_step"] == 7 and info["sampler"] == "ddim" and info["eta"] == 0.0
        nfe = 2 if (info["strategy"] == "cfg" and info["scale"] > 0) else 1
        assert info["cost_per_sample"]["nfe"] == 3 * nfe  # counted by the denoiser while sampling
        cls_passes = int(info["strategy"] == "classifier" and info["scale"] > 0)
        assert info["cost_per_sample"]["classifier_backward"] == 3 * cls_passes
    # Paired comparison: scale 0 of classifier guidance and w = 0 of CFG are the same unguided samples.
    a = np.load(jobs[0] / "samples.npz")["arr_0"]
    b = np.load(jobs[1] / "samples.npz")["arr_0"]
    assert np.array_equal(a, b)


def compose_cfg(ckpts, *overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("sample", overrides=[f"unet_ckpt={ckpts['unet']}", f"classifier_ckpt={ckpts['classifier']}",
                                            "logger=none", "num_samples=6", "batch_size=4", "sampler.respacing=2",
                                            *overrides])


def test_run_sample_in_process_and_resume(ckpts, tmp_path, capsys):
    from guidance.sampling.point import run_sample

    cfg = compose_cfg(ckpts, "guidance=cfg_classifier", "guidance.scale=1", "guidance.classifier_scale=2", "labels=balanced")
    npz = run_sample(cfg, tmp_path)
    assert npz == tmp_path / "samples.npz"
    info = json.loads((tmp_path / "sample_info.json").read_text())
    counted = {k: v for k, v in info["cost_per_sample"].items() if not k.startswith("gflop")}  # FLOPs: test_flops
    assert info["classifier_scale"] == 2 and counted == {"nfe": 4, "classifier_forward": 2,
                                                         "classifier_backward": 2}  # 2 steps
    assert np.array_equal(np.load(npz)["arr_1"], np.arange(6) % K)
    mtime = npz.stat().st_mtime_ns
    run_sample(compose_cfg(ckpts, "guidance=cfg_classifier", "guidance.scale=1", "guidance.classifier_scale=2",
                           "labels=balanced", "batch_size=6"), tmp_path)
    # Another batch size changes the samples by float rounding only: reused, and the line names the difference.
    assert npz.stat().st_mtime_ns == mtime and "skipping (made with batch_size=4; this run: batch_size=6: equal to " \
        "float rounding, not necessarily bitwise)" in capsys.readouterr().out
    assert info["numerics"] == {"batch_size": 4, "threads": torch.get_num_threads(), "torch": torch.__version__,
                                "kernels": torch.backends.cpu.get_cpu_capability()}
    run_sample(compose_cfg(ckpts, "guidance=cfg_classifier", "guidance.scale=2", "labels=balanced"), tmp_path)
    assert npz.stat().st_mtime_ns != mtime  # a different point is recomputed


def test_experiment_presets_compose(ckpts):
    for name in ("adm_table4", "cfg_table", "guidance_compare"):
        cfg = compose_cfg(ckpts, f"experiment={name}")
        assert cfg.sweep_name == name


@pytest.mark.parametrize("overrides,needle", [
    (["guidance=classifier", "classifier_ckpt=null"], "needs a noise-aware classifier"),
    (["guidance=classifier", "classifier_ckpt=/nonexistent/classifier.pt"], "/nonexistent/classifier.pt"),
    (["guidance=cfg", "guidance.scale=nan"], "must be finite"),
    (["guidance=cfg", "guidance.scale=abc"], "must be a number"),
    (["guidance=classifier", "guidance.scale=-1"], ">= 0"),
    (["seed=-3"], "seed=-3 must be a non-negative integer"),  # issue 11: was a traceback
    (["guidance=cfgpp", "sampler=heun"], "guidance=cfgpp needs renoise_eps"),
    (["guidance=autoguidance"], "needs the weak model: pass weak_ckpt=PATH"),
])
def test_bad_input_in_process(ckpts, tmp_path, overrides, needle):
    from guidance.sampling.point import run_sample

    with pytest.raises(GuidanceError, match=needle.replace(".", r"\.")):
        run_sample(compose_cfg(ckpts, *overrides), tmp_path)


@pytest.mark.parametrize("overrides,needle,code", [
    (["guidance=nope"], "guidance=nope is unknown; choose one of apg,", 2),  # issue 23: was Hydra's many lines
    (["guidance=classifier", "classifier_ckpt=null"], "needs a noise-aware classifier", 2),
    (["guidance=cfg", "guidance.scale=nan"], "must be finite", 2),
    (["guidance=classifier", "classifier_ckpt=BAD"], "num_classes=3", 2),
    (["guidance=cfg", "guidance.scale=-1"], ">= 0", 2),
])
def test_bad_input_cli_one_line(ckpts, tmp_path, overrides, needle, code):
    overrides = [o.replace("BAD", ckpts["bad_classifier"]) for o in overrides]
    r = cli(*common(ckpts, tmp_path), *overrides, cwd=tmp_path)
    assert r.returncode == code, r.stderr[-2000:]
    assert needle in r.stderr
    if code == 2:  # our GuidanceError: exactly one line, no traceback
        assert r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr


def test_sweep_with_evaluate_writes_one_metrics_json_per_point(ckpts, tmp_path):
    """`evaluate=true` chains guidance-evaluate into each job: -m over scales ends with metrics.json per point,
    and a rerun reuses both samples and metrics."""
    from guidance.nn.evaluator import EvaluatorNet

    ev_cfg = {"_target_": "guidance.nn.evaluator.EvaluatorNet", "image_size": SIZE, "in_channels": CH,
              "num_classes": K, "channels": [4, 8, 8], "feature_dim": 8, "spatial_channels": 2, "dropout": 0.0}
    torch.manual_seed(0)
    ev = save_snapshot(tmp_path / "ev.pt", "evaluator", EvaluatorNet(**{k: v for k, v in ev_cfg.items()
                                                                       if k != "_target_"}), ev_cfg, step=0)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ref.npz", arr_0=rng.integers(0, 256, size=(30, SIZE, SIZE, CH), dtype=np.uint8),
             arr_1=rng.integers(0, K, size=30))
    args = ["-m", "guidance=cfg", "guidance.scale=0,1", "sweep_name=ev", f"hydra.sweep.dir={tmp_path}/sw",
            "evaluate=true", f"reference_npz={tmp_path / 'ref.npz'}", f"metrics.evaluator_checkpoint={ev}",
            f"metrics.cache_dir={tmp_path / 'cache'}", "metrics.kid_subsets=3", "metrics.kid_subset_size=4",
            "metrics.isc_splits=2", "metrics.bootstrap=2", "metrics.progress=false", *common(ckpts, tmp_path)]
    r = cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p.parent for p in (tmp_path / "sw").glob("*/samples.npz"))
    assert len(jobs) == 2 and not any("evaluate" in j.name for j in jobs)
    for job in jobs:
        m = json.loads((job / "metrics.json").read_text())["extractors"]["evaluator"]
        assert m["num_samples"] == 8 and m["num_reference"] == 30 and m["extractor"] == "evaluator"
        assert np.isfinite(m["fid"]) and 0 <= m["precision"] <= 1
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("is up to date; skipping evaluation") == 2


def test_reuse_is_decided_by_weights_and_by_the_npz_itself(ckpts, tmp_path, capsys):
    """Issue 11: a U-Net retrained into the same path for the same number of steps, a truncated samples.npz
    beside a valid sample_info.json, or an npz swapped for another: none is taken as finished."""
    import shutil

    from guidance.sampling.point import run_sample

    unet = tmp_path / "unet.pt"
    shutil.copy(ckpts["unet"], unet)
    cfg = lambda: compose_cfg({**ckpts, "unet": str(unet)}, "guidance=cfg", "guidance.scale=1")
    out = tmp_path / "point"
    npz = run_sample(cfg(), out)
    first = npz.read_bytes()
    assert json.loads((out / "sample_info.json").read_text())["samples_file"]["bytes"] == len(first)
    run_sample(cfg(), out)
    assert "skipping" in capsys.readouterr().out  # same weights, same settings: reused

    torch.manual_seed(123)  # "retrained with another training.seed": same path, same step, other weights
    kwargs = {k: v for k, v in unet_config().items() if k != "_target_"}
    retrained = UNet(**kwargs)
    with torch.no_grad():
        for p in retrained.out.parameters():  # the zero-initialised output layer would hide the new weights
            p.normal_(0, 0.1)
    save_snapshot(unet, "unet", retrained, unet_config(), step=7, diffusion_config=DIFFUSION)
    run_sample(cfg(), out)
    assert "skipping" not in capsys.readouterr().out and npz.read_bytes() != first

    npz.write_bytes(npz.read_bytes()[:100])  # truncated (a crash, a full disk)
    run_sample(cfg(), out)
    assert "skipping" not in capsys.readouterr().out and np.load(npz)["arr_0"].shape[0] == 6

    other = tmp_path / "other.npz"
    np.savez(other, arr_0=np.zeros((6, SIZE, SIZE, CH), np.uint8), arr_1=np.zeros(6, np.int64))
    shutil.copy(other, npz)  # same image count, another content
    run_sample(cfg(), out)
    assert "skipping" not in capsys.readouterr().out and np.load(npz)["arr_0"].any()


def test_a_classifier_of_another_dataset_is_refused(ckpts, tmp_path):
    """Issue 11: same shape and class count, another dataset (MNIST vs Fashion-MNIST): refused, one line."""
    from guidance.sampling.point import run_sample

    data = lambda name: {"name": name, "path": None, "image_size": SIZE, "channels": CH, "num_classes": K}
    torch.manual_seed(0)
    unet = tmp_path / "unet.pt"
    save_snapshot(unet, "unet", UNet(**{k: v for k, v in unet_config().items() if k != "_target_"}), unet_config(),
                  step=7, diffusion_config=DIFFUSION, data_config=data("fashion_mnist"))
    clf = tmp_path / "clf.pt"
    save_snapshot(clf, "classifier", EncoderClassifier(**{k: v for k, v in classifier_config().items()
                                                           if k != "_target_"}),
                  classifier_config(), step=7, data_config=data("mnist"))
    cfg = compose_cfg({"unet": str(unet), "classifier": str(clf)}, "guidance=classifier")
    with pytest.raises(GuidanceError, match="trained on data.name=fashion_mnist .* on data.name=mnist") as e:
        run_sample(cfg, tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out" / "samples.npz").exists()


def _sample_args(ckpts, out, n=40, batch=8):
    return [f"unet_ckpt={ckpts['unet']}", f"classifier_ckpt={ckpts['classifier']}", "logger=none", "guidance=cfg",
            f"num_samples={n}", f"batch_size={batch}", "sampler=ddpm", "sampler.respacing=20", "device=cpu",
            f"hydra.run.dir={out}"]


def test_sigkill_mid_point_resumes_at_the_first_missing_batch_bitwise(ckpts, tmp_path):
    """Issue 11: a killed sampling job keeps its finished batches; the rerun samples only the missing ones and the
    point is bitwise the uninterrupted one (per-image seeds)."""
    import signal
    import time

    ref = cli(*_sample_args(ckpts, tmp_path / "ref"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "killed"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "guidance.apps.sample", *_sample_args(ckpts, out)], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob(".parts-*/images_*.npz"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = sorted(p.name for p in out.glob(".parts-*/images_*.npz"))
    assert 2 <= len(kept) < 5 and not (out / "samples.npz").exists()
    again = cli(*_sample_args(ckpts, out), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming {out}: " in again.stdout and f"({len(kept)} batches)" in again.stdout  # issue 23: said nothing
    a, b = np.load(tmp_path / "ref" / "samples.npz"), np.load(out / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    info = json.loads((out / "sample_info.json").read_text())
    assert info["cost_per_sample"]["nfe"] == 40  # counted over every batch, the resumed ones included
    assert not list(out.glob(".parts-*"))  # merged and cleaned up


def test_torchrun_two_processes_equal_one_process_bitwise(ckpts, tmp_path):
    """Issue 11: under torchrun the ranks share the batches; rank 0 merges; bitwise equal to one process under the
    README's condition: the same batch size and intra-op thread count (torchrun sets 1 thread per rank, so the one
    process is given 1 thread explicitly; cli() sets OMP_NUM_THREADS=1), both recorded in sample_info."""
    one = cli(*_sample_args(ckpts, tmp_path / "one", n=20, batch=4), cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}  # explicit: what torchrun would set
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "guidance.apps.sample", *_sample_args(ckpts, tmp_path / "two", n=20, batch=4)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one" / "samples.npz"), np.load(tmp_path / "two" / "samples.npz")
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])
    info = json.loads((tmp_path / "two" / "sample_info.json").read_text())
    assert info["processes"] == 2 and info["cost_per_sample"]["nfe"] == 40
    alone = json.loads((tmp_path / "one" / "sample_info.json").read_text())
    assert info["numerics"] == alone["numerics"] and alone["numerics"]["threads"] == 1
    assert alone["numerics"]["batch_size"] == 4


@pytest.mark.parametrize("launcher,schema", [("joblib", "hydra_plugins.hydra_joblib_launcher.config.JobLibLauncherConf"),
                                             ("submitit_slurm", "hydra_plugins.hydra_submitit_launcher.config.SlurmQueueConf"),
                                             ("submitit_local", "hydra_plugins.hydra_submitit_launcher.config.LocalQueueConf")])
def test_every_launcher_config_composes_against_its_plugin(launcher, schema):
    """Issue 11: submitit_slurm shipped a field (srun_args) that hydra-submitit-launcher 1.2 does not have."""
    import dataclasses
    import importlib

    module, name = schema.rsplit(".", 1)
    fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name))}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("sample", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    ours = set(cfg.hydra.launcher)
    assert ours <= fields, f"{launcher}: not fields of {name}: {sorted(ours - fields)}"


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_give_the_samples_of_a_sequential_sweep(ckpts, tmp_path, launcher):
    args = ["-m", "guidance=cfg", "guidance.scale=0,1", *common(ckpts, tmp_path)]
    seq = cli(*args, "sweep_name=seq", f"hydra.sweep.dir={tmp_path}/seq", cwd=tmp_path)
    assert seq.returncode == 0, seq.stderr[-2000:]
    par = cli(*args, "sweep_name=par", f"hydra.sweep.dir={tmp_path}/par", f"hydra/launcher={launcher}", cwd=tmp_path)
    assert par.returncode == 0, par.stderr[-3000:]
    points = sorted(p.parent.name for p in (tmp_path / "seq").glob("*/samples.npz"))
    assert len(points) == 2 and points == sorted(p.parent.name for p in (tmp_path / "par").glob("*/samples.npz"))
    for point in points:
        a = np.load(tmp_path / "seq" / point / "samples.npz")
        b = np.load(tmp_path / "par" / point / "samples.npz")
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_sigkill_mid_multirun_sweep_then_rerun_completes_every_point_once(ckpts, tmp_path):
    """Issue 11 kill test: `guidance-sample -m` killed inside its second point; the rerun keeps the finished point,
    resumes the interrupted one from its batches, and every point equals the uninterrupted sweep's."""
    import signal
    import time

    def args(name):
        return ["-m", "guidance=cfg", "guidance.scale=0,1,2", f"sweep_name={name}", f"hydra.sweep.dir={tmp_path}/{name}",
                *_sample_args(ckpts, tmp_path / "run")[:-1]]

    ref = cli(*args("ref"), cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "guidance.apps.sample", *args("killed")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed = tmp_path / "killed"
    deadline = time.time() + 120
    while time.time() < deadline and not (len(list(killed.glob("*/sample_info.json"))) == 1
                                          and list(killed.glob("*/.parts-*/images_*.npz"))):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (done,) = list(killed.glob("*/sample_info.json"))
    stamp = done.stat().st_mtime_ns
    again = cli(*args("killed"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert done.stat().st_mtime_ns == stamp and "already holds these samples; skipping" in again.stdout
    points = sorted(p.parent.name for p in (tmp_path / "ref").glob("*/samples.npz"))
    assert len(points) == 3 and points == sorted(p.parent.name for p in killed.glob("*/samples.npz"))
    for point in points:
        a, b = np.load(tmp_path / "ref" / point / "samples.npz"), np.load(killed / point / "samples.npz")
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_point_records_its_runtime_and_is_resampled_under_another_precision(ckpts, tmp_path):
    args = [*common(ckpts, tmp_path), "guidance=cfg"]
    first = cli(*args, "precision=fp32", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "sample_info.json").read_text())
    assert info["runtime"] == {"precision": "fp32", "channels_last": True, "compile": False}
    assert info["batching"] == "split"
    again = cli(*args, "precision=fp32", cwd=tmp_path)
    assert "already holds these samples" in again.stdout
    other = cli(*args, "precision=bf16", cwd=tmp_path)
    assert other.returncode == 0 and "already holds" not in other.stdout
    assert json.loads((tmp_path / "run" / "sample_info.json").read_text())["runtime"]["precision"] == "bf16"
    bad = cli(*args, "precision=half", cwd=tmp_path)
    assert bad.returncode != 0 and "precision=half is unknown" in bad.stderr


def test_fp16_on_a_cpu_says_it_is_slow(ckpts, tmp_path, capsys):
    """Issue 23: precision=fp16 on a CPU ran ~17x slower than fp32 without a word."""
    from guidance.sampling.point import run_sample

    run_sample(compose_cfg(ckpts, "guidance=cfg", "precision=fp16", "num_samples=2", "batch_size=2",
                           "sampler.respacing=1", "sampler=ddim"), tmp_path)
    out = capsys.readouterr().out
    assert "note: precision=fp16 on a CPU runs ~17x slower than fp32" in out and out.count("note: precision") == 1
