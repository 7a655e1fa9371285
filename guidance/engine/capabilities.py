"""Capabilities: what a sampler's update does with a Prediction, stated as data, so a strategy that relies on one
form names it (`Guider.needs`) and `Sampler.sample` refuses a sampler without it, library calls included.

A sampler's `capabilities` is a frozenset of these names (instance-dependent where a parameter changes the form);
a strategy's `needs` is a frozenset of them. Neither side knows the other: they meet here.
"""

from __future__ import annotations

from guidance.errors import GuidanceError

RENOISE_EPS = "renoise_eps"
GRAD_IN_MEAN = "grad_in_mean"
GRAD_IN_EPS = "grad_in_eps"

CAPABILITIES = {
    # x_next = a x̂0 + b ε' with the prediction's `renoise_eps` as ε' and no fresh noise: an exact deterministic
    # step that re-noises x̂0 with a given ε (CFG++, Chung et al. 2024, Alg. 1 and its Euler form).
    RENOISE_EPS: "a deterministic step that re-noises x̂0 with the strategy's own ε",
    # the classifier term s∇log p added to the ancestral mean as Σ·grad (ADM Alg. 1)
    GRAD_IN_MEAN: "the classifier term added to the ancestral mean (ADM Alg. 1)",
    # the classifier term applied to ε: ε' = ε − sqrt(1 − ᾱ) grad (ADM Alg. 2)
    GRAD_IN_EPS: "the classifier term applied to ε (ADM Alg. 2)",
}


def check_capabilities(strategy: str, needs: frozenset, sampler: str, capabilities: frozenset,
                       offering: str = "") -> None:
    """One-line GuidanceError when `needs` is not within `capabilities`; `offering` says which samplers would do."""
    missing = sorted(set(needs) - set(capabilities))
    if missing:
        what = "; ".join(f"{m} ({CAPABILITIES.get(m, 'unknown capability')})" for m in missing)
        hint = f": use a sampler that does ({offering})" if offering else ""
        raise GuidanceError(f"guidance={strategy} needs {what}, which sampler={sampler} does not offer{hint}")
