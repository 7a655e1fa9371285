"""The Guider contract: a guidance strategy REQUESTS predictions by name and COMBINES them into one.

    requests(step) -> [Eval("cond"), Eval("uncond", labels="null"), ClassifierGrad("grad"), ...]
    combine(preds, x, step) -> Prediction            # ε / x̂0 space as the paper says; grad for classifier terms
    reset(batch_size)                                # start of a chain: drop per-chain state (e.g. momentum)

A guider never calls a network, never knows the sampler, and asks only for passes that have an effect (w = 0
asks for the conditional pass alone), so the denoiser's counters are the strategy's true cost. A strategy that
relies on a sampler's form states it as data, `needs` (guidance.engine.capabilities); Sampler.sample checks it.
The contract types (Step, Prediction, Eval, ClassifierGrad) are guidance.engine's, re-exported here for strategies. Scales keep their
papers' units: ADM's s, Ho & Salimans' w. For the report, `describe(info)` says which table a point belongs in,
its key cells and its curve; report/ knows no strategy by name.
"""

from __future__ import annotations

from dataclasses import dataclass

from guidance.engine import ClassifierGrad, Eval, Prediction, Step
from guidance.errors import check_scale  # noqa: F401 (re-exported for the strategies)

__all__ = ["Guider", "TableSpec", "Description", "check_scale", "Eval", "ClassifierGrad", "Prediction", "Step"]


@dataclass(frozen=True)
class TableSpec:
    """One tradeoff table: its key columns, where it goes, and which unguided baselines head it."""

    kind: str                                # file/label key, e.g. "cfg"
    title: str
    key_headers: tuple[str, ...]             # e.g. ("w",) or ("Model", "Guidance", "Scale s")
    order: int = 50                          # tables and curves are listed by this
    classifier_cost: bool = False            # show classifier passes per sample
    baseline_models: tuple[str, ...] = ()    # unguided baselines ("conditional", "unconditional") shown as rows
    baseline_cells: tuple[str, ...] = ()     # their key cells; "{model}" is replaced by the model


@dataclass(frozen=True)
class Description:
    """How the report shows one point."""

    table: TableSpec | None                  # None: an unguided baseline (joins tables that list its model)
    cells: tuple[str, ...] = ()              # key cells, one per table.key_headers
    sort: tuple[float, ...] = ()             # row order within the table
    series: str = ""                         # plot curve label
    x: float | None = None                   # swept value on the plots' x axis
    x_symbol: str = "scale"
    unguided: bool = False                   # this point IS an unguided model (scale 0 or no guidance)


def fmt(x) -> str:
    return "–" if x is None else f"{x:g}"


def model_of(info: dict) -> str:
    return {True: "conditional", False: "unconditional"}.get(info.get("conditional"), "?")


class Guider:
    """Base strategy fields and defaults. Subclasses set name/networks and write requests + combine."""

    name = "base"
    networks: tuple[str, ...] = ("unet",)    # the networks the denoiser must hold for this strategy
    needs: frozenset[str] = frozenset()      # sampler capabilities it relies on (guidance.engine.capabilities)

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
