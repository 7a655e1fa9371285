"""The released architectures at their real sizes, random weights: FLOPs per image forward, parameters, weight
memory, an upper bound on the activations one image holds, and images/s measured on the device given.

    python -m benchmarks.bench_models --device cpu --quick      # the CPU figures of benchmarks/README.md
    python -m benchmarks.bench_models --device cuda --precision bf16
    python -m benchmarks.bench_models --plan 300       # docs/gpu_plan.md's times at 300 TFLOP/s sustained

FLOPs: torch.utils.flop_counter.FlopCounterMode on the meta device (shapes only: the count of an fp32 forward of
one image; matmuls, convolutions and attention, 2 FLOPs per multiply-add; elementwise ops not counted), the
numbers docs/gpu_plan.md multiplies by NFE and samples. Activations: the sum of every leaf module's output for one
image (fp32), a loose upper bound on what inference holds at once (it frees most of them as it goes); on CUDA the
peak allocated memory of the timed forwards is measured. Throughput: the network's forward on `--batch` images
(median of `--reps` after one warm-up), random weights, eval mode, no grad.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from benchmarks.common import machine

# name: (builder key, argument, input [C, H, W], what)
MODELS = {
    "EDM2-XS img512": ("edm2", "edm2-img512-xs", (4, 64, 64), "autoguidance's weak network for S; CFG's uncond"),
    "EDM2-S img512": ("edm2", "edm2-img512-s", (4, 64, 64), "64x64x4 SD-VAE latents"),
    "EDM2-M img512": ("edm2", "edm2-img512-m", (4, 64, 64), "autoguidance's weak network for XXL"),
    "EDM2-XXL img512": ("edm2", "edm2-img512-xxl", (4, 64, 64), "64x64x4 latents"),
    "EDM2-S img64": ("edm2", "edm2-img64-s", (3, 64, 64), "64x64 pixels"),
    "DiT-XL/2 256": ("dit", "DiT-XL/2", (4, 32, 32), "32x32x4 latents, learned σ"),
    "SiT-XL/2 256": ("dit", "SiT-XL/2", (4, 32, 32), "32x32x4 latents, velocity"),
    "SD-VAE decoder 512": ("vae", 64, (4, 64, 64), "EDM2's decode, once per image"),
    "SD-VAE decoder 256": ("vae", 32, (4, 32, 32), "DiT's/SiT's decode, once per image"),
}
QUICK_SKIP = {"EDM2-XXL img512", "EDM2-M img512", "SD-VAE decoder 512"}  # FLOPs only under --quick (6 / 2 GB of fp32
# weights; 2.5 TFLOP per decode: minutes per image on a shared 2-core CPU)


def build(kind: str, arg, device) -> torch.nn.Module:
    from guidance.config import build as build_cfg

    with torch.device(device):
        if kind == "edm2":
            from guidance.edm2.releases import architecture

            return build_cfg({**architecture(arg).model, "use_fp16": False}).eval()
        if kind == "dit":
            from guidance.dit.releases import model_config

            return build_cfg(model_config(arg, 256)).eval()
        from diffusers import AutoencoderKL  # stabilityai/sd-vae-ft-{mse,ema}'s config

        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=8 * arg).eval()
        return vae


def call(kind: str, net, x: torch.Tensor):
    n = len(x)
    if kind == "edm2":
        labels = torch.zeros(n, 1000, device=x.device)
        labels[:, 0] = 1  # one-hot rows (the meta device cannot check class indices)
        return net(x, torch.full((n,), 1.0, device=x.device), labels if net.label_dim else None)
    if kind == "dit":
        return net(x, torch.full((n,), 500.0, device=x.device), torch.zeros(n, dtype=torch.long, device=x.device))
    return net.decode(x).sample


@torch.no_grad()
def static(kind: str, arg, shape) -> dict:
    """FLOPs, parameters and activations of one image on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    net = build(kind, arg, "meta")
    params = sum(p.numel() for p in (net.decoder.parameters() if kind == "vae" else net.parameters()))
    if kind == "vae":
        params += sum(p.numel() for p in net.post_quant_conv.parameters())
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.numel() if torch.is_tensor(o) else 0))
             for m in net.modules() if not list(m.children())]
    x = torch.zeros(1, *shape, device="meta")
    with FlopCounterMode(display=False) as mode:
        call(kind, net, x)
    for h in hooks:
        h.remove()
    return {"gflop": mode.get_total_flops() / 1e9, "params_m": params / 1e6, "weights_gb_fp32": params * 4 / 1e9,
            "acts_mb": sum(acts) * 4 / 1e6}


