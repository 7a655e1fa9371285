#!/usr/bin/env bash
# Every guidance strategy on the shipped CPU model (pretrained/fashion_mnist/cpu): experiment=strategy_compare_cpu
# (2000 samples per point, same per-image seeds, DDIM 10 steps, one setting per strategy). Then copies the report.
set -euo pipefail
OUT=${OUT:-runs/main/fashion_mnist-compare_cpu}
python -m guidance.apps.main experiment=strategy_compare_cpu logger=none out_dir=$OUT "$@"
mkdir -p experiments/fmnist_strategy_compare
cp -r $OUT/report/tradeoff.md $OUT/report/tradeoff.csv $OUT/report/plots experiments/fmnist_strategy_compare/
