"""torchrun support: one process per device, rank 0 logs and writes. Plain single-process runs need none of it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from guidance.device import resolve_device


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto", timeout_min: float | None = None) -> DistEnv:
    """Read torchrun's environment; with WORLD_SIZE > 1 join the process group (nccl on GPUs, gloo on CPUs).
    `timeout_min` is how long a collective waits for the slowest rank (torch's default when None): the main job
    raises it, since its other ranks wait while rank 0 alone trains the evaluator or computes metrics."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = timedelta(minutes=timeout_min) if timeout_min else None
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", timeout=timeout)
    return DistEnv(rank, local_rank, world_size, dev)


def initialized() -> bool:
    return dist.is_initialized()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place); a no-op in a single process."""
    if dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
