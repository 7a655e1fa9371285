"""How much of the machine the networks use: FLOPs per image x images/s against the machine's measured matmul rate.

    python -m benchmarks.bench_utilisation                 # adm_tiny U-Net + tiny classifier, batch 250, this CPU
    python -m benchmarks.bench_utilisation --device cuda --batch 1024
    python -m benchmarks.bench_utilisation --profile       # + where an eager bf16 forward spends its time

FLOPs come from torch.utils.flop_counter (convolutions, matmuls, attention: the ops a roofline counts). Measured
in the same run: a 2048x2048 matmul in fp32 and bf16 (the machine's attainable rate), the sampling forward
(fp32, bf16 autocast, compiled bf16) and a training step (U-Net and classifier forward + backward + AdamW, fp32
and bf16 autocast). Utilisation = FLOPs/image x images/s / matmul rate of the same precision.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import interleaved, load_networks, machine
from guidance.device import resolve_device
from guidance.sampling.runtime import Runtime


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    per = interleaved({"mm": lambda: a @ b}, device, rounds=5, repeats=3)["mm"]
    return 2 * n**3 / per


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def train_step_fn(nets: dict, x, t, y, autocast):
    unet, clf = nets["unet"], nets["classifier"]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-6) for m in (unet, clf)]

    def step():
        with autocast:
            loss = F.mse_loss(unet(x, t, y).float(), x) + F.cross_entropy(clf(x, t).float(), y)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top ops of an eager bf16 forward")
    args = ap.parse_args()

    device = resolve_device(args.device)
    nets, _ = load_networks(device)
    unet = nets["unet"]
    rate = {"fp32": matmul_rate(torch.float32, device), "bf16": matmul_rate(torch.bfloat16, device)}
    print(f"utilisation, adm_tiny U-Net (+ tiny classifier for training), {machine(device)}")
    print(f"  2048^2 matmul: fp32 {rate['fp32'] / 1e9:.0f} GFLOP/s, bf16 {rate['bf16'] / 1e9:.0f} GFLOP/s")

    n = args.batch
    x, t, y = torch.randn(n, 1, 28, 28, device=device), torch.full((n,), 500, device=device), torch.arange(n, device=device) % 10
    with torch.no_grad():
        fwd = flops(lambda: unet(x, t, y)) / n
        compiled = torch.compile(unet, dynamic=False)
        bf16 = Runtime("bf16").autocast(device)
        with bf16:
            compiled(x, t, y)  # compile outside the timing
        runs = {"fp32": lambda: unet(x, t, y), "bf16": lambda: _under(bf16, unet, x, t, y),
                "compiled bf16": lambda: _under(bf16, compiled, x, t, y)}
        per = interleaved(runs, device, rounds=5, repeats=2)
    print(f"  sampling forward: {fwd / 1e6:.1f} MFLOP/image, batch {n}")
    for k, s in per.items():
        ips = n / s
        r = rate["fp32" if k == "fp32" else "bf16"]
        print(f"    {k:14s} {ips:8.0f} img/s  {fwd * ips / 1e9:7.1f} GFLOP/s  {fwd * ips / r:6.1%} of the {k[-4:]} matmul rate")

    if args.profile:
        from torch.profiler import profile

        with torch.no_grad(), bf16, profile() as prof:
            for _ in range(3):
                unet(x, t, y)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))

    m = args.train_batch
    xt, tt, yt = x[:m].clone(), t[:m].clone(), y[:m].clone()
    train = {"fp32": train_step_fn(nets, xt, tt, yt, torch.autocast(device.type, enabled=False)),
             "bf16": train_step_fn(nets, xt, tt, yt, Runtime("bf16").autocast(device))}
    step_flops = flops(train["fp32"]) / m
    per = interleaved(train, device, rounds=3, repeats=2)
    print(f"  training step (U-Net + classifier, fwd + bwd + AdamW): {step_flops / 1e6:.1f} MFLOP/image, batch {m}")
    for k, s in per.items():
        ips = m / s
        print(f"    {k:14s} {ips:8.0f} img/s  {step_flops * ips / 1e9:7.1f} GFLOP/s  "
              f"{step_flops * ips / rate[k]:6.1%} of the {k} matmul rate")


def _under(ctx, net, x, t, y):
    with ctx:
        return net(x, t, y)


if __name__ == "__main__":
    main()
