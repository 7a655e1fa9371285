"""SLG, skip layer guidance (Stability AI's Stable Diffusion 3.5 reference code, sd3_infer.py; no paper: the
rationale is autoguidance's, Karras et al. 2024, "a bad version of itself"), in ε space, scales s (skip term) and
w (Ho & Salimans units, its CFG part):

    ε~ = ε_c + w (ε_c − ε_u) + s (ε_c − ε_skip)      while start·n < i < stop·n   (step i of n)
    ε~ = ε_c + w (ε_c − ε_u)                          otherwise (no skip pass paid for)

ε_skip is the same U-Net with the named `blocks` replaced by the identity (UNet.residual_layers(): attention
blocks and shape-keeping ResBlocks, e.g. "middle.1" is the middle attention), via forward hooks for this pass only.
SD 3.5 skips whole transformer blocks (7, 8, 9 of SD 3.5 Medium) with s = 2.8 between 1% and 20% of the steps.
The window is SD 3.5's, strict at both ends on the real numbers start·n and stop·n; diffusers'
SkipLayerGuidance truncates them first (int(start·n) < i < int(stop·n)): it drops step i = ⌊stop·n⌋ when stop·n
is not an integer (n = 28, stop = 0.2: SD 3.5 guides steps 1..5, diffusers 1..4), otherwise they agree. diffusers:
guidance_scale = w + 1, skip_layer_guidance_scale = s. On the unconditional model (`conditional: false`) w must be
0. Neutral settings: s = 0 or no block is CFG at w; both scales 0 is the model (1 NFE).

The window stays SLG's own, not the shared schedule's `step` shape: that one keeps start < (i + 1)/n <= end, SD 3.5
keeps start < i/n < stop (n = 10, 0.01..0.2: SD 3.5 guides step 1, `step` steps 0 and 1). It is decided per chain
step (Step.index of Step.count, so Heun's second evaluation follows its step) and a window that holds no step of
the chain (with s != 0 and a block) is refused before any work (check_chain). Because `start` is this window's,
`schedule: step` is refused here (use the window, or `interval`). The shared schedule applies to BOTH scales
(s_i = schedule(s, i), w_i = schedule(w, i)): a step whose w_i is 0 skips the null pass, whose s_i is 0 the skip pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.base import Description, Eval, Guider, TableSpec, affine, extrapolate, fmt, model_of

TABLE = TableSpec("slg", "Skip layer guidance (SD 3.5)", ("Model", "s", "w", "Blocks", "Window"), order=61,
                  baseline_models=("conditional", "unconditional"), baseline_cells=("{model}", "0", "0", "–", "–"))


def in_window(step, start: float, stop: float) -> bool:
    """SD 3.5's rule: start·n < i < stop·n for step i of n."""
    return start * step.count < step.index < stop * step.count


class _Hooks:
    """Forward hooks on several modules for the duration of a `with` block."""

    def __init__(self, modules_fns):
        self.modules_fns = modules_fns

    def __enter__(self):
        self.handles = [m.register_forward_hook(fn) for m, fn in self.modules_fns]

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _identity(module, inputs, output):
    return inputs[0]


@dataclass(frozen=True)
class SkipLayers:
    """The perturbation of SLG's extra pass (hashable, so the denoiser groups its rows)."""

    blocks: tuple[str, ...]

    def applied(self, network, denoiser=None):
        if not hasattr(network, "residual_layers"):
            raise GuidanceError(f"{type(network).__name__} cannot skip layers: SLG needs guidance.nn.UNet")
        layers = network.residual_layers()
        unknown = [b for b in self.blocks if b not in layers]
        if unknown:
            raise GuidanceError(f"slg: no skippable layer {unknown} in this U-Net; it has {list(layers)}")
        return _Hooks([(layers[b], _identity) for b in self.blocks])


class SkipLayerGuidance(Guider):
    name = "slg"

    def __init__(self, scale: float = 2.8, cfg_scale: float = 1.0, blocks=("middle.1",), start: float = 0.01,
                 stop: float = 0.2, conditional: bool = True, **schedule):
        if schedule.get("schedule") == "step":
            raise GuidanceError("guidance=slg: schedule=step is refused, its start would be SLG's own window "
                                "(start·n < i < stop·n); set guidance.start/stop, or use schedule=interval")
        super().__init__(scale=scale, conditional=conditional, **schedule)
        self.cfg_scale = check_scale(cfg_scale, "guidance.cfg_scale")
        self.blocks = tuple(str(b) for b in (blocks or ()))
        self.start, self.stop = float(start), float(stop)
        if not 0 <= self.start <= self.stop <= 1:
            raise GuidanceError(f"slg needs 0 <= start <= stop <= 1 (fractions of the steps), got {start}, {stop}")
        if self.cfg_scale and not self.conditional:
            raise GuidanceError("slg: cfg_scale must be 0 on the unconditional model (guidance.conditional=false)")

    def cfg_at(self, step) -> float:
        """This chain step's w (the CFG part), under the shared schedule."""
        return self.schedule.scale_at(self.cfg_scale, step)

    def skipping(self, step) -> bool:
        return self.scale_at(step) != 0 and bool(self.blocks) and in_window(step, self.start, self.stop)

    def check_chain(self, steps):
        super().check_chain(steps)
        if steps and self.scale != 0 and self.blocks and not any(in_window(s, self.start, self.stop) for s in steps):
            raise GuidanceError(f"guidance=slg: the window start={self.start:g}, stop={self.stop:g} (start·n < i < "
                                f"stop·n) holds no step of this chain of {steps[0].count} steps; widen it")

    def requests(self, step):
        reqs = [Eval("model", labels=self.model_labels)]
        if self.cfg_at(step) != 0:
            reqs.append(Eval("uncond", labels="null"))
        if self.skipping(step):
            reqs.append(Eval("skip", labels=self.model_labels, perturb=SkipLayers(self.blocks)))
        return reqs

    def combine(self, preds, x, step):
        return cfg_plus_perturbed(preds, x, step, self.cfg_at(step), self.scale_at(step), "skip")

    def info(self):
        return {**super().info(), "cfg_scale": self.cfg_scale, "blocks": list(self.blocks), "start": self.start,
                "stop": self.stop}

    @classmethod
    def describe(cls, info):
        s, w, model = info.get("scale"), info.get("cfg_scale"), model_of(info)
        blocks = ",".join(info.get("blocks") or []) or "none"
        window = f"({fmt(info.get('start'))}, {fmt(info.get('stop'))})"
        return Description(TABLE, (model, fmt(s), fmt(w), blocks, window), (s if s is not None else float("inf"),),
                           series=f"slg ({model}, w={fmt(w)}, {blocks})", x=s, x_symbol="s",
                           unguided=(s == 0 or blocks == "none") and not w)


def cfg_plus_perturbed(preds, x, step, w, s, perturbed: str):
    """ε = ε_m + w (ε_m − ε_null) + s (ε_m − ε_perturbed), the sum SLG and SEG share (diffusers' form): the CFG
    part where the null pass ran, and the perturbed term with its difference taken from the model's ε."""
    model = preds["model"]
    if len(preds) == 1:
        return model
    names = [n for n in ("uncond", perturbed) if n in preds]

    def combination(m, *others):  # affine in ε: at σ = ∞ the same combination of x̂0 (base.affine)
        terms = dict(zip(names, others))
        out = extrapolate(m, terms["uncond"], w) if "uncond" in terms else m
        return out + s * (m - terms[perturbed]) if perturbed in terms else out
    return affine(combination, [model] + [preds[n] for n in names], x, step, model.var_v)
