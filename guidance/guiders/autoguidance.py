"""Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", eq. 1), scale w
(0 = unguided; the paper's w is our w + 1):

    D_w(x; σ, y) = D(x; σ, y) + w (D(x; σ, y) − D_weak(x; σ, y))

D and D_weak are denoisers (x̂0); the weak model is a REAL second network (`weak_ckpt`: a smaller and/or
shorter-trained U-Net of the same data and noise schedule, e.g. guidance-train experiment=weak_unet) given the
SAME condition as the main model (not the null label, which diffusers' version feeds it). Weights summing to one
make the x̂0 and ε combinations identical. Neutral settings: w = 0, or weak = main (D_w = D).
"""

from __future__ import annotations

from guidance.guiders.base import Description, Eval, Guider, Prediction, TableSpec, extrapolate, fmt, model_of

TABLE = TableSpec("autoguidance", "Autoguidance (Karras et al. 2024)", ("Model", "w"), order=55,
                  baseline_models=("conditional", "unconditional"), baseline_cells=("{model}", "0"))


class Autoguidance(Guider):
    name = "autoguidance"
    networks = ("unet", "weak")

    def __init__(self, scale: float = 1.0, conditional: bool = True, **schedule):
        super().__init__(scale=scale, conditional=conditional, **schedule)

    def requests(self, step):
        main = [Eval("main", labels=self.model_labels)]
        return main + ([Eval("weak", labels=self.model_labels, network="weak")] if self.scale_at(step) != 0 else [])

    def combine(self, preds, x, step):
        main = preds["main"]
        if "weak" not in preds:
            return main
        x0 = extrapolate(main.x0, preds["weak"].x0, self.scale_at(step))
        return Prediction.from_x0(x, step, x0, main.var_v)

    @classmethod
    def describe(cls, info):
        w, model = info.get("scale"), model_of(info)
        return Description(TABLE, (model, fmt(w)), (w if w is not None else float("inf"),),
                           series=f"autoguidance ({model})", x=w, x_symbol="w", unguided=w == 0)
