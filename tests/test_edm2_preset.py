"""experiment=edm2_guidance (issue 20): the preset and every `guidance-sample` command its header gives compose,
build their guider, and use exactly the files and guidance weights of edm2's generate_images.py presets
(guidance/edm2/releases.py GENERATION_PRESETS; EDM2's g = the toolkit's w + 1), on EDM2's 32-step Heun sampler."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest

from guidance.config import CONF_DIR, build, compose_config
from guidance.edm2.releases import GENERATION_PRESETS

PRESET = Path(CONF_DIR) / "experiment" / "edm2_guidance.yaml"


def commands() -> list[list[str]]:
    """The overrides of each `guidance-sample` line of the preset's header."""
    rows = []
    for line in PRESET.read_text().splitlines():
        text = line.lstrip("# ").split("  #")[0].strip()
        if text.startswith("guidance-sample"):
            words = shlex.split(text)[1:]
            rows.append([w for w in words if w != "-m"])
    return rows


def stem(path) -> str | None:
    return None if path is None else Path(str(path)).name.removesuffix(".pt") + ".pkl"


def test_header_lists_the_table_rows():
    rows = commands()
    assert len(rows) == 8  # S and XXL: none, CFG, CFG in an interval, autoguidance
    assert all(r[0] == "experiment=edm2_guidance" for r in rows)


@pytest.mark.parametrize("overrides", commands(), ids=lambda r: " ".join(r[1:3]) or "preset")
def test_every_row_composes_with_edm2s_files_and_weights(overrides):
    cfg = compose_config("sample", overrides + ["reference_npz=x.npz"])
    assert cfg.sweep_name == "edm2_guidance" and cfg.num_samples == 50000 and cfg.evaluate
    assert cfg.sampler._target_.endswith("EDM2HeunSampler") and cfg.sampler.respacing == "edm32"
    assert (cfg.sampler.sigma_min, cfg.sampler.sigma_max, cfg.sampler.rho) == (0.002, 80.0, 7.0)
    assert cfg.data.image_size == 512 and cfg.vae
    guider = build(cfg.guidance)
    net, gnet = stem(cfg.unet_ckpt), stem(cfg.weak_ckpt)
    interval = "schedule" in cfg.guidance
    match = [p for p in GENERATION_PRESETS.values() if p.net == net and p.gnet == gnet and p.metric == "fid"]
    assert match, f"{net} guided by {gnet} is no FID preset of edm2's generate_images.py"
    if cfg.guidance._target_.endswith("NoGuidance"):
        assert match[0].kind == "none"
        return
    assert cfg.guidance._target_.endswith("Autoguidance") and guider.scale == cfg.guidance.scale
    if interval:  # Kynkäänniemi et al.: CFG (EDM2's uncond guiding network) only for σ in (lo, hi]
        assert match[0].kind == "cfg" and cfg.guidance.schedule == "interval"
        assert (cfg.guidance.sigma_lo, cfg.guidance.sigma_hi) in {(0.28, 5.42), (0.19, 1.61)}
    else:
        assert math.isclose(cfg.guidance.scale, match[0].guidance - 1)  # EDM2's g = w + 1
