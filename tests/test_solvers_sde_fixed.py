"""Fixed-grid reverse-SDE samplers (solvers.sde_fixed) against exact answers.

References: closed-form single steps written from the papers' formulas (score_sde's predictors,
DDPM's posterior, EDM's Algorithm 2), EDM's deterministic sampler (solvers.Heun on the PF-ODE),
the exact moments of the Gaussian marginals (weak order, computed without Monte-Carlo error by
:func:`exact_moments`), a fine solve on the same Brownian path (strong order) and the diffused
Gaussian mixture (sliced Wasserstein, bound from the sample size).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from test_solvers_sde_brownian import (
    F64,
    SDES,
    SW_BOUND,
    _single_thread,  # noqa: F401 - autouse fixture
    exact_moments,
    gaussian_marginal,
    gaussian_oracle,
    mixture_marginal,
    mixture_oracle,
    moment_tolerance,
    sliced_w1,
    slope,
)
from torch import Tensor

import scoresde as sd
import solvers
from scoresde.reverse import solver_term
from solvers.brownian import BrownianPath, NoiseSource
from solvers.sde_fixed import (
    BUILTINS,
    Ancestral,
    DPMSolverPP2MSDE,
    DPMSolverPP3MSDE,
    EDMStochastic,
    EulerMaruyama,
    ReverseDiffusion,
)

ALL = [
    EulerMaruyama,
    ReverseDiffusion,
    Ancestral,
    EDMStochastic,
    DPMSolverPP2MSDE,
    DPMSolverPP3MSDE,
]
IDS = [c.__name__ for c in ALL]


class FixedNoise(NoiseSource):
    """Returns the given draws in order (single-step closed-form checks)."""

    def __init__(self, *zs: Tensor) -> None:
        self.zs = list(zs)

    def increment(self, t0: Tensor, t1: Tensor, x: Tensor) -> Tensor:
        return self.zs.pop(0)

    def normal(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self.zs.pop(0)

    def brownian_motion(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def term_for(cls: type[solvers.Solver], oracle: Any) -> object:
    return solver_term(oracle, cls.term_type)


def one_step(solver: solvers.Solver, oracle: Any, x: Tensor, t0: float, t1: float, z: Tensor):
    ts = torch.tensor([t0, t1], dtype=F64)
    return solvers.integrate(solver, term_for(type(solver), oracle), x, ts, noise=FixedNoise(z)).x


def test_builtins() -> None:
    assert {
        "euler_maruyama": EulerMaruyama,
        "reverse_diffusion": ReverseDiffusion,
        "ancestral": Ancestral,
        "edm_stochastic": EDMStochastic,
        "dpmpp_2m_sde": DPMSolverPP2MSDE,
        "dpmpp_3m_sde": DPMSolverPP3MSDE,
    } == BUILTINS
    for cls in ALL:
        solvers.check_solver_class(cls)
        assert cls.stochastic and cls.weak_order is not None


# ----------------------------------------------------------------------------- bookkeeping


@pytest.mark.parametrize("cls", ALL, ids=IDS)
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("shape", [(6, 2), (3, 1, 2, 1)], ids=["2d", "4d"])
def test_nfe_shape_dtype(cls: type[solvers.Solver], n: int, shape: tuple[int, ...]) -> None:
    sde = sd.VPSDE()
    oracle = gaussian_oracle(sde)
    solver = cls()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))  # float32
    ts = solvers.make_grid(solver.grid_for(sde, sde.T, sde.t_min), sde, sde.T, sde.t_min, n)
    sol = solvers.integrate(solver, term_for(cls, oracle), x, ts, generator=torch.Generator())
    assert sol.nfe == solver.nfe_for_steps(n)
    assert sol.x.shape == shape and sol.x.dtype == torch.float32
    assert torch.isfinite(sol.x).all()


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_reproducible(cls: type[solvers.Solver]) -> None:
    oracle = gaussian_oracle(sd.VESDE())

    def run(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return sd.sample(oracle, cls(), 8, shape=(4, 2), generator=g).x

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_options_validated() -> None:
    with pytest.raises(ValueError, match="S_churn"):
        EDMStochastic(S_churn=-1.0)
    with pytest.raises(ValueError, match="S_tmin"):
        EDMStochastic(S_tmin=2.0, S_tmax=1.0)
    with pytest.raises(ValueError, match="solver_type"):
        DPMSolverPP2MSDE(solver_type="rk4")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="lower_order_final"):
        DPMSolverPP3MSDE(lower_order_final=1)  # type: ignore[arg-type]
    assert EDMStochastic().nfe_for_steps(4) == 7


# ----------------------------------------------------------------------------- one step


def test_euler_maruyama_step() -> None:
    sde = sd.VPSDE()
    term = sd.ReverseSDE(sde, gaussian_oracle(sde).score)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t0, t1 = torch.tensor(0.7, dtype=F64), torch.tensor(0.6, dtype=F64)
    got, _ = EulerMaruyama().step(term, t0, t1, x, None, z)
    want = x + term.drift(x, t0) * (-0.1) + term.diffusion(x, t0) * 0.1**0.5 * z
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-14)


def test_reverse_diffusion_is_score_sde_predictor() -> None:
    """VE: x + (s_t^2 - s_s^2) score + sqrt(s_t^2 - s_s^2) z; VP: (2 - sqrt(1 - b)) x + b score
    + sqrt(b) z with 1 - b = alpha_s^2 / alpha_t^2 (score_sde ReverseDiffusionPredictor)."""
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t0, t1 = 0.6, 0.5
    for sde in (sd.VESDE(), sd.VPSDE()):
        oracle = gaussian_oracle(sde)
        score = oracle.score(x, torch.tensor(t0, dtype=F64))
        a0, a1 = (float(sde.alpha(torch.tensor(t, dtype=F64))) for t in (t0, t1))
        s0, s1 = (float(sde.sigma(torch.tensor(t, dtype=F64))) for t in (t0, t1))
        if isinstance(sde, sd.VESDE):
            g2 = s0**2 - s1**2
            want = x + g2 * score + g2**0.5 * z
        else:
            beta = 1 - (a0 / a1) ** 2
            want = (2 - (1 - beta) ** 0.5) * x + beta * score + beta**0.5 * z
        got = one_step(ReverseDiffusion(), oracle, x, t0, t1, z)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_ancestral_is_the_ddpm_posterior() -> None:
    """Ho et al. 2020 eq. 7 with alpha_bar = alpha(t)^2 (VP) and SMLD's step (VE)."""
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t0, t1 = 0.6, 0.5
    for sde in (sd.VPSDE(), sd.VESDE()):
        oracle = gaussian_oracle(sde)
        x0 = oracle.x0(x, torch.tensor(t0, dtype=F64))
        if isinstance(sde, sd.VPSDE):
            ab_t, ab_s = (float(sde.alpha(torch.tensor(t, dtype=F64))) ** 2 for t in (t0, t1))
            alpha_t = ab_t / ab_s
            beta_t = 1 - alpha_t
            mean = (ab_s**0.5 * beta_t / (1 - ab_t)) * x0 + (
                alpha_t**0.5 * (1 - ab_s) / (1 - ab_t)
            ) * x
            var = (1 - ab_s) / (1 - ab_t) * beta_t
        else:
            s_t, s_s = (float(sde.sigma(torch.tensor(t, dtype=F64))) for t in (t0, t1))
            mean = x0 + (s_s**2 / s_t**2) * (x - x0)
            var = s_s**2 * (s_t**2 - s_s**2) / s_t**2
        got = one_step(Ancestral(), oracle, x, t0, t1, z)
        torch.testing.assert_close(got, mean + var**0.5 * z, rtol=1e-10, atol=1e-10)


