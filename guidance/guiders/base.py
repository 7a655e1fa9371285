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

Two things every strategy shares live here, so that no strategy re-derives them:
- `extrapolate(main, reference, w)` = main + w (main − reference): CFG (main = conditional, reference =
  unconditional), autoguidance (weak network), PAG / TSG (perturbed pass), ICG (random class) are all this one
  line (EDM2 writes CFG and autoguidance as one lerp). `order` only picks the floating-point association a
  strategy has always used, so its samples stay bitwise what they were; new strategies take the default.
- the scale schedule: every strategy takes `schedule` (+ its window fields) and asks `self.scale_at(step)` for
  the scale of this step (guidance.guiders.schedules). THE RULE: a strategy decides per CHAIN STEP, never per
  evaluation: `scale_at`, windows and any on/off switch read only `step.index`, `step.count` and
  `step.step_sigma`, so Heun's second evaluation and a churned one follow the step they belong to. (What a
  strategy computes at an evaluation, e.g. TSG's noise level t^α, uses that evaluation's own t and σ.)
"""

from __future__ import annotations

from guidance.description import Description, TableSpec, fmt, model_of  # noqa: F401 (for the strategies)
from guidance.engine import ClassifierGrad, Eval, Prediction, Step
from guidance.errors import check_scale  # noqa: F401 (re-exported for the strategies)
from guidance.guiders.schedules import WeightSchedule

__all__ = ["Guider", "TableSpec", "Description", "fmt", "model_of", "check_scale", "Eval", "ClassifierGrad",
           "Prediction", "Step",
           "extrapolate", "affine", "WeightSchedule"]

ORDERS = ("difference", "weights", "lerp")


def extrapolate(main, reference, w: float, order: str = "difference"):
    """main + w (main − reference): guidance away from `reference`, towards and past `main` (w = 0: main itself;
    Ho & Salimans' w, the paper's guidance scale is w + 1). One extrapolation for every strategy. The three
    orders are the same real number, rounded differently in floating point; each strategy keeps the one its
    samples were made with (bitwise), a new strategy uses the default:
        difference   main + w (main − reference)               PAG, autoguidance (EDM2's lerp)
        weights      (1 + w) main − w reference                Ho & Salimans eq. 6: CFG, ICG, CFG rescale
        lerp         reference + (1 + w)(main − reference)     TSG, CFG-Zero* (their papers' form)
    """
    if order == "difference":
        return main + w * (main - reference)
    if order == "weights":
        return (1 + w) * main - w * reference
    if order == "lerp":
        return reference + (1 + w) * (main - reference)
    raise ValueError(f"extrapolate: order must be one of {ORDERS}, got {order!r}")


def affine(combination, preds, x, step: Step, var_v=None) -> Prediction:
    """The prediction whose ε is `combination(*(p.eps for p in preds))`, an affine combination (weights summing to 1:
    every extrapolation), with x̂0 re-derived from that ε. At σ = ∞ (ᾱ = 0, a flow model's τ = 1), where ε = x_t
    fixes no x̂0, the same combination is taken of the x̂0s: an affine combination is the same prediction in every
    space, so this is what the ε combination means there (Prediction.from_eps would refuse)."""
    eps = combination(*(p.eps for p in preds))
    if step.alpha_bar == 0:
        return Prediction(eps, combination(*(p.x0 for p in preds)), var_v)
    return Prediction.from_eps(x, step, eps, var_v)


class Guider:
    """Base strategy fields and defaults. Subclasses set name/networks and write requests + combine."""

    name = "base"
    networks: tuple[str, ...] = ("unet",)    # the networks the denoiser must hold for this strategy
    needs: frozenset[str] = frozenset()      # sampler capabilities it relies on (guidance.engine.capabilities)

    def __init__(self, scale: float = 0.0, conditional: bool = True, preset: str | None = None, **schedule):
        self.scale = check_scale(scale, "guidance.scale")
        self.conditional = bool(conditional)
        self.preset = None
        if preset is not None:  # a named setting of this strategy, recorded and tabled under its own name
            from guidance.guiders.presets import preset_of

            self.preset = preset_of(preset, self.name)
            schedule = self.preset.schedule_fields(schedule)
        self.schedule = WeightSchedule.of(**schedule)

    def scale_at(self, step: Step) -> float:
        """This chain step's scale: `scale` under the schedule (constant: exactly `scale`). Per chain step."""
        return self.schedule.scale_at(self.scale, step)

    @property
    def model_labels(self) -> str:
        """Labels of the base prediction: the target class, or the null label for the unconditional model."""
        return "target" if self.conditional else "null"

    def reset(self, batch_size: int, rng=None) -> None:
        """Start of a chain (`rng`: its per-image random streams). Stateless strategies have nothing to drop."""

    def holds(self, step: Step) -> bool:
        """Whether this step must leave the sampler's state where it is (CFG-Zero*'s zeroed steps): then no clip
        and no thresholding touches its prediction."""
        return False

    def finish(self, pred: Prediction, x, step: Step, clip: bool) -> Prediction:
        """The combined prediction as the sampler gets it: x̂0 clipped to [-1, 1] when the sampler asks
        (ADM's clip_denoised), unless the step `holds`; dynamic thresholding overrides this."""
        return pred.clipped(x, step) if clip and not self.holds(step) else pred

    def check_chain(self, steps: list[Step]) -> None:
        """Refuse (GuidanceError) a chain that makes a setting void (a schedule window that selects none of its
        steps). `steps`: every denoiser evaluation of the chain; Sampler.sample calls it before any work."""
        self.schedule.check_selects(steps, f"guidance={self.info()['strategy']}")

    def covered_steps(self, steps: list[Step]) -> list[tuple[int, float, bool]]:
        """(original t, σ, guided?) for every denoiser evaluation `steps` of a chain (sampler.evaluation_steps())."""
        return [(s.t, s.sigma, self.schedule.selects(s)) for s in steps]

    def requests(self, step: Step) -> list:
        raise NotImplementedError

    def combine(self, preds: dict, x, step: Step) -> Prediction:
        raise NotImplementedError

    def info(self) -> dict:
        """What sample_info.json records about the strategy (and describe() reads back)."""
        schedule = self.schedule.info() if self.preset is None else self.preset.record(self.schedule)
        return {"strategy": self.preset.name if self.preset else self.name, "scale": self.scale,
                "conditional": self.conditional, **schedule}

    @classmethod
    def describe(cls, info: dict) -> Description:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.info().items() if k != 'strategy')})"
