"""Joint training end to end on the fake IDX fixture: files written, resume continues, config errors are one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from guidance.config import CONF_DIR
from guidance.errors import GuidanceError
from guidance.checkpoint import load_snapshot
from guidance.training.loop import train



@pytest.fixture(autouse=True)
def _one_thread():
    """The test machine's few cores are shared: oversubscribed OpenMP threads spin and run ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(fixture, run_dir: Path, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=["experiment=debug", f"data.root={fixture.root}", "logger=none",
                                           f"out_dir={run_dir}", "device=cpu", "training.sample_every=0",
                                           "training.progress=false", *overrides])


def _state(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "state.pt", weights_only=True)


def _app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # One thread per process, as in _one_thread.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "guidance.apps.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_debug_app_trains_then_resumes(fake_fashion_mnist, tmp_path):
    run = tmp_path / "run"
    args = ["experiment=debug", f"data.root={fake_fashion_mnist.root}", "logger=none", f"out_dir={run}"]
    first = _app(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for f in ("checkpoints/state.pt", "unet.pt", "classifier.pt", "samples/grid_0000004.png"):
        assert (run / f).is_file(), f
    assert "checkpoints at step 4" in first.stdout and str(run / "unet.pt") in first.stdout
    assert _state(run)["step"] == 4
    unet, meta = load_snapshot(run / "unet.pt", role="unet")
    assert meta["step"] == 4 and meta["extra"]["null_label"] == 10 and unet.num_classes == 10
    assert meta["data_config"]["root"] == str(fake_fashion_mnist.root)
    _, cmeta = load_snapshot(run / "classifier.pt", role="classifier")
    assert cmeta["model_config"]["_target_"] == "guidance.nn.EncoderClassifier"

    second = _app(*args, "training.total_steps=6", cwd=tmp_path)  # same run folder: resumes
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from" in second.stdout and "at step 4" in second.stdout
    assert _state(run)["step"] == 6
    assert load_snapshot(run / "unet.pt", role="unet")[1]["step"] == 6


def test_unknown_config_option_is_one_line(tmp_path):
    res = _app("model=nonexistent", "logger=none", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1  # issue 23: was Hydra's many lines
    assert res.stderr.startswith("error: model=nonexistent is unknown; choose one of adm_fmnist, ")


def test_a_run_refused_for_its_architecture_leaves_the_run_folder_alone(fake_fashion_mnist, tmp_path):
    """Issue 23: the refused run overwrote .hydra/config.yaml with the rejected settings."""
    run = tmp_path / "run"
    args = ["experiment=debug", f"data.root={fake_fashion_mnist.root}", "logger=none", f"out_dir={run}",
            "training.total_steps=1", "training.train_classifier=false", "training.sample_every=0"]
    assert _app(*args, cwd=tmp_path).returncode == 0
    written = (run / ".hydra" / "config.yaml").read_text()
    refused = _app(*args, "model.model_channels=16", cwd=tmp_path)
    assert refused.returncode == 2 and "model_channels: 32 -> 16" in refused.stderr
    assert refused.stderr.count("\n") == 1 and (run / ".hydra" / "config.yaml").read_text() == written


def _weights(run_dir: Path) -> dict:
    s = _state(run_dir)
    return {f"{role}.{k}": v for role, m in s["models"].items() for k, v in m["model"].items()} | {
        f"ema.{k}": v for k, v in s["models"]["unet"]["ema"]["shadow"].items()}


def test_resume_continues_exactly_like_an_uninterrupted_run(fake_fashion_mnist, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    out = train(_cfg(fake_fashion_mnist, straight, "training.total_steps=4"), straight)
    assert out["step"] == 4 and not out["resumed"]
    train(_cfg(fake_fashion_mnist, resumed, "training.total_steps=2"), resumed)
    assert _state(resumed)["step"] == 2
    out = train(_cfg(fake_fashion_mnist, resumed, "training.total_steps=4"), resumed)
    assert out["step"] == 4 and out["resumed"]
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    # The steps were real: with lr 0 the weights stay at the (seeded, identical) initialisation.
    frozen = tmp_path / "frozen"
    train(_cfg(fake_fashion_mnist, frozen, "training.total_steps=1", "training.unet_lr=0",
               "training.classifier_lr=0"), frozen)
    init = _weights(frozen)
    assert not all(torch.equal(a[k], init[k]) for k in a if k.startswith("unet."))
    # Rerunning a finished run does nothing and says so.
    again = train(_cfg(fake_fashion_mnist, straight, "training.total_steps=4"), straight)
    assert again["step"] == 4 and again["resumed"]


def test_unet_only_then_classifier_only(fake_fashion_mnist, tmp_path):
    run = tmp_path / "run"
    train(_cfg(fake_fashion_mnist, run, "training.train_classifier=false", "training.total_steps=2"), run)
    assert (run / "unet.pt").is_file() and not (run / "classifier.pt").exists()
    state = _state(run)
    assert set(state["models"]) == {"unet"}
    unet_before = state["models"]["unet"]["model"]
    # Now the classifier alone: it starts from scratch, the U-Net is carried over untouched.
    train(_cfg(fake_fashion_mnist, run, "training.train_unet=false", "training.total_steps=3"), run)
    state = _state(run)
    assert set(state["models"]) == {"unet", "classifier"} and state["step"] == 3
    assert all(torch.equal(v, state["models"]["unet"]["model"][k]) for k, v in unet_before.items())
    assert (run / "classifier.pt").is_file()


def test_architecture_change_on_resume_is_one_line(fake_fashion_mnist, tmp_path):
    run = tmp_path / "run"
    train(_cfg(fake_fashion_mnist, run, "training.total_steps=1", "training.train_classifier=false"), run)
    with pytest.raises(GuidanceError) as e:
        train(_cfg(fake_fashion_mnist, run, "training.total_steps=2", "training.train_classifier=false",
                   "model.model_channels=16"), run)
    msg = str(e.value)
    assert "\n" not in msg and "state.pt" in msg and "model_channels: 32 -> 16" in msg


@pytest.mark.parametrize("overrides, words", [
    (["diffusion=linear_1000_learned"], "learn_sigma"),
    (["training.p_uncond=1.5"], "p_uncond"),
    (["training.train_unet=false", "training.train_classifier=false"], "both false"),
    # issue 11: these were tracebacks
    (["training.seed=-1"], "training.seed=-1 must be a non-negative integer"),
    (["training.unet_lr=-0.001"], "training.unet_lr=-0.001 must be a number >= 0"),
    (["training.batch_size=12.5"], "training.batch_size=12.5 must be an integer"),
])
def test_config_mistakes_are_one_line(fake_fashion_mnist, tmp_path, overrides, words):
    with pytest.raises(GuidanceError, match=words) as e:
        train(_cfg(fake_fashion_mnist, tmp_path, *overrides), tmp_path)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_classifier_learns_the_fixture_classes(fake_fashion_mnist, tmp_path):
    """The fixture's classes differ by a bright bar's position: at low noise (t in the first quartile) the
    classifier must beat chance (0.1) clearly after a short run. 320 low-noise predictions at chance would give
    ~32 +- 5.4 correct, so > 50% is > 7 sigma above chance."""
    out = train(_cfg(fake_fashion_mnist, tmp_path, "training.train_unet=false", "training.total_steps=300",
                     "training.batch_size=32", "training.log_every=40", "training.classifier_lr=1e-3"), tmp_path)
    assert out["metrics"]["clf/acc_q1"] > 0.5


def test_final_checkpoint_never_leaves_missing_or_stale_snapshots(fake_fashion_mnist, tmp_path, monkeypatch):
    """Issue 11: the snapshots are written before the resumable state, and a rerun that finds the state at the
    final step rewrites snapshots that are missing, truncated or of another step instead of saying 'done'."""
    import guidance.training.loop as loop

    run = tmp_path / "run"
    order = []
    real_snapshot, real_state = loop.save_snapshot, loop.save_training_state
    monkeypatch.setattr(loop, "save_snapshot", lambda path, *a, **k: (order.append(Path(path).name),
                                                                       real_snapshot(path, *a, **k))[1])
    monkeypatch.setattr(loop, "save_training_state", lambda path, *a, **k: (order.append("state.pt"),
                                                                            real_state(path, *a, **k))[1])
    train(_cfg(fake_fashion_mnist, run), run)
    assert order[-3:] == ["unet.pt", "classifier.pt", "state.pt"]  # snapshots first, state last
    final = (run / "unet.pt").read_bytes()

    (run / "unet.pt").unlink()  # lost
    (run / "classifier.pt").write_bytes(b"truncated")
    result = train(_cfg(fake_fashion_mnist, run), run)
    assert result["resumed"] and load_snapshot(run / "unet.pt", role="unet")[1]["step"] == 4
    assert load_snapshot(run / "classifier.pt", role="classifier")[1]["step"] == 4
    a = torch.load(run / "unet.pt", weights_only=False)
    b = torch.load(__import__("io").BytesIO(final), weights_only=False)
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])  # same weights
    order.clear()
    train(_cfg(fake_fashion_mnist, run), run)  # nothing stale now: nothing rewritten
    assert order == []


def test_resuming_in_another_number_of_processes_says_so(fake_fashion_mnist, tmp_path, capsys):
    """Issue 11: a 2-process state resumed in 1 process used to continue without a word."""
    from guidance.checkpoint import save_training_state

    run = tmp_path / "run"
    train(_cfg(fake_fashion_mnist, run), run)
    state = torch.load(run / "checkpoints" / "state.pt", weights_only=False)
    assert state["world_size"] == 1
    save_training_state(run / "checkpoints" / "state.pt", {**state, "world_size": 2})
    capsys.readouterr()
    train(_cfg(fake_fashion_mnist, run, "training.total_steps=6"), run)
    out = capsys.readouterr().out
    assert "written by 2 process(es) and resumes in 1" in out


def _kill_when(cmd, cwd, ready, timeout=120):
    """Start `cmd`, SIGKILL it as soon as ready() holds (or at the timeout); return once it is dead."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    finished = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return not finished


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(fake_fashion_mnist, tmp_path):
    """Issue 11 kill test: SIGKILL after the first checkpoint, rerun the same command: bitwise the same weights."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = lambda run: [sys.executable, "-m", "guidance.apps.train", "experiment=debug", "logger=none",
                        f"data.root={fake_fashion_mnist.root}", f"out_dir={run}", "training.total_steps=12",
                        "training.checkpoint_every=3", "training.sample_every=0", "training.progress=false"]
    assert subprocess.run(args(straight), cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, timeout=300).returncode == 0
    state = killed / "checkpoints" / "state.pt"
    ready = lambda: state.exists() and (killed / "unet.pt").exists()
    assert _kill_when(args(killed), tmp_path, ready), "training finished before it could be killed"
    rerun = subprocess.run(args(killed), cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "resuming from" in rerun.stdout
    a, b = _weights(straight), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for role in ("unet", "classifier"):
        sa = torch.load(straight / f"{role}.pt", weights_only=False)["state_dict"]
        sb = torch.load(killed / f"{role}.pt", weights_only=False)["state_dict"]
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


# Runs guidance-train, SIGKILLing itself the moment the snapshot of `role` at the final step is on disk: a fault
# injected at an exact place inside the final checkpoint (the state is written after both snapshots).
_KILL_AFTER_FINAL_SNAPSHOT = """
import os, signal, sys
import guidance.training.loop as loop
role, total, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
real = loop.save_snapshot
def save_then_die(path, snap_role, *a, **kw):
    written = real(path, snap_role, *a, **kw)
    if snap_role == role and a[2] == total:  # (model, model_config, step)
        os.kill(os.getpid(), signal.SIGKILL)
    return written
loop.save_snapshot = save_then_die
sys.argv = ["guidance-train", *args]
from guidance.apps.train import main
main()
"""


@pytest.mark.parametrize("role", ["unet", "classifier"])
def test_sigkill_inside_the_final_checkpoint_then_rerun_equals_an_uninterrupted_run(fake_fashion_mnist, tmp_path,
                                                                                     role):
    """Issue 11 kill test: killed after the final unet.pt (classifier.pt and the state still at step 9) or after
    both final snapshots (state still at step 9); the rerun resumes, rewrites both, bitwise the straight run's."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = lambda run: ["experiment=debug", "logger=none", f"data.root={fake_fashion_mnist.root}", f"out_dir={run}",
                        "training.total_steps=12", "training.checkpoint_every=3", "training.sample_every=0",
                        "training.progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    done = subprocess.run([sys.executable, "-m", "guidance.apps.train", *args(straight)], cwd=tmp_path, env=env,
                          capture_output=True, timeout=300)
    assert done.returncode == 0
    died = subprocess.run([sys.executable, "-c", _KILL_AFTER_FINAL_SNAPSHOT, role, "12", *args(killed)],
                          cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert died.returncode == -9  # SIGKILL
    assert _state(killed)["step"] == 9
    assert torch.load(killed / f"{role}.pt", weights_only=False)["step"] == 12
    rerun = subprocess.run([sys.executable, "-m", "guidance.apps.train", *args(killed)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "resuming from" in rerun.stdout
    a, b = _weights(straight), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for r in ("unet", "classifier"):
        sa, sb = (torch.load(d / f"{r}.pt", weights_only=False) for d in (straight, killed))
        assert sb["step"] == 12 and all(torch.equal(sa["state_dict"][k], sb["state_dict"][k]) for k in sa["state_dict"])
