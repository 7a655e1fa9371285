"""Issue 23, silent wrong results: one writer per point folder, sample_info describes the bytes its writer wrote,
and guidance-evaluate scores only the samples a folder's sample_info describes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from guidance.errors import GuidanceError
from guidance.metrics.evaluate import evaluate_folder, evaluate_folder_if_stale
from guidance.sampling.generate import finished_samples, save_samples

SIZE = 8
METRICS = {"extractor": "evaluator", "evaluator_checkpoint": "/nonexistent/evaluator.pt", "progress": False}
DATA = {"name": "fashion_mnist", "image_size": SIZE, "channels": 1, "num_classes": 3}


def images(value: int, n: int = 4):
    return torch.full((n, 1, SIZE, SIZE), value, dtype=torch.uint8), torch.arange(n) % 3


def test_sample_info_records_the_bytes_its_writer_wrote(tmp_path, monkeypatch):
    """Writer B renames its samples.npz over A's between A's rename and A's info: A's info must not describe B's
    file (today's bug: A hashed the file on disk, so its info said scale=1 over B's samples, with a matching sha256,
    and a rerun took the point as finished)."""
    real_replace, interleaved = os.replace, []

    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith("samples.npz") and not interleaved:
            interleaved.append(dst)
            save_samples(tmp_path, *images(255), {"scale": 2.0})  # writer B, whole, inside A's write

    monkeypatch.setattr(os, "replace", replace)
    save_samples(tmp_path, *images(0), {"scale": 1.0})  # writer A
    monkeypatch.setattr(os, "replace", real_replace)
    assert interleaved
    info = json.loads((tmp_path / "sample_info.json").read_text())
    on_disk = np.load(tmp_path / "samples.npz")["arr_0"]
    assert info["scale"] == 1.0 and (on_disk == 255).all()  # A's info over B's samples: the race happened
    assert finished_samples(tmp_path, {"scale": 1.0}, ["scale"]) is None  # ... and is never taken as finished
    with pytest.raises(GuidanceError, match="not the file its sample_info.json describes"):
        evaluate_folder(tmp_path, METRICS, DATA)


@pytest.mark.parametrize("evaluate", [evaluate_folder, evaluate_folder_if_stale])
def test_evaluate_refuses_a_folder_between_new_samples_and_their_info(tmp_path, evaluate):
    """A run killed (or still running) between its new samples.npz and its sample_info.json: evaluating would score
    24 new images under the old info's 16 (the table said "16 samples per point", FID from 24). Refused in one line,
    before any feature is made (the evaluator checkpoint here does not even exist)."""
    save_samples(tmp_path, *images(0, 16), {"num_samples": 16})
    from guidance.io import atomic_save_npz

    new, labels = images(9, 24)
    atomic_save_npz(tmp_path / "samples.npz", arr_0=new.permute(0, 2, 3, 1).numpy(), arr_1=labels.numpy())
    with pytest.raises(GuidanceError, match="not the file its sample_info.json describes") as e:
        evaluate(tmp_path, METRICS, DATA)
    assert "\n" not in str(e.value) and not (tmp_path / "metrics.json").exists()


def test_evaluate_scores_a_consistent_folder_and_a_plain_batch():
    """The check is only for a sample job's folder: a consistent one passes it (the run then fails later, on the
    missing evaluator), a bare ADM batch without sample_info has nothing to check."""
    import tempfile
    from pathlib import Path

    for with_info in (True, False):
        d = Path(tempfile.mkdtemp())
        save_samples(d, *images(0, 16), {"num_samples": 16})
        if not with_info:
            (d / "sample_info.json").unlink()
        with pytest.raises(GuidanceError) as e:
            evaluate_folder(d, METRICS, DATA)
        assert "describes" not in str(e.value) and "evaluator.pt" in str(e.value)


HOLD = """
import sys, time
from guidance.io import exclusive_writer
with exclusive_writer(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_live_writer_refuses_a_second_one_and_a_killed_writers_lock_is_recovered(tmp_path):
    from guidance.io import exclusive_writer

    proc = _holder(tmp_path)
    try:
        with pytest.raises(GuidanceError, match=f"being written by another run \\(host .*, pid {proc.pid}, since"):
            with exclusive_writer(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with exclusive_writer(tmp_path):  # the kernel dropped the dead writer's lock: nothing to clean up by hand
        with pytest.raises(GuidanceError, match=f"pid {os.getpid()}"):
            with exclusive_writer(tmp_path):  # one writer even within one process
                pass
    assert not (tmp_path / ".writer.lock").exists()  # released and removed


def test_two_sample_runs_in_one_folder_the_second_is_refused(tmp_path):
    """Two guidance-sample runs with different scales and one hydra.run.dir: the second is refused in one line
    while the first samples (it is paused mid-point to make the overlap certain), and the first finishes with
    its own samples and info."""
    from guidance.nn import UNet
    from guidance.checkpoint import save_snapshot

    torch.manual_seed(0)
    unet = {"image_size": SIZE, "in_channels": 1, "model_channels": 8, "out_channels": 1, "num_res_blocks": 1,
            "attention_resolutions": [], "channel_mult": [1, 2], "num_classes": 3}
    diffusion = {"_target_": "guidance.diffusion.create_diffusion", "steps": 40, "noise_schedule": "linear",
                 "model_var_type": "fixed_small", "loss_type": "mse", "timestep_respacing": ""}
    save_snapshot(tmp_path / "unet.pt", "unet", UNet(**unet), {"_target_": "guidance.nn.UNet", **unet}, 1,
                  diffusion_config=diffusion)
    out = tmp_path / "point"
    args = lambda scale: [f"unet_ckpt={tmp_path / 'unet.pt'}", "logger=none", "guidance=cfg", f"guidance.scale={scale}",
                          "num_samples=24", "batch_size=4", "sampler=ddpm", "sampler.respacing=20", "device=cpu",
                          f"hydra.run.dir={out}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}
    cli = lambda *a: subprocess.run([sys.executable, "-m", "guidance.apps.sample", *a], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=300)
    first = subprocess.Popen([sys.executable, "-m", "guidance.apps.sample", *args(1)], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and not list(out.glob(".parts-*/images_*.npz")):
        time.sleep(0.05)
    first.send_signal(signal.SIGSTOP)
    try:
        second = cli(*args(3))
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert second.returncode != 0 and "is being written by another run" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    assert first.returncode == 0, stderr[-2000:]
    info = json.loads((out / "sample_info.json").read_text())
    assert info["guider"]["scale"] == 1
    assert finished_samples(out, info, ["guider"]) is not None  # the info describes the npz beside it
