#!/usr/bin/env bash
# Every sampler on the engine's contract with the shipped Fashion-MNIST models, at ~20 network evaluations per
# sample: unguided (conditional), CFG w = 1 and classifier guidance s = 1; 500 samples per point, the main job's
# metrics settings. Run from the repository root:  bash experiments/fmnist_samplers/run.sh
set -euo pipefail
out=${1:-runs/sweeps/fmnist_samplers}
bin=${GUIDANCE_BIN:-.venv/bin}
common=(unet_ckpt=pretrained/fashion_mnist/cpu/unet.pt classifier_ckpt=pretrained/fashion_mnist/cpu/classifier.pt
        num_samples=500 labels=balanced evaluate=true logger=none sweep_name=fmnist_samplers "hydra.sweep.dir=$out"
        metrics.evaluator_checkpoint=pretrained/fashion_mnist/cpu/evaluator.pt metrics.num_reference=10000
        metrics.kid_subset_size=250
        precision=fp32)   # the published tables were made in fp32 (before precision=auto chose bf16 on AMX CPUs)
# sampler and grid: DDPM/DDIM/DPM-Solver++ on ADM's ddim20 (20 NFE), Euler on EDM's rho-grid with 20 steps,
# Heun on edm10 (19 NFE: two evaluations per step, one on the last).
for spec in "ddpm ddim20" "ddim ddim20" "dpmpp_2m ddim20" "euler edm20" "heun edm10"; do
  read -r sampler grid <<< "$spec"
  "$bin/guidance-sample" -m "${common[@]}" sampler="$sampler" sampler.respacing="$grid" guidance=none
  "$bin/guidance-sample" -m "${common[@]}" sampler="$sampler" sampler.respacing="$grid" guidance=cfg,classifier guidance.scale=1
done
"$bin/guidance-tradeoff" sweep_dir="$out" out_dir="$out/report" logger=none
