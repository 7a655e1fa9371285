"""guidance-import-edm2: convert an EDM2 network pickle (NVlabs/edm2) into a toolkit snapshot.

    guidance-import-edm2 checkpoint=edm2-img512-xs-2147483-0.135.pkl out=runs/edm2/xs.pt

The pickle is read without executing the module source it embeds (guidance.edm2.safe_pickle). The snapshot holds
EDM2Denoiser with the file's weights, EDM's parameterization on σ in [0.002, 80], the class conditioning (EDM2's
conditional networks trained no unconditional mode: CFG on them uses EDM2's unconditional network as the guiding
one) and the latent standardization of its VAE encoder (img512 models).
"""

from __future__ import annotations

from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from guidance.apps.common import hydra_app
from guidance.edm2.importer import import_edm2


@hydra_app("import_edm2")
def main(cfg: DictConfig) -> None:
    from guidance.edm2 import architecture

    if cfg.architecture:
        architecture(cfg.architecture)  # an unknown name fails before the (large) file is read
    checkpoint = Path(to_absolute_path(cfg.checkpoint))
    out = to_absolute_path(cfg.out or f"runs/edm2/{checkpoint.stem}.pt")
    path = import_edm2(checkpoint, out, cfg.architecture)
    print(f"wrote {path}: the EDM2 network of {checkpoint.name} (nothing in the file executed; the snapshot's "
          "extra records its origin, sha256, conditioning and latent standardization)")

if __name__ == "__main__":
    main()
