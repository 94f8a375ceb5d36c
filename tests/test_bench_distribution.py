"""Checks of ``bench/sampler_distribution.py``: the peer wrappers and the noise they get.

The benchmark compares our stochastic samplers with diffusers' and k-diffusion's on the
distance of their samples to exact samples. Those numbers mean something only if each peer is
wrapped right (its noise, grid and final step) and the target is right. Euler-ancestral
sampling (k-diffusion ``sample_euler_ancestral``, diffusers ``EulerAncestralDiscreteScheduler``)
is the same algorithm as our ``ancestral`` written in EDM variables, so on the grid the peer
visits and with the same generator seed the wrapped peer must reproduce our samples: a wrong
final step (a jump to sigma = 0), a wrong start, a grid off by one step or noise from another
stream all break the agreement.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

import scoresde as sd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
bench = pytest.importorskip("sampler_distribution")

N_SAMPLES, STEPS = 64, 10


def _x_t(s: bench.Setting) -> torch.Tensor:
    return s.prior(N_SAMPLES, torch.Generator().manual_seed(1))


def _ours_on(s: bench.Setting, x_t: torch.Tensor, ts: torch.Tensor) -> sd.SampleResult:
    return sd.sample(
        s.oracle, "ancestral", x_init=x_t, grid=ts, generator=torch.Generator().manual_seed(7)
    )


@pytest.mark.parametrize("kind", ["edm", "vp"])
def test_k_diffusion_euler_ancestral_reproduces_our_ancestral(kind: str) -> None:
    if kind == "vp":
        pytest.importorskip("diffusers")  # the VP chain is built from diffusers' table
    kd = bench.peers.load_k_diffusion()
    if kd.sampling is None:
        pytest.skip(f"k-diffusion not available: {kd.reason}")
    s = bench.make_setting(kind, 2, N_SAMPLES, 2)
    x_t = _x_t(s)
    run = bench._k_run(kd.sampling, "sample_euler_ancestral", False, eta=1.0)
    x_peer, nfe = run(s, x_t, STEPS, torch.Generator().manual_seed(7))
    sigmas = bench._k_sigmas(kd.sampling, s, STEPS)
    ts = sigmas if kind == "edm" else bench._t_of_sigma_d(s.sde, sigmas)
    ours = _ours_on(s, x_t, ts)
    assert nfe == ours.nfe == STEPS
    # EDM: both in float64 on the same grid; VP: the peer starts at its float32-rounded
    # sigma_max (our t(sigma) is a hair below T), which moves the samples by ~1e-7
    tol = 1e-10 if kind == "edm" else 1e-6
    assert float((x_peer - ours.x).abs().max()) < tol


def test_diffusers_euler_ancestral_reproduces_our_ancestral() -> None:
    diffusers = pytest.importorskip("diffusers")
    s = bench.make_setting("vp", 2, N_SAMPLES, 2)
    x_t = _x_t(s)
    x_peer, nfe = bench._diffusers_euler_ancestral(s, x_t, STEPS, torch.Generator().manual_seed(7))
    sched = diffusers.EulerAncestralDiscreteScheduler(**bench._vp_config())
    sched.set_timesteps(STEPS)
    n_train = bench.peers.N_TRAIN
    # the trailing timesteps n (t = (n + 1) / N), then the chain's t_min = 1 / N
    ts = torch.tensor(
        [(float(n) + 1) / n_train for n in sched.timesteps] + [1.0 / n_train], dtype=torch.float64
    )
    ours = _ours_on(s, x_t, ts)
    assert nfe == ours.nfe == STEPS
    # diffusers rounds the state to float32 in every step (sigmas are float32 too)
    assert float((x_peer - ours.x).abs().max()) < 1e-5


def test_brownian_noise_one_query_per_step_is_the_generator_stream() -> None:
    shape = torch.Size((5, 3))
    noise = bench.BrownianNoise(shape, torch.Generator().manual_seed(3), torch.float64)
    ref = torch.Generator().manual_seed(3)
    sigmas = [80.0, 20.0, 3.0, 0.5, 0.002]
    for a, b in zip(sigmas[:-1], sigmas[1:], strict=True):
        expected = torch.randn(shape, generator=ref, dtype=torch.float64)
        assert torch.allclose(noise(a, b), expected, rtol=1e-12, atol=1e-12)


def test_brownian_noise_overlapping_queries_see_one_path() -> None:
    """Two stages of a step: (t, s) then (t, t_next) with s between t and t_next. Both are
    N(0, 1) after normalisation and their correlation is sqrt(|s - t| / |t_next - t|)."""
    n = 40_000
    noise = bench.BrownianNoise(torch.Size((n,)), torch.Generator().manual_seed(0), torch.float64)
    t, mid, t_next = 2.0, 1.5, 0.5
    a = noise(t, mid)
    b = noise(t, t_next)
    se = 4.0 / math.sqrt(n)  # 4 standard errors of a variance / correlation near these values
    assert abs(float(a.var()) - 1.0) < 2 * se * math.sqrt(2)
    assert abs(float(b.var()) - 1.0) < 2 * se * math.sqrt(2)
    corr = float((a * b).mean() / (a.std() * b.std()))
    assert abs(corr - math.sqrt((t - mid) / (t - t_next))) < se
    # a point between two known ones is a bridge draw: W(t) -> W(t_next) is unchanged
    c = noise(mid, t_next)
    w_next = b * math.sqrt(t - t_next)
    assert torch.allclose(a * math.sqrt(t - mid) + c * math.sqrt(mid - t_next), w_next)


def test_exact_samples_are_the_data_diffused_to_t_min() -> None:
    """The target is p_{t_min}, not the data: with a large t_min the added noise shows."""
    gmm = sd.GaussianMixture(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-1.0, 0.5], [1.0, -0.5]]),
        torch.stack([0.09 * torch.eye(2), 0.25 * torch.eye(2)]),
    )
    sde = sd.EDMSDE(sigma_min=0.5, sigma_max=80.0)
    s = bench.Setting("edm_test", "edm", 2, 100, gmm, sde, gmm.score_model(sde))
    n = 40_000
    y = s.exact(n, torch.Generator().manual_seed(0))
    cov = gmm.covariance + 0.25 * torch.eye(2, dtype=torch.float64)
    se_mean = torch.sqrt(torch.diagonal(cov) / n)
    assert torch.all((y.mean(0) - gmm.mean).abs() < 4 * se_mean)
    # variance of a sample variance of a mixture is below 3 sigma^4 / n here (kurtosis < 3)
    se_var = torch.sqrt(3 * torch.diagonal(cov) ** 2 / n)
    assert torch.all((torch.diagonal(torch.cov(y.T)) - torch.diagonal(cov)).abs() < 4 * se_var)
    # without the sigma(t_min)^2 = 0.25 the variance would be off by far more than that
    assert torch.all(20 * se_var < 0.25)
