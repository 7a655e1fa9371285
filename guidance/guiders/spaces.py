"""The prediction spaces a guider can combine in, converted exactly from and back to the engine's Prediction
(ε and x̂0, whatever the model predicts: guidance.engine.model; on a flow model `flow` is its own output).

    eps   ε, the U-Net's own output
    x0    x̂0 = (x_t − sqrt(1 − ᾱ_t) ε) / sqrt(ᾱ_t), the denoiser output D(x_t) of EDM / APG / FDG
    flow  the rectified-flow velocity v = ε − x̂0 of the same marginals (SD3, Lumina, Wan, HunyuanImage predict it):
          EDM's x̃ = x_t / sqrt(ᾱ_t) = x̂0 + σ ε divided by 1 + σ is x_f = (1 − τ) x̂0 + τ ε with τ = σ / (1 + σ),
          and back ε = x_f + (1 − τ) v (as CFG-Zero* carries its flow-model paper to ε-models)

All three are affine in ε at a fixed x_t, so a combination whose weights sum to 1 (c + w (c − u)) is the same
prediction in every space; only the nonlinear parts (norms, projections, SVDs) depend on the space.
"""

from __future__ import annotations

import torch

from guidance.errors import GuidanceError
from guidance.guiders.base import Prediction

SPACES = ("eps", "x0", "flow")


def check_space(space: str, who: str, allowed=SPACES) -> str:
    if space not in allowed:
        raise GuidanceError(f"{who}: space must be one of {', '.join(allowed)}, got {space!r}")
    return space


def to_space(pred: Prediction, x, step, space: str) -> torch.Tensor:
    if space == "eps":
        return pred.eps
    if space == "x0":
        return pred.x0
    return pred.eps - pred.x0


def from_space(out: torch.Tensor, x, step, space: str, var_v=None) -> Prediction:
    if space == "eps":
        return Prediction.from_eps(x, step, out, var_v)
    if space == "x0":
        return Prediction.from_x0(x, step, out, var_v)
    return from_velocity(out, x, step, var_v)


def from_velocity(v: torch.Tensor, x, step, var_v=None) -> Prediction:
    """The prediction whose flow velocity is v: ε = x_f + (1 − τ) v, x̂0 = x_f − τ v (x_f = step.to_flow(x)).
    At σ = ∞ (τ = 1) x̂0 = x_f − v is taken directly: ε = x_t there determines no x̂0."""
    tau, x_f = step.tau, step.to_flow(x)
    if step.alpha_bar == 0:
        return Prediction(x_f + (1 - tau) * v, x_f - tau * v, var_v)
    return Prediction.from_eps(x, step, x_f + (1 - tau) * v, var_v)
