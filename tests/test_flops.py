"""One cost currency (issue 22): FLOPs per pass measured on one image, cost = Σ rows × FLOPs, checked against
closed forms and against a hand sum over the rows a strategy requests per step × steps."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from guidance.checkpoint import load_snapshot
from guidance.engine import cost_per_sample
from guidance.guiders.pag import IdentityAttention
from guidance.nn import UNet
from guidance.sampling.flops import forward_flops, gradient_flops, perturbed_flops

from test_sample_app import DIFFUSION, SIZE, classifier_config, compose_cfg, save, unet_config

STEPS = 3


class ConvLinear(nn.Module):
    """conv 3x3 (1 -> 4 channels, 8x8) then linear (256 -> 3): FLOPs known by formula."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x, t, labels=None):
        return self.fc(self.conv(x).flatten(1))


CONV = 2 * (4 * 8 * 8) * (1 * 3 * 3)  # 2 × output elements × multiply-adds per output (biases not counted)
LINEAR = 2 * 256 * 3


def test_forward_flops_is_the_layer_formula_per_row():
    x, t = torch.randn(5, 1, 8, 8), torch.zeros(5, dtype=torch.long)
    assert forward_flops(ConvLinear(), x, t, None) == CONV + LINEAR  # per row, whatever the batch


def test_classifier_backward_is_measured_not_assumed_twice_the_forward():
    """∇_x only: each layer's input gradient (as much as its forward), no weight gradients, so the backward of this
    stack costs 1× its forward, not the 2× a rule of thumb would assume."""
    x, t, y = torch.randn(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), torch.tensor([0, 2])
    fwd, bwd = gradient_flops(ConvLinear(), x, t, y)
    assert (fwd, bwd) == (CONV + LINEAR, CONV + LINEAR)


