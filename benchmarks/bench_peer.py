"""The toolkit's DDIM and DDPM loops vs diffusers' DDIMScheduler / DDPMScheduler driving the same U-Net.

    pip install -e '.[bench]'                  # diffusers: a benchmark-only extra
    python -m benchmarks.bench_peer            # batch 128, DDIM 20 steps, DDPM 25 steps, this CPU
    python -m benchmarks.bench_peer --device cuda --batch 512

Both loops visit the same timesteps (ADM's "ddimN" spacing = diffusers' "leading" spacing with steps_offset=0),
use the same betas (diffusers gets ours as trained_betas), clip x̂0 to [-1, 1] and, like ADM, re-derive ε from the
clipped x̂0 (diffusers' use_clipped_model_output=True; DDPM's posterior mean uses x̂0 directly in both). DDPM draws
its noise from one seeded generator in the same order in both (the toolkit's BatchRNG), so the outputs must agree
to float tolerance; the benchmark checks that and stops if they do not. Speed: our loop as the apps run it (the
guided denoiser with guidance=none, fp32, per-image RNG streams) and with BatchRNG, against diffusers' loop,
interleaved in one process. Goal (issue 12): >= 1.0x diffusers' speed.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.common import build_guider, build_sampler, load_networks, machine, sync
from guidance.device import resolve_device
from guidance.sampling import BatchRNG, GuidedDenoiser, PerImageRNG


def diffusers_loop(scheduler, unet, x, y, generator, ddim: bool):
    for t in scheduler.timesteps:
        eps = unet(x, torch.full((len(x),), int(t), dtype=torch.long, device=x.device), y)
        if ddim:
            x = scheduler.step(eps, t, x, eta=0.0, use_clipped_model_output=True).prev_sample
        else:
            x = scheduler.step(eps, t, x, generator=generator).prev_sample
    return x


def schedulers(betas: torch.Tensor, steps: dict):
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=len(betas), trained_betas=betas.tolist(), clip_sample=True,
                  clip_sample_range=1.0, prediction_type="epsilon", timestep_spacing="leading", steps_offset=0)
    ddim = DDIMScheduler(**common, set_alpha_to_one=True)
    ddpm = DDPMScheduler(**common, variance_type="fixed_small")
    ddim.set_timesteps(steps["ddim"])
    ddpm.set_timesteps(steps["ddpm"])
    return {"ddim": ddim, "ddpm": ddpm}


def timed(fn, device, rounds: int) -> tuple[float, torch.Tensor]:
    best, out = float("inf"), None
    for _ in range(rounds):
        sync(device)
        t = time.perf_counter()
        out = fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ddim-steps", type=int, default=20)
    ap.add_argument("--ddpm-steps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    device = resolve_device(args.device)
    nets, meta = load_networks(device)
    unet, n = nets["unet"], args.batch
    steps = {"ddim": args.ddim_steps, "ddpm": args.ddpm_steps}
    print(f"peer: toolkit vs diffusers schedulers, same U-Net (adm_tiny), batch {n}, {machine(device)}")
    print(f"  {'loop':6s} {'steps':>5s} {'ours s':>8s} {'ours(batch rng) s':>18s} {'diffusers s':>11s} "
          f"{'speed vs diffusers':>18s} {'max|diff|':>10s}")
    y = torch.arange(n, device=device) % 10
    with torch.no_grad():
        for kind in ("ddim", "ddpm"):
            sampler = build_sampler(meta, sampler=kind, respacing=f"ddim{steps[kind]}")
            sched = schedulers(torch.as_tensor(build_sampler(meta, respacing="").diffusion.betas), steps)[kind]
            assert [int(t) for t in sched.timesteps] == [s.t for s in sampler.evaluation_steps()], "timesteps differ"
            denoiser = GuidedDenoiser(build_guider("none"), {"unet": unet}, null_label=10)
            shape = (n, 1, 28, 28)
            ours_fn = lambda: sampler.sample(denoiser, shape, y, PerImageRNG(0, range(n), device=device))
            batch_fn = lambda: sampler.sample(denoiser, shape, y, BatchRNG(0, n, device))

            def peer_fn():
                g = torch.Generator().manual_seed(0)
                x = torch.randn(shape, generator=g).to(device)  # x_T: the first draw, as BatchRNG's
                return diffusers_loop(sched, unet, x, y, g, kind == "ddim")

            t_ours, _ = timed(ours_fn, device, args.rounds)
            t_batch, ours = timed(batch_fn, device, args.rounds)
            t_peer, peer = timed(peer_fn, device, args.rounds)
            diff = (ours - peer).abs().max().item()
            print(f"  {kind:6s} {steps[kind]:5d} {t_ours:8.2f} {t_batch:18.2f} {t_peer:11.2f} "
                  f"{t_peer / t_ours:17.2f}x {diff:10.2e}", flush=True)
            if diff > 1e-4:
                raise SystemExit(f"{kind}: outputs differ from diffusers by {diff:.2e} (> 1e-4): not the same loop")


if __name__ == "__main__":
    main()
