"""The points' grid.png: the main job's first 16 images, drawn again with the same seed, labels, sampler and
settings (per-image seeds: image i does not depend on how many are drawn), without torch.compile, so a pixel may
differ from the main job's by a rounding step. 16, not the grid's usual 64: a 2-core CPU shared with other jobs.

    python experiments/fmnist_cpu_study/points/sample_grids.py . <out folder> [part k of n: k n]
    # then copy <out folder>/*/grid.png here
"""

import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from guidance.apps.main import sample_config, sweep_points
from guidance.apps.sample import run_sample

repo, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
part, parts = (int(sys.argv[3]), int(sys.argv[4])) if len(sys.argv) > 4 else (0, 1)
with initialize_config_dir(str(repo / "conf"), version_base="1.3"):
    cfg = compose("main", overrides=["logger=none"])
    with open_dict(cfg):
        cfg.study.num_samples, cfg.study.batch_size, cfg.study.compile = 16, 16, False
    pre = repo / "pretrained/fashion_mnist/cpu"
    models = {"unet": pre / "unet.pt", "classifier": pre / "classifier.pt", "weak": None}
    for p in sweep_points(cfg)[part::parts]:
        if not (out / p["name"] / "grid.png").exists():
            run_sample(sample_config(cfg, p, models, "grids"), out / p["name"])
