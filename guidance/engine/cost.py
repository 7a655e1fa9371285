"""Cost is counted, not declared: what the guided denoiser's counters mean per sample.

Two currencies: NFE (rows through the denoising networks, whatever their size) and GFLOP, the one that makes
strategies comparable at equal budgets: cost = Σ over passes of rows × FLOPs per row, each pass's FLOPs measured
on one image (guidance.sampling.flops): the U-Net, a weak U-Net, a perturbed pass of either, the classifier's
forward and its backward (the gradient w.r.t. x_t, as dispatched, not assumed to be 2× the forward), and a latent
model's decoder (one pass per sample, counted apart from the NFE).
"""

from __future__ import annotations

CLASSIFIER_PASSES = ("_forward", "_backward")
DECODER = "decoder"  # a latent model's autoencoder decoding the finished latents (GuidedDenoiser.decode)


def cost_per_sample(counts: dict, images: int, flops: dict | None = None) -> dict[str, float]:
    """Counted work per image from the denoiser's counters (rows through each network, perturbed rows again under
    `<network>+<perturbation>`, `<classifier>_forward` / `_backward` rows): `nfe` (rows through every denoising
    network), classifier passes, `nfe_<network>` for each denoising network other than the U-Net, and, when `flops`
    (FLOPs per row of each pass) covers every counted pass, `gflop` with its breakdown `gflop_<pass>`; a latent
    model's `decoder` passes per sample (not NFE; their FLOPs are in `gflop`)."""
    n = max(images, 1)
    denoisers = [k for k in counts if not k.endswith(CLASSIFIER_PASSES) and "+" not in k
                 and k not in ("images", DECODER)]
    out = {"nfe": sum(counts[k] for k in denoisers) / n,
           "classifier_forward": counts.get("classifier_forward", 0) / n,
           "classifier_backward": counts.get("classifier_backward", 0) / n}
    out.update({f"nfe_{k}": counts[k] / n for k in denoisers if k != "unet"})
    if counts.get(DECODER):
        out[DECODER] = counts[DECODER] / n
    if flops is not None:
        out.update(gflop_per_sample(counts, n, flops))
    return out


def pass_rows(counts: dict) -> dict[str, int]:
    """Rows of each distinct pass: a network's perturbed rows are taken out of its plain ones."""
    rows = {k: v for k, v in counts.items() if k != "images"}
    for key, v in counts.items():
        if "+" in key:
            rows[key.split("+", 1)[0]] -= v
    return {k: v for k, v in rows.items() if v}


def gflop_per_sample(counts: dict, images: int, flops: dict) -> dict[str, float]:
    """{"gflop": Σ rows × FLOPs / images / 1e9, "gflop_<pass>": each pass's share}; {} when a counted pass was
    never measured (a point resumed from batches that all ran before: its passes were not run again)."""
    rows = pass_rows(counts)
    if any(k not in flops for k in rows):
        return {}
    shares = {k: rows[k] * flops[k] / max(images, 1) / 1e9 for k in rows}
    return {"gflop": sum(shares.values()), **{f"gflop_{k}": v for k, v in shares.items()}}
