"""Made tests/data/engine_v1_reference.pt with the engine v1 code (commit 11444a8, before the guided-denoiser
rewrite): samples of the shipped Fashion-MNIST snapshots and of a small learned-variance U-Net, per strategy and
sampler, for fixed per-image seeds. tests/test_engine_regression.py checks that engine v2 reproduces them.

It imports the v1 API (guider.model_output / condition_mean / condition_eps), so it runs only against that commit:
    git worktree add /tmp/v1 11444a8 && PYTHONPATH=/tmp/v1 python tests/data/make_engine_v1_reference.py
"""

import torch

from guidance.diffusion import create_diffusion
from guidance.guiders import build_guider
from guidance.nn import UNet
from guidance.sampling import DDIMSampler, DDPMSampler, PerImageRNG
from guidance.checkpoint import load_snapshot

CASES = [  # (name, sampler, respacing, eta, clip, strategy, fields)
    ("ddpm-none-cond", "ddpm", "20", None, True, "none", {}),
    ("ddpm-none-uncond", "ddpm", "20", None, True, "none", {"conditional": False}),
    ("ddpm-cfg-w2", "ddpm", "20", None, True, "cfg", {"scale": 2.0}),
    ("ddpm-classifier-s4", "ddpm", "20", None, True, "classifier", {"scale": 4.0}),
    ("ddpm-classifier-uncond-s4", "ddpm", "20", None, True, "classifier", {"scale": 4.0, "conditional": False}),
    ("ddpm-cfg_interval-w2", "ddpm", "20", None, True, "cfg_interval", {"scale": 2.0, "t_min": 0, "t_max": 600}),
    ("ddpm-cfg_classifier", "ddpm", "20", None, True, "cfg_classifier", {"scale": 1.0, "classifier_scale": 2.0}),
    ("ddim-none-cond", "ddim", "ddim10", 0.0, True, "none", {}),
    ("ddim-cfg-w2", "ddim", "ddim10", 0.0, True, "cfg", {"scale": 2.0}),
    ("ddim-cfg_interval-w2", "ddim", "ddim10", 0.0, True, "cfg_interval", {"scale": 2.0, "t_min": 0, "t_max": 600}),
    ("ddim-eta1-cfg-w1", "ddim", "ddim10", 1.0, True, "cfg", {"scale": 1.0}),
    # Classifier-guided DDIM without clipping: v1 re-clipped x̂0 after the guided ε only when clipping was on.
    ("ddim-classifier-s4-noclip", "ddim", "ddim10", 0.0, False, "classifier", {"scale": 4.0}),
]
LEARNED = dict(image_size=8, in_channels=1, out_channels=1, num_classes=3, model_channels=16, channel_mult=[1, 2],
               num_res_blocks=1, attention_resolutions=[4], num_heads=1, num_head_channels=16, dropout=0.0,
               use_scale_shift_norm=True, resblock_updown=False, learn_sigma=True)


def sample(unet, clf, num_classes, shape, name, kind, spec, eta, clip, strategy, fields, base_cfg):
    d = create_diffusion(**{**base_cfg, "timestep_respacing": spec})
    s = DDPMSampler(d, clip_denoised=clip) if kind == "ddpm" else DDIMSampler(d, eta=eta, clip_denoised=clip)
    g = build_guider(strategy, null_label=num_classes, classifier=clf, **fields) if strategy != "none" else \
        build_guider("none", null_label=num_classes, **fields)
    rng = PerImageRNG(0, range(6))
    y = rng.labels(num_classes, "balanced")
    return s.sample(unet, g, (6, *shape), y, rng)


def main():
    out = {}
    unet, meta = load_snapshot("pretrained/fashion_mnist/cpu/unet.pt", role="unet")
    clf, _ = load_snapshot("pretrained/fashion_mnist/cpu/classifier.pt", role="classifier")
    base = {k: v for k, v in meta["diffusion_config"].items() if k not in ("_target_", "timestep_respacing")}
    for case in CASES:
        out[case[0]] = sample(unet, clf, 10, (1, 28, 28), *case, base)
    torch.manual_seed(0)
    net = UNet(**LEARNED).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    lbase = dict(steps=1000, noise_schedule="cosine", model_var_type="learned_range", loss_type="hybrid")
    for case in CASES:
        if case[5] in ("none", "cfg", "cfg_interval"):
            out["learned-" + case[0]] = sample(net, None, 3, (1, 8, 8), *case, lbase)
    torch.save({"samples": out, "learned_config": LEARNED, "learned_state": net.state_dict()},
               "tests/data/engine_v1_reference.pt")


if __name__ == "__main__":
    main()
