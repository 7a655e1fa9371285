"""Batch and thread invariance of the U-Net's arithmetic on this machine: which layers' per-image outputs change
with the batch size, whether the thread count changes them, in NCHW and channels_last, and what the one shape-free
choice (per-image forwards) costs. README "Reproducibility" states the conditions these figures set.

    python -m benchmarks.bench_invariance          # the shipped CPU U-Net, 48 random (x_t, t, y)
"""

from __future__ import annotations

import time

import torch

from benchmarks.common import load_networks, machine

N = 48


def forward(unet, x, t, y, batch: int, channels_last: bool, threads: int) -> torch.Tensor:
    torch.set_num_threads(threads)
    unet.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        return torch.cat([unet(x[s:s + batch].contiguous(memory_format=fmt), t[s:s + batch], y[s:s + batch])
                          .contiguous() for s in range(0, len(x), batch)])


def batch_dependent_layers(unet, x, t, y, channels_last: bool) -> list[str]:
    """Leaf module types whose output for one image changes when it runs in a batch of 1, 4 or 5 instead of 48
    (fed the very input the 48-batch forward gave them; the others, GroupNorm and SiLU here, do not)."""
    inputs, hooks = {}, []
    for name, m in unet.named_modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(lambda m, i, o, n=name: inputs.__setitem__(n, i[0].detach())))
    forward(unet, x, t, y, N, channels_last, torch.get_num_threads())
    for h in hooks:
        h.remove()
    modules, found, checked = dict(unet.named_modules()), set(), set()
    with torch.no_grad():
        for name, inp in inputs.items():
            m = modules[name]
            if type(m).__name__ in found or (type(m).__name__, tuple(inp.shape)) in checked:
                continue  # one finding per type, one check per shape: this runs on busy 2-core machines
            checked.add((type(m).__name__, tuple(inp.shape)))
            full = m(inp)
            if any(not torch.equal(full, torch.cat([m(inp[s:s + b]) for s in range(0, N, b)])) for b in (1, 4, 5)):
                found.add(type(m).__name__)
    return sorted(found)


def main() -> None:
    nets, _ = load_networks(torch.device("cpu"))
    unet, threads = nets["unet"], torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    x, t, y = torch.randn(N, 1, 28, 28, generator=g), torch.randint(0, 1000, (N,), generator=g), \
        torch.randint(0, 10, (N,), generator=g)
    print(machine(torch.device("cpu")), "| CPU capability", torch.backends.cpu.get_cpu_capability())
    for cl in (False, True):
        layout = "channels_last" if cl else "NCHW"
        ref = forward(unet, x, t, y, N, cl, threads)
        for b in (1, 4, 5, 24):
            out = forward(unet, x, t, y, b, cl, threads)
            differ = int((out != ref).reshape(N, -1).any(1).sum())
            print(f"{layout:13s} batch {b:2d} vs {N}: {differ}/{N} images differ, max |diff| "
                  f"{float((out - ref).abs().max()):.1e}")
        for b in (1, 4, 24, 48):
            one, many = forward(unet, x, t, y, b, cl, 1), forward(unet, x, t, y, b, cl, threads)
            print(f"{layout:13s} batch {b:2d}, 1 vs {threads} threads: "
                  f"{int((one != many).reshape(N, -1).any(1).sum())}/{N} images differ")
        print(f"{layout:13s} batch-dependent layer types: {', '.join(batch_dependent_layers(unet, x, t, y, cl))}")
    unet.to(memory_format=torch.contiguous_format)
    for b in (N, 1):
        forward(unet, x, t, y, b, False, threads)  # warm-up
        t0 = time.perf_counter()
        forward(unet, x, t, y, b, False, threads)
        print(f"NCHW forward at batch {b:2d}: {(time.perf_counter() - t0) / N * 1e3:.2f} ms/image")
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