@torch.no_grad()
def throughput(kind: str, arg, shape, device: torch.device, batch: int, reps: int, precision: str) -> float:
    torch.manual_seed(0)
    net = build(kind, arg, "cpu")
    for p in net.parameters():
        p.normal_(0, 0.02)
    net = net.to(device)
    x = torch.randn(batch, *shape, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext())
    times = []
    with ctx:
        for i in range(reps + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            call(kind, net, x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
    return batch / times[len(times) // 2], peak


def _edm2_grid_guided(lo: float, hi: float, n: int = 32) -> int:
    """Evaluations of edm2_heun (edmN: 2 per step, 1 in the last) whose chain step's σ_i lies in (lo, hi]."""
    smax, smin, rho = 80.0, 0.002, 7.0
    sigmas = [(smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for i in range(n)]
    return sum(2 if i < n - 1 else 1 for i, s in enumerate(sigmas) if lo < s <= hi)


# preset, row, main network, guiding network (None: unguided), evaluations, guided ones, decoder
PLAN = [("edm2_guidance", f"{size} {row}", f"EDM2-{size} img512", guide, 63, guided, "SD-VAE decoder 512")
        for size, weak in (("S", "EDM2-XS img512"), ("XXL", "EDM2-M img512"))
        for row, guide, guided in (("none", None, 0), ("CFG (XS uncond)", "EDM2-XS img512", 63),
                                   ("CFG interval", "EDM2-XS img512",
                                    _edm2_grid_guided(*((0.28, 5.42) if size == "S" else (0.19, 1.61)))),
                                   (f"autoguidance ({weak.split()[0][5:]} weak)", weak, 63))]
PLAN += [(preset, row, net, net if guided else None, steps, steps if guided else 0, "SD-VAE decoder 256")
         for preset, net, steps in (("dit_cfg", "DiT-XL/2 256", 250), ("sit_cfg", "SiT-XL/2 256", 250))
         for row, guided in (("none (w 0)", False), ("CFG w 0.5", True))]


def plan(tflops: float, samples: int = 50_000):
    """Expected wall time of each preset row on one GPU sustaining `tflops`: FLOPs x NFE x samples / rate."""
    flops = {name: static(*MODELS[name][:2], MODELS[name][2])["gflop"] for name in
             {r[2] for r in PLAN} | {r[3] for r in PLAN if r[3]} | {r[6] for r in PLAN}}
    print(f"# {samples} samples, {tflops:g} TFLOP/s sustained; FLOPs counted on the meta device (fp32 forward)")
    print("| preset | row | NFE main + guiding | TFLOP / image | of which decoder | hours |")
    print("|:---|:---|---:|---:|---:|---:|")
    for preset, row, net, guide, evals, guided, dec in PLAN:
        per_image = evals * flops[net] + (guided * flops[guide] if guide else 0) + flops[dec]
        hours = per_image * 1e9 * samples / (tflops * 1e12) / 3600
        print(f"| {preset} | {row} | {evals} + {guided} | {per_image / 1e3:.1f} | {flops[dec] / 1e3:.2f} | "
              f"{hours:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=None, help="images per timed forward (default: 1 on cpu, 32 on cuda)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--quick", action="store_true", help="batch 1, 1 rep after the warm-up, no timing of EDM2-M/XXL (FLOPs still)")
    ap.add_argument("--only", nargs="*", default=None, help="model names to run (default: all)")
    ap.add_argument("--plan", type=float, default=None, metavar="TFLOPS",
                    help="print the presets' expected GPU hours at this sustained rate instead (no timing)")
    args = ap.parse_args()
    if args.plan:
        return plan(args.plan)
    device = torch.device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 1)
    reps = 1 if args.quick else args.reps
    print(f"# {machine(device)}; batch {batch}, {reps} reps, {args.precision}")
    print("| model | input | params (M) | weights fp32 / bf16 (GB) | GFLOP / image forward | activations ≤ MB/image "
          "| images/s | TFLOP/s achieved | peak GPU GB |")
    print("|:---|:---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (kind, arg, shape, what) in MODELS.items():
        if args.only and name not in args.only:
            continue
        s = static(kind, arg, shape)
        rate = peak = None
        if not (args.quick and name in QUICK_SKIP):
            rate, peak = throughput(kind, arg, shape, device, batch, reps, args.precision)
        measured = "–" if rate is None else f"{rate:.3g}"
        achieved = "–" if rate is None else f"{rate * s['gflop'] / 1e3:.3g}"
        print(f"| {name} | {'x'.join(map(str, shape))} ({what}) | {s['params_m']:.1f} | "
              f"{s['weights_gb_fp32']:.2f} / {s['weights_gb_fp32'] / 2:.2f} | {s['gflop']:.1f} | {s['acts_mb']:.0f} | "
              f"{measured} | {achieved} | {'–' if peak is None else f'{peak:.1f}'} |", flush=True)


if __name__ == "__main__":
    main()