def test_dpmpp_sde_steps() -> None:
    """First step = the ancestral (exact posterior) step; second step of 2M = the closed form
    with the previous x0 prediction (midpoint and heun)."""
    sde = sd.VPSDE()
    oracle = gaussian_oracle(sde)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    z1, z2 = (
        torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(s)) for s in (1, 2)
    )
    ts = torch.tensor([0.8, 0.6, 0.45], dtype=F64)
    first = one_step(DPMSolverPP2MSDE(), oracle, x, 0.8, 0.6, z1)
    torch.testing.assert_close(first, one_step(Ancestral(), oracle, x, 0.8, 0.6, z1))
    lam = sde.log_snr(ts) / 2
    alpha, sigma = sde.alpha(ts), sde.sigma(ts)
    m0 = oracle.x0(x, ts[0])
    m1 = oracle.x0(first, ts[1])
    h0, h = float(lam[1] - lam[0]), float(lam[2] - lam[1])
    r = h0 / h
    a = float(alpha[2]) * -math.expm1(-2 * h)
    base = float(sigma[2] / sigma[1]) * math.exp(-h) * first + a * m1
    noise = float(sigma[2]) * (-math.expm1(-2 * h)) ** 0.5 * z2
    for solver_type, c in (
        ("midpoint", 0.5 * a),
        ("heun", float(alpha[2]) * (1 - (-math.expm1(-2 * h)) / (2 * h))),
    ):
        solver = DPMSolverPP2MSDE(lower_order_final=False, solver_type=solver_type)  # type: ignore[arg-type]
        got = solvers.integrate(
            solver, term_for(DPMSolverPP2MSDE, oracle), x, ts, noise=FixedNoise(z1, z2)
        ).x
        torch.testing.assert_close(got, base + c * (m1 - m0) / r + noise, rtol=1e-10, atol=1e-10)


