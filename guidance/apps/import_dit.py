"""guidance-import-dit: convert a DiT or SiT release (a `.pt` of DiT's/SiT's models.py, or a diffusers DiT folder)
into a toolkit snapshot.

    guidance-import-dit checkpoint=DiT-XL-2-256x256.pt out=runs/dit/DiT-XL-2-256.pt
    guidance-import-dit checkpoint=SiT-XL-2-256x256.pt source=sit out=runs/sit/SiT-XL-2-256.pt

The snapshot rebuilds guidance.nn.dit.DiTNetwork (diffusers' DiTTransformer2DModel) and records the engine
adapter (DiT: ε with learned variance on the linear 1000-step schedule; SiT: flow velocity on continuous σ), the
trained null label 1000, and the latent space (SD VAE, x 0.18215).
"""

from __future__ import annotations

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from guidance.apps.common import hydra_app
from guidance.dit.importer import import_dit


@hydra_app("import_dit")
def main(cfg: DictConfig) -> None:
    out = import_dit(to_absolute_path(cfg.checkpoint), to_absolute_path(cfg.out), source=cfg.source,
                     model=cfg.release, image_size=int(cfg.image_size), conventions=cfg.conventions)
    kind = "flow velocity, t = 1 − τ" if cfg.source == "sit" else "ε + learned variance, 1000 linear steps"
    print(f"wrote {out}: {cfg.source} release ({kind}; null label 1000 trained; latent x 0.18215)")


if __name__ == "__main__":
    main()
