"""The guider-sampler contract: the one module both sides import, so neither imports the other.

    pred = denoiser(x, y, step)      # sampling.GuidedDenoiser: networks + one guider + counters

- `Step`: where the denoiser is evaluated (original t, ᾱ, the chain step it belongs to); `Prediction`: ε, x̂0 and
  what a sampler applies in its own form (learned variance, classifier term, CFG++'s re-noising ε).
- `Eval`, `ClassifierGrad`: what a strategy requests at a step; the denoiser runs and counts them.
- `cost_per_sample`: what the counted passes mean per image.
- Capabilities (`RENOISE_EPS`, `GRAD_IN_MEAN`, `GRAD_IN_EPS`): what a sampler's update does with a Prediction
  (`Sampler.capabilities`) and what a strategy relies on (`Guider.needs`), checked by `check_capabilities`.
"""

from guidance.engine.capabilities import (CAPABILITIES, GRAD_IN_EPS, GRAD_IN_MEAN, RENOISE_EPS,
                                          check_capabilities)
from guidance.engine.cost import cost_per_sample
from guidance.engine.prediction import Prediction, Step
from guidance.engine.requests import ClassifierGrad, Eval, Labels

__all__ = ["Step", "Prediction", "Eval", "ClassifierGrad", "Labels", "cost_per_sample", "CAPABILITIES",
           "RENOISE_EPS", "GRAD_IN_MEAN", "GRAD_IN_EPS", "check_capabilities"]
