"""Per-image seeds: sample i depends only on (seed, i), never on the batch it was drawn in."""

import torch

from guidance.diffusion import create_diffusion
from guidance.guiders import ClassifierFreeGuidance
from guidance.sampling import DDPMSampler, GuidedDenoiser, PerImageRNG, image_seed
from guidance.testbed import make_testbed

N, K = 64, 3


def run(seed, batch_size, indices=range(N)):
    _, model, _ = make_testbed(create_diffusion(1000))
    sampler = DDPMSampler(create_diffusion(1000), "8", clip_denoised=False)
    # CFG also covers the batched cond/null concatenation
    denoiser = GuidedDenoiser(ClassifierFreeGuidance(1.5), {"unet": model}, null_label=K)
    xs, ys = [], []
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        rng = PerImageRNG(seed, indices[start:start + batch_size])
        y = rng.labels(K, "uniform")
        xs.append(sampler.sample(denoiser, (len(rng), 2, 1, 1), y, rng))
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def test_same_seed_same_samples_at_every_batch_size():
    x64, y64 = run(0, 64)
    x7, y7 = run(0, 7)
    x1, y1 = run(0, 1, indices=range(0, N, 5))  # every 5th image alone
    assert torch.equal(x64, x7) and torch.equal(y64, y7)
    assert torch.equal(x64[::5], x1) and torch.equal(y64[::5], y1)
    assert len(set(y64.tolist())) == K  # labels really are drawn


def test_different_seeds_differ():
    xa, ya = run(0, 32, range(16))
    xb, yb = run(1, 32, range(16))
    assert (xa - xb).abs().amax(dim=(1, 2, 3)).min() > 0  # every single image differs
    assert not torch.equal(ya, yb)


def test_streams_are_per_image_and_label_mode_does_not_shift_noise():
    a = PerImageRNG(5, range(10))
    b = PerImageRNG(5, range(7, 12))
    assert torch.equal(a.randn((3,))[7:], b.randn((3,))[:3])
    assert torch.equal(a.randn((2, 2))[8:], b.randn((2, 2))[1:3])  # second draws line up too
    c, d = PerImageRNG(5, range(10)), PerImageRNG(5, range(10))
    assert torch.equal(c.labels(K, "balanced"), torch.arange(10) % K)
    c.labels(K, "uniform")
    assert torch.equal(c.randn((4,)), d.randn((4,)))  # drawing labels never consumed noise
    assert torch.equal(c.labels(K), d.labels(K))
    assert image_seed(0, 1) != image_seed(1, 0)


def test_a_unet_at_another_batch_size_same_draws_and_images_to_float_rounding():
    """The README's condition, checked on a real (tiny) U-Net under the CPU default layout (channels_last): labels
    and noise are bitwise the same at batch 4 and 12, the images only to float rounding (CPU kernels block by the
    batch shape), so at most one uint8 level apart; at the same batch size and thread count, bitwise."""
    from guidance.nn import UNet
    from guidance.sampling.generate import sample_batch
    from guidance.sampling.runtime import Runtime

    torch.manual_seed(0)
    unet = UNet(image_size=8, in_channels=1, model_channels=8, out_channels=1, num_res_blocks=1,
                attention_resolutions=[], channel_mult=[1, 2], num_classes=K, learn_sigma=True).eval()
    sampler = DDPMSampler(create_diffusion(40, model_var_type="learned_range"), "20")
    denoiser = GuidedDenoiser(ClassifierFreeGuidance(1.5), {"unet": unet}, null_label=K,
                              runtime=Runtime("fp32", channels_last=True))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the thread count is part of the condition: fixed here
    try:
        def run(batch, n=12):
            parts = [sample_batch(sampler, denoiser, (1, 8, 8), s, min(s + batch, n), 0, K, "uniform", "cpu")
                     for s in range(0, n, batch)]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

        (x4, y4), (x12, y12), (again, _) = run(4), run(12), run(4)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y4, y12) and len(set(y4.tolist())) > 1
    assert (x4.int() - x12.int()).abs().max() <= 1 and x4.float().std() > 10  # real images, not a constant
    assert torch.equal(x4, again)
