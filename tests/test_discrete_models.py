"""Discrete-time models sampled in continuous time through ``VPSDE.from_discrete``.

A network trained on a discrete DDPM chain (here a randomly initialised diffusers
``UNet2DModel`` and diffusers' default chain: linear betas 1e-4..0.02, N = 1000) predicts eps at
integer timesteps ``n = 0 .. N - 1``. ``sd.VPSDE.from_discrete`` turns the chain into a
continuous-time VP SDE on ``[1 / N, 1]`` whose ``alpha((n + 1) / N)^2`` is the chain's
``alphas_cumprod[n]``; the network becomes a raw ``net(x, t)`` through the inverse map
``n = t N - 1`` (:class:`DiscreteTimestepNet`). The real check that the map is right:
our DDIM on the chain's own timestep grid reproduces diffusers' ``DDIMScheduler`` (eta = 0)
with the same network and initial noise.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import scoresde as sd

diffusers = pytest.importorskip("diffusers")

N = 1000
SHAPE = (2, 2, 8, 8)  # (batch, channels, height, width): a 4-D state


class DiscreteTimestepNet:
    """An eps network of a discrete chain as a continuous-time raw network ``net(x, t)``.

    ``t`` (our time, ``(B,)``) maps to the 0-based timestep ``n = t N - 1``. At the chain's
    times (``n`` within 1e-3 of an integer, which absorbs the float32 rounding of ``t``) the
    integer timestep is passed, so the network sees exactly what it saw in training. Between
    chain points the fractional ``n`` is passed: the UNet's sinusoidal timestep embedding is
    defined for real inputs, so this interpolates the network in its time input (what
    DPM-Solver's discrete-time model wrapper does), rather than snapping to the nearest
    timestep, which would make eps piecewise constant in t.
    """

    def __init__(self, unet: torch.nn.Module, num_train_timesteps: int) -> None:
        self.unet = unet
        self.num_train_timesteps = num_train_timesteps

    def timestep(self, t: Tensor) -> Tensor:
        """``n = t N - 1``, snapped to the integer within 1e-3 of it. Shape of t, float64."""
        n = t.to(torch.float64) * self.num_train_timesteps - 1.0
        nearest = n.round()
        return torch.where((n - nearest).abs() < 1e-3, nearest, n)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, self.timestep(t).to(x.dtype)).sample


def _tiny_unet(dtype: torch.dtype) -> torch.nn.Module:
    """A randomly initialised 8x8 UNet2DModel with 2 channels (same weights for every dtype)."""
    with torch.random.fork_rng():  # seeded weights without touching the global RNG state
        torch.manual_seed(0)
        net = diffusers.UNet2DModel(
            sample_size=8,
            in_channels=SHAPE[1],
            out_channels=SHAPE[1],
            layers_per_block=1,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
    return net.to(dtype).eval()


@pytest.fixture(scope="module")
def unet() -> torch.nn.Module:
    return _tiny_unet(torch.float64)


def _ddim_scheduler() -> diffusers.DDIMScheduler:
    # trailing spacing starts at n = N - 1 (t = T = 1); set_alpha_to_one=False ends at n = 0
    # (t = t_min = 1 / N) instead of alpha = 1; no x0 clipping.
    return diffusers.DDIMScheduler(
        num_train_timesteps=N,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )


def _model(unet: torch.nn.Module) -> tuple[sd.ScoreModel, diffusers.DDIMScheduler]:
    sched = _ddim_scheduler()
    # the chain exactly as diffusers holds it (float32 table, promoted)
    sde = sd.VPSDE.from_discrete(alphas_cumprod=sched.alphas_cumprod.to(torch.float64))
    return sd.ScoreModel(DiscreteTimestepNet(unet, N), sde, prediction="eps"), sched


def test_index_map_matches_diffusers_alphas_cumprod() -> None:
    sched = _ddim_scheduler()
    ac = sched.alphas_cumprod.to(torch.float64)
    n = torch.arange(N, dtype=torch.float64)
    for sde in (
        sd.VPSDE.from_discrete(alphas_cumprod=ac),
        sd.VPSDE.from_discrete(sched.betas.to(torch.float64)),  # float64 cumprod of the betas
    ):
        assert (sde.t_min, sde.T) == (1.0 / N, 1.0)
        alpha2 = sde.alpha((n + 1) / N).to(torch.float64) ** 2
        torch.testing.assert_close(alpha2, ac, rtol=1e-5, atol=0)
    exact = sd.VPSDE.from_discrete(alphas_cumprod=ac)
    torch.testing.assert_close(
        exact.alpha((n + 1) / N).to(torch.float64) ** 2, ac, rtol=1e-12, atol=0
    )


def test_net_sees_integer_timesteps_at_chain_times(unet: torch.nn.Module) -> None:
    model, _ = _model(unet)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for n in (0, 1, 499, 998, 999):
        t = (n + 1) / N
        expected = unet(x, torch.full((SHAPE[0],), float(n), dtype=torch.float64)).sample
        torch.testing.assert_close(model.eps(x, t), expected, rtol=1e-12, atol=1e-12)
    net = model.net
    t = torch.tensor([0.5, 0.5005, (899 + 1) / N], dtype=torch.float32)
    torch.testing.assert_close(
        net.timestep(t), torch.tensor([499.0, 499.5, 899.0], dtype=torch.float64), atol=1e-4, rtol=0
    )


def test_our_ddim_on_the_chain_grid_reproduces_diffusers_ddim(unet: torch.nn.Module) -> None:
    model, sched = _model(unet)
    x_t = torch.randn(SHAPE, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    # diffusers: its own loop, same network, same initial noise (init_noise_sigma = 1)
    sched.set_timesteps(10)
    assert sched.timesteps.tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    x = x_t.clone() * sched.init_noise_sigma
    with torch.no_grad():
        for n in sched.timesteps:
            eps = unet(sched.scale_model_input(x, n), n).sample
            x = sched.step(eps, n, x, eta=0.0).prev_sample

    # ours: DDIM on the same timesteps, t = (n + 1) / N, ending at n = 0 (t_min)
    grid = torch.tensor([(int(n) + 1) / N for n in sched.timesteps] + [1.0 / N])
    res = sd.sample(model, "ddim", 10, x_init=x_t, grid=grid.to(torch.float64))
    assert res.nfe == 10
    # diffusers computes its coefficients from a float32 alphas_cumprod table: agreement to
    # ~1e-8 relative (measured 1.1e-8; a wrong index map is off by O(1))
    assert res.x.shape == x.shape
    assert float((res.x - x).abs().max()) < 1e-6 * float(x.abs().max())


@pytest.mark.parametrize("method", ["ddim", "dpmpp_2m", "euler"])
def test_our_solvers_sample_a_discrete_time_unet(method: str) -> None:
    model, _ = _model(_tiny_unet(torch.float32))
    res = sd.sample(model, method, 10, shape=SHAPE, generator=torch.Generator().manual_seed(3))
    assert res.x.shape == SHAPE
    assert res.x.dtype == torch.float32
    assert res.nfe <= 10
    assert bool(torch.isfinite(res.x).all())
    assert float(res.ts[0]) == 1.0 and float(res.ts[-1]) == 1.0 / N
