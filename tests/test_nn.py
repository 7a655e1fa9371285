"""ADM U-Net, noise-aware classifier and their layers: closed forms, invariants, shapes, errors, configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from guidance.errors import GuidanceError
from guidance.nn import AttentionBlock, EncoderClassifier, ResBlock, UNet, timestep_embedding
from guidance.nn.layers import heads_for, multi_head_attention, num_groups

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: on a shared 2-core box, OpenMP threads spinning against other processes made
    this file ~7x slower (95 s vs 13 s). One thread here, restored afterwards so other files are unaffected."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_unet(**kw) -> UNet:
    args = dict(image_size=28, in_channels=1, model_channels=16, out_channels=1, num_res_blocks=1,
                attention_resolutions=[7], dropout=0.0, channel_mult=[1, 2, 2], num_classes=10, num_head_channels=16)
    args.update(kw)
    return UNet(**args)


def tiny_classifier(**kw) -> EncoderClassifier:
    args = dict(image_size=28, in_channels=1, model_channels=16, num_classes=10, num_res_blocks=1,
                attention_resolutions=[7], channel_mult=[1, 2, 2], num_head_channels=16)
    args.update(kw)
    return EncoderClassifier(**args)


def randomize_zero_params(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give the zero-initialised layers random weights, as training would, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------- layers


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 1.0, 37.5, 999.0])
    dim = 8
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim)
    for b, tb in enumerate(t.tolist()):
        for i in range(dim // 2):
            f = 10000.0 ** (-i / (dim // 2))
            assert emb[b, i].item() == pytest.approx(math.cos(tb * f), abs=1e-4)
            assert emb[b, dim // 2 + i].item() == pytest.approx(math.sin(tb * f), abs=1e-4)
    # Odd width is padded with one zero column.
    odd = timestep_embedding(t, 7)
    assert odd.shape == (4, 7) and torch.all(odd[:, -1] == 0)


@pytest.mark.parametrize("channels,groups", [(32, 32), (192, 32), (48, 24), (100, 25), (16, 16), (3, 3), (1, 1)])
def test_num_groups_is_largest_divisor_up_to_32(channels, groups):
    assert num_groups(channels) == groups


def test_heads_rule():
    assert heads_for(128, num_heads=4, num_head_channels=-1) == 4
    assert heads_for(128, num_heads=4, num_head_channels=32) == 4  # head width wins
    assert heads_for(192, num_heads=1, num_head_channels=64) == 3
    with pytest.raises(GuidanceError):
        heads_for(96, num_heads=1, num_head_channels=64)


def test_multi_head_attention_matches_explicit_softmax():
    torch.manual_seed(0)
    b, heads, d, length = 2, 3, 4, 5
    c = heads * d
    qkv = torch.randn(b, 3 * c, length)
    out = multi_head_attention(qkv, heads)
    q, k, v = qkv.chunk(3, dim=1)  # q/k/v split first, then heads
    expected = torch.empty(b, c, length)
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[:, sl].transpose(1, 2) @ k[:, sl] / math.sqrt(d), dim=-1)  # [b, L, L]
        expected[:, sl] = (w @ v[:, sl].transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_attention_block_is_identity_at_init():
    x = torch.randn(2, 32, 7, 7)
    torch.testing.assert_close(AttentionBlock(32, num_head_channels=16)(x), x)


def _identity_resblock(channels: int, use_scale_shift_norm: bool, bias: torch.Tensor) -> ResBlock:
    """A ResBlock whose convs are identities and whose embedding projection is the constant `bias`."""
    block = ResBlock(channels, emb_channels=8, out_channels=channels, use_scale_shift_norm=use_scale_shift_norm)
    delta = torch.zeros(channels, channels, 3, 3)
    delta[range(channels), range(channels), 1, 1] = 1.0
    with torch.no_grad():
        for conv in (block.in_conv, block.out_conv):
            conv.weight.copy_(delta)
            conv.bias.zero_()
        block.emb_proj.weight.zero_()
        block.emb_proj.bias.copy_(bias)
    return block


@pytest.mark.parametrize("use_scale_shift_norm", [True, False])
def test_resblock_embedding_known_answer(use_scale_shift_norm):
    torch.manual_seed(0)
    c = 8
    x, emb = torch.randn(3, c, 6, 6), torch.randn(3, 8)
    bias = torch.randn(2 * c if use_scale_shift_norm else c)
    out = _identity_resblock(c, use_scale_shift_norm, bias)(x, emb)
    h = F.silu(F.group_norm(x, num_groups(c)))
    if use_scale_shift_norm:  # AdaGN, ADM sec. 3: GroupNorm(h) * (1 + scale) + shift
        scale, shift = bias[:c, None, None], bias[c:, None, None]
        h = F.group_norm(h, num_groups(c)) * (1 + scale) + shift
    else:  # additive: the embedding is added before the norm
        h = F.group_norm(h + bias[:, None, None], num_groups(c))
    torch.testing.assert_close(out, x + F.silu(h), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["up", "down"])
def test_resblock_updown_changes_resolution(mode):
    block = ResBlock(16, emb_channels=8, out_channels=32, **{mode: True})
    out = block(torch.randn(2, 16, 8, 8), torch.randn(2, 8))
    assert out.shape == (2, 32, 16, 16) if mode == "up" else (2, 32, 4, 4)


# ---------------------------------------------------------------- U-Net


def test_unet_outputs_zero_at_init_and_gradients_flow():
    torch.manual_seed(0)
    model = tiny_unet()
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 10, 500, 999]), torch.tensor([0, 3, 9, 10])
    out = model(x, t, y)
    assert torch.all(out == 0)
    F.mse_loss(out, torch.randn_like(out)).backward()
    out_conv = model.out[-1]
    assert out_conv.weight.grad.abs().sum() > 0 and out_conv.bias.grad.abs().sum() > 0


def test_conditioning_is_wired_after_training_steps():
    """Zero-init layers mean gradients reach the class table only on the 3rd step (out conv, then the
    residual blocks' zero convs, then the embedding), so train 3 steps and then compare labels."""
    torch.manual_seed(0)
    model = tiny_unet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t = torch.randn(8, 1, 28, 28), torch.randint(0, 1000, (8,))
    y, target = torch.randint(0, 11, (8,)), torch.randn(8, 1, 28, 28)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(model(x, t, y), target).backward()
        opt.step()
    assert model.label_emb.weight.grad.abs().sum() > 0
    with torch.no_grad():
        xs, ts = x[:2], t[:2]
        a = model(xs, ts, torch.tensor([1, 1]))
        b = model(xs, ts, torch.tensor([2, 2]))
        null = model(xs, ts, torch.tensor([10, 10]))
        assert (a - b).abs().max() > 1e-4 and (a - null).abs().max() > 1e-4
        # y=None is the null label.
        torch.testing.assert_close(model(xs, ts, None), null)


@pytest.mark.parametrize("image_size,channel_mult,attn", [(28, [1, 2, 2], [14, 7]), (32, [1, 2, 2, 2], [8, 4])])
@pytest.mark.parametrize("learn_sigma", [False, True])
@pytest.mark.parametrize("num_classes", [None, 10])
def test_unet_shapes(image_size, channel_mult, attn, learn_sigma, num_classes):
    model = randomize_zero_params(tiny_unet(image_size=image_size, channel_mult=channel_mult, in_channels=3,
                                            out_channels=3, attention_resolutions=attn, learn_sigma=learn_sigma,
                                            num_classes=num_classes))
    x = torch.randn(2, 3, image_size, image_size)
    y = None if num_classes is None else torch.tensor([0, num_classes])  # a real and the null label
    out = model(x, torch.tensor([3.0, 250.5]), y)  # fractional timesteps are allowed
    assert out.shape == (2, 6 if learn_sigma else 3, image_size, image_size)
    assert torch.isfinite(out).all() and out.abs().sum() > 0
    assert model.learn_sigma == learn_sigma and model.num_classes == num_classes
    assert model.image_size == image_size and model.in_channels == 3


def test_attention_sits_at_the_requested_pixel_sizes():
    model = tiny_unet(attention_resolutions=[14], channel_mult=[1, 2, 2])
    seen = []
    for m in model.modules():
        if isinstance(m, AttentionBlock):
            m.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[-1]))
    model(torch.randn(1, 1, 28, 28), torch.tensor([5]))
    # 14 px: 1 encoder block + 2 decoder blocks; 7 px: the middle block (ADM always attends there).
    assert sorted(seen) == [7, 14, 14, 14]


