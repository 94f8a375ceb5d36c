"""Runge-Kutta ODE solvers (solvers/ode_fixed.py): Euler, Heun (EDM Algorithm 1), midpoint, RK4.

Convergence orders are measured, never assumed (diffrax ``test_ode_order``): solve with ``n``
steps for several ``n``, regress ``log(error)`` on ``log(n)`` and check that the slope is within
0.35 of the declared order, against exact solutions of

(a) plain linear ODEs with closed-form solutions, on uniform and non-uniform grids, both
    directions (fast);
(b) the probability-flow ODE of a Gaussian under VP, VE and EDM, whose flow map is closed-form
    (``GaussianMixture.flow_map``): a fast subset by default, every (method, SDE, grid) in the
    ``slow`` sweep.

Float64 states in order tests; the float32, shape, NFE and Heun-specific contracts separately.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from solver_helpers import (
    LINEAR_IDS,
    LINEAR_PROBLEMS,
    PF_COV,
    PF_MEAN,
    PF_SDES,
    LinearProblem,
    assert_order,
    check_2d_and_4d_states_agree,
    cuda_sync_errors,
    final_state,
    linear_grid,
    no_host_sync,
    run_steps,
)
from torch import Tensor

import scoresde as sd
import solvers
from solvers import ODETerm, integrate
from solvers.ode_fixed import (
    BUILTINS,
    CLASSICAL_RK4,
    EULER,
    MIDPOINT,
    RK4,
    TRAPEZOID,
    ButcherTableau,
    Euler,
    Heun,
    HeunState,
    Midpoint,
)

F64 = torch.float64
ALL = [Euler(), Heun(), Midpoint(), RK4()]
IDS = [type(s).__name__ for s in ALL]


# --------------------------------------------------------------------------- (a) linear ODEs
# step counts in each method's asymptotic regime, above float64 round-off
# (the midpoint rule's error on the backward time-dependent problem changes sign near n = 32)
LINEAR_NS: dict[type, list[int]] = {
    Euler: [128, 256, 512, 1024],
    Heun: [64, 128, 256, 512],
    Midpoint: [64, 128, 256, 512],
    RK4: [8, 16, 32, 64],
}


def linear_errors(
    solver: solvers.Solver[Any, Any], problem: LinearProblem, backwards: bool, grid: str
) -> tuple[list[int], list[float]]:
    t0, t1 = (problem.t_b, problem.t_a) if backwards else (problem.t_a, problem.t_b)
    x0 = 0.5 + torch.rand((4, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    exact = problem.exact(x0, t0, t1)
    ns, errors = LINEAR_NS[type(solver)], []
    for n in ns:
        sol = integrate(solver, ODETerm(problem.velocity), x0, linear_grid(grid, t0, t1, n))
        assert sol.nfe == solver.nfe_for_steps(n)
        errors.append((sol.x - exact).abs().max().item())
    return ns, errors


@pytest.mark.parametrize("grid", ["uniform", "nonuniform"])
@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("problem", LINEAR_PROBLEMS, ids=LINEAR_IDS)
@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_order_on_linear_odes(
    solver: solvers.Solver[Any, Any], problem: LinearProblem, backwards: bool, grid: str
) -> None:
    assert_order(*linear_errors(solver, problem, backwards, grid), solver.order)


# --------------------------------------------------------------------------- (b) PF-ODE
# The Gaussian N(PF_MEAN, PF_COV) under VP (t_min = 1e-3), VE and EDM (see solver_helpers).

# step counts in the asymptotic regime of every (SDE, grid) pair; fitted slopes measured over
# these ranges: Euler 0.95-1.01, Heun 1.98-2.08, midpoint 2.05-2.09 (EDM: 3.00), RK4 3.88-4.16
PF_NS: dict[type, list[int]] = {
    Euler: [64, 128, 256],
    Heun: [32, 64, 128, 256],
    Midpoint: [32, 64, 128, 256],
    RK4: [16, 32, 64, 128],
}


def expected_order(solver: solvers.Solver[Any, Any], sde_name: str) -> int:
    """The declared order, except the midpoint rule on the EDM Gaussian PF-ODE: there it is
    superconvergent. Per eigen-direction the ODE is y' = a(sigma) y with
    a = sigma / (s^2 + sigma^2); the h^3 term of the midpoint rule's local error for y' = a y is
    (a^3 / 6 + a'' / 24 + a a' / 4) y, which vanishes identically for this a (write
    u = s^2 + sigma^2: a' = (s^2 - sigma^2) / u^2, a'' = (2 sigma^3 - 6 sigma s^2) / u^3), so the
    global error is O(h^3) (measured 2.94-3.00)."""
    if isinstance(solver, Midpoint) and sde_name == "edm":
        return 3
    return type(solver).order


def pf_errors(
    solver: solvers.Solver[Any, Any], sde_name: str, grid: str, ns: list[int]
) -> list[float]:
    sde = PF_SDES[sde_name]()
    gmm = sd.GaussianMixture.gaussian(PF_MEAN, PF_COV)
    oracle = gmm.score_model(sde)
    term = sd.ProbabilityFlowODE(sde, oracle.score)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0)).to(F64)
    exact = oracle.flow_map(x_T, sde.T, sde.t_min)
    errors = []
    for n in ns:
        sol = integrate(solver, term, x_T, solvers.make_grid(grid, sde, sde.T, sde.t_min, n))
        assert sol.nfe == solver.nfe_for_steps(n)
        errors.append((sol.x - exact).abs().max().item())
    return errors


def check_pf_order(solver: solvers.Solver[Any, Any], sde_name: str, grid: str) -> None:
    ns = PF_NS[type(solver)]
    assert_order(ns, pf_errors(solver, sde_name, grid, ns), expected_order(solver, sde_name))


@pytest.mark.parametrize(
    ("solver", "sde_name"),
    [(Euler(), "vp"), (Heun(), "edm"), (Midpoint(), "vp"), (RK4(), "ve")],
    ids=["euler-vp", "heun-edm", "midpoint-vp", "rk4-ve"],
)
def test_order_on_gaussian_pf_ode(solver: solvers.Solver[Any, Any], sde_name: str) -> None:
    """Fast subset: one SDE per method, on the method's default grid."""
    check_pf_order(solver, sde_name, type(solver).default_grid)


@pytest.mark.slow
@pytest.mark.parametrize("grid", ["karras", "logsnr"])
@pytest.mark.parametrize("sde_name", list(PF_SDES))
@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_order_on_gaussian_pf_ode_sweep(
    solver: solvers.Solver[Any, Any], sde_name: str, grid: str
) -> None:
    check_pf_order(solver, sde_name, grid)


def test_midpoint_is_second_order_on_a_non_gaussian_pf_ode() -> None:
    """The EDM superconvergence is special to one Gaussian: a two-component mixture under EDM
    brings the midpoint rule back to order 2 (reference: RK4 with 512 steps, error ~1e-9)."""
    sde = sd.EDMSDE()
    gmm = sd.GaussianMixture([0.3, 0.7], [[1.0, 0.0], [-1.0, 0.5]], [0.5, 0.3])
    term = sd.ProbabilityFlowODE(sde, gmm.score_model(sde).score)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0)).to(F64)

    def solve(solver: solvers.Solver[Any, Any], n: int) -> Tensor:
        return integrate(solver, term, x_T, solvers.make_grid("karras", sde, sde.T, sde.t_min, n)).x

    reference = solve(RK4(), 512)
    ns = [8, 16, 32, 64]
    errors = [(solve(Midpoint(), n) - reference).abs().max().item() for n in ns]
    assert_order(ns, errors, 2)


