"""guidance-main end to end on fake data: train -> evaluator -> sweep -> report, then a rerun that reuses it all."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest


NO_SUBSET = ["metrics.num_reference=null"]  # the fake data set has 64 images, study=debug takes 1000 of the 60k


def _run_main(tmp_path, root, *extra):
    cmd = [sys.executable, "-m", "guidance.apps.main", "study=debug", "pretrained_dir=null", f"data.root={root}",
           "logger=none", f"out_dir={tmp_path / 'study'}", *NO_SUBSET, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)


def test_main_job_runs_every_stage_and_reuses_finished_work(fake_fashion_mnist, tmp_path):
    first = _run_main(tmp_path, fake_fashion_mnist.root)
    assert first.returncode == 0, first.stderr[-2000:]
    assert re.search(r"\[estimate\] sampling 3 points will take about \d+ min on this machine", first.stdout + first.stderr)
    study = tmp_path / "study"
    assert (study / "train" / "unet.pt").is_file() and (study / "train" / "classifier.pt").is_file()
    # the evaluator's path names its training length (issue 11: a debug evaluator never serves another study)
    assert (tmp_path / "runs" / "evaluator" / "fashion_mnist" / "epochs1-n2000" / "evaluator.pt").is_file()
    points = ["none-cond-s0", "classifier-uncond-s1", "cfg-cond-s1"]
    for p in points:
        assert (study / "sweep" / p / "samples.npz").is_file() and (study / "sweep" / p / "metrics.json").is_file()
    rows = list(csv.DictReader((study / "report" / "tradeoff.csv").open()))
    assert {(r["strategy"], r["model"]) for r in rows} >= {("none", "conditional"), ("classifier", "unconditional"),
                                                          ("cfg", "conditional")}
    assert all(r["status"] == "ok" and float(r["fid"]) >= 0 for r in rows)
    assert all((study / "report" / "plots" / f"{n}.png").is_file()
               for n in ("fid_vs_scale", "precision_recall", "is_vs_fid", "grids"))

    stamps = {p: (study / "sweep" / p / "samples.npz").stat().st_mtime_ns for p in points}
    again = _run_main(tmp_path, fake_fashion_mnist.root)
    assert again.returncode == 0, again.stderr[-2000:]
    out = again.stdout + again.stderr
    assert "3 of 3 points were already evaluated with these settings" in out and "[evaluator] reusing" in out
    assert "[estimate]" not in out  # every point's samples are there: nothing to estimate
    assert stamps == {p: (study / "sweep" / p / "samples.npz").stat().st_mtime_ns for p in points}

    # Changed sampling settings must not reuse stale points: new samples, new metrics.
    metrics_stamp = (study / "sweep" / points[0] / "metrics.json").stat().st_mtime_ns
    third = _run_main(tmp_path, fake_fashion_mnist.root, "study.num_samples=10", "study.sweep=[{guidance: none, "
                      "conditional: true, scales: [0]}]")
    assert third.returncode == 0, third.stderr[-2000:]
    assert (study / "sweep" / points[0] / "samples.npz").stat().st_mtime_ns != stamps[points[0]]
    assert (study / "sweep" / points[0] / "metrics.json").stat().st_mtime_ns != metrics_stamp
    import json
    written = json.loads((study / "sweep" / points[0] / "metrics.json").read_text())
    assert written["extractors"]["evaluator"]["num_samples"] == 10


def test_main_job_rejects_a_scale_on_the_unguided_strategy(fake_fashion_mnist, tmp_path):
    res = _run_main(tmp_path, fake_fashion_mnist.root, "study.sweep=[{guidance: none, conditional: true, scales: [2]}]")
    assert res.returncode == 2 and not (tmp_path / "study" / "train").exists()  # refused before training
    assert res.stderr.strip().splitlines()[-1].startswith("error: study.sweep: guidance=none takes no scale")


def test_main_job_names_an_unknown_strategy_in_one_line(fake_fashion_mnist, tmp_path):
    res = _run_main(tmp_path, fake_fashion_mnist.root, "study.sweep=[{guidance: magic, scales: [1]}]")
    assert res.returncode == 2
    from guidance.guiders import GUIDERS, PRESETS

    assert res.stderr.strip().splitlines()[-1] == ("error: study.sweep: unknown guidance 'magic' "
                                                   f"(strategies: {', '.join(sorted(GUIDERS | PRESETS))})")


def test_shipped_snapshots_are_not_reused_for_another_architecture(fake_fashion_mnist, tmp_path):
    """pretrained_dir holds adm_tiny snapshots; asking for other model settings must not silently reuse them."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "pretrained" / "fashion_mnist" / "cpu"
    if not (shipped / "unet.pt").is_file():
        pytest.skip("no shipped snapshots in this checkout")
    res = _run_main(tmp_path, fake_fashion_mnist.root, f"pretrained_dir={shipped}", "model.model_channels=64")
    assert res.returncode == 2
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "model_channels: 32 -> 64" in last and "pretrained_dir=null" in last


