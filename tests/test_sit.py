"""SiT on diffusers' DiTTransformer2DModel against SiT's own code (tests/data/sit_tiny_reference.pt, written by
make_sit_reference.py with willisma/SiT's models.py and transport/ on a tiny random-weight SiT): the network, the
adapter's ε and x̂0 against SiT's Linear path, SiT's ODE Euler sampler and its SDE sampler (flow_sde) with CFG, the
import into a snapshot."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from guidance.dit import convert_state_dict  # noqa: E402
from guidance.dit.importer import import_dit  # noqa: E402
from guidance.dit.releases import model_config  # noqa: E402
from guidance.engine.model import ContinuousLevels, DenoisingModel  # noqa: E402
from guidance.engine.prediction import Step  # noqa: E402
from guidance.guiders.cfg import ClassifierFreeGuidance  # noqa: E402
from guidance.guiders.none import NoGuidance  # noqa: E402
from guidance.nn.dit import DiTNetwork  # noqa: E402
from guidance.sampling.denoiser import GuidedDenoiser  # noqa: E402
from guidance.sampling.flow import FlowEulerSampler  # noqa: E402
from guidance.sampling.flow_sde import FlowSDESampler  # noqa: E402

REF = torch.load(Path(__file__).parent / "data" / "sit_tiny_reference.pt", weights_only=True)
NULL = REF["arch"]["num_classes"]
ARCH = {("image_size" if k == "input_size" else k): v for k, v in REF["arch"].items()}  # DiT's input_size
ATOL = 2e-5 * float(REF["out"].abs().max())


def network():
    net = DiTNetwork(**ARCH, velocity="sit").eval()
    net.load_state_dict(convert_state_dict(REF["state_dict"], net))
    return net


def model():
    return DenoisingModel(network(), "flow", ContinuousLevels(0.0, float("inf")), "flow_time_reversed",
                          time_scale=1.0, null_label=NULL, learned_variance=False)


def sit_step(t: float) -> Step:
    """SiT's time t (t = 1 data) as the engine's step: flow time τ = 1 − t, σ = τ/(1 − τ)."""
    tau = 1.0 - t
    return Step.at_sigma(float("inf") if tau == 1 else tau / (1.0 - tau))


class Draws:
    """The per-image streams' draws in order: the start z, then the given noise draws (SiT's th.randn, one per step)."""

    def __init__(self, z, noise=()):
        self.draws = [z, *noise]

    def __len__(self):
        return len(self.draws[0])

    def randn(self, shape):
        assert self.draws, "more draws than recorded"
        return self.draws.pop(0)


@torch.no_grad()
def test_network_is_minus_sits_velocity():
    """SiT's v = x_data − ε (ICPlan: x_t = t x_data + (1 − t) ε); the engine's u = ε − x̂0 = −v. SiT's forward drops
    the learned-variance half its XL/2 release carries; so does DiTNetwork(velocity="sit")."""
    out = network()(REF["x"], REF["t"], REF["y"])
    assert out.shape == REF["out"].shape == (3, 4, 8, 8)
    torch.testing.assert_close(out, -REF["out"], atol=ATOL, rtol=0)


@torch.no_grad()
def test_prediction_is_sits_path():
    """The adapter's x̂0 and ε at SiT's x_t against SiT's path (ICPlan): x_t = t x1 + (1 − t) x0, v = x1 − x0, so
    x1 = x_t + (1 − t) v and x0 = x_t − t v, for t = 0 (pure noise: σ = ∞), 0.37 and 1 (data: σ = 0)."""
    m = model()
    for i, t in enumerate(REF["t"].tolist()):
        step = sit_step(t)
        x_t, v = REF["x"][i:i + 1], REF["out"][i:i + 1]
        pred = m(step.from_flow(x_t), step, REF["y"][i:i + 1])  # the engine's VP variable whose x_f is SiT's x_t
        torch.testing.assert_close(pred.x0, x_t + (1 - t) * v, atol=ATOL, rtol=0)
        torch.testing.assert_close(pred.eps, x_t - t * v, atol=ATOL, rtol=0)


def sit_ode(guider, z, y):
    steps = REF["ode"]["steps"] - 1  # SiT's num_steps counts grid points: linspace(0, 1, 11) is 10 Euler steps
    sampler = FlowEulerSampler(ContinuousLevels(0.0, float("inf")), respacing=f"flow{steps}")
    return sampler.sample(GuidedDenoiser(guider, {"unet": model()}), z.shape, y, Draws(z))


@torch.no_grad()
def test_flow_euler_equals_sits_ode_euler():
    """SiT's sample_ode(sampling_method="euler") through torchdiffeq, same weights, start and grid = flow_euler;
    with CFG at SiT's scale 1.5 = w 0.5 on every channel; SiT's released forward_with_cfg guides 3 of 4 channels."""
    ode = REF["ode"]
    scale = float(ode["unguided"].abs().max())
    torch.testing.assert_close(sit_ode(NoGuidance(), ode["z"], ode["y"]), ode["unguided"], atol=1e-5 * scale, rtol=0)
    guided = sit_ode(ClassifierFreeGuidance(ode["scale"] - 1), ode["z"], ode["y"])
    torch.testing.assert_close(guided, ode["all_channels"], atol=1e-5 * scale, rtol=0)
    assert (ode["released"] - ode["all_channels"]).abs().max() > 1e-3 * scale


@torch.no_grad()
def test_import_writes_a_flow_snapshot(tmp_path):
    from guidance.checkpoint import load_model

    torch.save(REF["state_dict"], tmp_path / "SiT-tiny.pt")
    arch = {**model_config("SiT-S/2"), **ARCH}
    out = import_dit(tmp_path / "SiT-tiny.pt", tmp_path / "sit.pt", source="sit", arch=arch)
    m, meta = load_model(out)
    assert meta["model_config"]["velocity"] == "sit" and meta["diffusion_config"] is None
    assert meta["adapter"]["levels"] == {"sigma_min": 0.0, "sigma_max": float("inf")}
    assert (m.parameterization, m.noise_input, m.time_scale, m.null_label, m.null_trained, m.learned_variance) == (
        "flow", "flow_time_reversed", 1.0, NULL, True, False)
    assert m.continuous and m.levels.sigma_max == float("inf")
    step = sit_step(0.37)
    pred = m(step.from_flow(REF["x"][1:2]), step, REF["y"][1:2])
    torch.testing.assert_close(pred.x0, REF["x"][1:2] + 0.63 * REF["out"][1:2], atol=ATOL, rtol=0)


def test_released_sit_xl_2_converts_at_full_size():
    """SiT-XL/2's own tensor names and shapes (recorded from SiT's models.py; learn_sigma=True) fit
    model_config("SiT-XL/2") with the file's learned-variance half, on the meta device."""
    from guidance.config import build

    shapes = REF["releases"]["SiT-XL/2-256"]
    with torch.device("meta"):
        net = build({**model_config("SiT-XL/2", 256), "learn_sigma": True})
        state = {k: torch.empty(s) for k, s in shapes.items()}
    assert set(convert_state_dict(state, net)) == set(net.state_dict())


