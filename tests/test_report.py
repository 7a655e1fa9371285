"""guidance.report + guidance-tradeoff on a synthetic sweep folder whose best values are known by construction."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from guidance.errors import GuidanceError
from guidance.guiders import describe_point
from guidance.report import build_report, build_tables, collect_sweep, to_csv, to_latex, to_markdown
from guidance.report.plots import pareto_front
from guidance.report.tables import pick_best

SHA = "abcdef1234567890" * 4
N = 1000
STEPS = 25

# (folder, strategy, scale, conditional, metrics or None, grid colour). Metrics: value or (value, std).
# Classifier table by construction: FID best = conditional s=1 (5 ± 0.5, runner-up 10: called);
# IS best candidate conditional s=10 (100 ± 3) vs runner-up conditional s=1 (96 ± 2): within spread, not called;
# precision best = conditional s=10 (no spreads); recall best = unconditional none.
CLF = [
    ("guidance=none,guidance.conditional=false", "none", 0.0, False,
     dict(fid=30.0, sfid=20.0, is_mean=20.0, precision=0.50, recall=0.70), (200, 200, 200)),
    ("guidance=classifier,guidance.conditional=false,guidance.scale=1", "classifier", 1.0, False,
     dict(fid=20.0, sfid=15.0, is_mean=40.0, precision=0.60, recall=0.60), (255, 0, 0)),
    ("guidance=classifier,guidance.conditional=false,guidance.scale=10", "classifier", 10.0, False,
     dict(fid=25.0, sfid=18.0, is_mean=60.0, precision=0.70, recall=0.40), (255, 0, 0)),
    ("guidance=none,guidance.conditional=true", "none", 0.0, True,
     dict(fid=10.0, sfid=9.0, is_mean=(80.0, 1.0), precision=0.65, recall=0.65), (100, 100, 100)),
    ("guidance=classifier,guidance.conditional=true,guidance.scale=1", "classifier", 1.0, True,
     dict(fid=(5.0, 0.5), sfid=7.0, is_mean=(96.0, 2.0), precision=0.80, recall=0.50), (0, 0, 255)),
    ("guidance=classifier,guidance.conditional=true,guidance.scale=10", "classifier", 10.0, True,
     dict(fid=12.0, sfid=11.0, is_mean=(100.0, 3.0), precision=0.90, recall=0.30), (0, 0, 255)),
]
# CFG table: FID best w=0.5 (8 ± 0.3 vs 9 ± 0.3: called); sFID w=0.5 (6 ± 0.5) vs w=1 (6.4 ± 0.2): not called;
# IS/precision best w=2, recall best w=0; w=4 has samples but no metrics.json.
CFG = [
    (0.0, dict(fid=(10.0, 0.3), sfid=(8.0, 0.5), is_mean=50.0, precision=0.60, recall=0.60)),
    (0.5, dict(fid=(8.0, 0.3), sfid=(6.0, 0.5), is_mean=60.0, precision=0.70, recall=0.55)),
    (1.0, dict(fid=(9.0, 0.3), sfid=(6.4, 0.2), is_mean=70.0, precision=0.80, recall=0.50)),
    (2.0, dict(fid=(14.0, 0.3), sfid=(9.0, 0.5), is_mean=80.0, precision=0.85, recall=0.40)),
    (4.0, None),
]
CFG_COLOUR = (0, 160, 0)


def _write_point(folder: Path, overrides: list[str], info: dict | None, metrics: dict | None, colour=None):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if info is not None:
        (folder / "sample_info.json").write_text(json.dumps(info))
    if metrics is not None:
        flat = {"extractor": "evaluator", "weights_sha256": SHA, "num_samples": N, "num_reference": 10000,
                "kid_mean": 0.01, "kid_std": 0.001, "is_std": 0.0, "density": 1.0, "coverage": 0.9}
        for k, v in metrics.items():
            if isinstance(v, tuple):
                flat[k], flat["is_std" if k == "is_mean" else f"{k}_std"] = v
            else:
                flat[k] = v
        if "is_mean" in metrics and not isinstance(metrics["is_mean"], tuple):
            del flat["is_std"]  # no spread: IS without ± in this point
        (folder / "metrics.json").write_text(json.dumps(flat))
    if colour is not None:
        Image.fromarray(np.full((32, 48, 3), colour, np.uint8)).save(folder / "grid.png")


def _info(strategy, scale, conditional, nfe_step, clf_step):
    return dict(strategy=strategy, scale=scale, conditional=conditional, sampler="ddim", steps=STEPS, num_samples=N,
                seed=7, cost_per_sample=dict(nfe=nfe_step * STEPS, classifier_forward=clf_step * STEPS,
                                     classifier_backward=clf_step * STEPS))


def make_sweep(base: Path) -> Path:
    root = base / "sweeps" / "demo"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(yaml.safe_dump({"sweep_name": "demo"}))
    for name, strategy, scale, cond, metrics, colour in CLF:
        clf = 1 if strategy == "classifier" else 0
        _write_point(root / name, name.split(","), _info(strategy, scale, cond, 1, clf), metrics, colour)
    for w, metrics in CFG:
        name = f"guidance=cfg,guidance.scale={w:g}"
        _write_point(root / name, name.split(","), _info("cfg", w, True, 2, 0), metrics, CFG_COLOUR)
    # A failed Hydra job: config and log, no results.
    failed = root / "guidance=classifier,guidance.conditional=true,guidance.scale=4"
    _write_point(failed, failed.name.split(","), None, None)
    (failed / "sample.log").write_text("[INFO] start\nerror: classifier checkpoint missing: run guidance-train\n")
    return root


@pytest.fixture
def sweep(tmp_path) -> Path:
    return make_sweep(tmp_path)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict[str, Path]:
    """One report shared by the read-only tests (matplotlib rendering is the slow part)."""
    base = tmp_path_factory.mktemp("report")
    return build_report(make_sweep(base), base / "out", describe=describe_point, progress=False)


def _read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_collect_keeps_every_point_with_status(sweep):
    s = collect_sweep(sweep, describe_point, progress=False)
    assert len(s.points) == len(CLF) + len(CFG) + 1
    assert s.name == "demo" and s.extractor == "evaluator" and s.weights_sha256 == SHA
    status = {p.name: p.status for p in s.points}
    assert status["guidance=cfg,guidance.scale=4"] == "missing metrics"
    failed = status["guidance=classifier,guidance.conditional=true,guidance.scale=4"]
    assert failed.startswith("failed:") and "classifier checkpoint missing" in failed
    assert sum(v == "ok" for v in status.values()) == len(CLF) + len(CFG) - 1
    p = next(p for p in s.points if p.name.endswith("scale=4") and p.strategy == "classifier")
    assert (p.strategy, p.scale, p.conditional) == ("classifier", 4.0, True)  # recovered from Hydra overrides


def test_unreadable_file_is_a_row(sweep):
    bad = sweep / "guidance=cfg,guidance.scale=1" / "metrics.json"
    bad.write_text("{not json")
    s = collect_sweep(sweep, describe_point, progress=False)
    p = next(p for p in s.points if p.name == "guidance=cfg,guidance.scale=1")
    assert p.status.startswith("failed: unreadable metrics.json") and p.value("fid") is None
    assert p.strategy == "cfg" and p.scale == 1.0


def test_csv_rows_order_best_and_missing(report):
    rows = [r for r in _read_csv(report["csv"]) if r["table"] != "matched_cost"]
    assert len(rows) == len(CLF) + len(CFG) + 1
    clf = [r for r in rows if r["table"] == "classifier"]
    cfg = [r for r in rows if r["table"] == "cfg"]
    # ADM Table 4 order: unconditional block, then conditional; none before classifier; scale ascending;
    # the failed conditional s=4 job sits inside the conditional block by its scale.
    assert [(r["model"], r["strategy"], float(r["scale"])) for r in clf] == [
        ("unconditional", "none", 0), ("unconditional", "classifier", 1), ("unconditional", "classifier", 10),
        ("conditional", "none", 0), ("conditional", "classifier", 1), ("conditional", "classifier", 4),
        ("conditional", "classifier", 10)]
    assert [float(r["scale"]) for r in cfg] == [w for w, _ in CFG]
    best = lambda table, m: [(r["model"], float(r["scale"])) for r in table if r[f"{m}_best"] == "best"]
    assert best(clf, "fid") == [("conditional", 1.0)]
    assert best(clf, "precision") == [("conditional", 10.0)]
    assert best(clf, "recall") == [("unconditional", 0.0)]
    assert best(clf, "is") == []  # 100 ± 3 vs 96 ± 2 overlap
    assert best(cfg, "fid") == [("conditional", 0.5)]
    assert best(cfg, "sfid") == []  # 6 ± 0.5 vs 6.4 ± 0.2 overlap
    assert best(cfg, "is") == best(cfg, "precision") == [("conditional", 2.0)]
    assert best(cfg, "recall") == [("conditional", 0.0)]
    # values and spreads round-trip; missing numbers are empty cells with a status
    r = next(r for r in clf if r["model"] == "conditional" and r["scale"] == "1.0")
    assert float(r["fid"]) == 5.0 and float(r["fid_std"]) == 0.5 and float(r["is_std"]) == 2.0
    assert float(r["nfe_per_sample"]) == STEPS and float(r["classifier_backward_per_sample"]) == STEPS
    w4 = cfg[-1]
    assert w4["fid"] == "" and w4["fid_best"] == "" and w4["status"] == "missing metrics"
    assert float(w4["nfe_per_sample"]) == 2 * STEPS  # cost known from sample_info even without metrics
    failed = clf[5]
    assert failed["status"].startswith("failed:") and failed["fid"] == "" and failed["nfe_per_sample"] == ""


def _md_table(md: str, title_part: str) -> list[list[str]]:
    block = md.split(title_part, 1)[1].split("### ", 1)[0]
    lines = [l for l in block.splitlines() if l.startswith("|")]
    return [[c.strip() for c in l.strip("|").split("|")] for l in lines]


def test_markdown_layout(report):
    md = report["md"].read_text()
    clf = _md_table(md, "ADM Table 4")
    header, body = clf[0], clf[2:]
    assert header[:3] == ["Model", "Guidance", "Scale s"]
    assert [h.split()[0] for h in header[3:8]] == ["FID", "sFID", "IS", "Precision", "Recall"]
    assert header[8:] == ["NFE/sample", "Classifier fwd/bwd per sample", "Status"]
    assert len(body) == 7
    cond_s1 = body[4]
    assert cond_s1[:3] == ["conditional", "classifier", "1"]
    assert cond_s1[3] == "**5.00 ± 0.50**" and cond_s1[5] == "96.00 ± 2.00"  # IS not bold: within spread
    assert cond_s1[9] == f"{STEPS}/{STEPS}"
    assert body[6][6] == "**0.90**" and body[0][7] == "**0.70**"
    assert body[5][3] == "–" and body[5][-1].startswith("failed:")
    # bold: FID, sFID (7 vs 9, no spreads), precision, recall; IS (100 ± 3 vs 96 ± 2) is not called
    assert sum("**" in c for row in body for c in row) == 4
    cfg = _md_table(md, "Ho & Salimans")
    assert cfg[0][0] == "w" and "Status" in cfg[0] and len(cfg) - 2 == len(CFG)
    assert cfg[2 + 1][1] == "**8.00 ± 0.30**" and cfg[2 + 1][2] == "6.00 ± 0.50"
    assert cfg[-1][1] == "–" and cfg[-1][-1] == "missing metrics"
    assert "Differences within ± are not called" in md
    assert "IS: 100.00 ± 3.00 vs 96.00 ± 2.00" in md and "sFID: 6.00 ± 0.50 vs 6.40 ± 0.20" in md
    assert f"evaluator, weights {SHA[:8]}" in md and f"{N} samples per point vs 10000 reference" in md


def test_classifier_table_sfid_best(sweep):
    # sFID in the classifier table: conditional s=1 (7) vs conditional none (9), no spreads -> called.
    t = build_tables(collect_sweep(sweep, describe_point, progress=False))[0]
    assert t.rows[t.best["sfid"]].name == "guidance=classifier,guidance.conditional=true,guidance.scale=1"


def test_latex_booktabs(report):
    tex = report["tex"].read_text()
    assert tex.count("\\begin{table}") == 4 and tex.count("\\toprule") == 4 and tex.count("\\bottomrule") == 4
    assert "\\label{tab:tradeoff-matched-cost}" in tex and "\\label{tab:tradeoff-budget}" in tex  # budget: last
    tex = tex.split("\\begin{table}")[:3]  # the paper tables (the matched-cost table is tested on its own)
    tex = "\\begin{table}".join(tex)
    assert "\\textbf{5.00 $\\pm$ 0.50}" in tex and "96.00 $\\pm$ 2.00 &" in tex
    assert "\\textbf{96.00" not in tex and "\\textbf{100.00" not in tex
    assert "missing metrics" in tex and " -- " in tex and "–" not in tex
    assert f"evaluator, weights {SHA[:8]}" in tex and "Differences within $\\pm$ are not called" in tex
    clf = tex.split("\\end{table}")[0]
    rows = [l for l in clf.splitlines() if l.endswith("\\\\")]
    assert len(rows) == 1 + 7 and all(r.count("&") == rows[0].count("&") for r in rows)
    assert clf.count("\\midrule") == 2  # header rule + the unconditional/conditional separator


def test_cfg_classifier_table_and_all_failed(tmp_path):
    root = tmp_path / "combo"
    fids = {(1.0, 0.5): 9.0, (1.0, 2.0): 7.0, (0.5, 2.0): 8.0}  # (w, s) -> FID; best (1, 2)
    for (w, s_), fid in fids.items():
        info = {**_info("cfg_classifier", w, True, 2, 1), "classifier_scale": s_}
        _write_point(root / f"w{w}_s{s_}", [], info, dict(fid=fid, sfid=1.0, is_mean=1.0, precision=0.5, recall=0.5),
                     (10, 20, 30))
    _write_point(root / "crashed", [], None, None)  # no overrides, no log: strategy unknown, still a row
    paths = build_report(root, tmp_path / "out", describe=describe_point, progress=False)
    rows = _read_csv(paths["csv"])
    assert [(r["table"], r["scale"], r["x"], r["series"]) for r in rows] == [  # x: s, the curve's swept value
        ("cfg_classifier", "0.5", "2.0", "cfg+classifier, w=0.5"),
        ("cfg_classifier", "1.0", "0.5", "cfg+classifier, w=1"),
        ("cfg_classifier", "1.0", "2.0", "cfg+classifier, w=1"), ("cfg_classifier", "", "", "")]
    assert [r["fid_best"] for r in rows] == ["", "", "best", ""]
    assert rows[-1]["status"] == "failed: job wrote no sample_info.json or metrics.json"
    md = paths["md"].read_text()
    header = [c.strip() for c in md.split("\n| ")[1].split("|")]
    assert header[:2] == ["w", "s"] and "Classifier fwd/bwd per sample" in header
    assert "| 1 | 2 | **7.00** |" in md
    # A sweep where every job failed still gives a report, with the rows and empty plots.
    for d in root.iterdir():
        if d.name != "crashed":
            for f in ("metrics.json", "sample_info.json", "grid.png"):
                (d / f).unlink()
    paths = build_report(root, tmp_path / "out2", describe=describe_point, progress=False)
    assert len(_read_csv(paths["csv"])) == 4 and all(paths[k].is_file() for k in ("fid_vs_scale", "grids"))


def test_matched_cost_table_lists_every_curve_at_its_best_fid(sweep):
    """One row per curve (strategy with its settings; unguided baselines too) at its lowest FID, sorted by FID,
    with the NFE and classifier passes counted while sampling."""
    (t,) = [t for t in build_tables(collect_sweep(sweep, describe_point, progress=False)) if t.kind == "matched_cost"]
    got = [(p.desc.series, p.x, p.value("fid")) for p in t.rows]
    assert got == [("classifier (conditional)", 1.0, 5.0), ("cfg", 0.5, 8.0), ("none (conditional)", 0.0, 10.0),
                   ("classifier (unconditional)", 1.0, 20.0), ("none (unconditional)", 0.0, 30.0)]
    md = _md_table(to_markdown([t]), "matched cost")
    assert md[0][:3] == ["Strategy", "Scale", "FID ↓"] and "NFE/sample" in md[0]
    assert md[2][:3] == ["classifier (conditional)", "s = 1", "**5.00 ± 0.50**"] and md[4][1] == "–"
    assert md[2][md[0].index("NFE/sample")] == str(STEPS)


def test_pick_best_spread_rule():
    from guidance.report.collect import Point

    def pts(*vs):
        return [Point(name=str(i), folder=Path("."),
                  results={"evaluator": {"fid": v, "fid_std": s} if s is not None else {"fid": v}})
                for i, (v, s) in enumerate(vs)]

    assert pick_best(pts((5.0, None), (6.0, None)), "fid") == (0, None)
    assert pick_best(pts((5.0, None), (5.0, None)), "fid")[0] is None  # exact tie: not called
    assert pick_best(pts((6.0, 0.4), (5.0, 0.5)), "fid") == (1, None)  # |d| = 1 > 0.4 + 0.5: called
    assert pick_best(pts((6.0, 0.5), (5.0, 0.5)), "fid")[0] is None  # intervals touch: not called
    assert pick_best(pts((6.0, 0.4), (5.0, 0.4), (9.0, None)), "fid")[0] == 1
    assert pick_best(pts((5.0, None)), "fid") == (None, None)  # a single value is not a comparison


def test_pareto_front_known():
    pts = [(10, 50), (8, 40), (12, 70), (9, 45), (11, 60), (13, 65), (8, 30)]
    assert pareto_front(pts) == [(8, 40), (9, 45), (10, 50), (11, 60), (12, 70)]


def test_plots_written(report):
    paths = report
    for name in ("fid_vs_scale", "precision_recall", "is_vs_fid", "grids"):
        assert paths[name].parent == paths["md"].parent / "plots" and paths[name].suffix == ".png"
        with Image.open(paths[name]) as im:
            im.verify()
        with Image.open(paths[name]) as im:
            assert im.format == "PNG" and min(im.size) > 100
    # Every point's grid.png lands in the grid figure: its solid colour must appear there.
    grid = np.asarray(Image.open(paths["grids"]).convert("RGB")).reshape(-1, 3)
    for colour in {c for *_, c in CLF} | {CFG_COLOUR}:
        assert (np.abs(grid.astype(int) - colour).max(1) <= 2).sum() > 100, colour
    assert not list(paths["md"].parent.rglob(".*.tmp"))  # atomic writes left no temp files


def test_report_folder_inside_sweep_is_not_a_point(sweep):
    # report/ (default out_dir) under sweep_dir must not be read back as points on the next run; a stray
    # metrics.json in it would be, so plant one to make this test able to fail.
    (sweep / "report").mkdir()
    (sweep / "report" / "metrics.json").write_text("{}")
    assert len(collect_sweep(sweep, describe_point, exclude=[sweep / "report"], progress=False).points) == \
        len(CLF) + len(CFG) + 1
    assert len(collect_sweep(sweep, describe_point, progress=False).points) == len(CLF) + len(CFG) + 2


def test_errors_one_line(tmp_path, sweep):
    with pytest.raises(GuidanceError, match="is not a folder"):
        collect_sweep(tmp_path / "nope", describe_point)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GuidanceError, match="no sweep points"):
        collect_sweep(tmp_path / "empty", describe_point)
    m = sweep / "guidance=cfg,guidance.scale=2" / "metrics.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "weights_sha256": "f" * 64}))  # a retrained evaluator
    with pytest.raises(GuidanceError, match="mixes two sets of evaluator weights") as e:
        collect_sweep(sweep, describe_point, progress=False)
    assert "\n" not in str(e.value)


def test_table_with_two_extractors_shows_both_columns(tmp_path):
    """Points evaluated on the evaluator and on DINOv2 (metrics.json format 2, one result per extractor): the
    table keeps the evaluator's paper columns and adds FD_DINOv2; best is called per column; csv has both."""
    root = tmp_path / "two"
    values = {0.0: (10.0, 300.0), 1.0: (6.0, 200.0), 3.0: (8.0, 150.0)}  # w -> (evaluator FID, FD_DINOv2)
    for w, (fid, fd) in values.items():
        folder = root / f"w={w}"
        folder.mkdir(parents=True)
        info = {"strategy": "cfg" if w else "none", "scale": w, "conditional": True, "sampler": "ddim", "steps": 25,
                "num_samples": 100, "seed": 0, "cost_per_sample": {"nfe": 50 if w else 25}}
        (folder / "sample_info.json").write_text(json.dumps(info))
        base = {"num_samples": 100, "num_reference": 1000, "precision": 0.7, "recall": 0.5}
        results = {"evaluator": {**base, "extractor": "evaluator", "weights_sha256": "a" * 64, "fid": fid},
                   "dinov2": {**base, "extractor": "dinov2", "weights_sha256": "d" * 64, "fid": fd, "recall": 0.4}}
        (folder / "metrics.json").write_text(json.dumps({"format": 2, "samples_sha256": "x", "extractors": results}))
    sweep = collect_sweep(root, describe_point, progress=False)
    assert list(sweep.extractors) == ["evaluator", "dinov2"]
    (t,) = [t for t in build_tables(sweep) if t.kind == "cfg"]
    assert [c.label for c in t.columns] == ["FID (evaluator)", "sFID (evaluator)", "IS (evaluator)",
                                             "Precision (evaluator)", "Recall (evaluator)", "FD_DINOv2"]
    md = _md_table(to_markdown([t]), "Ho & Salimans")
    header, body = md[0], md[2:]
    fid, fd = header.index("FID (evaluator) ↓"), header.index("FD_DINOv2 ↓")
    assert [(r[0], r[fid], r[fd]) for r in body] == [("0", "10.00", "300.00"), ("1", "**6.00**", "200.00"),
                                                     ("3", "8.00", "**150.00**")]  # each column its own best
    assert "Features: evaluator, weights aaaaaaaa; dinov2, weights dddddddd" in to_markdown([t])
    rows = list(csv.DictReader(io.StringIO(to_csv([t], sweep))))
    assert [(r["fid"], r["dinov2_fid"], r["dinov2_recall"], r["dinov2_fid_best"]) for r in rows] == [
        ("10.0", "300.0", "0.4", ""), ("6.0", "200.0", "0.4", ""), ("8.0", "150.0", "0.4", "best")]
    assert "dinov2_sfid" not in rows[0]  # DINOv2 has no spatial feature: no sFID column


