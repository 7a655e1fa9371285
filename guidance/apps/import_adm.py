"""guidance-import-adm: convert a released guided-diffusion (ADM) checkpoint into a toolkit snapshot.

    guidance-import-adm checkpoint=256x256_diffusion.pt release=256x256_diffusion out=runs/adm/256x256_diffusion.pt

The snapshot carries the release's model, diffusion (schedule, learned σ) and data configs, so guidance-sample
loads it like a snapshot the toolkit trained. A class-conditional release never trained a null class: the
snapshot says so, and CFG or the unconditional mode on it stop with one line (ADM's unconditional model is the
separate 256x256_diffusion_uncond release).
"""

from __future__ import annotations

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from guidance.adm.importer import import_adm
from guidance.apps.common import hydra_app


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
