"""The sampling runtime (precision, layout, compile): validation, the measured policy behind `auto`, and what the
denoiser does with it (tests/test_sample_app.py: a point records it and is not reused under another one)."""

import pytest
import torch

from guidance.errors import GuidanceError
from guidance.guiders import ClassifierFreeGuidance, ClassifierGuidance, NoGuidance
from guidance.guiders.pag import PerturbedAttentionGuidance
from guidance.nn import EncoderClassifier, UNet
from guidance.engine import Step
from guidance.sampling import GuidedDenoiser
from guidance.sampling.runtime import Runtime, auto_policy


def tiny_unet():
    torch.manual_seed(0)
    unet = UNet(image_size=8, in_channels=1, out_channels=1, num_classes=3, model_channels=8, channel_mult=[1, 2],
                num_res_blocks=1, attention_resolutions=[4], num_head_channels=8).eval()
    with torch.no_grad():  # ADM zero-initialises the output conv: give it weights, so ε depends on the network
        for p in unet.out.parameters():
            p.normal_(0, 0.3)
    return unet


def tiny_classifier():
    torch.manual_seed(1)
    return EncoderClassifier(image_size=8, in_channels=1, num_classes=3, model_channels=8, channel_mult=[1, 2],
                             num_res_blocks=1, attention_resolutions=[4], num_head_channels=8).eval()


def batch(n=6):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 8, 8, generator=g), torch.arange(n) % 3, Step(400, 0.5)


@pytest.mark.parametrize("kwargs,message", [({"precision": "fp8"}, "precision=fp8 is unknown"),
                                            ({"channels_last": "yes"}, "channels_last='yes' must be true or false"),
                                            ({"compile": 1}, "compile=1 must be true or false")])
def test_bad_runtime_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(GuidanceError, match=message):
        Runtime.resolve(**{"precision": "auto", "channels_last": "auto", "compile": False, **kwargs})


def test_auto_resolves_by_the_measured_device_policy(monkeypatch):
    import guidance.sampling.runtime as rt

    for has_bf16, expected in ((True, ("bf16", False)), (False, ("fp32", True))):
        monkeypatch.setattr(rt, "cpu_has_bf16_units", lambda: has_bf16)
        cpu = Runtime.resolve(device="cpu")
        assert (cpu.precision, cpu.channels_last, cpu.compile) == (*expected, False)
    # channels_last follows the precision actually used: measured faster in fp32, slower under bf16
    assert Runtime.resolve(precision="fp32", device="cpu") == Runtime("fp32", True, False)
    assert Runtime.resolve(precision="bf16", device="cpu") == Runtime("bf16", False, False)
    assert Runtime.resolve(precision="bf16", channels_last=True, device="cpu").channels_last
    assert auto_policy(torch.device("cpu"))["batching"] == "split"
    assert auto_policy(torch.device("cuda", 0)) == {"precision": "fp32", "channels_last": False, "batching": "stacked"}


def test_bf16_runtime_returns_fp32_predictions_close_to_fp32_ones_at_the_same_cost():
    """Autocast changes the network's arithmetic only: predictions come back in x's dtype, the counts are the same
    and the guided ε differs from fp32 by bf16 rounding (not by a different computation)."""
    nets = {"unet": tiny_unet(), "classifier": tiny_classifier()}
    x, y, step = batch()
    for guider in (ClassifierFreeGuidance(2.0), ClassifierGuidance(1.0, conditional=True)):
        ref = GuidedDenoiser(guider, nets, 3, runtime=Runtime("fp32"))
        low = GuidedDenoiser(guider, nets, 3, runtime=Runtime("bf16"))
        a, b = ref(x, y, step), low(x, y, step)
        assert b.eps.dtype == torch.float32 and ref.counts == low.counts
        err = (a.eps - b.eps).abs().max().item()
        assert 0 < err < 0.05 * a.eps.abs().max().item()  # rounding-sized, and really bf16 (not silently fp32)


def test_channels_last_gives_the_fp32_predictions():
    nets = {"unet": tiny_unet()}
    x, y, step = batch()
    a = GuidedDenoiser(NoGuidance(), {"unet": tiny_unet()}, 3)(x, y, step).eps
    b = GuidedDenoiser(NoGuidance(), nets, 3, runtime=Runtime(channels_last=True))(x, y, step).eps
    assert nets["unet"].input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


class Wrapped(Runtime):
    """A runtime whose prepared callable records its calls (what compile's OptimizedModule would be)."""

    def prepare(self, network):
        calls = []

        def fast(*args):
            calls.append(len(args[0]))
            return network(*args)
        fast.calls = calls
        return fast


def test_unperturbed_passes_use_the_prepared_network_and_perturbed_ones_the_eager_module():
    """torch.compile never sees PAG's identity-attention flag or TSG's hook: those passes run the eager module."""
    unet = tiny_unet()
    den = GuidedDenoiser(PerturbedAttentionGuidance(2.0, blocks=["middle"]), {"unet": unet}, 3, runtime=Wrapped())
    x, y, step = batch()
    den(x, y, step)
    assert den.fast["unet"].calls == [len(x)]  # the plain pass only
    assert den.counts["unet"] == 2 * len(x)    # both passes counted


def test_compile_on_a_cpu_without_a_compiler_is_one_line(monkeypatch):
    import guidance.sampling.runtime as rt

    monkeypatch.setattr(rt.shutil, "which", lambda name: None)
    with pytest.raises(GuidanceError, match="compile=true needs a C\\+\\+ compiler"):
        Runtime.resolve(compile=True, device="cpu")
    assert Runtime.resolve(compile=False, device="cpu").compile is False