@pytest.mark.slow  # 75 s: every strategy through guidance-main (the engine matrix covers each in seconds)
def test_strategy_comparison_sweep_runs_end_to_end(fake_fashion_mnist, tmp_path):
    """experiment=strategy_compare on the debug model: every strategy of the preset samples and is evaluated,
    and the report holds the matched-cost table with one row per curve and the FID-vs-NFE plot."""
    import yaml

    from guidance.config import CONF_DIR
    from guidance.guiders import GUIDERS, PRESETS

    preset = yaml.safe_load(open(f"{CONF_DIR}/experiment/strategy_compare.yaml"))["study"]["sweep"]
    assert {e["guidance"] for e in preset} == (set(GUIDERS) | set(PRESETS)) - {"cfg_classifier"}  # every strategy
    weak = tmp_path / "study" / "train" / "unet.pt"  # the study's own U-Net stands in for the weak one
    res = _run_main(tmp_path, fake_fashion_mnist.root, "experiment=strategy_compare", "study.num_samples=10",
                    "study.batch_size=10", "study.respacing=ddim2", f"study.weak_ckpt={weak}")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "study" / "report" / "tradeoff.csv").open()))
    points = [r for r in rows if r["table"] != "matched_cost"]
    assert {r["strategy"] for r in points} == {e["guidance"] for e in preset}
    assert all(r["status"] == "ok" and float(r["fid"]) >= 0 for r in points)
    matched = [r for r in rows if r["table"] == "matched_cost"]
    assert len(matched) == len({(e["guidance"], e.get("tag")) for e in preset})  # one row per curve
    nfe = {r["strategy"]: float(r["nfe_per_sample"]) for r in matched}
    assert nfe["none"] == 2 and nfe["cfg"] == 4 and nfe["pag"] == 4 and nfe["cfg_zero"] == 2  # 1 of 2 steps zeroed
    assert (tmp_path / "study" / "report" / "plots" / "fid_vs_nfe.png").is_file()


def test_truncated_shipped_snapshot_is_one_line(fake_fashion_mnist, tmp_path):
    """Issue 11: a truncated pretrained unet.pt was a traceback."""
    shipped = tmp_path / "pre"
    shipped.mkdir()
    (shipped / "unet.pt").write_bytes(b"PK\x03\x04 cut short")
    (shipped / "classifier.pt").write_bytes(b"PK\x03\x04 cut short")
    res = _run_main(tmp_path, fake_fashion_mnist.root, f"pretrained_dir={shipped}")  # (overrides study=debug's null)
    assert res.returncode == 2 and "shipped snapshot" in res.stderr and "unreadable" in res.stderr
    assert "Traceback" not in res.stderr


