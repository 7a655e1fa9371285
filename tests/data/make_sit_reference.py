"""Write tests/data/sit_tiny_reference.pt: SiT's own module (willisma/SiT models.py) and its own ODE sampler
(transport/: Linear path, velocity prediction, Euler steps through torchdiffeq) on a tiny random-weight
configuration, for tests/test_sit.py (which cannot download SiT nor import timm).

Nothing of SiT is restated here: models.py and transport/ are imported from a checkout of SiT, e.g.
    git -C <SiT git dir> archive HEAD | tar -x -C /tmp/sitsrc
    pip install --no-deps --target /tmp/timm_pkg timm          # models.py imports timm's PatchEmbed/Attention/Mlp
    PYTHONPATH=/tmp/timm_pkg SIT_SRC=/tmp/sitsrc python tests/data/make_sit_reference.py

Saved: the state dict (every weight random; learn_sigma=True as SiT-XL-2-256x256.pt, whose variance half SiT's
forward drops), the inputs and outputs of forward (t in [0, 1], t = 1 data), and SiT's ODE Euler chain
(sample_ode(sampling_method="euler", num_steps=11): 10 steps on t = linspace(0, 1, 11)) with CFG at scale 1.5:
once with forward_with_cfg as released (first 3 channels guided) and once with CFG on all channels; SiT's SDE
sampler (sample_sde, its sample.py defaults, 11 points) with its noise draws; and the tensor names and shapes of
the released SiT-XL/2 at 256 px.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.environ.get("SIT_SRC", "/tmp/sitsrc"))
from models import SiT, SiT_models  # noqa: E402  (SiT's)
from transport import Sampler, create_transport  # noqa: E402  (SiT's)
from transport import integrators  # noqa: E402

ARCH = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=4,
            learn_sigma=True)
SCALE, STEPS = 1.5, 11


def all_channel_cfg(model, cfg_scale):
    """forward_with_cfg with the line its comment offers instead: guidance on every channel."""
    def forward(x, t, y):
        half = x[: len(x) // 2]
        out = model(torch.cat([half, half]), t, y)
        cond, uncond = out.split(len(out) // 2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([guided, guided])
    return forward


def sde_chain(model):
    """SiT's SDE sampler as its sample.py defaults (Euler-Maruyama, diffusion_form="sigma", last_step="Mean",
    last_step_size=0.04) on 11 points, CFG 1.5 on all channels, with every noise draw it made (for a restatement
    of this sampler to be checked against; the toolkit has none yet)."""
    sample_sde = Sampler(create_transport("Linear", "velocity")).sample_sde(
        sampling_method="Euler", diffusion_form="sigma", diffusion_norm=1.0, last_step="Mean", last_step_size=0.04,
        num_steps=STEPS)
    drawn, randn = [], integrators.th.randn

    def recording(*a, **k):
        n = randn(*a, **k)
        drawn.append(n[: len(n) // 2].clone())
        return n

    torch.manual_seed(2)
    z, yc = torch.randn(2, 4, 8, 8), torch.tensor([0, 2])
    y2 = torch.cat([yc, torch.full_like(yc, ARCH["num_classes"])])
    integrators.th.randn = recording
    try:
        with torch.no_grad():
            out = sample_sde(torch.cat([z, z]), all_channel_cfg(model, SCALE), y=y2)[-1][:2]
    finally:
        integrators.th.randn = randn
    return {"steps": STEPS, "diffusion_form": "sigma", "last_step": "Mean", "last_step_size": 0.04, "z": z,
            "y": yc, "scale": SCALE, "noise": torch.stack(drawn), "all_channels": out}


def main():
    torch.manual_seed(0)
    model = SiT(**ARCH).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1))
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 0.37, 1.0])
    y = torch.tensor([0, 3, 4])  # 4: the null label
    sample_ode = Sampler(create_transport("Linear", "velocity")).sample_ode(sampling_method="euler", num_steps=STEPS)
    with torch.no_grad():
        out = model(x, t, y)
        z, yc = torch.randn(2, 4, 8, 8), torch.tensor([1, 3])
        y2 = torch.cat([yc, torch.full_like(yc, ARCH["num_classes"])])
        released = sample_ode(torch.cat([z, z]), model.forward_with_cfg, y=y2, cfg_scale=SCALE)[-1][:2]
        full = sample_ode(torch.cat([z, z]), all_channel_cfg(model, SCALE), y=y2)[-1][:2]
        unguided = sample_ode(z, model.forward, y=yc)[-1]
    ref = {"arch": ARCH, "state_dict": model.state_dict(), "x": x, "t": t, "y": y, "out": out,
           "ode": {"steps": STEPS, "method": "euler", "z": z, "y": yc, "scale": SCALE, "released": released,
                   "all_channels": full, "unguided": unguided}}
    with torch.device("meta"):
        release = SiT_models["SiT-XL/2"](input_size=32)  # SiT-XL-2-256x256.pt: learn_sigma=True
    ref["sde"] = sde_chain(model)
    ref["releases"] = {"SiT-XL/2-256": {k: list(v.shape) for k, v in release.state_dict().items()}}
    path = Path(__file__).with_name("sit_tiny_reference.pt")
    torch.save(ref, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
