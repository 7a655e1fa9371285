"""Converters between guidance-scale conventions.

This toolkit keeps the papers' units:
  CFG (Ho & Salimans 2022):  ε~ = (1 + w) ε_c − w ε_u,       w = 0 is the plain conditional model.
  diffusers / Imagen / SD:    ε~ = ε_u + g (ε_c − ε_u),      g = 1 is the plain conditional model.
Expanding the second gives g ε_c − (g − 1) ε_u, so  g = w + 1  and  w = g − 1.

CFG is classifier guidance with the *implicit* classifier p(y|x_t) ∝ p(x_t|y)/p(x_t): since
ε_c − ε_u = −sqrt(1−ᾱ_t) ∇log p(y|x_t),  ε~ = ε_c − w sqrt(1−ᾱ_t) ∇log p(y|x_t) = ε_u − (1+w) sqrt(1−ᾱ_t) ∇log p(y|x_t),
i.e. ADM's DDIM form (Alg. 2) with s = w on the conditional model, or s = w + 1 on the unconditional one.
"""

from __future__ import annotations

from guidance.guiders.base import check_scale


def cfg_w_to_guidance_scale(w: float) -> float:
    """Ho & Salimans' w -> diffusers' guidance_scale g = w + 1."""
    return check_scale(w, "w") + 1.0


def guidance_scale_to_cfg_w(guidance_scale: float) -> float:
    """diffusers' guidance_scale g -> Ho & Salimans' w = g − 1 (g >= 1; g = 1 means no guidance)."""
    return check_scale(check_scale(guidance_scale, "guidance_scale") - 1.0, "guidance_scale - 1")


def cfg_w_to_classifier_scale(w: float, conditional: bool = True) -> float:
    """The ADM gradient scale s that an exact (implicit) classifier needs to reproduce CFG at scale w."""
    w = check_scale(w, "w")
    return w if conditional else w + 1.0
