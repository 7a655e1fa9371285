"""guidance-train-evaluator: train EvaluatorNet on the clean training images; save a snapshot with its accuracy.

    guidance-train-evaluator                   # Fashion-MNIST -> runs/evaluator/fashion_mnist/evaluator.pt
    guidance-train-evaluator data=mnist epochs=2 logger=none
"""

from __future__ import annotations

from omegaconf import DictConfig

from guidance.apps.common import hydra_app
from guidance.training.evaluator import train_evaluator


@hydra_app("train_evaluator")
def main(cfg: DictConfig) -> None:
    train_evaluator(cfg)


if __name__ == "__main__":
    main()
