"""Exponential moving average of a model's weights (Polyak averaging, as in DDPM / ADM training).

shadow <- rate * shadow + (1 - rate) * weights after every optimizer step. ADM uses a constant 0.9999, which
only forgets the (zero-output) initialisation after tens of thousands of steps: after n steps the init still
weighs rate**n (0.999**1500 = 22%). With `warmup` the rate of update n is min(rate, (1 + n) / (10 + n)), the
usual warm-up, so short runs give usable EMA weights.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rate: float, warmup: bool = False):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.warmup = bool(warmup)
        # Float parameters are averaged; buffers (and non-float entries) are copied as they are.
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.averaged = {k for k, p in model.named_parameters() if p.is_floating_point()}

    def rate_at(self, step: int) -> float:
        """The decay used for the update after optimizer step `step` (0-based)."""
        return min(self.rate, (1.0 + step) / (10.0 + step)) if self.warmup else self.rate

    @torch.no_grad()
    def update(self, model: nn.Module, step: int = 0) -> None:
        rate = self.rate_at(step)
        for k, v in model.state_dict().items():
            if k in self.averaged:
                self.shadow[k].lerp_(v.detach().to(self.shadow[k].dtype), 1.0 - rate)
            else:
                self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Load the averaged weights into `model` (same architecture); returns it."""
        model.load_state_dict(self.shadow)
        return model

    def state_dict(self) -> dict:
        return {"rate": self.rate, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model: differing keys {sorted(missing)[:5]}")
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
        # The rate stays the configured one, so a resumed run may change training.ema_rate on purpose.
