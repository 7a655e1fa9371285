"""guidance-main: the whole study in one command.

    guidance-main                       # Fashion-MNIST, CPU preset (<= 20 min on 2 cores with shipped checkpoints)
    guidance-main study=gpu             # bigger model, more samples and steps, for one GPU
    guidance-main pretrained_dir=null   # train everything from scratch instead of reusing shipped snapshots

The stages (models, evaluator, sweep, report) are guidance.study.run_study; this app parses the config, sets up
torchrun and calls it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from guidance import distributed
from guidance.apps.common import hydra_app
from guidance.study import run_study


@hydra_app("main")
def main(cfg: DictConfig) -> None:
    """One process, or one per device under torchrun: every rank trains (DDP) and samples its share of each
    point; rank 0 alone prints, trains the evaluator, evaluates and reports while the others wait."""
    env = distributed.setup(cfg.device, timeout_min=float(os.environ.get("GUIDANCE_DIST_TIMEOUT_MIN", 180)))
    try:
        with contextlib.ExitStack() as quiet:
            if not env.is_main:  # errors still reach stderr; progress bars are off on these ranks
                quiet.enter_context(contextlib.redirect_stdout(quiet.enter_context(open(os.devnull, "w"))))
            chosen = any(o.startswith("metrics.evaluator_checkpoint=") for o in HydraConfig.get().overrides.task)
            run_study(cfg, Path(HydraConfig.get().runtime.output_dir), env, evaluator_chosen=chosen)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
