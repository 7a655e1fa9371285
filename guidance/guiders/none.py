"""No guidance: the conditional model, or the unconditional one (null label) with conditional=false."""

from __future__ import annotations

from guidance.guiders.base import Guider


class NoGuidance(Guider):
    name = "none"

    def __init__(self, conditional: bool = True, null_label: int | None = None, classifier=None):
        super().__init__(scale=0.0, null_label=null_label, conditional=conditional, classifier=classifier)
