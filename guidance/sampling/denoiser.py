"""The guided denoiser: the one place where networks are called during sampling.

    pred = denoiser(x, y, step)      # networks + one guider + counters

The contract types (Step, Prediction, Eval, ClassifierGrad, cost_per_sample) live in guidance.engine.
The guider lists the predictions it needs at this step (`Eval`: a denoising network at some labels; `ClassifierGrad`:
∇_{x_t} log p_φ(labels | x_t)); the denoiser runs each network ONCE with every requested row stacked into one
batch (or, with batching="split", one forward per request; "auto" follows the measured per-device policy of
guidance.sampling.runtime), under the Runtime's precision, layout and compilation, hands the named predictions (in
x's dtype, whatever the autocast) to the guider's `combine`, clips x̂0 if asked, and counts every network row and classifier pass as it happens.
With measure_flops (run_sample's), the first time it runs a pass it measures that pass's FLOPs per row on one image (guidance.sampling.flops), so the
cost per sample is Σ rows × FLOPs (guidance.engine.cost).
Samplers see only the result, so any guider works with any sampler.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from guidance.engine import ClassifierGrad, Eval, Labels, Prediction, Step, cost_per_sample
from guidance.engine.cost import DECODER
from guidance.engine.model import DenoisingModel, as_model
from guidance.errors import GuidanceError
from guidance.sampling.flops import counted, forward_flops, gradient_flops, perturbed_flops
from guidance.sampling.runtime import Runtime, auto_policy

STRATEGY_STREAM = 2  # per-image random stream of strategies' own draws (0: noise, 1: labels; guidance.sampling.rng)


FROM_MODEL = object()  # null_label / null_trained: as the U-Net's DenoisingModel declares them


class GuidedDenoiser:
    """networks: name -> module or DenoisingModel (guidance.engine.model). A denoising network given as a bare
    module is the ε-prediction network on integer timesteps (x, t, labels) -> ε (or [ε, v] with a learned
    variance); a DenoisingModel says its own parameterization and noise input. Classifiers take (x, t) and return
    logits. `null_label` is the U-Net's label-dropout class (None: an unconditional U-Net, asked with no labels);
    `null_trained=False`: a class-conditional U-Net that never trained that class (ADM's releases), so passes at the
    null label are refused. Both default to what the U-Net's DenoisingModel declares. `measure_flops`: measure each pass's FLOPs
    at its first run (one extra one-image forward, or forward + backward, per kind of pass; run_sample turns it on)
    so cost_per_sample() also says GFLOP/sample. `decoder`: a latent model's LatentDecoder (default: the U-Net
    DenoisingModel's, None for a pixel model); `decode(x)` turns a finished chain's latents into images, counted
    as "decoder" rows (not NFE) with its FLOPs measured once."""

    BATCHING = ("auto", "stacked", "split")

    def __init__(self, guider, networks: dict, null_label=FROM_MODEL, batching: str = "auto",
                 runtime: Runtime | None = None, null_trained=FROM_MODEL, measure_flops: bool = False,
                 decoder=FROM_MODEL):
        if batching not in self.BATCHING:
            raise GuidanceError(f"batching={batching!r} is unknown; use one of {', '.join(self.BATCHING)}")
        missing = [n for n in guider.networks if networks.get(n) is None]
        if missing:
            raise GuidanceError(f"guidance={guider.name} needs the network(s) {missing}; "
                                f"{'pass classifier_ckpt=PATH' if 'classifier' in missing else 'load them first'}")
        null_label, null_trained = self.conditioning(networks.get("unet"), null_label, null_trained)
        unet = networks.get("unet")
        if decoder is FROM_MODEL:
            decoder = unet.decoder if isinstance(unet, DenoisingModel) else None
        if decoder is not None and not decoder.is_loaded:  # before any sampling work
            raise GuidanceError("this model runs in the latent space of an autoencoder whose weights were not "
                                "loaded: pass vae=PATH (a local AutoencoderKL folder or file)")
        self.decoder = decoder
        self.models = {n: v for n, v in networks.items() if isinstance(v, DenoisingModel)}
        networks = {n: v.network if isinstance(v, DenoisingModel) else v for n, v in networks.items()}
        self.guider, self.networks = guider, networks
        self.null_label = None if null_label is None else int(null_label)
        self.null_trained = bool(null_trained)
        self.batching, self.runtime = batching, runtime or Runtime()
        self.fast = {name: self.runtime.prepare(net) for name, net in networks.items() if net is not None}
        self.counts: Counter = Counter()  # rows through each network (perturbed ones also under
        #                                  "<network>+<perturbation>"), classifier forward/backward rows
        self.flops: dict[str, int] | None = {} if measure_flops else None  # FLOPs per row of each pass
        self.images = 0                   # chains started, to report cost per sample
        self.draws = None                 # the chain's strategy stream (reset)

    @staticmethod
    def conditioning(unet, null_label, null_trained):
        """(null_label, null_trained): given, or the U-Net's DenoisingModel's; given and declared must agree."""
        declared = isinstance(unet, DenoisingModel)
        if null_label is FROM_MODEL:
            if not declared:
                raise GuidanceError("pass null_label= (the U-Net's null class, None for an unconditional U-Net) or "
                                    "give the U-Net as a DenoisingModel that declares it")
            null_label = unet.null_label
        elif declared and unet.null_label != (None if null_label is None else int(null_label)):
            raise GuidanceError(f"null_label={null_label} disagrees with the U-Net's DenoisingModel "
                                f"(null_label={unet.null_label}); pass one of them")
        if null_trained is FROM_MODEL:
            null_trained = unet.null_trained if declared else True
        return null_label, null_trained

    def model(self, name: str) -> DenoisingModel:
        """The adapter of denoising network `name` (a bare module: ε on integer timesteps)."""
        if name not in self.models:
            self.models[name] = as_model(self.networks[name], null_label=self.null_label)
        return self.models[name]

    def reset(self, batch_size: int, rng=None) -> None:
        """Start of a chain (a batch of images): the guider drops its per-chain state; `rng` (the chain's
        PerImageRNG) lets strategies that draw (ICG's random labels) keep per-image streams."""
        self.images += int(batch_size)
        self.draws = rng.stream(STRATEGY_STREAM) if rng is not None and hasattr(rng, "stream") else None
        self.guider.reset(int(batch_size), rng)

    @property
    def needs(self) -> frozenset:
        """The sampler capabilities its strategy relies on (guidance.engine.capabilities), checked by Sampler.sample."""
        return frozenset(getattr(self.guider, "needs", ()))

    def labels(self, labels: Labels, y: torch.Tensor) -> torch.Tensor:
        if labels == "target":
            return y
        if labels == "null":
            return torch.full_like(y, self.null_label)
        if labels == "random":  # a uniformly random real class per image, from its own stream (ICG)
            return self.require_draws("random labels").randint(self.null_label).to(y.device)
        return labels(y)

    def model_labels(self, labels: Labels, y: torch.Tensor) -> torch.Tensor | None:
        """The labels of a denoising pass: None for an unconditional U-Net (its one mode is the "null" pass)."""
        if self.null_label is None:
            if labels != "null":
                raise GuidanceError(f"guidance={self.guider.name} asks for class-conditional passes but the U-Net is "
                                    "unconditional; set guidance.conditional=false (classifier guidance) or use a "
                                    "class-conditional U-Net")
            return None
        if labels == "null" and not self.null_trained:
            raise GuidanceError(f"guidance={self.guider.name} needs the U-Net's unconditional mode (the null label), "
                                "which this network never trained (ADM's and EDM2's conditional releases): use a "
                                "strategy without an unconditional pass (autoguidance with the model's unconditional "
                                "companion as the weak network, EDM2's CFG; classifier guidance; none)")
        return self.labels(labels, y)

    def require_draws(self, what: str):
        if self.draws is None:
            raise GuidanceError(f"{what} need the chain's per-image random streams: start chains with "
                                "denoiser.reset(batch_size, rng) (samplers do)")
        return self.draws

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: Step, clip: bool = False) -> Prediction:
        requests = self.guider.requests(step)
        preds: dict = {}
        by_pass: dict[tuple, list[Eval]] = {}
        for r in requests:
            if isinstance(r, Eval):
                by_pass.setdefault((r.network, r.perturb), []).append(r)
            else:
                preds[r.name] = self.classifier_grad(r, x, y, step)
        for (name, perturb), evals in by_pass.items():
            if perturb is None:
                preds.update(self.evaluate(name, evals, x, y, step))
            else:
                self.measure(f"{name}+{type(perturb).__name__}", name, x, y, step, perturb)
                with perturb.applied(self.networks[name], self):
                    preds.update(self.evaluate(name, evals, x, y, step, perturbed=True))
        pred = self.guider.combine(preds, x, step)
        return self.guider.finish(pred, x, step, clip)

    def batching_for(self, device: torch.device) -> str:
        return auto_policy(device)["batching"] if self.batching == "auto" else self.batching

    def evaluate(self, network: str, evals: list[Eval], x, y, step: Step, perturbed: bool = False
                 ) -> dict[str, Prediction]:
        """One forward of `network` over every requested label set, split back into named predictions. Perturbed
        passes run the eager module (hooks and flags never meet torch.compile)."""
        k, model = len(evals), self.model(network)
        net = self.networks[network] if perturbed else self.fast[network]
        x_in, t = model.network_input(x, step), model.noise_level(step, len(x), x.device)
        unconditional = self.label_free(network)
        labels = [None if unconditional else self.model_labels(e.labels, y) for e in evals]
        with self.runtime.autocast(x.device):
            if k == 1 or self.batching_for(x.device) == "split":
                out = torch.cat([net(x_in, t, ys) for ys in labels])
            else:
                out = net(torch.cat([x_in] * k), torch.cat([t] * k), None if unconditional else torch.cat(labels))
        out = out.to(x.dtype)  # under autocast: the guider's and the sampler's math stays in x's precision
        self.counts[network] += k * len(x)
        if perturbed:
            self.counts[f"{network}+{type(evals[0].perturb).__name__}"] += k * len(x)
        else:
            self.measure(network, network, x, y, step)
        preds = {}
        for e, chunk in zip(evals, out.chunk(k)):
            preds[e.name] = model.prediction(x, step, chunk)  # ε and x̂0 from the model's parameterization
        return preds

    def label_free(self, network: str) -> bool:
        """A second denoising network declared unconditional (EDM2's unconditional companion, the weak model of its
        CFG presets) is called without labels, as its DenoisingModel says; the U-Net's passes keep their checks."""
        return network != "unet" and self.model(network).null_label is None

    def classifier_grad(self, r: ClassifierGrad, x, y, step: Step) -> torch.Tensor:
        """Summing the selected log-probs gives each image its own gradient (eval mode: images independent)."""
        classifier = self.fast[r.network]
        labels = self.labels(r.labels, y)
        if step.t is None:
            raise GuidanceError(f"guidance={self.guider.name} needs a noise-aware classifier on the model's trained "
                                f"timesteps, but this model's noise levels are continuous (σ = {step.sigma:g})")
        t = torch.full((len(x),), step.t, dtype=torch.long, device=x.device)
        if self.flops is not None and f"{r.network}_forward" not in self.flops:
            self.flops[f"{r.network}_forward"], self.flops[f"{r.network}_backward"] = gradient_flops(
                self.networks[r.network], x[:1], t[:1], labels[:1])
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            with self.runtime.autocast(x.device):
                logits = classifier(x_in, t)
            log_probs = F.log_softmax(logits.to(x.dtype), dim=-1)
            self.counts[f"{r.network}_forward"] += len(x)
            selected = log_probs[torch.arange(len(x), device=x.device), labels]
            grad = torch.autograd.grad(selected.sum(), x_in)[0]
            self.counts[f"{r.network}_backward"] += len(x)
        return grad

    def measure(self, key: str, name: str, x, y, step: Step, perturb=None) -> None:
        """FLOPs per row of the pass `key` of network `name`, measured once, on the first image, on the eager
        network. The labels' values cost no FLOPs (an embedding lookup): the image's own label stands for any
        (no draw from a chain's stream)."""
        if self.flops is None or key in self.flops:
            return
        network, model = self.networks[name], self.model(name)
        x_in, t = model.network_input(x[:1], step), model.noise_level(step, 1, x.device)
        labels = None if self.null_label is None or self.label_free(name) else y[:1]
        self.flops[key] = (forward_flops(network, x_in, t, labels) if perturb is None
                           else perturbed_flops(network, perturb, x_in, t, labels))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """A finished chain's images: x itself for a pixel model; a latent model's decoded latents (in the
        decoder's batches), each one counted under DECODER and the decoder's FLOPs per image measured once."""
        if self.decoder is None:
            return x
        if self.flops is not None and DECODER not in self.flops:
            self.flops[DECODER] = counted(lambda: self.decoder(x[:1]))
        images = self.decoder(x)
        self.counts[DECODER] += len(x)
        return images

    def cost_per_sample(self) -> dict[str, float]:
        return cost_per_sample(self.counts, self.images, self.flops)

