"""TSG, time-step guidance (Sadat et al., ICLR 2025, "No Training, No Problem", eq. 8 / Alg. 2), scale w (Ho &
Salimans units, paper's w + 1), on the conditional or the unconditional model:

    ε~ = ε(x_t, t̃_emb) + (1 + w)(ε(x_t, t_emb) − ε(x_t, t̃_emb)),   t̃_emb = t_emb + s · t^α · std(t_emb) · n

n ~ N(0, I) drawn at every evaluation from each image's own random stream; t = t_orig / 1000 (the paper's time
in [0, 1]; our schedules, like its DiT/SD, have T = 1000; on continuous levels τ = σ/(1 + σ), `paper_time`); std per image over the embedding (so an image never
depends on its batch). t_emb is the U-Net's timestep embedding after its MLP (the vector its blocks receive),
perturbed with a forward hook on UNet.time_embed, not a fork. ε~ = extrapolate(ε(t_emb), ε(t̃_emb), w) in the
paper's order. The paper's window T_MIN/T_MAX is the shared schedule's (`schedule: interval`, sigma_lo/sigma_hi:
the σ of those timesteps), decided per chain step like every strategy's (guidance.guiders.base); outside it no
extra pass. Paper (DiT, conditional): w + 1 = 2.5, s = 2, α = 1.
Neutral setting: s = 0 (the perturbed pass is the model itself) gives ε~ = ε.
"""

from __future__ import annotations

from dataclasses import dataclass

from guidance.errors import GuidanceError, check_scale
from guidance.guiders.base import Description, Eval, Guider, TableSpec, affine, extrapolate, fmt, model_of

TABLE = TableSpec("tsg", "Time-step guidance (Sadat et al. 2025)", ("Model", "w", "s", "α"), order=46,
                  baseline_models=("conditional", "unconditional"), baseline_cells=("{model}", "0", "–", "–"))


def paper_time(step) -> float:
    """The paper's t in [0, 1] (1 = pure noise): t_orig / 1000 on trained discrete levels (its DiT and SD models, T =
    1000); on continuous levels the flow time τ = σ/(1 + σ) (the t of a flow model, SD3's σ; on an EDM model the
    flow time of the same marginals: carried over, the paper has no continuous-σ model)."""
    return step.t / 1000 if step.t is not None else step.tau


@dataclass(frozen=True)
class PerturbedTimeEmbedding:
    scale: float        # s · t^α: the noise level relative to the embedding's std

    def applied(self, network, denoiser):
        if not hasattr(network, "time_embed"):
            raise GuidanceError(f"{type(network).__name__} has no time_embed module: TSG needs guidance.nn.UNet")
        draws = denoiser.require_draws("TSG's time-embedding noise")

        def perturb(module, inputs, emb):
            n = draws.randn(emb.shape[1:]).to(emb.device, emb.dtype)
            return emb + self.scale * emb.std(dim=1, keepdim=True) * n

        return _Hook(network.time_embed, perturb)


class _Hook:
    """A forward hook for the duration of a `with` block."""

    def __init__(self, module, fn):
        self.module, self.fn = module, fn

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self.fn)

    def __exit__(self, *exc):
        self.handle.remove()


class TimeStepGuidance(Guider):
    name = "tsg"

    def __init__(self, scale: float = 1.5, noise_scale: float = 2.0, alpha: float = 1.0, conditional: bool = True,
                 **schedule):
        super().__init__(scale=scale, conditional=conditional, **schedule)
        self.noise_scale, self.alpha = check_scale(noise_scale, "guidance.noise_scale"), check_scale(alpha, "guidance.alpha")

    def active(self, step) -> bool:
        return self.noise_scale != 0 and self.scale_at(step) != 0

    def requests(self, step):
        model = [Eval("model", labels=self.model_labels)]
        if not self.active(step):
            return model
        level = self.noise_scale * paper_time(step) ** self.alpha
        return model + [Eval("perturbed", labels=self.model_labels, perturb=PerturbedTimeEmbedding(level))]

    def combine(self, preds, x, step):
        model = preds["model"]
        if "perturbed" not in preds:
            return model
        w = self.scale_at(step)  # affine in ε: at σ = ∞ the same combination of x̂0 (base.affine)
        return affine(lambda m, p: extrapolate(m, p, w, order="lerp"), (model, preds["perturbed"]), x, step,
                      model.var_v)

    def info(self):
        return {**super().info(), "noise_scale": self.noise_scale, "alpha": self.alpha}

    @classmethod
    def describe(cls, info):
        w, s, a, model = info.get("scale"), info.get("noise_scale"), info.get("alpha"), model_of(info)
        return Description(TABLE, (model, fmt(w), fmt(s), fmt(a)), (w if w is not None else float("inf"),),
                           series=f"tsg ({model}, s={fmt(s)})", x=w, x_symbol="w", unguided=w == 0 or s == 0)
