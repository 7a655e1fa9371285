"""Overhead of the guidance engine: one sampling step of each strategy vs the bare network passes that step needs.

    python -m benchmarks.bench_overhead                         # batch 256, DDIM-20 mid-chain step, this CPU
    python -m benchmarks.bench_overhead --device cuda --batch 1024

"step" is `sampler.step(denoiser, x, i, y, rng)`: the guider's requests, the denoiser's passes, combine, finish,
the sampler's update and its noise. "bare" is the same network passes called directly (each Eval request a
forward at its labels, under its perturbation; each classifier request a forward + backward), nothing else. The
overhead is step / bare - 1, timed in interleaved rounds in one process. Goal (issue 12): <= 5% for none and cfg at
batch 256. Networks: the shipped CPU-study snapshots (pretrained/fashion_mnist/cpu).
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from benchmarks.common import build_guider, build_sampler, interleaved, load_networks, machine
from guidance.device import resolve_device
from guidance.engine import ClassifierGrad
from guidance.sampling import GuidedDenoiser
from guidance.sampling.rng import PerImageRNG

STRATEGIES = ["none", "cfg", "classifier", "cfg_interval", "apg", "cfg_rescale", "cfg_zero", "icg", "tsg", "pag",
              "autoguidance"]


def bare_passes(denoiser: GuidedDenoiser, x, y, step):
    """The network work of one denoiser call and nothing else."""
    t = torch.full((len(x),), step.t, dtype=torch.long, device=x.device)
    for r in denoiser.guider.requests(step):
        net = denoiser.networks[r.network]
        if isinstance(r, ClassifierGrad):
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                lp = F.log_softmax(net(x_in, t), dim=-1)[torch.arange(len(x)), denoiser.labels(r.labels, y)]
                torch.autograd.grad(lp.sum(), x_in)
            continue
        ctx = r.perturb.applied(net, denoiser) if r.perturb is not None else contextlib.nullcontext()
        with ctx, torch.no_grad():
            net(x, t, denoiser.labels(r.labels, y))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    device = resolve_device(args.device)
    nets, meta = load_networks(device)
    sampler = build_sampler(meta)
    n, shape = args.batch, (1, 28, 28)
    rng = PerImageRNG(0, range(n), device=device)
    y = rng.labels(10, "balanced")
    x = rng.randn(shape)
    i = sampler.steps // 2  # mid-chain: every interval strategy is active there
    step = sampler.step_at(i)
    print(f"engine overhead, batch {n}, {sampler.label} step {i} of {sampler.steps}, {machine(device)}")
    print(f"  {'strategy':14s} {'step ms':>9s} {'bare ms':>9s} {'overhead':>9s}")
    for name in args.strategies.split(","):
        denoiser = GuidedDenoiser(build_guider(name), nets, null_label=10)
        denoiser.reset(n, rng)
        fns = {"step": lambda: sampler.step(denoiser, x, i, y, rng), "bare": lambda: bare_passes(denoiser, x, y, step)}
        with torch.no_grad():
            t = interleaved(fns, device, rounds=args.rounds)
        print(f"  {name:14s} {t['step'] * 1e3:9.1f} {t['bare'] * 1e3:9.1f} {t['step'] / t['bare'] - 1:+9.1%}")


if __name__ == "__main__":
    main()
