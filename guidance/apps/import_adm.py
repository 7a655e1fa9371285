"""guidance-import-adm: convert a released guided-diffusion (ADM) checkpoint into a toolkit snapshot.

    guidance-import-adm checkpoint=256x256_diffusion.pt release=256x256_diffusion out=runs/adm/256x256_diffusion.pt

The snapshot carries the release's model, diffusion (schedule, learned σ) and data configs, so guidance-sample
loads it like a snapshot the toolkit trained. A class-conditional release never trained a null class: the
snapshot says so, and CFG or the unconditional mode on it stop with one line (ADM's unconditional model is the
separate 256x256_diffusion_uncond release).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from guidance.apps.common import hydra_app
from guidance.errors import GuidanceError


def import_adm(checkpoint: str | Path, release_name: str, out: str | Path) -> Path:
    import torch
    from hydra.utils import instantiate

    from guidance.adm import convert_state_dict, release
    from guidance.io import sha256_file
    from guidance.checkpoint import save_snapshot

    rel, checkpoint = release(release_name), Path(checkpoint)
    if not checkpoint.is_file():
        raise GuidanceError(f"checkpoint={checkpoint} does not exist; download {rel.name}.pt from guided-diffusion's README")
    try:
        adm = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        raise GuidanceError(f"{checkpoint} is not a readable torch file ({type(e).__name__}); download it again") from None
    if not isinstance(adm, dict):
        raise GuidanceError(f"{checkpoint} holds a {type(adm).__name__}, not a state dict: not a guided-diffusion file")
    model = instantiate(rel.model, _convert_="all")
    state = convert_state_dict(adm, model, rel.legacy_attention, where=str(checkpoint))
    model.load_state_dict(state)
    extra = {"adm_release": rel.name, "source_sha256": sha256_file(checkpoint), "low_res": rel.low_res,
             "null_class_trained": False if rel.class_conditional else None, "p_uncond": 0.0}
    return save_snapshot(out, rel.role, model, rel.model, step=0, diffusion_config=rel.diffusion,
                         data_config=rel.data, extra=extra)


@hydra_app("import_adm")
def main(cfg: DictConfig) -> None:
    from guidance.adm import release

    rel = release(cfg.release)  # an unknown name fails before the (large) file is read
    out = import_adm(to_absolute_path(cfg.checkpoint), rel.name, to_absolute_path(cfg.out))
    print(f"wrote {out}: {rel.role} of guided-diffusion's {rel.name}.pt "
          f"({'legacy' if rel.legacy_attention else 'new'} attention order converted, "
          f"{'a zero null-class row added, refused by CFG' if rel.class_conditional and rel.role == 'unet' else 'ready'})")


if __name__ == "__main__":
    main()
