"""FLOPs of one row (one image) through each pass the guided denoiser runs, measured, not assumed.

    flops = forward_flops(unet, x[:1], t[:1], y[:1])                 # one denoising forward
    fwd, bwd = gradient_flops(classifier, x[:1], t[:1], y[:1])      # ∇_x log p(y|x): its forward and its backward

torch.utils.flop_counter.FlopCounterMode counts the matrix work (convolutions, matmuls, attention) as the ops
dispatch: elementwise ops (GroupNorm, SiLU, softmax, additions) are not counted. The classifier's backward is the
autograd graph the denoiser runs (gradient w.r.t. x only: no weight gradients), counted as dispatched. Measured on
the eager module (never the compiled one: same math, no recompilation) in fp32 (a FLOP count does not depend on the
precision), with no random draws from the chain's streams, so measuring never changes a sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from guidance.sampling.rng import PerImageRNG


def counted(fn) -> int:
    """FLOPs dispatched while fn() runs."""
    with FlopCounterMode(display=False) as mode:
        fn()
    return int(mode.get_total_flops())


@torch.no_grad()
def forward_flops(network, x, t, labels) -> int:
    """One forward of a denoising network (x, t, labels), per row of x."""
    return counted(lambda: network(x, t, labels)) // max(len(x), 1)


def gradient_flops(classifier, x, t, labels) -> tuple[int, int]:
    """(forward, backward) FLOPs per row of the classifier gradient ∇_x Σ log softmax(classifier(x, t))[labels], the
    computation of GuidedDenoiser.classifier_grad."""
    with torch.enable_grad():
        x_in = x.detach().float().requires_grad_(True)
        out = {}

        def forward():
            log_probs = F.log_softmax(classifier(x_in, t).float(), dim=-1)
            out["selected"] = log_probs[torch.arange(len(x_in), device=x.device), labels]

        fwd = counted(forward)
        bwd = counted(lambda: torch.autograd.grad(out["selected"].sum(), x_in))
    n = max(len(x), 1)
    return fwd // n, bwd // n


class _OwnDraws:
    """A stand-in denoiser for measuring a perturbed pass: a perturbation that draws (TSG's time-embedding noise)
    draws from a throwaway stream, never from the chain's."""

    def __init__(self, rows: int, device):
        self.rng = PerImageRNG(0, list(range(rows)), device)

    def require_draws(self, what: str):
        return self.rng


@torch.no_grad()
def perturbed_flops(network, perturb, x, t, labels) -> int:
    """One forward of `network` under `perturb` (PAG's identity attention, SEG's blurred queries, SLG's skipped
    layers, TSG's noised time embedding), per row of x."""
    with perturb.applied(network, _OwnDraws(len(x), x.device)):
        return forward_flops(network, x, t, labels)
