"""Snapshots and training state (guidance.checkpoint) and EMA math (guidance.training.ema)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from guidance.errors import GuidanceError
from guidance.checkpoint import load_snapshot, load_training_state, save_snapshot, save_training_state
from guidance.training import EMA

LINEAR = {"_target_": "torch.nn.Linear", "in_features": 3, "out_features": 2}


def _linear(value: float) -> nn.Linear:
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(value)
        m.bias.fill_(-value)
    return m


def test_snapshot_round_trip_ema_and_raw(tmp_path):
    ema_model, raw_model = _linear(1.5), _linear(-2.0)
    path = save_snapshot(tmp_path / "unet.pt", "unet", ema_model, LINEAR, step=7, diffusion_config={"steps": 10},
                         data_config={"name": "fake"}, extra={"ema_rate": 0.9}, raw_state_dict=raw_model.state_dict())
    assert sorted(os.listdir(tmp_path)) == ["unet.pt"]  # atomic write leaves no temp file behind
    model, meta = load_snapshot(path, role="unet")
    assert isinstance(model, nn.Linear) and not model.training
    assert torch.equal(model.weight, torch.full((2, 3), 1.5))
    assert meta["step"] == 7 and meta["role"] == "unet" and meta["format"] == "guidance-snapshot-v1"
    assert meta["diffusion_config"] == {"steps": 10} and meta["data_config"] == {"name": "fake"}
    assert meta["extra"] == {"ema_rate": 0.9} and meta["model_config"] == LINEAR
    assert "state_dict" not in meta
    raw, _ = load_snapshot(path, use_ema=False)
    assert torch.equal(raw.weight, torch.full((2, 3), -2.0))


def test_snapshot_without_raw_weights_stores_the_same_weights(tmp_path):
    save_snapshot(tmp_path / "c.pt", "classifier", _linear(0.25), LINEAR, step=1)
    a, _ = load_snapshot(tmp_path / "c.pt", "classifier")
    b, _ = load_snapshot(tmp_path / "c.pt", "classifier", use_ema=False)
    assert torch.equal(a.weight, b.weight)


def test_crash_mid_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = save_snapshot(tmp_path / "unet.pt", "unet", _linear(1.0), LINEAR, step=1)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        real_save({"partial": True}, f)
        raise KeyboardInterrupt  # e.g. the job is killed while writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_snapshot(path, "unet", _linear(9.0), LINEAR, step=2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["unet.pt"]
    model, meta = load_snapshot(path, "unet")
    assert meta["step"] == 1 and torch.equal(model.weight, torch.full((2, 3), 1.0))


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(GuidanceError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_file_says_train_first(tmp_path):
    msg = _one_line_error(load_snapshot, tmp_path / "nope.pt", role="unet")
    assert str(tmp_path / "nope.pt") in msg and "guidance-train" in msg and "unet_ckpt=" in msg


def test_wrong_role_names_file_and_roles(tmp_path):
    save_snapshot(tmp_path / "classifier.pt", "classifier", _linear(1.0), LINEAR, step=1)
    msg = _one_line_error(load_snapshot, tmp_path / "classifier.pt", role="unet")
    assert "classifier.pt" in msg and "'classifier'" in msg and "'unet'" in msg


def test_not_a_snapshot(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    assert "text.pt" in _one_line_error(load_snapshot, tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert "not a guidance snapshot" in _one_line_error(load_snapshot, tmp_path / "other.pt")
    save_training_state(tmp_path / "state.pt", {"step": 3, "models": {}, "arch": {}})
    assert "training state" in _one_line_error(load_snapshot, tmp_path / "state.pt")


def test_architecture_mismatch_names_differing_field(tmp_path):
    save_snapshot(tmp_path / "unet.pt", "unet", _linear(1.0), LINEAR, step=1)
    msg = _one_line_error(load_snapshot, tmp_path / "unet.pt", model_config={**LINEAR, "out_features": 4})
    assert "unet.pt" in msg and "out_features: 2 -> 4" in msg
    # A stored config that does not match the stored weights (no config to blame): still one line, names the file.
    save_snapshot(tmp_path / "bad.pt", "unet", _linear(1.0), {**LINEAR, "in_features": 5}, step=1)
    assert "bad.pt" in _one_line_error(load_snapshot, tmp_path / "bad.pt")


def test_real_unet_snapshot_round_trip(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from guidance.config import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train")
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    net = instantiate(model_cfg)
    save_snapshot(tmp_path / "unet.pt", "unet", net, model_cfg, step=3)
    loaded, meta = load_snapshot(tmp_path / "unet.pt", "unet")
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([5, 900]), torch.tensor([1, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), net.eval()(x, t, y))
    msg = _one_line_error(load_snapshot, tmp_path / "unet.pt", model_config={**model_cfg, "model_channels": 64})
    assert "model_channels: 32 -> 64" in msg


def test_training_state_arch_check(tmp_path):
    arch = {"unet": LINEAR, "diffusion": {"steps": 10}}
    save_training_state(tmp_path / "state.pt", {"step": 5, "models": {}, "arch": arch})
    assert load_training_state(tmp_path / "state.pt", arch)["step"] == 5
    # A network absent from the file is not compared (e.g. the classifier was not trained before).
    assert load_training_state(tmp_path / "state.pt", {**arch, "classifier": LINEAR})["step"] == 5
    msg = _one_line_error(load_training_state, tmp_path / "state.pt", {**arch, "diffusion": {"steps": 20}})
    assert "state.pt" in msg and "diffusion.steps: 10 -> 20" in msg


# ---- EMA ------------------------------------------------------------------------------------------------


def test_ema_closed_form():
    """shadow_n = r^n s_0 + (1 - r) sum_k r^(n-k) w_k for weights w_1..w_n (a geometric series)."""
    rate, model = 0.9, _linear(2.0)
    ema = EMA(model, rate)  # s_0 = 2
    ws = [1.0, -3.0, 0.5, 4.0]
    for w in ws:
        with torch.no_grad():
            model.weight.fill_(w)
        ema.update(model)
    n = len(ws)
    expected = rate**n * 2.0 + (1 - rate) * sum(rate ** (n - k) * w for k, w in enumerate(ws, start=1))
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), expected), atol=1e-6)
    # Constant weights: the gap to them shrinks by exactly r per update.
    for _ in range(10):
        ema.update(model)
    assert torch.allclose(ema.shadow["weight"] - 4.0, torch.full((2, 3), (expected - 4.0) * rate**10), atol=1e-6)


def test_ema_copies_buffers_and_round_trips():
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = EMA(net, 0.5)
    net.train()(torch.randn(16, 3) * 5 + 2)  # changes BatchNorm running stats (buffers)
    ema.update(net)
    assert torch.equal(ema.shadow["1.running_mean"], net[1].running_mean)  # buffers are copied, not averaged
    target = ema.copy_to(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    assert torch.equal(target[0].weight, ema.shadow["0.weight"])
    other = EMA(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), 0.99)
    other.load_state_dict(ema.state_dict())
    assert all(torch.equal(other.shadow[k], ema.shadow[k]) for k in ema.shadow) and other.rate == 0.99
    with pytest.raises(ValueError):
        EMA(net, 1.0)


def test_ema_warmup_follows_the_schedule_and_forgets_the_init():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    ema = EMA(net, 0.999, warmup=True)
    assert ema.rate_at(0) == pytest.approx(1 / 10) and ema.rate_at(90) == pytest.approx(91 / 100)
    assert ema.rate_at(10**7) == 0.999  # capped by the configured rate
    with torch.no_grad():
        net.weight.fill_(1.0)
    expected = 0.0
    for step in range(1500):
        ema.update(net, step)
        r = min(0.999, (1 + step) / (10 + step))
        expected = r * expected + (1 - r) * 1.0
    assert ema.shadow["weight"].item() == pytest.approx(expected, rel=1e-5)
    assert expected > 0.99  # without warm-up the zero init would still weigh 0.999**1500 = 22%
    plain = EMA(nn.Linear(1, 1, bias=False), 0.999)
    assert plain.rate_at(0) == 0.999


def test_atomic_writes_get_normal_permissions_and_clean_temps_of_killed_writers(tmp_path):
    """Issue 11: result files were 0600 (mkstemp's mode); temp files left by a SIGKILLed writer piled up."""
    import os
    import socket
    import subprocess
    import sys

    from guidance.io import atomic_write_json

    target = tmp_path / "metrics.json"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited: its temp is stale
    stale = tmp_path / f".metrics.json.{socket.gethostname()}-{pid}.abc123.tmp"
    live = tmp_path / f".metrics.json.{socket.gethostname()}-{os.getpid()}.zzz999.tmp"  # a live writer's
    stale.write_text("half")
    live.write_text("in progress")
    atomic_write_json({"fid": 1.0}, target)
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)
    assert not stale.exists() and live.exists()


def test_unwritable_output_paths_are_one_line_and_leave_nothing_half_written(tmp_path, monkeypatch):
    """Issue 11: an output path under a regular file, or a write that fails (a full disk), was a traceback."""
    import errno
    import json

    import guidance.io as gio
    from guidance.errors import GuidanceError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GuidanceError, match=f"cannot write {blocker}/out/m.json") as e:
        gio.atomic_write_json({"a": 1}, blocker / "out" / "m.json")
    assert "\n" not in str(e.value)
    target = tmp_path / "m.json"
    gio.atomic_write_json({"old": True}, target)

    def full_disk(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(GuidanceError, match="No space left on device.*unchanged"):
        gio._atomic_write(target, full_disk, mode="w")
    assert json.loads(target.read_text()) == {"old": True} and list(tmp_path.glob(".*.tmp")) == []
