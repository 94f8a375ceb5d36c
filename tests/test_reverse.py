"""Reverse SDE and probability-flow ODE against the closed-form Gaussian process.

For data N(mu, s^2 I) the marginal at t is N(alpha_t mu, V_t I), V_t = alpha_t^2 s^2 + sigma_t^2,
its score is -(x - alpha_t mu) / V_t, and the PF-ODE flow map is affine:
x_t = alpha_t mu + sqrt(V_t / V_u) (x_u - alpha_u mu). These only use alpha and sigma, so they
check the f, g^2 and the 1/2 of reverse.py independently.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde as sd
import solvers
from scoresde.testing import gaussian_data, sdes, states

FAMILIES = [
    sd.VPSDE(),
    sd.SubVPSDE(),
    sd.CosineVPSDE(),
    sd.VESDE(),
    sd.EDMSDE(),
    sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000)),
]


def _gaussian(sde, mu, s):
    def var(t):
        return sde.alpha(t) ** 2 * s**2 + sde.sigma(t) ** 2

    def score(x, t):
        a = solvers.append_dims(sde.alpha(t).to(x.dtype), x.ndim)
        v = solvers.append_dims(var(t).to(x.dtype), x.ndim)
        return -(x - a * mu) / v

    def flow(x_u, u, t):
        return sde.alpha(t) * mu + torch.sqrt(var(t) / var(u)) * (x_u - sde.alpha(u) * mu)

    return score, flow, var


@given(sde=sdes(), x=states(dtypes=(torch.float64,)), data=gaussian_data(), u=st.floats(0.05, 0.95))
def test_pf_ode_velocity_is_the_derivative_of_the_exact_flow(sde, x, data, u):
    mu, s = data
    score, flow, _ = _gaussian(sde, mu, s)
    t = torch.tensor(sde.t_min + u * (sde.T - sde.t_min), dtype=torch.float64)
    h = 1e-7 * (sde.T - sde.t_min)

    # forward differences of the flow map through x at t, in float64 (one-sided: the discrete
    # chain's f(t) is piecewise constant and right-continuous at its knots), Richardson-
    # extrapolated to O(h^2): a plain forward difference errs by h |x''| / 2, which exceeds
    # the tolerance where the velocity is near zero and the flow curves (sub-VP, beta 22.5)
    def forward(step):
        return (flow(x, t, t + step) - x) / step

    dxdt = 2.0 * forward(h / 2) - forward(h)
    v = sd.ProbabilityFlowODE(sde, score).velocity(x, t)
    torch.testing.assert_close(v, dxdt, rtol=1e-5, atol=1e-6 * (1 + float(dxdt.abs().max())))


@given(sde=sdes(), x=states(), data=gaussian_data())
def test_reverse_sde_drift_is_pf_ode_drift_minus_half_g2_score(sde, x, data):
    mu, s = data
    score, _, _ = _gaussian(sde, mu, s)
    t = torch.tensor(0.5 * (sde.t_min + sde.T), dtype=torch.float64)
    rev = sd.ReverseSDE(sde, score)
    ode = sd.ProbabilityFlowODE(sde, score)
    g2 = sde.g2(t).to(x.dtype)
    torch.testing.assert_close(rev.drift(x, t), ode.velocity(x, t) - 0.5 * g2 * score(x, t))
    torch.testing.assert_close(
        rev.diffusion(x, t).expand_as(x), sde.diffusion(t).to(x.dtype).expand_as(x)
    )


def _euler_error(sde, mu, s, n, x_T):
    score, flow, _ = _gaussian(sde, mu, s)
    grid = solvers.log_snr_uniform(sde, sde.T, sde.t_min, n)
    sol = solvers.integrate(
        solvers.get_solver("euler"), sd.ProbabilityFlowODE(sde, score), x_T, grid
    )
    assert sol.nfe == n
    exact = flow(x_T, torch.tensor(sde.T, dtype=torch.float64), torch.tensor(sde.t_min).double())
    return float((sol.x - exact).abs().max())


@pytest.mark.parametrize("sde", FAMILIES, ids=repr)
def test_euler_on_the_exact_pf_ode_converges_with_order_one(sde):
    """End to end: grid -> integrate -> ProbabilityFlowODE -> exact score; slope of log error."""
    g = torch.Generator().manual_seed(0)
    x_T = sde.prior_sample((64, 2), g, dtype=torch.float64)
    ns = [64, 128, 256, 512]
    errs = [_euler_error(sde, 0.5, 0.3, n, x_T) for n in ns]
    slope = -np.polyfit(np.log2(ns), np.log2(errs), 1)[0]
    assert 0.85 < slope < 1.15, (errs, slope)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=repr)
def test_reverse_sde_samples_have_the_data_moments(sde):
    """Euler-Maruyama on the reverse SDE with the exact score recovers N(mu, s^2) at t_min."""

    class _EM(solvers.Solver):  # test-local Euler-Maruyama (the registered one comes later)
        order, strong_order, weak_order, stochastic = 1, 0.5, 1.0, True
        term_type = solvers.SDETermLike
        evals_per_step = 1

        def step(self, term, t0, t1, x, state, noise):
            dt = t1 - t0
            return x + term.drift(x, t0) * dt + term.diffusion(
                x, t0
            ) * dt.abs().sqrt() * noise, None

    mu, s, n = 0.7, 0.4, 20000
    score, _, var = _gaussian(sde, mu, s)
    g = torch.Generator().manual_seed(1)
    t_T = torch.tensor(sde.T, dtype=torch.float64)
    # start from the exact marginal at T, so only the reverse dynamics are tested
    x_T = sde.alpha(t_T) * mu + var(t_T).sqrt() * torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )
    grid = solvers.log_snr_uniform(sde, sde.T, sde.t_min, 1000)
    sol = solvers.integrate(_EM(), sd.ReverseSDE(sde, score), x_T, grid, generator=g)
    t_min = torch.tensor(sde.t_min, dtype=torch.float64)
    want_mean, want_std = float(sde.alpha(t_min) * mu), float(var(t_min).sqrt())
    # sampling error (5 standard errors) + the O(h) weak error of Euler-Maruyama (< 1% here)
    assert abs(float(sol.x.mean()) - want_mean) < 5 * want_std / math.sqrt(n) + 0.01 * want_std
    assert abs(float(sol.x.std()) - want_std) < 5 * want_std / math.sqrt(2 * n) + 0.01 * want_std
    assert sol.nfe == 1000


def test_reverse_drift_rejects_a_score_of_the_wrong_shape():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="the score returned shape"):
        sd.reverse_drift(sde, lambda x, t: x[:, :1], torch.zeros(3, 2), 0.5)
