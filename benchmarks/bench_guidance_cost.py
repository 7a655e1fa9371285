"""Wall-clock cost of one guided sampling step per strategy, relative to the unguided step, same run, same inputs.

    python benchmarks/bench_guidance_cost.py                     # adm_tiny + tiny classifier, batch 250, CPU
    python benchmarks/bench_guidance_cost.py --batch 1000 --device cuda

Prints seconds per step and the ratio to `none` for: none, classifier (forward + backward through the noise-aware
classifier), cfg as ONE batched forward of 2B images (what the toolkit does) and cfg as two separate forwards of
B images (the naive way), so the batching claim in DESIGN.md is measured rather than assumed. The networks are
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
    t = torch.full((n,), 500, device=device)
    y = torch.arange(n, device=device) % cfg.data.num_classes
    null = cfg.data.num_classes
    alpha_bar = torch.full((n, 1, 1, 1), 0.5, device=device)

    none, cg, cfg_w = NoGuidance(null_label=null), ClassifierGuidance(1.0, classifier=clf), ClassifierFreeGuidance(1.0, null)

    @torch.no_grad()
    def two_forwards():
        cond, uncond = unet(x, t, y), unet(x, t, torch.full_like(y, null))
        return 2 * cond - uncond

    def classifier_step():
        with torch.no_grad():
            eps = none.model_output(unet, x, t, y)
        return cg.condition_eps(eps, x, t, y, alpha_bar)

    steps = {
        "none": torch.no_grad()(lambda: none.model_output(unet, x, t, y)),
        "classifier (s=1)": classifier_step,
        "cfg, one batched forward": torch.no_grad()(lambda: cfg_w.model_output(unet, x, t, y)),
        "cfg, two forwards": two_forwards,
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
        print(f"  {k:26s} {v * 1000:8.1f} ms/step   x{v / base:.2f} of unguided")
    print(f"  batched / two-forward CFG: {timings['cfg, one batched forward'] / timings['cfg, two forwards']:.2f}")


if __name__ == "__main__":
    main()
