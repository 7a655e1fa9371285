"""Device choice shared by every app: `auto` means this rank's GPU when CUDA is available, else the CPU."""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto` -> cuda (this rank's GPU) if available, else cpu; anything else is taken as a torch device."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise GuidanceError(f"device={name!r} is not a torch device; use auto, cpu, cuda or cuda:<index>") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GuidanceError(f"device={name} but CUDA is not available here; use device=auto or device=cpu")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device