# --------------------------------------------------------------------------- Heun specifics
def _gaussian_term(sde: Any) -> tuple[Any, Tensor]:
    gmm = sd.GaussianMixture.gaussian(PF_MEAN, PF_COV)
    term = sd.ProbabilityFlowODE(sde, gmm.score_model(sde).score)
    x_T = sde.prior_sample((5, 2), generator=torch.Generator().manual_seed(3)).to(F64)
    return term, x_T


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_heun_nfe_is_2n_minus_1(n: int) -> None:
    sde = sd.EDMSDE()
    term, x_T = _gaussian_term(sde)
    sol = integrate(Heun(), term, x_T, solvers.make_grid("karras", sde, sde.T, sde.t_min, n))
    assert Heun().nfe_for_steps(n) == 2 * n - 1
    assert sol.nfe == 2 * n - 1


def test_heun_budget() -> None:
    """A budget of nfe evaluations buys (nfe + 1) // 2 Heun steps."""
    for nfe, steps in [(1, 1), (2, 1), (3, 2), (10, 5), (35, 18)]:
        solver, n = Heun().for_budget(nfe)
        assert (n, solver) == (steps, Heun())
        assert solver.nfe_for_steps(n) <= nfe


def test_one_step_heun_is_one_euler_step() -> None:
    sde = sd.EDMSDE()
    term, x_T = _gaussian_term(sde)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 1)
    heun, euler = integrate(Heun(), term, x_T, ts), integrate(Euler(), term, x_T, ts)
    assert heun.nfe == euler.nfe == 1
    assert torch.equal(heun.x, euler.x)