@torch.no_grad()
def test_flow_sde_equals_sits_sde_sampler():
    """SiT's sample_sde at its sample.py defaults (Euler–Maruyama, diffusion_form sigma, last_step Mean of 0.04),
    num_steps 11, CFG scale 1.5, with SiT's own noise draws = flow_sde on flow11 with t_min 0.04 (its defaults but
    the step count): every draw used, in order."""
    sde = REF["sde"]
    assert (sde["diffusion_form"], sde["last_step"]) == ("sigma", "Mean")
    sampler = FlowSDESampler(ContinuousLevels(0.0, float("inf")), respacing=f"flow{sde['steps']}",
                             t_min=sde["last_step_size"])
    rng = Draws(sde["z"], sde["noise"])
    den = GuidedDenoiser(ClassifierFreeGuidance(sde["scale"] - 1), {"unet": model()})
    x = sampler.sample(den, sde["z"].shape, sde["y"], rng)
    assert not rng.draws  # one draw per noisy step: steps − 1 of them
    scale = float(sde["all_channels"].abs().max())
    torch.testing.assert_close(x, sde["all_channels"], atol=1e-5 * scale, rtol=0)
    torch.testing.assert_close(torch.tensor(sampler.chain_sigmas[1:] / (1 + sampler.chain_sigmas[1:])),
                               1 - torch.linspace(0, 1 - sde["last_step_size"], sde["steps"], dtype=torch.float64)[1:])
    plain = FlowSDESampler(ContinuousLevels(0.0, float("inf")), respacing=f"flow{sde['steps']}", t_min=0.05)
    other = plain.sample(den, sde["z"].shape, sde["y"], Draws(sde["z"], sde["noise"]))
    assert (other - sde["all_channels"]).abs().max() > 1e-3 * scale  # another grid differs: the check can fail


@torch.no_grad()
def test_sits_sde_in_the_engines_terms():
    """SiT's SDE sampler (its sample.py defaults: Euler-Maruyama, diffusion w_t = σ_t = 1 − t, last step "Mean" of
    0.04) restated on the engine's guided Prediction, with SiT's own noise draws, equals SiT's run. In SiT's
    terms x_t = t x̂0 + (1 − t) ε, v = x̂0 − ε, score = −ε/(1 − t), so the SDE drift v + w_t·score is x̂0 − 2ε:
        x ← x + (x̂0 − 2ε) dt + sqrt(2 (1 − t) dt) n,   t = linspace(0, 0.96, 11)[:-1],   then x ← x + (x̂0 − 2ε) 0.04."""
    sde = REF["sde"]
    den = GuidedDenoiser(ClassifierFreeGuidance(sde["scale"] - 1), {"unet": model()})
    den.reset(len(sde["z"]))
    t = torch.linspace(0, 1 - sde["last_step_size"], sde["steps"])
    dt = float(t[1] - t[0])

    def drift(x, ti):
        step = sit_step(ti)
        pred = den(step.from_flow(x), sde["y"], step, clip=False).eps_form(step.from_flow(x), step)
        return pred.x0 - 2 * pred.eps

    x = sde["z"]
    for i, ti in enumerate(t[:-1].tolist()):
        x = x + drift(x, ti) * dt + (2 * (1 - ti)) ** 0.5 * dt ** 0.5 * sde["noise"][i]
    x = x + drift(x, float(t[-1])) * sde["last_step_size"]
    scale = float(sde["all_channels"].abs().max())
    torch.testing.assert_close(x, sde["all_channels"], atol=1e-5 * scale, rtol=0)