def test_pag_pass_saves_exactly_the_middle_attention_matmuls():
    """Identity attention skips QKᵀ and the attention-weighted sum: 2·L²·C FLOPs each (L = positions, C = channels
    of the middle block), per row."""
    unet = UNet(**{k: v for k, v in unet_config().items() if k != "_target_"}).eval()
    x, t, y = torch.randn(1, 1, SIZE, SIZE), torch.tensor([5]), torch.tensor([1])
    plain, perturbed = forward_flops(unet, x, t, y), perturbed_flops(unet, IdentityAttention(("middle",)), x, t, y)
    length, channels = (SIZE // 2) ** 2, 16  # channel_mult [1, 2] of 8 channels: 4×4 positions × 16 channels
    assert plain - perturbed == 2 * (2 * length * length * channels)


def test_cost_is_rows_times_flops_per_pass():
    counts = {"unet": 30, "unet+IdentityAttention": 10, "weak": 10, "classifier_forward": 10,
              "classifier_backward": 10, "images": 5}
    flops = {"unet": 1e9, "unet+IdentityAttention": 0.5e9, "weak": 0.25e9, "classifier_forward": 0.2e9,
             "classifier_backward": 0.3e9}
    cost = cost_per_sample(counts, 5, flops)
    assert cost["nfe"] == 8 and cost["nfe_weak"] == 2 and "nfe_unet+IdentityAttention" not in cost
    assert cost["gflop_unet"] == pytest.approx(20 * 1.0 / 5) and cost["gflop_unet+IdentityAttention"] == 1.0
    assert cost["gflop"] == pytest.approx((20 * 1 + 10 * 0.5 + 10 * 0.25 + 10 * 0.2 + 10 * 0.3) / 5)
    assert "gflop" not in cost_per_sample(counts, 5, {"unet": 1e9})  # a pass never measured: no figure at all


# ---- acceptance: a classifier, a weak network and a perturbed pass, through run_sample ----

def counted(fn) -> int:
    """The test's own counter (FlopCounterMode around one forward), independent of guidance.sampling.flops."""
    with FlopCounterMode(display=False) as mode:
        fn()
    return mode.get_total_flops()


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    d = tmp_path_factory.mktemp("flops")
    weak = {**unet_config(), "model_channels": 4}  # a narrower U-Net: fewer FLOPs per row
    return {"unet": save(d / "unet.pt", "unet", unet_config()), "weak": save(d / "weak.pt", "unet", weak),
            "classifier": save(d / "classifier.pt", "classifier", classifier_config())}


def hand_flops(snapshots) -> dict[str, int]:
    nets = {k: load_snapshot(p, role="classifier" if k == "classifier" else "unet")[0].eval()
            for k, p in snapshots.items()}
    x, t, y = torch.randn(1, 1, SIZE, SIZE), torch.tensor([7]), torch.tensor([1])
    with torch.no_grad():
        unet, weak = counted(lambda: nets["unet"](x, t, y)), counted(lambda: nets["weak"](x, t, y))
        with nets["unet"].identity_attention(["middle"]):
            pag = counted(lambda: nets["unet"](x, t, y))
    x_in = x.clone().requires_grad_(True)
    box = {}
    clf_fwd = counted(lambda: box.update(out=nets["classifier"](x_in, t).log_softmax(-1)[0, 1]))
    clf_bwd = counted(lambda: torch.autograd.grad(box["out"], x_in))
    return {"unet": unet, "weak": weak, "pag": pag, "clf_fwd": clf_fwd, "clf_bwd": clf_bwd}


@pytest.mark.parametrize("strategy, overrides, rows", [
    # per step: rows through each pass the strategy requests (scale ≠ 0 everywhere)
    ("cfg_classifier", ["guidance.scale=1", "guidance.classifier_scale=2"],
     {"unet": 2, "clf_fwd": 1, "clf_bwd": 1}),
    ("autoguidance", ["guidance.scale=1"], {"unet": 1, "weak": 1}),
    ("pag", ["guidance.scale=1"], {"unet": 1, "pag": 1}),
])
def test_recorded_gflop_per_sample_is_the_hand_sum(snapshots, tmp_path, strategy, overrides, rows):
    from guidance.sampling.point import run_sample

    cfg = compose_cfg(snapshots, f"guidance={strategy}", *overrides, f"weak_ckpt={snapshots['weak']}",
                      "sampler=ddim", f"sampler.respacing=ddim{STEPS}", "num_samples=3", "batch_size=2")
    run_sample(cfg, tmp_path)
    info = json.loads((tmp_path / "sample_info.json").read_text())
    hand = hand_flops(snapshots)
    assert hand["weak"] < hand["unet"] and hand["pag"] < hand["unet"]  # the currency tells the passes apart
    expected = sum(STEPS * n * hand[k] for k, n in rows.items()) / 1e9
    assert info["cost_per_sample"]["gflop"] == pytest.approx(expected, rel=1e-12)
    names = {"unet": "unet", "weak": "weak", "pag": "unet+IdentityAttention", "clf_fwd": "classifier_forward",
             "clf_bwd": "classifier_backward"}
    assert info["flops_per_pass"] == {names[k]: hand[k] for k in rows}


# ---- the report: GFLOP/sample in the tables, the csv and as the cost plot's x axis ----

def _stored_point(folder, strategy, w, fid, gflop):
    folder.mkdir(parents=True)
    cost = {"nfe": 20 if w else 10, **({} if gflop is None else {"gflop": gflop})}
    info = {"strategy": strategy, "scale": w, "conditional": True, "sampler": "ddim", "steps": 10,
            "num_samples": 100, "seed": 3, "cost_per_sample": cost}
    (folder / "sample_info.json").write_text(json.dumps(info))
    (folder / "metrics.json").write_text(json.dumps({"extractor": "evaluator", "weights_sha256": "e" * 64,
                                                     "num_samples": 100, "fid": fid}))


@pytest.mark.parametrize("recorded", [True, False])
def test_report_shows_gflop_per_sample_where_recorded(tmp_path, monkeypatch, recorded):
    from guidance.guiders import describe_point
    from guidance.report import build_report
    import guidance.report.plots as plots

    for w, fid, gflop in [(0.0, 9.0, 1.5), (1.0, 7.0, 3.0), (2.0, 8.0, 3.0)]:
        _stored_point(tmp_path / "sweep" / f"w{w:g}", "cfg" if w else "none", w, fid, gflop if recorded else None)
    xlabels, save = {}, plots._save

    def recording_save(fig, path):
        xlabels[Path(path).stem] = fig.axes[0].get_xlabel() if fig.axes else None
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    paths = build_report(tmp_path / "sweep", tmp_path / "out", describe=describe_point, logger_cfg=None,
                         progress=False)
    md, header = paths["md"].read_text(), paths["csv"].read_text().splitlines()[0]
    if recorded:
        assert "| NFE/sample | GFLOP/sample |" in md and "| 20 | 3 |" in md
        assert "gflop_per_sample" in header and xlabels["fid_vs_nfe"].startswith("GFLOP per sample")
    else:  # records made before FLOPs were counted: no empty column, the plot says what its x axis is
        assert "GFLOP" not in md and "gflop" not in header and "predate FLOP counting" in xlabels["fid_vs_nfe"]


def test_cost_front_is_the_lowest_fid_at_or_below_each_cost():
    from guidance.report.plots import cost_front

    pts = [(20, 7.0), (10, 9.0), (30, 8.0), (40, 6.5), (10, 9.5), (25, 7.0)]
    assert cost_front(pts) == [(10, 9.0), (20, 7.0), (40, 6.5)]


@pytest.mark.parametrize("guider", ["tsg", "icg", "pag", "classifier"])
def test_measuring_changes_no_sample(guider):
    """Strategies that draw (TSG's embedding noise, ICG's random labels), a perturbed pass and a classifier gradient:
    the same chain with and without the one-image measurements is bitwise equal, and only the measuring one has
    FLOPs (off by default: library denoisers call their networks only to sample)."""
    from guidance.diffusion import create_diffusion
    from guidance.guiders import GUIDERS
    from guidance.nn import EncoderClassifier
    from guidance.sampling import DDIMSampler, GuidedDenoiser
    from guidance.sampling.rng import PerImageRNG

    torch.manual_seed(0)
    nets = {"unet": UNet(**{k: v for k, v in unet_config().items() if k != "_target_"}).eval(),
            "classifier": EncoderClassifier(**{k: v for k, v in classifier_config().items() if k != "_target_"}).eval()}
    for p in nets["unet"].out.parameters():  # the zero-initialised output layer would make every pass predict 0
        torch.nn.init.normal_(p, std=0.1)
    diffusion = create_diffusion(**{k: v for k, v in DIFFUSION.items() if k not in ("_target_", "timestep_respacing")})
    outs = []
    for measure in (False, True):
        den = GuidedDenoiser(GUIDERS[guider](scale=1.5), nets, 3, measure_flops=measure)
        sampler = DDIMSampler(diffusion, "ddim3")
        y = torch.tensor([0, 1, 2])
        outs.append(sampler.sample(den, (3, 1, SIZE, SIZE), y, PerImageRNG(4, range(3))))
        assert ("gflop" in den.cost_per_sample()) == measure
    assert torch.equal(outs[0], outs[1])
