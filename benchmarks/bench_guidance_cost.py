"""Wall-clock cost of one guided sampling step per strategy, relative to the unguided step, same run, same inputs.

    python benchmarks/bench_guidance_cost.py                     # adm_tiny + tiny classifier, batch 250, CPU
    python benchmarks/bench_guidance_cost.py --batch 1000 --device cuda

Prints seconds per denoiser call (one sampling step's network work, through guidance.sampling.GuidedDenoiser) and
the ratio to `none` for: none, classifier (forward + backward through the noise-aware classifier), and cfg with
the denoiser's two batching policies: `stacked` (ONE forward of 2B rows) and `split` (two forwards of B rows). The
denoiser's `batching=auto` picks stacked on GPUs and split on CPUs from this measurement. The networks are
randomly initialised (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from guidance.apps.common import CONF_DIR
from guidance.device import resolve_device
from guidance.guiders import ClassifierFreeGuidance, ClassifierGuidance, NoGuidance
from guidance.sampling import GuidedDenoiser, Step


def per_step(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up (allocator, cudnn autotuning)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="adm_tiny")
    ap.add_argument("--classifier", default="tiny")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}", f"classifier={args.classifier}"])
    unet = instantiate(cfg.model, _convert_="all").to(device).eval()
    clf = instantiate(cfg.classifier, _convert_="all").to(device).eval()
    n, c, s = args.batch, cfg.data.channels, cfg.data.image_size
    x = torch.randn(n, c, s, s, device=device)
    y = torch.arange(n, device=device) % cfg.data.num_classes
    step, nets = Step(500, 0.5), {"unet": unet, "classifier": clf}

    def call(guider, batching="stacked"):
        denoiser = GuidedDenoiser(guider, nets, null_label=cfg.data.num_classes, batching=batching)
        return lambda: denoiser(x, y, step)

    steps = {
        "none": call(NoGuidance()),
        "classifier (s=1)": call(ClassifierGuidance(1.0)),
        "cfg, stacked (one forward)": call(ClassifierFreeGuidance(1.0), "stacked"),
        "cfg, split (two forwards)": call(ClassifierFreeGuidance(1.0), "split"),
    }
    # Two interleaved rounds, keeping each one's faster: load drift then hits every strategy alike.
    timings = {k: float("inf") for k in steps}
    for _ in range(2):
        for k, fn in steps.items():
            timings[k] = min(timings[k], per_step(fn, device, args.repeats))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"{args.model} + {args.classifier} classifier, batch {n}, {c}x{s}x{s}, {name}, torch {torch.__version__}")
    base = timings["none"]
    for k, v in timings.items():
        print(f"  {k:28s} {v * 1000:8.1f} ms/step   x{v / base:.2f} of unguided")
    ratio = timings["cfg, stacked (one forward)"] / timings["cfg, split (two forwards)"]
    print(f"  stacked / split CFG: {ratio:.2f}  (> 1: split is faster here)")


if __name__ == "__main__":
    main()
