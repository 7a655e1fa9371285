"""The points' grid.png: the main job's first 64 images (the grid's count), drawn again with the same seed, labels,
sampler and settings (per-image seeds: image i does not depend on how many are drawn), without torch.compile, so
a pixel may differ from the main job's by a rounding step.

    python experiments/fmnist_cpu_study/points/sample_grids.py . <out folder>    # then copy */grid.png here
"""

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from guidance.apps.main import sample_config, sweep_points
from guidance.apps.sample import run_sample

repo, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
with initialize_config_dir(str(repo / "conf"), version_base="1.3"):
    cfg = compose("main", overrides=["logger=none"])
    with open_dict(cfg):
        cfg.study.num_samples, cfg.study.batch_size, cfg.study.compile = 64, 64, False
    pre = repo / "pretrained/fashion_mnist/cpu"
    models = {"unet": pre / "unet.pt", "classifier": pre / "classifier.pt", "weak": None}
    for p in sweep_points(cfg):
        if not (out / p["name"] / "grid.png").exists():
            run_sample(sample_config(cfg, p, models, "grids"), out / p["name"])