def _heun_by_hand(term: Any, x: Tensor, ts: Tensor, euler_last: bool) -> Tensor:
    """EDM Algorithm 1 written out: Euler predictor and trapezoidal corrector on every step,
    the last one an Euler step when ``euler_last``."""
    n = ts.numel() - 1
    for i in range(n):
        t0, t1 = ts[i], ts[i + 1]
        d0 = term.velocity(x, t0)
        x_euler = x + (t1 - t0) * d0
        last_euler = euler_last and i == n - 1
        x = x_euler if last_euler else x + (t1 - t0) * 0.5 * (d0 + term.velocity(x_euler, t1))
    return x


def test_heun_trapezoidal_steps_then_a_final_euler_step() -> None:
    """Reference: EDM Algorithm 1 by hand (trapezoid on steps 0..n-2, Euler last)."""
    sde = sd.VPSDE(t_min=1e-3)
    term, x_T = _gaussian_term(sde)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 4)
    x = _heun_by_hand(term, x_T, ts, euler_last=True)
    torch.testing.assert_close(integrate(Heun(), term, x_T, ts).x, x, rtol=1e-14, atol=1e-14)


def test_heun_without_the_euler_last_step_is_the_trapezoidal_rule_throughout() -> None:
    """``euler_last=False`` (k-diffusion's ``sample_heun`` ending at sigma > 0): every step,
    the last included, is a trapezoidal step; 2n evaluations; still second order."""
    sde = sd.EDMSDE()
    term, x_T = _gaussian_term(sde)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 4)
    x = _heun_by_hand(term, x_T, ts, euler_last=False)
    full = Heun(euler_last=False)
    sol = integrate(full, term, x_T, ts)
    torch.testing.assert_close(sol.x, x, rtol=1e-14, atol=1e-14)
    assert sol.nfe == full.nfe_for_steps(4) == 8
    assert full.for_budget(10) == (full, 5) and full.for_budget(9) == (full, 4)
    ns = PF_NS[Heun]
    assert_order(ns, pf_errors(full, "vp", "uniform", ns), 2)
    with pytest.raises(TypeError, match="euler_last"):
        Heun(euler_last=1)  # type: ignore[arg-type]


def test_heun_state_is_the_step_index() -> None:
    ts = solvers.uniform(1.0, 0.0, 3)
    term = ODETerm(lambda x, t: -x)
    state = Heun().init(term, ts, torch.ones(2, 1, dtype=F64))
    assert state == HeunState(index=0, n_steps=3)
    states = [state for _, state in run_steps(Heun(), term, ts, torch.ones(2, 1, dtype=F64))]
    assert states == [HeunState(index=i + 1, n_steps=3) for i in range(3)]


# --------------------------------------------------------------------------- single steps
def test_midpoint_and_rk4_single_steps_match_their_formulas() -> None:
    x = torch.tensor([[1.0, -2.0]], dtype=F64)
    t0, t1 = torch.tensor(0.4, dtype=F64), torch.tensor(0.1, dtype=F64)
    v = lambda x, t: x * t + torch.sin(t)  # noqa: E731
    term, h = ODETerm(v), t1 - t0
    x_mid, _ = Midpoint().step(term, t0, t1, x, None, None)
    torch.testing.assert_close(x_mid, x + h * v(x + h / 2 * v(x, t0), t0 + h / 2))
    k1 = v(x, t0)
    k2 = v(x + h / 2 * k1, t0 + h / 2)
    k3 = v(x + h / 2 * k2, t0 + h / 2)
    k4 = v(x + h * k3, t1)
    x_rk4, _ = RK4().step(term, t0, t1, x, None, None)
    torch.testing.assert_close(x_rk4, x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))


def test_rk4_is_exact_for_cubic_in_time_velocities() -> None:
    """x' = p(t) with deg p = 3: Simpson's rule, so RK4 is exact in one step."""
    term = ODETerm(lambda x, t: (1.0 + t - 3.0 * t**2 + 2.0 * t**3).expand_as(x))
    x0 = torch.zeros(3, 2, dtype=F64)
    sol = integrate(RK4(), term, x0, solvers.uniform(0.0, 1.5, 1))
    exact = 1.5 + 1.5**2 / 2 - 1.5**3 + 1.5**4 / 2
    torch.testing.assert_close(sol.x, torch.full_like(x0, exact))


@pytest.mark.parametrize("tableau", [EULER, TRAPEZOID, MIDPOINT, CLASSICAL_RK4])
def test_butcher_tableaux_are_consistent(tableau: ButcherTableau) -> None:
    """Explicit (row i has i entries), c_i = sum_j a_ij, and the weights sum to 1."""
    assert tableau.c[0] == 0.0 and len(tableau.a) == len(tableau.b) == tableau.stages
    for i, (c_i, a_i) in enumerate(zip(tableau.c, tableau.a)):
        assert len(a_i) == i and sum(a_i) == pytest.approx(c_i, abs=1e-15)
    assert sum(tableau.b) == pytest.approx(1.0, abs=1e-15)
    for cls in (Euler, Midpoint, RK4):
        assert cls.evals_per_step == cls.tableau.stages


