"""Precision, layout, torch.compile and step count: speed, sample differences and the FID change, in one run.

    python -m benchmarks.bench_runtime                       # 2000 samples per setting, guidance=none, this CPU
    python -m benchmarks.bench_runtime --n 500 --settings fp32,bf16
    python -m benchmarks.bench_runtime --device cuda --settings fp32,bf16,compile-bf16,tf32

Each setting samples the same N images (same seeds, same labels, batch 250) with the shipped CPU-study snapshots
and reports: seconds per image (whole sampling loop, compile time excluded and shown apart), the speed-up over the
first setting, the max and mean absolute difference of the uint8 samples from the first setting's, and FID (the
shipped evaluator, 10k training images as reference) with its bootstrap spread. Defaults of
guidance.sampling.runtime.auto_policy come from these figures (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from benchmarks.common import REPO, SNAPSHOTS, build_guider, build_sampler, compose_sample, load_networks, machine
from guidance.device import resolve_device
from guidance.metrics.evaluate import evaluate_samples
from guidance.sampling import GuidedDenoiser
from guidance.sampling.generate import batch_ranges, sample_batch
from guidance.sampling.runtime import Runtime

# name -> (precision, channels_last, compile, sampler, respacing, tf32)
SETTINGS = {
    "fp32": ("fp32", False, False, "ddim", "ddim20", False),
    "bf16": ("bf16", False, False, "ddim", "ddim20", False),
    "channels_last": ("fp32", True, False, "ddim", "ddim20", False),
    "bf16-channels_last": ("bf16", True, False, "ddim", "ddim20", False),
    "compile": ("fp32", False, True, "ddim", "ddim20", False),
    "compile-bf16": ("bf16", False, True, "ddim", "ddim20", False),
    "compile-bf16-ddim15": ("bf16", False, True, "ddim", "ddim15", False),
    "compile-bf16-ddim10": ("bf16", False, True, "ddim", "ddim10", False),
    "compile-bf16-dpmpp10": ("bf16", False, True, "dpmpp_2m", "ddim10", False),
    "compile-bf16-euler10": ("bf16", False, True, "euler", "edm10", False),
    "tf32": ("fp32", False, False, "ddim", "ddim20", True),  # GPUs only: TF32 matmuls and convolutions
}
CPU_DEFAULT = "fp32,bf16,channels_last,bf16-channels_last,compile,compile-bf16,compile-bf16-ddim10"


def run_setting(name: str, nets: dict, meta: dict, guidance: str, n: int, device: torch.device):
    precision, channels_last, compile_, sampler_name, respacing, tf32 = SETTINGS[name]
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    sampler = build_sampler(meta, sampler=sampler_name, respacing=respacing)
    runtime = Runtime(precision, channels_last, compile_)
    denoiser = GuidedDenoiser(build_guider(guidance), nets, null_label=10, runtime=runtime)
    ranges = batch_ranges(n, 250)
    t0 = time.perf_counter()  # first batch alone: it holds the compilation
    first = sample_batch(sampler, denoiser, (1, 28, 28), *ranges[0], 0, 10, "balanced", device)
    t1 = time.perf_counter()
    rest = [sample_batch(sampler, denoiser, (1, 28, 28), s, e, 0, 10, "balanced", device) for s, e in ranges[1:]]
    t2 = time.perf_counter()
    for net in nets.values():  # back to NCHW for the next setting
        net.to(memory_format=torch.contiguous_format)
    images = torch.cat([first[0]] + [r[0] for r in rest])
    labels = torch.cat([first[1]] + [r[1] for r in rest])
    per_image = (t2 - t1) / max(n - len(first[0]), 1) if len(ranges) > 1 else (t1 - t0) / n
    setup = (t1 - t0) - per_image * len(first[0])  # compile (and warm-up) time beyond the batch's own work
    return images, labels, per_image, setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--guidance", default="none")
    ap.add_argument("--settings", default=None, help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    names = (args.settings or (CPU_DEFAULT if device.type == "cpu" else "fp32,tf32,bf16,compile,compile-bf16")).split(",")
    nets, meta = load_networks(device)
    metrics = compose_sample(["metrics=evaluator"]).metrics
    metrics = OmegaConf.merge(metrics, {"evaluator_checkpoint": str(SNAPSHOTS / "evaluator.pt"), "num_reference": 10000,
                                        "kid_subset_size": min(1000, args.n), "progress": False,
                                        "cache_dir": str(REPO / "runs" / "cache" / "reference"), "device": str(device)})
    data = compose_sample([]).data
    print(f"runtime settings, guidance={args.guidance}, {args.n} samples, batch 250, {machine(device)}")
    print(f"  {'setting':22s} {'ms/img':>7s} {'speed':>6s} {'setup s':>7s} {'max|d|':>6s} {'mean|d|':>7s}  FID")
    base = None
    for name in names:
        images, labels, per_image, setup = run_setting(name, nets, meta, args.guidance, args.n, device)
        m = evaluate_samples(images, labels, metrics, data)
        if base is None:
            base = (images, per_image)
        d = (images.int() - base[0].int()).abs().float()
        print(f"  {name:22s} {per_image * 1e3:7.2f} {base[1] / per_image:5.2f}x {setup:7.1f} {d.max():6.0f} "
              f"{d.mean():7.3f}  {m['fid']:.3f} ± {m.get('fid_std', float('nan')):.3f}", flush=True)


if __name__ == "__main__":
    main()
