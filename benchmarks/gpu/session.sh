#!/usr/bin/env bash
# Every GPU figure issue 22 asks for, in ONE command for a lent GPU (the device tool allows 10 minutes a command):
# batching stacked vs split, fp32 / bf16 / TF32 / compile, the engine overhead per strategy, and the main job's
# wall time (sampling + metrics of every point) on the shipped CPU-study snapshots. About 8 minutes on one H200
# (planned from the CPU figures and the one H100 run of experiments/fmnist_gpu_tiny_models; never run yet: no GPU
# was lent to the sessions that wrote it). Prepare first, here: bash benchmarks/gpu/prepare.sh; then
#   device run: command="bash benchmarks/gpu/session.sh", carry=[".gpu"], timeout_s=600
# Results: $OUT/*.txt (the device tool brings them back); put the figures in benchmarks/README.md and set the
# GPU auto policies (guidance.sampling.runtime.auto_policy) from them.
set -uo pipefail
OUT=${OUT:-runs/gpu_session}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD || { echo "wheels missing: run benchmarks/gpu/prepare.sh here first"; exit 1; }
export WANDB_MODE=disabled PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
step() { local limit=$1 name=$2; shift 2; local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1; echo "$name: rc=$? in $((SECONDS - t0)) s" >> "$OUT/summary.txt"; }
step 100 batching python3 -m benchmarks.bench_batching --device cuda --batches 250,1000,4000 --precisions fp32,bf16
step 150 runtime python3 -m benchmarks.bench_runtime --device cuda --n 4000 --settings fp32,bf16,tf32,compile-bf16
step 60 overhead python3 -m benchmarks.bench_overhead --device cuda --batch 1024
step 200 main_job python3 -m guidance.apps.main device=cuda logger=none data.root=.gpu/data/fashion-mnist \
  study.batch_size=1000 study.compile=false out_dir=/tmp/main_job
cat "$OUT/summary.txt"
