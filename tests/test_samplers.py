"""Samplers against the analytic Gaussian-mixture test bed: exact ε in, known distribution out."""

import functools
import math

import pytest
import torch

from guidance.diffusion import create_diffusion, space_timesteps
from guidance.guiders import ClassifierGuidance, NoGuidance
from guidance.sampling import BatchRNG, DDIMSampler, DDPMSampler
from guidance.testbed import GaussianMixture, make_testbed

T = 1000
# Three classes, separated enough that few samples sit near a boundary, with unequal weights and spreads.
MIX = GaussianMixture(means=[[-2.5, 0.0], [2.5, 0.0], [0.0, 2.5]], stds=[0.6, 0.5, 0.4], weights=[0.5, 0.3, 0.2])
N = 2000


@pytest.fixture(scope="module")
def bed():
    _, model, classifier = make_testbed(create_diffusion(T), MIX)
    return model, classifier


def sampler(kind, spec, eta=0.0, clip=False):
    d = create_diffusion(T, timestep_respacing=spec)
    return DDPMSampler(d, clip_denoised=clip) if kind == "ddpm" else DDIMSampler(d, eta=eta, clip_denoised=clip)


def classify(x):
    """Nearest exact posterior at t = 0 (ᾱ = 1: the data distribution itself)."""
    return MIX.posterior_logits(x, torch.ones(len(x))).argmax(1)


@functools.lru_cache(maxsize=1)
def reference(n=200_000, seed=123):
    """Exact data samples, classified by the same rule as sampler output (so boundary errors cancel)."""
    x, _ = MIX.sample(n, torch.Generator().manual_seed(seed))
    return x.reshape(n, -1).double(), classify(x)


def check_moments(x, labels, means, variances, n_sigma=4.5):
    """Class-wise standardised residuals z = (x − m_k)/sqrt(v_k): each class mean ≈ 0 (SE 1/sqrt(n_k)) and the
    pooled variance ≈ 1 (SE sqrt(2/(n d))); pooling makes a few-% variance error detectable."""
    n, d = x.shape
    z = torch.empty_like(x)
    for k in range(len(means)):
        sel = labels == k
        z[sel] = (x[sel] - means[k]) / math.sqrt(variances[k])
        assert z[sel].mean(0).abs().max() < n_sigma / math.sqrt(sel.sum().item()), (k, z[sel].mean(0))
    assert abs(z.pow(2).mean().item() - 1) < n_sigma * math.sqrt(2 / (n * d)), z.pow(2).mean()


@pytest.mark.parametrize("kind,spec,eta", [("ddim", "ddim100", 0.0), ("ddim", "250", 1.0)])
def test_unguided_unconditional_reproduces_mixture(bed, kind, spec, eta):
    model, _ = bed
    K = MIX.num_classes
    y = torch.zeros(N, dtype=torch.long)  # target is irrelevant for the unconditional pass
    x = sampler(kind, spec, eta).sample(model, NoGuidance(conditional=False, null_label=K), (N, 2, 1, 1), y,
                                               BatchRNG(0, N))
    labels, xf = classify(x), x.reshape(N, -1).double()
    ref_x, ref_labels = reference()
    means, variances = [], []
    for k in range(K):
        p = (ref_labels == k).double().mean().item()
        assert abs(p - MIX.weights[k].item()) < 0.01  # the classification rule itself is near exact
        count = (labels == k).sum().item()
        assert abs(count - N * p) < 4.5 * math.sqrt(N * p * (1 - p)), (k, count, N * p)
        rk = ref_x[ref_labels == k]
        means.append(rk.mean(0))
        variances.append(rk.var(0).mean().item())
    check_moments(xf, labels, means, variances)


@pytest.mark.parametrize("kind,spec", [("ddim", "ddim100"), ("ddpm", "250")])
def test_conditional_model_reproduces_each_class(bed, kind, spec):
    model, _ = bed
    K = MIX.num_classes
    y = torch.arange(N) % K
    x = sampler(kind, spec).sample(model, NoGuidance(conditional=True, null_label=K), (N, 2, 1, 1), y, BatchRNG(1, N))
    check_moments(x.reshape(N, -1).double(), y, MIX.means, (MIX.stds**2).tolist())


def test_ddim_eta1_is_ddpm_with_fixed_small_variance(bed):
    # σ(η=1) = sqrt(β̃_t) and the DDIM mean equals the posterior mean, so the two samplers coincide.
    model, _ = bed
    y = torch.arange(64) % 3
    g = NoGuidance(null_label=3)
    a = sampler("ddpm", "20").sample(model, g, (64, 2, 1, 1), y, BatchRNG(5, 64))
    b = sampler("ddim", "20", eta=1.0).sample(model, g, (64, 2, 1, 1), y, BatchRNG(5, 64))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    c = sampler("ddim", "20", eta=0.0).sample(model, g, (64, 2, 1, 1), y, BatchRNG(5, 64))
    assert (a - c).abs().max() > 1e-2  # η = 0 really is a different (deterministic) sampler


class Recording(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, set()

    def forward(self, x, t, *args):
        self.seen.update(t.tolist())
        return self.net(x, t, *args)


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
@pytest.mark.parametrize("spec", ["ddim10", "10,10,10", "7"])
def test_networks_see_original_timesteps(bed, kind, spec):
    model, classifier = Recording(bed[0]), Recording(bed[1])
    guider = ClassifierGuidance(scale=1.0, conditional=False, classifier=classifier, null_label=3)
    y = torch.arange(8) % 3
    sampler(kind, spec).sample(model, guider, (8, 2, 1, 1), y, BatchRNG(0, 8))
    expected = space_timesteps(T, spec)
    assert model.seen == expected and classifier.seen == expected
    assert max(expected) >= 900  # really the original 0..T-1 indices, not 0..len-1


class CountingRNG(BatchRNG):
    def __init__(self, *a):
        super().__init__(*a)
        self.calls = 0

    def randn(self, shape):
        self.calls += 1
        return super().randn(shape)


def test_noise_draws_and_last_step(bed):
    model, _ = bed
    y = torch.arange(4) % 3
    for s, draws in [(sampler("ddpm", "12"), 12), (sampler("ddim", "12", eta=0.5), 12), (sampler("ddim", "12"), 1)]:
        rng = CountingRNG(0, 4)
        s.sample(model, NoGuidance(null_label=3), (4, 2, 1, 1), y, rng)
        assert rng.calls == draws  # x_T, then one draw per step except the last (none at all for η = 0)


def test_clip_denoised_keeps_samples_in_range(bed):
    model, _ = bed  # the mixture's data lies far outside [-1, 1]
    y = torch.arange(64) % 3
    for s in (sampler("ddpm", "20", clip=True), sampler("ddim", "20", clip=True)):
        x = s.sample(model, NoGuidance(null_label=3), (64, 2, 1, 1), y, BatchRNG(0, 64))
        assert x.abs().max() <= 1.0 + 1e-5
    x = sampler("ddim", "20").sample(model, NoGuidance(null_label=3), (64, 2, 1, 1), y, BatchRNG(0, 64))
    assert x.abs().max() > 1.5