@pytest.mark.parametrize("use_scale_shift_norm", [True, False])
@pytest.mark.parametrize("resblock_updown", [False, True])
def test_unet_variants_run(use_scale_shift_norm, resblock_updown):
    model = randomize_zero_params(tiny_unet(use_scale_shift_norm=use_scale_shift_norm,
                                            resblock_updown=resblock_updown, num_heads=2, num_head_channels=-1))
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]), torch.tensor([4, 5]))
    assert out.shape == (2, 1, 28, 28) and torch.isfinite(out).all()


def test_unet_is_per_image():
    """Image i's output must not depend on the rest of the batch (per-image seeds, DESIGN.md)."""
    model = randomize_zero_params(tiny_unet()).eval()
    x, t, y = torch.randn(5, 1, 28, 28), torch.randint(0, 1000, (5,)), torch.randint(0, 11, (5,))
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y)[1:3], model(x[1:3], t[1:3], y[1:3]), atol=1e-5, rtol=1e-5)


def test_unet_scalar_timestep_broadcasts():
    model = randomize_zero_params(tiny_unet()).eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x, 7), model(x, torch.full((3,), 7)))


# ---------------------------------------------------------------- classifier


@pytest.mark.parametrize("pool", ["attention", "adaptive"])
@pytest.mark.parametrize("image_size,channel_mult", [(28, [1, 2, 2]), (32, [1, 2, 2, 2])])
def test_classifier_logits_and_input_gradient(pool, image_size, channel_mult):
    torch.manual_seed(0)
    clf = randomize_zero_params(tiny_classifier(pool=pool, image_size=image_size, channel_mult=channel_mult,
                                                attention_resolutions=[image_size // 4]))
    x = torch.randn(3, 1, image_size, image_size, requires_grad=True)
    logits = clf(x, torch.tensor([0, 100, 999]))
    assert logits.shape == (3, 10) and clf.num_classes == 10
    # Classifier guidance needs d log p(y | x_t) / d x_t (ADM Alg. 1).
    grad, = torch.autograd.grad(F.log_softmax(logits, -1)[:, 2].sum(), x)
    assert grad.abs().sum() > 0


def test_classifier_adaptive_pool_starts_at_uniform():
    logits = tiny_classifier(pool="adaptive")(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    assert torch.all(logits == 0)


def test_classifier_depends_on_timestep():
    clf = randomize_zero_params(tiny_classifier()).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (clf(x, torch.tensor([0, 0])) - clf(x, torch.tensor([900, 900]))).abs().max() > 1e-5


# ---------------------------------------------------------------- errors


def test_bad_image_size_names_size_and_factor():
    with pytest.raises(GuidanceError, match=r"image_size 30 .*divisible by 4"):
        tiny_unet(image_size=30)
    with pytest.raises(GuidanceError, match=r"image_size 28 .*divisible by 8"):
        tiny_classifier(channel_mult=[1, 2, 2, 2])


def test_bad_attention_resolution():
    with pytest.raises(GuidanceError, match=r"\[8\].*never occur"):
        tiny_unet(attention_resolutions=[8])
    with pytest.raises(GuidanceError, match="never occur"):
        tiny_classifier(attention_resolutions=[16])


def test_bad_inputs():
    cond, uncond = tiny_unet(), tiny_unet(num_classes=None)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([1, 2])
    with pytest.raises(GuidanceError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))
    with pytest.raises(GuidanceError, match=r"0\.\.10"):
        cond(x, t, torch.tensor([0, 11]))
    with pytest.raises(GuidanceError, match="expects images"):
        cond(torch.randn(2, 1, 32, 32), t)
    with pytest.raises(GuidanceError, match="timesteps"):
        cond(x, torch.tensor([1, 2, 3]))
    with pytest.raises(GuidanceError, match="pool"):
        tiny_classifier(pool="max")
    with pytest.raises(GuidanceError, match="num_head_channels"):
        tiny_unet(num_head_channels=12)


# ---------------------------------------------------------------- configs

FAKE_DATA = {
    "fmnist": ["+data.image_size=28", "+data.channels=1", "+data.num_classes=10"],
    "imagenet64": ["+data.image_size=64", "+data.channels=3", "+data.num_classes=1000"],
}


def compose_group(group: str, name: str, data: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(overrides=[f"+{group}={name}", *FAKE_DATA[data]])[group]


@pytest.mark.parametrize("group,name", [("model", "adm_tiny"), ("model", "adm_fmnist"), ("model", "adm_weak"),
                                        ("classifier", "tiny"), ("classifier", "fmnist")])
def test_small_configs_instantiate_and_run(group, name):
    net = instantiate(compose_group(group, name, "fmnist"))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([0, 999])
    with torch.no_grad():
        out = net(x, t, torch.tensor([3, 10])) if group == "model" else net(x, t)
    assert out.shape == ((2, 1, 28, 28) if group == "model" else (2, 10))
    assert net.num_classes == 10


def test_all_config_files_are_covered():
    names = {f"{p.parent.name}/{p.stem}" for d in ("model", "classifier") for p in (CONF / d).glob("*.yaml")}
    assert names == {"model/adm_tiny", "model/adm_fmnist", "model/adm_weak", "model/adm_imagenet64",
                     "classifier/tiny", "classifier/fmnist", "classifier/imagenet64"}


@pytest.mark.parametrize("group,name", [("model", "adm_imagenet64"), ("classifier", "imagenet64")])
def test_imagenet64_configs_build(group, name):
    with torch.device("meta"):  # no memory, no init cost: just the architecture
        net = instantiate(compose_group(group, name, "imagenet64"))
    n = sum(p.numel() for p in net.parameters())
    if group == "model":
        # ADM (Dhariwal & Nichol 2021) reports 296M parameters for its ImageNet 64x64 model.
        assert abs(n - 296e6) / 296e6 < 0.01
        assert net.learn_sigma and net.num_classes == 1000
    else:
        assert net.num_classes == 1000 and 10e6 < n < 200e6
