#!/usr/bin/env bash
# Produces the snapshots shipped in pretrained/fashion_mnist/cpu/ (used by `guidance-main`, study=cpu).
# Ran on one NVIDIA H100 (see README.md in this folder for the log and timings); on a CPU it takes hours.
# DATA_ROOT: a folder with the Fashion-MNIST IDX files (default: the Debian package path).
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-/usr/share/datasets/fashion-mnist}
OUT=${OUT_DIR:-runs/pretrain}
PY=${PYTHON:-python}

# U-Net (adm_tiny) + noise-aware classifier (tiny), trained jointly: the `guidance-train` app.
$PY -m guidance.apps.train model=adm_tiny classifier=tiny name=cpu_preset out_dir=$OUT/train \
  training.total_steps=${STEPS:-6000} training.batch_size=${BATCH:-512} training.ema_rate=0.999 \
  training.checkpoint_every=1000 training.log_every=250 training.sample_every=0 training.ema_warmup=false \
  data.root=$DATA_ROOT logger=none &
# Evaluator network for the metrics: the `guidance-train-evaluator` app.
$PY -m guidance.apps.train_evaluator epochs=5 out_dir=$OUT/evaluator data.root=$DATA_ROOT logger=none
wait