def test_edm_without_churn_is_heun() -> None:
    """S_churn = 0: EDM Algorithm 1, i.e. Heun on the PF-ODE (EDM: alpha = 1, sigma = t)."""
    sde = sd.EDMSDE()
    oracle = gaussian_oracle(sde)
    x = 80.0 * torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 12)
    got = solvers.integrate(
        EDMStochastic(S_churn=0.0),
        term_for(EDMStochastic, oracle),
        x,
        ts,
        generator=torch.Generator(),
    ).x
    want = solvers.integrate(solvers.Heun(), sd.ProbabilityFlowODE(sde, oracle.score), x, ts).x
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_edm_churn_step() -> None:
    """A step of Algorithm 2 on the EDM SDE (gamma = min(S_churn / N, sqrt 2 - 1))."""
    sde = sd.EDMSDE()
    oracle = gaussian_oracle(sde)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    ts = torch.tensor([80.0, 2.0, 1.0, 0.5], dtype=F64)
    solver = EDMStochastic(S_churn=0.75, S_tmin=0.0, S_tmax=10.0)  # no churn at t = 80
    gamma = 0.25  # S_churn / N with N = 3 steps
    t_hat = 2.0 * (1 + gamma)
    x_hat = x + (t_hat**2 - 4.0) ** 0.5 * z
    d = (x_hat - oracle.x0(x_hat, torch.tensor(t_hat, dtype=F64))) / t_hat
    x1 = x_hat + (1.0 - t_hat) * d
    d1 = (x1 - oracle.x0(x1, torch.tensor(1.0, dtype=F64))) / 1.0
    want = x_hat + (1.0 - t_hat) * 0.5 * (d + d1)
    term = term_for(EDMStochastic, oracle)
    state = solver.init(term, ts, x)
    state = type(state)(1, state.table)  # the second step: 2 -> 1
    got, _ = solver.step(term, ts[1], ts[2], x, state, z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # the raised level never exceeds the grid's largest (t = 80 is not churned beyond T)
    assert float(state.table.t_hat[0]) == 80.0


# ----------------------------------------------------------------------------- weak order

# (method, SDE, grid, declared order window): Gaussian data, exact moments (no Monte-Carlo
# error). The SDE-DPM-Solver++ methods and EM on VE superconverge on Gaussian (linear) data:
# their measured slopes are ~2 against a declared 1, so for them the test checks "at least".
WEAK_CASES = [
    (EulerMaruyama(), "vp", "uniform", False),
    (ReverseDiffusion(), "vp", "uniform", False),
    (Ancestral(), "vp", "uniform", False),
    (EDMStochastic(S_churn=10.0), "vp", "karras", False),
    (DPMSolverPP2MSDE(lower_order_final=False), "vp", "logsnr", True),
    (DPMSolverPP3MSDE(lower_order_final=False), "vp", "logsnr", True),
]


def _weak_errors(solver: solvers.Solver, key: str, grid: str, ns: list[int]) -> list[float]:
    sde = SDES[key]()
    term = term_for(type(solver), gaussian_oracle(sde))
    m_t, p_t = gaussian_marginal(sde, sde.T)  # start from the exact p_T
    m_0, p_0 = gaussian_marginal(sde, sde.t_min)
    errors = []
    for n in ns:
        ts = solvers.make_grid(grid, sde, sde.T, sde.t_min, n)
        mean, cov = exact_moments(solver, term, m_t, p_t, ts)
        errors.append(max(float((mean - m_0).abs().max()), float((cov - p_0).abs().max())))
    return errors


@pytest.mark.parametrize(
    "solver,key,grid,at_least", WEAK_CASES, ids=[type(c[0]).__name__ for c in WEAK_CASES]
)
def test_weak_order(solver: solvers.Solver, key: str, grid: str, at_least: bool) -> None:
    ns = [32, 64, 128]
    errors = _weak_errors(solver, key, grid, ns)
    measured = slope(ns, errors)
    declared = type(solver).weak_order
    assert declared is not None
    assert measured > declared - 0.35, (errors, measured)
    if not at_least:
        assert measured < declared + 0.35, (errors, measured)


@pytest.mark.slow
@pytest.mark.parametrize("key", list(SDES))
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_weak_order_sweep(cls: type[solvers.Solver], key: str) -> None:
    """Every method and SDE on the method's default grid (``grid_for``): the weak error
    decreases at least at the declared order."""
    solver = cls(lower_order_final=False) if cls in (DPMSolverPP2MSDE, DPMSolverPP3MSDE) else cls()
    if cls is EDMStochastic:
        solver = EDMStochastic(S_churn=10.0)
    sde = SDES[key]()
    grid = solver.grid_for(sde, sde.T, sde.t_min)
    ns = [64, 128, 256]
    errors = _weak_errors(solver, key, grid, ns)
    assert slope(ns, errors) > cls.weak_order - 0.35, errors


@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_samples_have_the_method_moments(cls: type[solvers.Solver]) -> None:
    """Monte-Carlo samples (n = 20000, fixed seed) have the exact moments of the method
    within 5 standard errors, and those are within 0.08 of the data's at 128 steps."""
    sde = sd.VPSDE(t_min=1e-3)
    solver = cls()
    term = term_for(cls, gaussian_oracle(sde))
    m_t, p_t = gaussian_marginal(sde, sde.T)
    ts = solvers.make_grid(solver.grid_for(sde, sde.T, sde.t_min), sde, sde.T, sde.t_min, 128)
    mean, cov = exact_moments(solver, term, m_t, p_t, ts)
    n = 20000
    g = torch.Generator().manual_seed(0)
    x = m_t + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(p_t).T
    out = solvers.integrate(solver, term, x, ts, generator=g).x
    mean_tol, cov_tol = moment_tolerance(cov, n)
    assert ((out.mean(0) - mean).abs() <= mean_tol).all()
    assert ((torch.cov(out.T) - cov).abs() <= cov_tol).all()
    m_0, p_0 = gaussian_marginal(sde, sde.t_min)
    assert float((mean - m_0).abs().max()) < 0.08 and float((cov - p_0).abs().max()) < 0.08


# ----------------------------------------------------------------------------- strong order


def test_euler_maruyama_strong_order() -> None:
    """Strong order 1 (additive noise) on one Brownian path shared by every resolution."""
    sde = sd.VPSDE(t_min=1e-3)
    term = sd.ReverseSDE(sde, gaussian_oracle(sde).score)
    m = 100
    x = torch.randn(m, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    path = BrownianPath(sde.T, sde.t_min, (m, 2), entropy=7)
    ref = solvers.integrate(
        EulerMaruyama(), term, x, solvers.uniform(sde.T, sde.t_min, 1024), noise=path
    ).x
    ns = [16, 32, 64, 128]
    errors = []
    for n in ns:
        out = solvers.integrate(
            EulerMaruyama(), term, x, solvers.uniform(sde.T, sde.t_min, n), noise=path
        ).x
        errors.append(float((out - ref).norm(dim=1).mean()))
    assert abs(slope(ns, errors) - EulerMaruyama.strong_order) < 0.35, errors


# ----------------------------------------------------------------------------- distribution


def _mixture_distance(solver: solvers.Solver, key: str, nfe: int, grid: str | None = None) -> float:
    sde = {
        "vp": sd.VPSDE(),
        "ve": sd.VESDE(),
        "edm": sd.EDMSDE(),
        "subvp": sd.SubVPSDE(),
        "cosine": sd.CosineVPSDE(),
    }[key]
    n = 2000
    res = sd.sample(
        mixture_oracle(sde),
        solver,
        nfe,
        shape=(n, 2),
        grid=grid,
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    return stat / null


@pytest.mark.parametrize(
    "solver,nfe",
    [
        (EulerMaruyama(), 300),
        (ReverseDiffusion(), 300),
        (Ancestral(), 300),
        (EDMStochastic(), 150),
        (DPMSolverPP2MSDE(), 100),
        (DPMSolverPP3MSDE(), 100),
    ],
    ids=IDS,
)
def test_matches_the_mixture(solver: solvers.Solver, nfe: int) -> None:
    assert _mixture_distance(solver, "vp", nfe) < SW_BOUND


@pytest.mark.slow
@pytest.mark.parametrize("key", ["vp", "subvp", "cosine", "ve", "edm"])
@pytest.mark.parametrize("cls", ALL, ids=IDS)
def test_matches_the_mixture_every_sde(cls: type[solvers.Solver], key: str) -> None:
    # EDM's uniform grid (in sigma) is far from converged at 500 steps: 'karras' there
    grid = "karras" if key == "edm" else None
    nfe = 500 if cls.evals_per_step == 1 else 999
    assert _mixture_distance(cls(), key, nfe, grid) < SW_BOUND
