"""What the benchmarks share: the networks (shipped snapshots or random weights), a sampler and a guider built from
the same configs the apps compose, interleaved timing, and a one-line description of the machine."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from guidance.config import CONF_DIR
from guidance.diffusion import create_diffusion

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = REPO / "pretrained" / "fashion_mnist" / "cpu"


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"


def compose_sample(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("sample", overrides=overrides)


def load_networks(device: torch.device) -> tuple[dict, dict]:
    """The shipped CPU-study snapshots (U-Net, classifier, weak U-Net): real weights, so guided steps do real work."""
    from guidance.checkpoint import load_snapshot

    nets, meta = {}, None
    for name, file, role in (("unet", "unet.pt", "unet"), ("classifier", "classifier.pt", "classifier"),
                             ("weak", "unet_weak.pt", "unet")):
        net, m = load_snapshot(SNAPSHOTS / file, role=role, map_location=device)
        nets[name] = net.eval()
        meta = meta or m
    return nets, meta


def build_sampler(meta: dict, sampler: str = "ddim", respacing: str = "ddim20"):
    base = create_diffusion(**{k: v for k, v in meta["diffusion_config"].items()
                               if k not in ("_target_", "timestep_respacing")})
    cfg = compose_sample([f"sampler={sampler}"])
    cfg.sampler.respacing = respacing
    return instantiate(cfg.sampler, diffusion=base)


def build_guider(name: str, scale: float | None = None):
    cfg = compose_sample([f"guidance={name}"])
    if scale is not None and "scale" in cfg.guidance:
        cfg.guidance.scale = scale
    return instantiate(cfg.guidance)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict, device: torch.device, rounds: int = 5, repeats: int = 3) -> dict[str, float]:
    """Median seconds per call of each fn, timed in interleaved rounds so load drift hits every fn alike."""
    for fn in fns.values():  # warm-up: allocator, oneDNN primitive caches, cudnn autotuning
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(repeats):
                fn()
            sync(device)
            samples[k].append((time.perf_counter() - t) / repeats)
    return {k: sorted(v)[len(v) // 2] for k, v in samples.items()}
