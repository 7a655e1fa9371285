"""Timestep respacing: kept steps worked out by hand, and the respaced process keeps the original marginals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidance.diffusion import create_diffusion, get_named_beta_schedule, space_timesteps
from guidance.errors import GuidanceError


def test_ddim25():
    # Stride 40 is the first with ceil(1000 / s) = 25 steps: 0, 40, ..., 960.
    assert sorted(space_timesteps(1000, "ddim25")) == [40 * k for k in range(25)]
    assert sorted(space_timesteps(1000, "ddim50")) == [20 * k for k in range(50)]
    assert sorted(space_timesteps(1000, "ddim1000")) == list(range(1000))


def test_single_section_250():
    # One section of 1000 steps; 250 steps evenly from 0 to 999: stride 999/249 = 333/83, so step k is the
    # integer nearest 333k/83 (never a tie: 83 is prime and divides neither 2*333 nor k < 83 ... checked below).
    kept = sorted(space_timesteps(1000, "250"))
    expected = [(2 * 333 * k + 83) // (2 * 83) for k in range(250)]  # floor(333k/83 + 1/2) in integers
    assert all((2 * 333 * k) % 83 != 0 or (333 * k) % 83 == 0 for k in range(250))  # no .5 ties
    assert kept == expected
    assert kept[:5] == [0, 4, 8, 12, 16] and kept[-1] == 999 and len(set(kept)) == 250
    assert set(np.diff(kept)) == {4, 5}


def test_three_sections():
    # Sections of 334, 333, 333 steps starting at 0, 334, 667; 10 steps from each, both ends included.
    # Section 0: stride 333/9 = 37. Sections 1-2: stride 332/9 = 36.89, offsets 0,37,74,111,148,184,221,258,295,332.
    offsets = [0, 37, 74, 111, 148, 184, 221, 258, 295, 332]
    expected = [37 * k for k in range(10)] + [334 + o for o in offsets] + [667 + o for o in offsets]
    assert sorted(space_timesteps(1000, "10,10,10")) == expected
    assert sorted(space_timesteps(1000, "10, 10, 10")) == expected
    assert sorted(space_timesteps(100, "1,2")) == [0, 50, 99]


def adm_kept(T: int, counts: list[int]) -> set[int]:
    """guided-diffusion's respace.space_timesteps for section counts, restated: sections of T // len(counts) steps
    (the first T % len(counts) one longer); per section a float position that starts at 0 and grows by
    (size − 1)/(count − 1) after each kept step (1 for a count of 1), kept as start + Python round()."""
    kept, start = set(), 0
    for i, count in enumerate(counts):
        size = T // len(counts) + (i < T % len(counts))
        step = (size - 1) / (count - 1) if count > 1 else 1
        pos = 0.0
        for _ in range(count):
            kept.add(start + round(pos))
            pos = pos + step
        start += size
    return kept


def adm_ddim(T: int, n: int) -> set[int] | None:
    """ADM's "ddimN": the first stride in 1..T-1 giving exactly N steps from range(0, T, stride); None: error."""
    return next((set(range(0, T, s)) for s in range(1, T) if len(range(0, T, s)) == n), None)


def test_every_single_section_count_matches_adm():
    T = 1000
    naive = 0
    for n in range(1, T + 1):
        assert space_timesteps(T, str(n)) == adm_kept(T, [n]), n
        stride = (T - 1) / (n - 1) if n > 1 else 1
        naive += {round(j * stride) for j in range(n)} != adm_kept(T, [n])
    assert naive > 200  # j * stride really differs from ADM's accumulated position for many counts
    assert space_timesteps(T, "21") == adm_kept(T, [21]) != {round(j * 999 / 20) for j in range(21)}


def test_every_ddim_count_matches_adm():
    T = 1000
    for n in range(1, T + 1):
        want = adm_ddim(T, n)
        if want is None:
            with pytest.raises(GuidanceError):
                space_timesteps(T, f"ddim{n}")
        else:
            assert space_timesteps(T, f"ddim{n}") == want, n
    with pytest.raises(GuidanceError):
        space_timesteps(T, "ddim1")  # ADM tries strides below T only


@pytest.mark.parametrize("counts", [[10, 10, 10], [7, 13], [1, 2, 3, 4], [50, 100, 250], [333, 333, 333], [1, 1000 // 3]])
def test_multi_section_specs_match_adm(counts):
    assert space_timesteps(1000, ",".join(map(str, counts))) == adm_kept(1000, counts)
    assert space_timesteps(250, ",".join(str(min(c, 80)) for c in counts)) == adm_kept(250, [min(c, 80) for c in counts])


@pytest.mark.parametrize("spec", ["ddim25", "250", "10,10,10"])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_respaced_diffusion_keeps_alpha_bar_and_maps_timesteps(spec, schedule):
    base_betas = get_named_beta_schedule(schedule, 1000)
    base_ab = np.cumprod(1 - base_betas)
    kept = sorted(space_timesteps(1000, spec))
    d = create_diffusion(steps=1000, noise_schedule=schedule, timestep_respacing=spec)
    assert d.num_timesteps == len(kept)
    assert d.timestep_map.dtype == torch.long and d.timestep_map.tolist() == kept
    # β_i = 1 − ᾱ_{t_i}/ᾱ_{t_{i-1}} re-multiplied must give back the base ᾱ at the kept steps.
    np.testing.assert_allclose(np.cumprod(1 - d.betas), base_ab[kept], rtol=1e-9, atol=1e-15)
    assert d.betas[0] == pytest.approx(base_betas[0])  # step 0 is kept by every spec here
    assert np.all((d.betas > 0) & (d.betas < 1))


def test_respaced_posterior_spans_the_gap():
    # With steps 0 and 40 kept, the respaced posterior at i=1 is the base q(x_0' | x_40, x_0) of a 40-step jump.
    d = create_diffusion(timestep_respacing="ddim25")
    ab = np.cumprod(1 - get_named_beta_schedule("linear", 1000))
    beta = 1 - ab[40] / ab[0]
    expected_var = (1 - ab[0]) / (1 - ab[40]) * beta
    assert d.posterior_variance[1] == pytest.approx(expected_var, rel=1e-12)


@pytest.mark.parametrize("spec", ["", "ddim", "ddimx", "ddim999", "ddim1", "ddim0", "abc", "10,,10", "0", "10,-1", "1001", "400,400,400",
                                  ",".join(["1"] * 1001)])
def test_invalid_specs(spec):
    with pytest.raises(GuidanceError):
        space_timesteps(1000, spec)
