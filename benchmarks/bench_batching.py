"""The denoiser's batching policy, measured: one forward of 2B rows vs two forwards of B vs the unguided step.

    python -m benchmarks.bench_batching                          # B = 64..512, fp32 and bf16, this CPU
    python -m benchmarks.bench_batching --device cuda --batches 256,1024 --precisions fp32,bf16

A CFG step needs the U-Net at two label sets: `stacked` runs them as one forward of 2B rows, `split` as two forwards
of B. Printed per precision and batch size: ms per step for the unguided step (one forward of B), split and
stacked, and stacked / split (> 1: split is faster). guidance.sampling.runtime.auto_policy's `batching` for a
device is what these figures chose (benchmarks/README.md); every point records the policy it ran with in its
sample_info.json (`batching`).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import interleaved, load_networks, machine
from guidance.device import resolve_device
from guidance.sampling.runtime import Runtime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", default="64,128,256,512")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    device = resolve_device(args.device)
    unet = load_networks(device)[0]["unet"]
    print(f"batching policy, adm_tiny U-Net, {machine(device)}")
    print(f"  {'precision':9s} {'B':>5s} {'unguided ms':>11s} {'split ms':>9s} {'stacked ms':>10s} {'stacked/split':>13s}")
    for precision in args.precisions.split(","):
        runtime = Runtime(precision)
        for b in (int(v) for v in args.batches.split(",")):
            x = torch.randn(b, 1, 28, 28, device=device)
            t = torch.full((b,), 500, device=device)
            y, null = torch.arange(b, device=device) % 10, torch.full((b,), 10, device=device)
            x2, t2, y2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null])

            def run(*calls):
                with torch.no_grad(), runtime.autocast(device):
                    for c in calls:
                        unet(*c)

            ms = interleaved({"unguided": lambda: run((x, t, y)), "split": lambda: run((x, t, y), (x, t, null)),
                              "stacked": lambda: run((x2, t2, y2))}, device, rounds=args.rounds, repeats=2)
            print(f"  {precision:9s} {b:5d} {ms['unguided'] * 1e3:11.1f} {ms['split'] * 1e3:9.1f} "
                  f"{ms['stacked'] * 1e3:10.1f} {ms['stacked'] / ms['split']:13.2f}", flush=True)


if __name__ == "__main__":
    main()
