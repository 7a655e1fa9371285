"""What a strategy asks the guided denoiser for at a step: named predictions (`Eval`) and classifier gradients
(`ClassifierGrad`). The denoiser runs each network once for all of a step's requests and counts every pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

Labels = Union[str, Callable[[torch.Tensor], torch.Tensor]]  # "target", "null", "random", or y -> labels


@dataclass(frozen=True)
class Eval:
    """Request: a denoising network's prediction at the batch's x, at `labels`. `perturb`: a hashable object whose
    `applied(network, denoiser)` is a context manager changing the network for this pass only (PAG's identity attention,
    TSG's perturbed time embedding), given (network, denoiser); perturbed rows never share a forward with others."""

    name: str
    labels: Labels = "target"
    network: str = "unet"
    perturb: object | None = None


@dataclass(frozen=True)
class ClassifierGrad:
    """Request: ∇_{x_t} log p_φ(labels | x_t) of a noise-aware classifier (ADM Alg. 1/2), unscaled."""

    name: str
    labels: Labels = "target"
    network: str = "classifier"
