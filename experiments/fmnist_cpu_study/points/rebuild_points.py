"""How this folder was made (once, issue 18; the main job's own point folders were not kept): each point's
sample_info.json is its strategy's info() (conf/guidance/<name>.yaml + the study's settings, conf/study/cpu.yaml)
with the sampler, seed, counts and cost read from the main job's tradeoff.csv; metrics.json holds the csv's numbers
(Python's float repr round-trips them exactly). The report reads nothing else, and it rebuilt the committed
tradeoff.md/.csv/.tex byte for byte from them before the report changed.

    python experiments/fmnist_cpu_study/points/rebuild_points.py . <out folder>
"""

import csv
import json
import sys
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf

from guidance.metrics.registry import METRICS

repo, out = Path(sys.argv[1]), Path(sys.argv[2])
study = OmegaConf.load(repo / "conf/study/cpu.yaml").study
rows = {r["folder"]: r for r in csv.DictReader(open(repo / "experiments/fmnist_cpu_study/tradeoff.csv"))}
num = lambda s: None if s == "" else float(s)
for entry in study.sweep:
    tag = f"-{entry.tag}" if entry.get("tag") else ""
    for scale in entry.scales:
        cond = bool(entry.get("conditional", True))
        name = f"{entry.guidance}{tag}-{'cond' if cond else 'uncond'}-s{float(scale):g}"
        node = OmegaConf.load(repo / f"conf/guidance/{entry.guidance}.yaml")
        node = OmegaConf.merge(node, entry.get("settings") or {})
        if "conditional" in node:
            node.conditional = cond
        if "scale" in node:
            node.scale = float(scale)
        info, r = instantiate(node).info(), rows[name]
        sampler = entry.get("sampler") or study.sampler
        info.update(sampler=r["sampler"], sampler_label="ddim eta=0" if sampler == "ddim" else sampler,
                    steps=int(r["steps"]), num_samples=int(r["num_samples"]), seed=int(r["seed"]),
                    cost_per_sample={k: num(r[f"{k}_per_sample"])
                                     for k in ("nfe", "classifier_forward", "classifier_backward")})
        metrics = {"extractor": r["extractor"], "weights_sha256": r["weights_sha256"],
                   "num_samples": int(r["num_samples"]), "num_reference": 10000}
        for m, spec in METRICS.items():
            if r.get(m, "") != "":
                metrics[spec.key] = float(r[m])
            if r.get(f"{m}_std", "") != "":
                metrics[spec.std_key] = float(r[f"{m}_std"])
        (out / name).mkdir(parents=True, exist_ok=True)
        (out / name / "sample_info.json").write_text(json.dumps(info))
        (out / name / "metrics.json").write_text(json.dumps(metrics))
