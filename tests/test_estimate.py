"""The main job's time estimate (issue 22): the rows it predicts per network are the rows the denoiser runs, and the
seconds are rows x the calibrated rate."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from guidance.config import compose_config
from guidance.diffusion import create_diffusion
from guidance.estimate import calibrate, network_rows, sweep_seconds
from guidance.sampling import BatchRNG, GuidedDenoiser
from guidance.sampling.runtime import Runtime
from guidance.testbed import make_testbed

DIFFUSION = {"steps": 1000}


@pytest.mark.parametrize("overrides", [
    ["guidance=none"], ["guidance=cfg", "guidance.scale=1"], ["guidance=cfg_interval", "guidance.scale=2"],
    ["guidance=classifier", "guidance.scale=1"], ["guidance=autoguidance", "guidance.scale=1"],
    ["guidance=cfg_zero", "guidance.scale=1", "sampler=heun", "sampler.respacing=edm6"],
])
def test_predicted_rows_are_the_rows_the_denoiser_runs(overrides):
    cfg = compose_config("sample", ["sampler=ddim", "sampler.respacing=ddim10", *overrides])
    rows = network_rows(cfg, DIFFUSION)
    from guidance.config import build

    base = create_diffusion(**DIFFUSION)
    _, model, clf = make_testbed(base)
    denoiser = GuidedDenoiser(build(cfg.guidance), {"unet": model, "weak": model, "classifier": clf}, null_label=3)
    build(cfg.sampler, diffusion=base).sample(denoiser, (4, 2, 1, 1), torch.arange(4) % 3, BatchRNG(0, 4))
    ran = Counter({k: v / 4 for k, v in denoiser.counts.items() if v})
    assert rows == ran and sum(rows.values()) > 0


def test_seconds_are_rows_times_rate():
    rows = [(100, Counter(unet=20)), (50, Counter(unet=10, classifier_forward=10, classifier_backward=10))]
    rate = {"unet": 0.01, "classifier": 0.004}
    assert sweep_seconds(rows, rate) == pytest.approx(100 * 20 * 0.01 + 50 * (10 * 0.01 + 10 * 0.004))


def test_calibration_measures_every_network():
    base = create_diffusion(1000)
    _, model, clf = make_testbed(base)
    rate = calibrate({"unet": model, "classifier": clf}, (2, 1, 1), 8, Runtime(), 3, "cpu")
    assert set(rate) == {"unet", "classifier"} and all(0 < v < 1 for v in rate.values())