def test_sigkill_mid_sweep_then_rerun_equals_an_uninterrupted_study(fake_fashion_mnist, tmp_path):
    """Issue 11 kill test: the main job killed once its first point is written; the rerun completes every point
    once, reusing the finished one, and every point's samples are bitwise the uninterrupted study's."""
    import signal
    import time

    import numpy as np

    (tmp_path / "a").mkdir()
    straight = _run_main(tmp_path / "a", fake_fashion_mnist.root)
    assert straight.returncode == 0, straight.stderr[-2000:]
    (tmp_path / "b").mkdir()
    cmd = [sys.executable, "-m", "guidance.apps.main", "study=debug", "pretrained_dir=null",
           f"data.root={fake_fashion_mnist.root}", "logger=none", f"out_dir={tmp_path / 'b' / 'study'}", *NO_SUBSET]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=tmp_path / "b", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "b" / "study" / "sweep" / "none-cond-s0" / "sample_info.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not first.exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the study finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stamp = first.stat().st_mtime_ns
    rerun = _run_main(tmp_path / "b", fake_fashion_mnist.root)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert first.stat().st_mtime_ns == stamp  # the finished point was not redone
    for point in ("none-cond-s0", "classifier-uncond-s1", "cfg-cond-s1"):
        a = np.load(tmp_path / "a" / "study" / "sweep" / point / "samples.npz")
        b = np.load(tmp_path / "b" / "study" / "sweep" / point / "samples.npz")
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_torchrun_main_job_equals_one_process(fake_fashion_mnist, tmp_path):
    """Issue 11: guidance-main under torchrun shares each point's batches between the ranks (rank 0 evaluates
    and reports); every point's samples and metrics are bitwise those of the one-process study."""
    import json

    import numpy as np

    (tmp_path / "a").mkdir()
    one = _run_main(tmp_path / "a", fake_fashion_mnist.root)
    assert one.returncode == 0, one.stderr[-2000:]
    shipped = tmp_path / "a" / "study" / "train"  # the one-process study's snapshots, reused as shipped ones
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29521",
           "-m", "guidance.apps.main", "study=debug", f"pretrained_dir={shipped}", f"data.root={fake_fashion_mnist.root}",
           "logger=none", f"out_dir={tmp_path / 'b' / 'study'}", *NO_SUBSET,
           f"metrics.evaluator_checkpoint={tmp_path / 'a' / 'runs' / 'evaluator' / 'fashion_mnist' / 'epochs1-n2000' / 'evaluator.pt'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    two = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("guidance-main: study") == 1  # rank 1 prints nothing
    for point in ("none-cond-s0", "classifier-uncond-s1", "cfg-cond-s1"):
        a, b = (tmp_path / "a" / "study" / "sweep" / point), (tmp_path / "b" / "study" / "sweep" / point)
        sa, sb = np.load(a / "samples.npz"), np.load(b / "samples.npz")
        assert np.array_equal(sa["arr_0"], sb["arr_0"]) and np.array_equal(sa["arr_1"], sb["arr_1"])
        assert json.loads((b / "sample_info.json").read_text())["processes"] == 2
        ma, mb = (json.loads((f / "metrics.json").read_text())["extractors"]["evaluator"] for f in (a, b))
        assert ma["fid"] == mb["fid"] and ma["precision"] == mb["precision"]
    assert (tmp_path / "b" / "study" / "report" / "tradeoff.csv").is_file()


def test_a_sweep_entry_may_name_its_own_sampler_and_an_unknown_one_is_one_line():
    """Issue 12: the CPU study runs DPM-Solver++ but CFG++ (defined for DDIM and Euler) keeps DDIM 20."""
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR
    from guidance.study import sweep_points
    from guidance.errors import GuidanceError

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("main")
        points = {p["name"]: p for p in sweep_points(cfg)}
        assert (points["cfgpp-cond-s0.4"]["sampler"], points["cfgpp-cond-s0.4"]["respacing"]) == ("ddim", "ddim20")
        assert (points["cfg-cond-s1"]["sampler"], points["cfg-cond-s1"]["respacing"]) == ("dpmpp_2m", "ddim10")
        bad = compose("main", overrides=["study.sweep=[{guidance: cfg, scales: [1], sampler: dpm3}]"])
        with pytest.raises(GuidanceError, match="unknown sampler 'dpm3'"):
            sweep_points(bad)


def test_budget_preset_gives_every_strategy_points_at_the_same_budgets():
    """experiment=budget_compare_cpu (issue 22): each strategy has points at about 10 and 20 U-Net passes per
    sample (CFG two passes per step), so the report's budget table compares them at equal cost."""
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR
    from guidance.study import sweep_points

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        points = sweep_points(compose("main", overrides=["experiment=budget_compare_cpu"]))
    unet_passes = {"none": 1, "cfg": 2, "classifier": 1}
    budgets = {}
    for p in points:
        if p["guidance"] in unet_passes:
            steps = int(p["respacing"].removeprefix("ddim"))
            budgets.setdefault(p["guidance"], set()).add(steps * unet_passes[p["guidance"]])
    assert all({10, 20} <= b for b in budgets.values()) and budgets["none"] == {10, 20, 40}
    assert len(points) == 19 and {p["sampler"] for p in points} == {"dpmpp_2m"}


def test_a_run_in_another_precision_than_the_published_tables_is_flagged(capsys):
    """Issue 22: precision=auto is bf16 on AMX CPUs and fp32 elsewhere, and the published study was made in bf16."""
    from hydra import compose, initialize_config_dir

    from guidance.config import CONF_DIR
    from guidance.study import say_precision

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose("main", overrides=["study=cpu"])
        same = compose("main", overrides=["study=cpu", "study.precision=bf16"])
        debug = compose("main", overrides=["study=debug", "study.precision=fp32"])
    cfg.study.precision = "fp32"
    note = say_precision(cfg, "cpu")
    assert note is not None and "samples in fp32" in note and "made in bf16" in note and note in capsys.readouterr().out
    assert say_precision(same, "cpu") is None and say_precision(debug, "cpu") is None  # debug publishes nothing
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):  # the budget study publishes fp32 tables
        assert say_precision(compose("main", overrides=["experiment=budget_compare_cpu"]), "cpu") is None