def _app(*args, cwd):
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "guidance.apps.tradeoff", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_app_subprocess(sweep, tmp_path):
    r = _app(f"sweep_dir={sweep}", "logger=none", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = sweep / "report"
    for f in ("tradeoff.md", "tradeoff.csv", "tradeoff.tex", "tradeoff_config.yaml", "plots/grids.png"):
        assert (out / f).is_file(), f
    assert sorted(os.listdir(tmp_path)) == ["sweeps"] and not (out / "wandb").exists()  # no Hydra outputs/ or logs
    (tmp_path / "empty").mkdir()
    for args, msg in [((), "sweep_dir is required"), ((f"sweep_dir={tmp_path / 'nope'}",), "is not a folder"),
                      ((f"sweep_dir={tmp_path / 'empty'}",), "no sweep points")]:
        r = _app(*args, "logger=none", cwd=tmp_path)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")
        assert msg in r.stderr
    assert not (tmp_path / "nope").exists()  # Hydra must not create the missing sweep folder


def test_wandb_summary_logged_in_sweep_group(sweep, tmp_path, monkeypatch):
    import guidance.tracking as common

    calls, logged = [], {}

    class FakeRun:
        dir = str(tmp_path / "fake-run")

        def log(self, d):
            logged.update(d)

        def finish(self):
            calls.append("finish")

    def fake_init(logger_cfg, job_type, config=None, name=None, group=None, dir=None):
        calls.append(dict(job_type=job_type, group=group, mode=logger_cfg["mode"]))
        return FakeRun()

    monkeypatch.setattr(common, "init_wandb", fake_init)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    build_report(sweep, tmp_path / "out", logger_cfg={"mode": "offline"}, describe=describe_point, progress=False)
    assert calls == [dict(job_type="tradeoff", group="demo", mode="offline"), "finish"]
    table = logged["tradeoff/table"]
    assert len(table.data) == len(CLF) + len(CFG) + 1 + 5 and "fid_best" in table.columns  # + matched cost
    fid = table.columns.index("fid")
    paper_rows = [r for r in table.data if r[0] != "matched_cost"]
    assert sorted(r[fid] for r in paper_rows if r[fid] is not None)[:2] == [5.0, 8.0]  # numbers, not strings
    for key in ("fid_vs_scale", "precision_recall", "is_vs_fid", "grids"):
        assert type(logged[f"tradeoff/plots/{key}"]).__name__ == "Image"
    for metric in ("fid", "is", "precision", "recall"):
        assert f"tradeoff/charts/{metric}_vs_scale" in logged
    assert sum(k.startswith("grids/") for k in logged) == len(CLF) + len(CFG)  # every point with a grid.png
    calls.clear()
    build_report(sweep, tmp_path / "out2", logger_cfg={"mode": "disabled"}, describe=describe_point, progress=False)
    assert calls == []  # logger=none: no run at all


@pytest.mark.slow
def test_wandb_offline_summary(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    paths = build_report(sweep, tmp_path / "out", logger_cfg={"mode": "offline", "project": "test"},
                         describe=describe_point, progress=False)
    runs = list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert paths["wandb"].exists() and len(runs) == 1
    media = runs[0] / "files" / "media"
    assert list(media.rglob("table_*.table.json")) and len(list(media.rglob("*.png"))) >= 4 + len(CLF) + len(CFG)


def test_cfg_table_takes_the_conditional_baseline_as_w0(tmp_path):
    """A sweep without a cfg w=0 point shows the unguided conditional (`none`) point as the w = 0 row."""
    root = tmp_path / "sweep"
    _write_point(root / "none-cond", [], _info("none", 0.0, True, 1, 0), {"fid": 10.0}, CFG_COLOUR)
    _write_point(root / "none-uncond", [], _info("none", 0.0, False, 1, 0), {"fid": 30.0}, CFG_COLOUR)
    _write_point(root / "cfg-1", [], _info("cfg", 1.0, True, 2, 0), {"fid": 8.0}, CFG_COLOUR)
    tables = {t.kind: t for t in build_tables(collect_sweep(root, describe_point, progress=False))}
    cfg_rows = [(p.strategy, p.x, p.value("fid")) for p in tables["cfg"].rows]
    assert cfg_rows == [("none", 0.0, 10.0), ("cfg", 1.0, 8.0)]
    assert "| 0 | 10.00" in to_markdown([tables["cfg"]])


def test_cfg_interval_points_get_their_own_table_with_w(tmp_path):
    """cfg_interval rows: their own table (w and interval columns), headed by the conditional baseline as w = 0."""
    root = tmp_path / "sweep"
    _write_point(root / "none-cond", [], _info("none", 0.0, True, 1, 0), {"fid": 10.0}, CFG_COLOUR)
    _write_point(root / "cfg-1", [], _info("cfg", 1.0, True, 2, 0), {"fid": 8.0}, CFG_COLOUR)
    for w, fid in ((2.0, 6.0), (1.0, 7.0)):
        info = {**_info("cfg_interval", w, True, 2, 0), "sigma_lo": 0.0, "sigma_hi": 6.2,
                "cost_per_sample": dict(nfe=40, classifier_forward=0, classifier_backward=0)}
        _write_point(root / f"cfg_interval-{w:g}", [], info, {"fid": fid}, CFG_COLOUR)
    sweep = collect_sweep(root, describe_point, progress=False)
    tables = {t.kind: t for t in build_tables(sweep)}
    assert set(tables) == {"cfg", "cfg_interval", "matched_cost"}
    rows = [(p.strategy, p.x, p.value("fid"), p.nfe) for p in tables["cfg_interval"].rows]
    assert rows == [("none", 0.0, 10.0, 25.0), ("cfg_interval", 1.0, 7.0, 40.0), ("cfg_interval", 2.0, 6.0, 40.0)]
    assert [p.strategy for p in tables["cfg"].rows] == ["none", "cfg"]
    md = to_markdown([tables["cfg_interval"]])
    assert "CFG in a limited interval (Kynkäänniemi et al. 2024)" in md
    assert "| w | Interval σ | FID" in md and "| 2 | (0, 6.2] | **6.00** |" in md and "| 0 | – | 10.00" in md
    csv_rows = list(csv.DictReader(io.StringIO(to_csv([tables["cfg_interval"]], sweep))))
    assert [(r["table"], r["x"]) for r in csv_rows] == [("cfg_interval", "0.0"), ("cfg_interval", "1.0"),
                                                                ("cfg_interval", "2.0")]


def test_points_of_several_samplers_get_a_sampler_column_and_curve(tmp_path):
    root = tmp_path / "samplers"
    for sampler, label, steps, fid in [("ddim", "ddim eta=0", 20, 4.0), ("heun", "heun", 10, 3.0)]:
        for w in (0.0, 1.0):
            info = {**_info("cfg", w, True, 1, 0), "sampler": sampler, "sampler_label": label, "steps": steps}
            _write_point(root / f"{sampler}-{w:g}", [], info, {"fid": fid + w}, CFG_COLOUR)
    (t,) = build_tables(collect_sweep(root, describe_point, progress=False))
    md = to_markdown([t])
    assert "| w | Sampler | FID" in md and "| 1 | heun, 10 steps | 4.00" in md and "| 0 | ddim eta=0, 20 steps | 4.00" in md
    from guidance.report.plots import group_series

    assert sorted(group_series(t.rows)) == ["cfg, ddim eta=0 20", "cfg, heun 10"]


def test_class_accuracy_column_and_plot_appear_when_measured(tmp_path):
    root = tmp_path / "acc"
    for w, acc in [(0.0, 0.80), (1.0, 0.90), (2.0, 0.95)]:
        _write_point(root / f"cfg-{w:g}", [], _info("cfg", w, True, 2, 0),
                     {"fid": 5.0 + w, "recall": 0.8 - 0.1 * w, "class_acc": (acc, 0.01)}, CFG_COLOUR)
    paths = build_report(root, tmp_path / "out", describe=describe_point, progress=False)
    md = paths["md"].read_text()
    assert "| w | FID ↓ | sFID ↓ | IS ↑ | Precision ↑ | Recall ↑ | Class acc ↑ |" in md and "**0.950 ± 0.010**" in md
    assert paths["accuracy_recall"].stat().st_size > 0
    assert [r["class_acc"] for r in _read_csv(paths["csv"])] == ["0.8", "0.9", "0.95"]
    other = tmp_path / "no_acc"  # without the value the column stays out of the paper layout
    _write_point(other / "cfg-1", [], _info("cfg", 1.0, True, 2, 0), {"fid": 5.0}, CFG_COLOUR)
    md = build_report(other, tmp_path / "out2", describe=describe_point, progress=False)["md"].read_text()
    assert "Class acc" not in md


def test_grid_sheet_has_no_empty_cell_and_labels_inside(sweep, tmp_path, monkeypatch):
    """grids.png: one cell per curve at its best FID (5 curves), then a strip per multi-scale curve, headed by its
    model's unguided point unless it has one (classifier: 1 + 2 each; cfg: its 5 points, w = 0 included); every
    cell an image, every label inside the figure."""
    import guidance.report.plots as plots

    seen = {}
    save = plots._save

    def recording_save(fig, path):
        fig.canvas.draw()
        box = fig.bbox
        seen["images"] = sum(bool(ax.images) for ax in fig.axes)
        seen["empty"] = sum(not ax.images for ax in fig.axes)
        inside = lambda e: box.contains(*e.p0) and box.contains(*e.p1)
        seen["outside"] = [t.get_text() for ax in fig.axes for t in ax.texts if not inside(t.get_window_extent())]
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    plots.plot_grids(collect_sweep(sweep, describe_point, progress=False), tmp_path / "grids.png")
    assert seen == {"images": 5 + 3 + 3 + 5, "empty": 0, "outside": []}


def test_an_unguided_model_run_with_several_samplers_gets_one_colour_per_sampler(tmp_path):
    from guidance.report.plots import styles

    for sampler in ("ddim", "heun"):
        info = dict(strategy="none", scale=0.0, conditional=True, sampler=sampler, steps=10, num_samples=N, seed=7,
                    cost_per_sample=dict(nfe=10))
        _write_point(tmp_path / f"s={sampler}", ["guidance=none"], info, None)
    style = styles(collect_sweep(tmp_path, describe_point, progress=False))
    assert len(style) == 2 and all(s["marker"] == "*" for s in style.values())
    assert len({str(s["color"]) for s in style.values()}) == 2  # not two identical grey stars