# --------------------------------------------------------------------------- contracts
def test_class_attributes_and_builtins() -> None:
    assert {"euler": Euler, "heun": Heun, "midpoint": Midpoint, "rk4": RK4} == BUILTINS
    table = {Euler: (1, 1), Heun: (2, 2), Midpoint: (2, 2), RK4: (4, 4)}
    for cls, (order, evals) in table.items():
        solvers.check_solver_class(cls)
        assert (cls.order, cls.evals_per_step, cls.stochastic) == (order, evals, False)
        assert cls.term_type is solvers.ODETermLike
        assert cls.default_grid == "karras"


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("sde_name", ["vp-default", "ve", "edm"])
@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_one_and_two_step_solves_are_finite(
    solver: solvers.Solver[Any, Any], sde_name: str, n: int
) -> None:
    """Including the stiff default VP (t_min = 1e-5) and small data variance."""
    sde = {"vp-default": sd.VPSDE(), "ve": sd.VESDE(), "edm": sd.EDMSDE()}[sde_name]
    gmm = sd.GaussianMixture([0.5, 0.5], [[1.0, -1.0], [-1.0, 0.5]], [0.01, 0.02])
    term = sd.ProbabilityFlowODE(sde, gmm.score_model(sde).score)
    x_T = sde.prior_sample((6, 2), generator=torch.Generator().manual_seed(1))
    ts = solvers.make_grid(solver.default_grid, sde, sde.T, sde.t_min, n)
    sol = integrate(solver, term, x_T, ts)
    assert sol.x.shape == x_T.shape and bool(torch.isfinite(sol.x).all())
    assert sol.nfe == solver.nfe_for_steps(n)


@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_float32_state_stays_float32_inside_steps(solver: solvers.Solver[Any, Any]) -> None:
    """Checked on the solver's own steps (integrate would cast a float64 result back)."""
    sde = sd.EDMSDE()
    gmm = sd.GaussianMixture.gaussian(PF_MEAN, PF_COV)
    term = sd.ProbabilityFlowODE(sde, gmm.score_model(sde).score)
    x = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))
    assert x.dtype == torch.float32
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 3)
    for x_i, _ in run_steps(solver, term, ts, x):
        assert x_i.dtype == torch.float32
    x_T = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))
    assert integrate(solver, term, x_T, ts).x.dtype == torch.float32


@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_2d_and_4d_states_agree(solver: solvers.Solver[Any, Any]) -> None:
    """A (B, 4) state and the same numbers as (B, 1, 2, 2) give the same solve."""
    check_2d_and_4d_states_agree(solver, 6)


@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_terms_see_0d_float64_times_within_the_step(solver: solvers.Solver[Any, Any]) -> None:
    """Terms receive 0-d float64 times, on the grid or between two grid points."""
    seen: list[Tensor] = []

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        seen.append(t)
        return -x

    ts = solvers.uniform(1.0, 0.5, 3)
    integrate(solver, ODETerm(velocity), torch.ones(2, 3, dtype=torch.float32), ts)
    assert all(t.ndim == 0 and t.dtype == F64 for t in seen)
    assert all(0.5 <= float(t) <= 1.0 for t in seen)


@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_steps_make_no_host_synchronising_calls(solver: solvers.Solver[Any, Any]) -> None:
    """CPU stand-in for the CUDA check below: every Tensor -> Python conversion raises while
    the steps run (init may convert; steps may not)."""
    term = ODETerm(lambda x, t: -t * x)
    ts = solvers.uniform(1.0, 0.1, 4)
    x = final_state(solver, term, ts, torch.ones(3, 2, dtype=torch.float32), no_host_sync)
    assert bool(torch.isfinite(x).all())


@pytest.mark.gpu
@pytest.mark.parametrize("solver", ALL, ids=IDS)
def test_steps_do_not_synchronise_with_the_device(solver: solvers.Solver[Any, Any]) -> None:
    """CUDA's sync debug mode raises on any host synchronisation inside the steps."""
    term = ODETerm(lambda x, t: -t * x)
    ts = solvers.uniform(1.0, 0.1, 4).cuda()
    x = final_state(solver, term, ts, torch.randn(4, 3, device="cuda"), cuda_sync_errors)
    assert x.device.type == "cuda" and x.dtype == torch.float32
