"""guidance-train: joint training of the class-conditional U-Net and the noise-aware classifier.

    guidance-train                              # Fashion-MNIST, tiny networks, runs/train/fashion_mnist-default
    guidance-train experiment=debug             # a few steps on a CPU
    torchrun --nproc_per_node=8 -m guidance.apps.train model=adm_fmnist classifier=fmnist name=fmnist

Rerunning the same command resumes from <out_dir>/checkpoints/state.pt.
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from guidance.apps.common import hydra_app


def _check(cfg: DictConfig, out_dir) -> None:
    from guidance.training.loop import check_resumable

    check_resumable(cfg, out_dir)


@hydra_app("train", check=_check)
def main(cfg: DictConfig) -> None:
    from guidance.training.loop import train

    train(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    main()
