"""Write tests/data/dit_tiny_reference.pt: DiT's own module (facebookresearch/DiT models.py) and its own DDPM chain
on a tiny random-weight configuration, for tests/test_dit.py (which cannot download DiT nor import timm).

Nothing of DiT is restated here: models.py and diffusion/ are imported from a checkout of DiT, e.g.
    git -C <DiT git dir> archive HEAD | tar -x -C /tmp/ditsrc
    pip install --no-deps --target /tmp/timm_pkg timm          # models.py imports timm's PatchEmbed/Attention/Mlp
    PYTHONPATH=/tmp/timm_pkg DIT_SRC=/tmp/ditsrc python tests/data/make_dit_reference.py

Saved: the state dict (every weight random: DiT's init zeroes the adaLN and output layers), the inputs and
outputs of forward and forward_with_cfg, and a 10-step DDPM chain (DiT's create_diffusion("10"), p_sample_loop,
clip_denoised=False as its sample.py) with CFG at DiT's scale 1.5 with the noise DiT drew at each step: once
with forward_with_cfg as released (guidance on the first 3 channels only) and once with CFG on all channels (the
alternative DiT's forward_with_cfg comments give); and the tensor names and shapes of the released DiT-XL/2 at 256
and 512 px.
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.environ.get("DIT_SRC", "/tmp/ditsrc"))
from diffusion import create_diffusion  # noqa: E402  (DiT's)
from diffusion import gaussian_diffusion  # noqa: E402
from models import DiT, DiT_models  # noqa: E402  (DiT's)

ARCH = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=2, num_classes=4,
            learn_sigma=True)
SCALE = 1.5


def all_channel_cfg(model, cfg_scale):
    """forward_with_cfg with the line DiT's comment offers instead: guidance on every channel of ε."""
    def forward(x, t, y):
        half = x[: len(x) // 2]
        out = model(torch.cat([half, half]), t, y)
        eps, rest = out[:, :model.in_channels], out[:, model.in_channels:]
        cond, uncond = eps.split(len(eps) // 2)
        guided = uncond + cfg_scale * (cond - uncond)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)
    return forward


def chain(diffusion, fn, z, y):
    """DiT's p_sample_loop on [z, z] with labels [y, null]; returns (samples of the conditional half, the noise
    it drew at each step, conditional half)."""
    drawn, randn_like = [], gaussian_diffusion.th.randn_like

    def recording(x, *a, **k):
        n = randn_like(x, *a, **k)
        drawn.append(n[: len(n) // 2].clone())
        return n

    gaussian_diffusion.th.randn_like = recording
    try:
        out = diffusion.p_sample_loop(fn, (2 * len(z),) + z.shape[1:], torch.cat([z, z]), clip_denoised=False, device="cpu",
                                      model_kwargs=dict(y=torch.cat([y, torch.full_like(y, ARCH["num_classes"])])))
    finally:
        gaussian_diffusion.th.randn_like = randn_like
    return out[: len(z)], torch.stack(drawn)


def release_shapes(make, image_size):
    """The released model's tensor names and shapes (built on the meta device: no weights)."""
    with torch.device("meta"):
        net = make(input_size=image_size // 8)
    return {k: list(v.shape) for k, v in net.state_dict().items()}


def main():
    torch.manual_seed(0)
    model = DiT(**ARCH).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "pos_embed":
                p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1))
    x = torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 500, 999])
    y = torch.tensor([0, 3, 4])  # 4: the null label
    with torch.no_grad():
        out = model(x, t, y)
        x_cfg, t_cfg, y_cfg = torch.cat([x[:2], x[:2]]), torch.tensor([10, 700, 10, 700]), torch.tensor([1, 2, 4, 4])
        out_cfg = model.forward_with_cfg(x_cfg, t_cfg, y_cfg, SCALE)
        diffusion = create_diffusion("10")
        z, yc = torch.randn(2, 4, 8, 8), torch.tensor([1, 3])
        torch.manual_seed(1)
        released, noise_released = chain(diffusion, lambda a, b, y: model.forward_with_cfg(a, b, y, SCALE), z, yc)
        torch.manual_seed(1)
        full, noise_full = chain(diffusion, all_channel_cfg(model, SCALE), z, yc)
    ref = {"arch": ARCH, "state_dict": model.state_dict(), "x": x, "t": t, "y": y, "out": out,
           "cfg": {"scale": SCALE, "x": x_cfg, "t": t_cfg, "y": y_cfg, "out": out_cfg},
           "chain": {"respacing": "10", "z": z, "y": yc, "scale": SCALE, "released": released,
                     "noise_released": noise_released, "all_channels": full, "noise_all_channels": noise_full}}
    ref["releases"] = {f"DiT-XL/2-{size}": release_shapes(DiT_models["DiT-XL/2"], size) for size in (256, 512)}
    path = Path(__file__).with_name("dit_tiny_reference.pt")
    torch.save(ref, path)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
