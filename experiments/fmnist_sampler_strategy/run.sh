#!/usr/bin/env bash
# Sampler x strategy at matched network evaluations (issue 21, item 3): three samplers (DDIM eta=0, DPM-Solver++(2M)
# on ADM's ddim grid, EDM's Heun on its rho-grid: each on its default grid kind) x three strategies (unguided conditional, CFG w = 1, classifier
# guidance s = 1) at about 10, 20 and 40 U-Net passes per sample (CFG pays two per step, Heun two per step but one
# on the last), with the shipped Fashion-MNIST models, 2000 samples per point (same per-image seeds everywhere),
# the main job's metrics settings, fp32 (the same numbers on every CPU). Run from the repository root:
#   bash experiments/fmnist_sampler_strategy/run.sh
set -euo pipefail
out=${1:-runs/sweeps/fmnist_sampler_strategy}
bin=${GUIDANCE_BIN:-.venv/bin}
common=(unet_ckpt=pretrained/fashion_mnist/cpu/unet.pt classifier_ckpt=pretrained/fashion_mnist/cpu/classifier.pt
        num_samples=2000 batch_size=250 labels=balanced evaluate=true logger=none sweep_name=fmnist_sampler_strategy
        "hydra.sweep.dir=$out" metrics.evaluator_checkpoint=pretrained/fashion_mnist/cpu/evaluator.pt
        metrics.num_reference=10000 metrics.kid_subset_size=1000 precision=fp32 compile=true)
# Grids per sampler at ~10, 20, 40 U-Net passes per sample: "one pass per step" (unguided, classifier: the
# classifier's forward/backward is counted apart) and "two passes per step" (CFG). Heun: 2 per step, 1 on the last.
declare -A one=([ddim]="ddim10 ddim20 ddim40" [dpmpp_2m]="ddim10 ddim20 ddim40" [heun]="edm5 edm10 edm20")
declare -A two=([ddim]="ddim5 ddim10 ddim20" [dpmpp_2m]="ddim5 ddim10 ddim20" [heun]="edm3 edm5 edm10")
for tier in 0 1 2; do          # the cheap budgets first: a run stopped early still has whole tiers
  for sampler in ddim dpmpp_2m heun; do
    g1=$(cut -d' ' -f$((tier + 1)) <<< "${one[$sampler]}"); g2=$(cut -d' ' -f$((tier + 1)) <<< "${two[$sampler]}")
    "$bin/guidance-sample" -m "${common[@]}" sampler="$sampler" sampler.respacing="$g1" guidance=none
    "$bin/guidance-sample" -m "${common[@]}" sampler="$sampler" sampler.respacing="$g1" guidance=classifier guidance.scale=1
    "$bin/guidance-sample" -m "${common[@]}" sampler="$sampler" sampler.respacing="$g2" guidance=cfg guidance.scale=1
  done
done
"$bin/guidance-tradeoff" sweep_dir="$out" out_dir="$out/report" logger=none
