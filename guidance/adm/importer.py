"""A released guided-diffusion (ADM) checkpoint -> a toolkit snapshot (the library behind guidance-import-adm)."""

from __future__ import annotations

from pathlib import Path

from guidance.config import build
from guidance.errors import GuidanceError


def import_adm(checkpoint: str | Path, release_name: str, out: str | Path) -> Path:
    """Convert `checkpoint` (a guided-diffusion state dict of release `release_name`) into a snapshot at `out`."""
    import torch

    from guidance.adm import convert_state_dict, release
    from guidance.checkpoint import save_snapshot
    from guidance.io import sha256_file

    rel, checkpoint = release(release_name), Path(checkpoint)
    if not checkpoint.is_file():
        raise GuidanceError(f"checkpoint={checkpoint} does not exist; download {rel.name}.pt from guided-diffusion's README")
    try:
        adm = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GuidanceError(f"{checkpoint} is not a readable torch file ({type(e).__name__}); download it again") from None
    if not isinstance(adm, dict):
        raise GuidanceError(f"{checkpoint} holds a {type(adm).__name__}, not a state dict: not a guided-diffusion file")
    with torch.device("meta"):  # the file is checked against the release's shapes before any weights are made
        convert_state_dict(adm, build(rel.model, _convert_="all"), rel.legacy_attention, where=str(checkpoint))
    model = build(rel.model, _convert_="all")
    state = convert_state_dict(adm, model, rel.legacy_attention, where=str(checkpoint))
    model.load_state_dict(state)
    extra = {"adm_release": rel.name, "source_sha256": sha256_file(checkpoint), "low_res": rel.low_res,
             "null_class_trained": False if rel.class_conditional else None, "p_uncond": 0.0}
    # ADM's U-Nets predict ε (and a learned variance) at integer timesteps: said in the snapshot for the sampler
    adapter = {"parameterization": "eps", "noise_input": "timestep"} if rel.role == "unet" else None
    return save_snapshot(out, rel.role, model, rel.model, step=0, diffusion_config=rel.diffusion,
                         data_config=rel.data, extra=extra, adapter=adapter)
