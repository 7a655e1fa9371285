"""Cost is counted, not declared: what the guided denoiser's counters mean per sample."""

from __future__ import annotations


def cost_per_sample(counts: dict, images: int) -> dict[str, float]:
    """Counted work per image from the denoiser's counters (rows through each network, `<classifier>_forward` /
    `_backward` rows): `nfe` (rows through every denoising network), classifier passes, and `nfe_<network>` for each
    denoising network other than the U-Net."""
    n = max(images, 1)
    denoisers = [k for k in counts if not k.endswith(("_forward", "_backward")) and k != "images"]
    out = {"nfe": sum(counts[k] for k in denoisers) / n,
           "classifier_forward": counts.get("classifier_forward", 0) / n,
           "classifier_backward": counts.get("classifier_backward", 0) / n}
    out.update({f"nfe_{k}": counts[k] / n for k in denoisers if k != "unet"})
    return out
