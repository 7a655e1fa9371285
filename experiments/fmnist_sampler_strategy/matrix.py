"""Sampler x strategy at matched U-Net passes, from this folder's tradeoff.csv (the report's own numbers):
    python experiments/fmnist_sampler_strategy/matrix.py > experiments/fmnist_sampler_strategy/matrix.md
A cell is FID ± its bootstrap spread; per strategy and budget, the best sampler is bold only when no other sampler's
interval (FID ± spread) overlaps its own, as every table of the report calls a best."""

import csv
from pathlib import Path

here = Path(__file__).parent
rows = {}
for r in csv.DictReader(open(here / "tradeoff.csv")):
    budget = round(float(r["nfe_per_sample"]) / 10) * 10  # Heun's 2N - 1 passes sit with the others' 2N
    rows.setdefault((r["strategy"], budget, r["sampler"]), (float(r["fid"]), float(r["fid_std"]), r["nfe_per_sample"]))
samplers = ["ddim", "dpmpp_2m", "heun"]
print("| strategy | U-Net passes | " + " | ".join(samplers) + " |")
print("|:---|---:|" + "---:|" * len(samplers))
for strategy in ("none", "cfg", "classifier"):
    for budget in sorted({b for s, b, _ in rows if s == strategy}):
        cells = {m: rows.get((strategy, budget, m)) for m in samplers}
        have = sorted((v[0], v[1], m) for m, v in cells.items() if v)
        best = have[0][2] if len(have) > 1 and have[0][0] + have[0][1] < have[1][0] - have[1][1] else None
        out = []
        for m in samplers:
            v = cells[m]
            text = "–" if v is None else f"{v[0]:.2f} ± {v[1]:.2f} ({float(v[2]):g})"
            out.append(f"**{text}**" if m == best else text)
        print(f"| {strategy} | {budget} | " + " | ".join(out) + " |")
