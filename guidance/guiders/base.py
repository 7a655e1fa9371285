"""The Guider contract: a guidance strategy REQUESTS predictions by name and COMBINES them into one.

    requests(step) -> [Eval("cond"), Eval("uncond", labels="null"), ClassifierGrad("grad"), ...]
    combine(preds, x, step) -> Prediction            # ε / x̂0 space as the paper says; grad for classifier terms
    reset(batch_size)                                # start of a chain: drop per-chain state (e.g. momentum)

A guider never calls a network, never knows the sampler, and asks only for passes that have an effect (w = 0
asks for the conditional pass alone), so the denoiser's counters are the strategy's true cost. Scales keep their
papers' units: ADM's s, Ho & Salimans' w. For the report, `describe(info)` says which table a point belongs in,
its key cells and its curve; report/ knows no strategy by name.
"""

from __future__ import annotations

from guidance.description import Description, TableSpec, fmt, model_of  # noqa: F401 (for the strategies)
from guidance.errors import check_scale  # noqa: F401 (re-exported for the strategies)
from guidance.sampling.denoiser import ClassifierGrad, Eval
from guidance.sampling.prediction import Prediction, Step

__all__ = ["Guider", "TableSpec", "Description", "fmt", "model_of", "check_scale", "Eval", "ClassifierGrad",
           "Prediction", "Step"]


class Guider:
    """Base strategy fields and defaults. Subclasses set name/networks and write requests + combine."""

    name = "base"
    networks: tuple[str, ...] = ("unet",)    # the networks the denoiser must hold for this strategy

    def __init__(self, scale: float = 0.0, conditional: bool = True):
        self.scale = check_scale(scale, "guidance.scale")
        self.conditional = bool(conditional)

    @property
    def model_labels(self) -> str:
        """Labels of the base prediction: the target class, or the null label for the unconditional model."""
        return "target" if self.conditional else "null"

    def reset(self, batch_size: int, rng=None) -> None:
        """Start of a chain (`rng`: its per-image random streams). Stateless strategies have nothing to drop."""

    def finish(self, pred: Prediction, x, step: Step, clip: bool) -> Prediction:
        """The combined prediction as the sampler gets it: x̂0 clipped to [-1, 1] when the sampler asks
        (ADM's clip_denoised); dynamic thresholding overrides this."""
        return pred.clipped(x, step) if clip else pred

    def check_sampler(self, sampler) -> None:
        """Refuse (GuidanceError) a sampler this strategy has no stated form for; every sampler by default."""

    def requests(self, step: Step) -> list:
        raise NotImplementedError

    def combine(self, preds: dict, x, step: Step) -> Prediction:
        raise NotImplementedError

    def info(self) -> dict:
        """What sample_info.json records about the strategy (and describe() reads back)."""
        return {"strategy": self.name, "scale": self.scale, "conditional": self.conditional}

    @classmethod
    def describe(cls, info: dict) -> Description:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.info().items() if k != 'strategy')})"
