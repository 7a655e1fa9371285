#!/usr/bin/env bash
# Strategies at equal compute (issue 22, item 2): conf/experiment/budget_compare_cpu.yaml (19 points, 2000 samples
# each, DPM-Solver++(2M), fp32, the shipped CPU snapshots), then this folder's copy of the points (no samples.npz)
# and the report rebuilt from them. Run from the repository root:
#   bash experiments/fmnist_budget/run.sh
set -euo pipefail
bin=${GUIDANCE_BIN:-.venv/bin}
"$bin/guidance-main" experiment=budget_compare_cpu logger=none
src=runs/main/fashion_mnist-budget_cpu/sweep
dst=experiments/fmnist_budget
rm -rf "$dst/points" && mkdir -p "$dst/points"
for d in "$src"/*/; do
  n=$(basename "$d"); mkdir -p "$dst/points/$n"
  cp "$d"/{grid.png,metrics.json,sample_info.json} "$dst/points/$n/"
done
"$bin/guidance-tradeoff" sweep_dir="$dst/points" out_dir="$dst" logger=none progress=false
rm -f "$dst/tradeoff_config.yaml"
