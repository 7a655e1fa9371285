"""How the networks run while sampling: precision (autocast), memory layout and torch.compile, plus the measured
per-device policy behind every `auto` (these and the denoiser's batching). Samplers and guiders never see it; the
denoiser applies it to every network call.

    runtime = Runtime.resolve(precision="auto", channels_last="auto", compile=False, device=dev)
    fast = runtime.prepare(unet)          # the callable the denoiser uses for unperturbed passes

`auto` follows the per-device policy measured by benchmarks/bench_runtime.py and bench_batching.py (figures in
benchmarks/README.md). The resolved choices are part of a point's sample_info: they change the samples' bits.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict, dataclass

import torch

from guidance.errors import GuidanceError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16_units() -> bool:
    """AMX-bf16 or AVX512-bf16: the CPUs where oneDNN runs bf16 convolutions and matmuls natively."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))


def auto_policy(device: torch.device, precision: str | None = None) -> dict:
    """Measured defaults (benchmarks/README.md, 2-core Xeon with AMX-bf16): bf16 autocast where the CPU has bf16
    units (2.7x the fp32 U-Net, FID +0.13 against a spread of 0.22 at 2000 samples); channels_last only in fp32
    (1.47x, the same samples to one uint8 level; under bf16 it was slower: 2.2x vs 2.7x); split passes (two forwards
    of B beat one of 2B). GPUs: not measured by this project yet, so fp32 NCHW and stacked passes, the usual GPU
    choice. `precision`: the one chosen, when it is not auto (it decides the layout)."""
    if device.type == "cpu":
        chosen = precision if precision not in (None, "auto") else ("bf16" if cpu_has_bf16_units() else "fp32")
        return {"precision": chosen, "channels_last": chosen == "fp32", "batching": "split"}
    return {"precision": precision if precision not in (None, "auto") else "fp32", "channels_last": False,
            "batching": "stacked"}


@dataclass(frozen=True)
class Runtime:
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def resolve(cls, precision="auto", channels_last="auto", compile=False, device="cpu") -> "Runtime":
        if precision != "auto" and str(precision) not in PRECISIONS:
            raise GuidanceError(f"precision={precision} is unknown; use auto, {', '.join(PRECISIONS)}")
        policy = auto_policy(torch.device(device), str(precision))
        precision = policy["precision"]
        layout = policy["channels_last"] if channels_last == "auto" else channels_last
        for key, value in (("channels_last", layout), ("compile", compile)):
            if not isinstance(value, bool):
                raise GuidanceError(f"{key}={value!r} must be true or false" + (" or auto" if key == "channels_last" else ""))
        if compile and torch.device(device).type == "cpu" and not any(map(shutil.which, ("g++", "c++", "clang++"))):
            raise GuidanceError("compile=true needs a C++ compiler on CPUs (torch.compile builds C++ kernels): install "
                                "g++ (apt-get install g++) or set compile=false (study.compile=false)")
        return cls(precision, layout, compile)

    def autocast(self, device: torch.device):
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    def prepare(self, network: torch.nn.Module):
        """The callable for unperturbed passes. Perturbed passes (PAG, TSG) keep the eager module, so their hooks
        and flags never meet the compiler. Static shapes: keep the batch size fixed (a new shape compiles anew)."""
        if self.channels_last:
            network.to(memory_format=torch.channels_last)
        if self.compile:
            return torch.compile(network, dynamic=False)
        return network

    def info(self) -> dict:
        return asdict(self)


def numerics(device, batch_size: int) -> dict:
    """What decides a sample's last bits beyond the settings and the runtime above, recorded in sample_info.json
    (README, "Reproducibility"). CPU GEMM and convolution kernels choose their blocking by the batch shape and split
    work by the intra-op thread count (torchrun sets OMP_NUM_THREADS=1; a plain run uses every core), and kernels
    differ between torch builds and instruction sets. Equal numerics: bitwise equal samples. Another batch size or
    thread count: the same seeds and math, equal to float rounding (a uint8 level in rare pixels)."""
    device = torch.device(device)
    kernels = torch.cuda.get_device_name(device) if device.type == "cuda" else torch.backends.cpu.get_cpu_capability()
    return {"batch_size": int(batch_size), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "kernels": kernels}
