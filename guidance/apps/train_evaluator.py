"""guidance-train-evaluator: train EvaluatorNet on the clean training images; save a snapshot with its accuracy.

    guidance-train-evaluator                   # Fashion-MNIST -> runs/evaluator/fashion_mnist/evaluator.pt
    guidance-train-evaluator data=mnist epochs=2 logger=none
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from guidance.apps.common import one_line_errors
from guidance.config import CONF_DIR
from guidance.training.evaluator import train_evaluator


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train_evaluator")
@one_line_errors
def main(cfg: DictConfig) -> None:
    train_evaluator(cfg)


if __name__ == "__main__":
    main()
