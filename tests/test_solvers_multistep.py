"""Adams-Bashforth multistep ODE solvers (solvers/linear_multistep.py): IPNDM and IPNDMVariable.

Orders are measured against exact solutions (slope of -log(error) against log(n), within 0.35):

* with exact starting values (the first ``max_order - 1`` results replaced by the exact
  solution, the textbook setting of a k-step method) the multistep formula has its full order:
  IPNDM 4 on uniform grids (2 on non-uniform ones: its weights assume equal steps),
  IPNDMVariable ``max_order`` on any smooth grid;
* from a cold start (as :func:`solvers.integrate` runs them) the Euler first step has local
  error ``h^2 x''(t_0) / 2``: on a generic ODE the global order is 2, while on the
  probability-flow ODE sampled from ``T`` the solution is almost straight at the start and
  IPNDMVariable shows order ~4 over practical step counts.

(a) plain linear ODEs (fast); (b) the PF-ODE of a Gaussian under VP, VE and EDM with the exact
flow map (fast subset by default, the sweep marked ``slow``). Plus the state/NFE/dtype/shape
contracts and the weights against ``scipy.integrate.quad`` (k-diffusion's LMS construction).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from scipy import integrate as scipy_integrate
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
from solvers.linear_multistep import (
    BUILTINS,
    IPNDM,
    IPNDMVariable,
    MultistepState,
    adams_bashforth_weights,
)

F64 = torch.float64
Solver = solvers.Solver[Any, Any]
FIXED = [
    [1.0],
    [3 / 2, -1 / 2],
    [23 / 12, -16 / 12, 5 / 12],
    [55 / 24, -59 / 24, 37 / 24, -9 / 24],
]


def solve_exact_start(
    solver: IPNDM | IPNDMVariable,
    term: Any,
    x0: Tensor,
    ts: Tensor,
    exact_at: Callable[[Tensor], Tensor],
) -> Tensor:
    """The solver's own steps, with the results of the first ``max_order - 1`` steps replaced
    by the exact solution (so the history holds exact starting velocities)."""
    state = solver.init(term, ts, x0)
    x = x0
    for i in range(ts.numel() - 1):
        x, state = solver.step(term, ts[i], ts[i + 1], x, state, None)
        if i < solver.max_order - 1:
            x = exact_at(ts[i + 1])
    return x


def random_grid(n: int, seed: int, decreasing: bool = True) -> Tensor:
    """A strictly monotone grid with step ratios up to ~5."""
    steps = 0.2 + torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    ts = torch.cat([torch.zeros(1, dtype=F64), torch.cumsum(steps, 0)])
    return ts.flip(0) if decreasing else ts


# --------------------------------------------------------------------------- weights
def test_weights_on_uniform_grids_are_the_classical_ones() -> None:
    for ts in (solvers.uniform(0.0, 2.0, 7), solvers.uniform(3.0, -1.0, 7)):
        expected = torch.tensor(
            [FIXED[min(i, 3)] + [0.0] * (3 - min(i, 3)) for i in range(7)], dtype=F64
        )
        torch.testing.assert_close(adams_bashforth_weights(ts), expected, rtol=0, atol=1e-14)
        torch.testing.assert_close(IPNDM().weights(ts), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("decreasing", [True, False])
@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
def test_weights_equal_quadrature_of_lagrange_polynomials(max_order: int, decreasing: bool) -> None:
    """k-diffusion's LMS weights: integrate each Lagrange basis polynomial through the last k
    nodes over the step with scipy.integrate.quad; ours are closed-form and equal."""
    ts = random_grid(9, seed=max_order, decreasing=decreasing)
    t = ts.tolist()
    weights = adams_bashforth_weights(ts, max_order)
    for i in range(9):
        k = min(max_order, i + 1)
        nodes = [t[i - j] for j in range(k)]
        for j in range(max_order):
            if j >= k:
                assert weights[i, j] == 0
                continue

            def basis(tau: float, j: int = j, nodes: list[float] = nodes) -> float:
                return math.prod(
                    (tau - nodes[m]) / (nodes[j] - nodes[m]) for m in range(len(nodes)) if m != j
                )

            integral, _ = scipy_integrate.quad(basis, t[i], t[i + 1], epsabs=1e-14, epsrel=1e-13)
            assert abs(weights[i, j].item() - integral / (t[i + 1] - t[i])) < 1e-11


def test_weights_integrate_polynomials_exactly() -> None:
    """sum_j b_{i,j} s_j^p = integral_0^1 s^p ds = 1 / (p + 1) for p < k (s in step units)."""
    ts = random_grid(12, seed=7)
    weights = adams_bashforth_weights(ts, 4)
    for i in range(12):
        k = min(4, i + 1)
        s = torch.stack([(ts[i - j] - ts[i]) / (ts[i + 1] - ts[i]) for j in range(k)])
        for p in range(k):
            torch.testing.assert_close(
                (weights[i, :k] * s**p).sum(), torch.tensor(1 / (p + 1), dtype=F64)
            )


def test_variable_step_formulas_of_orders_2_and_3() -> None:
    """Newton-form closed forms (k-diffusion's ipndm_v for order 2; for order 3 with
    ``temp = (1 - h/(3 (h + h1))) h (h + h1) / (h1 (h1 + h2)) / 2``)."""
    t = random_grid(5, seed=3).tolist()
    weights = adams_bashforth_weights(torch.tensor(t, dtype=F64), 3)
    for i in (1, 2, 3, 4):
        h, h1 = t[i + 1] - t[i], t[i] - t[i - 1]
        if i == 1:
            want = [1 + h / h1 / 2, -h / h1 / 2, 0.0]
        else:
            h2 = t[i - 1] - t[i - 2]
            temp = (1 - h / (3 * (h + h1))) * h * (h + h1) / (h1 * (h1 + h2)) / 2
            want = [1 + h / h1 / 2 + temp, -h / h1 / 2 - (1 + h1 / h2) * temp, temp * h1 / h2]
        torch.testing.assert_close(weights[i], torch.tensor(want, dtype=F64))


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_max_order_out_of_range_is_a_value_error(bad: int) -> None:
    for cls in (IPNDM, IPNDMVariable):
        with pytest.raises(ValueError, match="max_order"):
            cls(max_order=bad)
    with pytest.raises(ValueError, match="max_order"):
        adams_bashforth_weights(solvers.uniform(1.0, 0.0, 3), bad)


@pytest.mark.parametrize("bad", [2.0, True, "4"])
def test_max_order_of_the_wrong_type_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="max_order"):
        IPNDMVariable(max_order=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- (a) linear ODEs
def linear_errors(
    solver: IPNDM | IPNDMVariable,
    problem: LinearProblem,
    backwards: bool,
    grid: str,
    ns: list[int],
    exact_start: bool,
) -> list[float]:
    t0, t1 = (problem.t_b, problem.t_a) if backwards else (problem.t_a, problem.t_b)
    x0 = 0.5 + torch.rand((4, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    term = ODETerm(problem.velocity)
    errors = []
    for n in ns:
        ts = linear_grid(grid, t0, t1, n)
        if exact_start:
            x = solve_exact_start(solver, term, x0, ts, lambda t: problem.exact(x0, t0, float(t)))
        else:
            sol = integrate(solver, term, x0, ts)
            assert sol.nfe == n
            x = sol.x
        errors.append((x - problem.exact(x0, t0, t1)).abs().max().item())
    return errors


EXACT_START_CASES = [
    # (solver, grid, expected order)
    (IPNDM(), "uniform", 4),
    (IPNDM(), "nonuniform", 2),  # fixed weights on unequal steps: local error O(h^3)
    (IPNDMVariable(), "uniform", 4),
    (IPNDMVariable(), "nonuniform", 4),
    (IPNDMVariable(max_order=3), "nonuniform", 3),
    (IPNDMVariable(max_order=2), "nonuniform", 2),
    (IPNDMVariable(max_order=1), "nonuniform", 1),
]


@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("problem", LINEAR_PROBLEMS, ids=LINEAR_IDS)
@pytest.mark.parametrize(
    ("solver", "grid", "order"),
    EXACT_START_CASES,
    ids=[f"{type(s).__name__}{s.max_order}-{g}" for s, g, _ in EXACT_START_CASES],
)
def test_exact_start_order_on_linear_odes(
    solver: IPNDM | IPNDMVariable, grid: str, order: int, problem: LinearProblem, backwards: bool
) -> None:
    ns = [64, 128, 256, 512]  # asymptotic for every case (errors change sign below n ~ 64)
    assert_order(ns, linear_errors(solver, problem, backwards, grid, ns, exact_start=True), order)


@pytest.mark.parametrize("problem", LINEAR_PROBLEMS, ids=LINEAR_IDS)
@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_cold_start_is_second_order_on_generic_odes(
    solver: IPNDM | IPNDMVariable, problem: LinearProblem
) -> None:
    """The documented limit of the lower-order warm-up: the first (Euler) step's O(h^2) local
    error dominates as h -> 0 when the solution is curved at the start."""
    ns = [32, 64, 128, 256]  # measured 2.00-2.05 already from n = 32
    errors = linear_errors(solver, problem, True, "uniform", ns, exact_start=False)
    assert_order(ns, errors, 2)


def test_first_order_lms_is_euler() -> None:
    term = ODETerm(lambda x, t: torch.sin(t) * x - t)
    x0 = torch.linspace(-1.0, 1.0, 6, dtype=F64).reshape(3, 2)
    ts = random_grid(5, seed=1)
    torch.testing.assert_close(
        integrate(IPNDMVariable(max_order=1), term, x0, ts).x,
        integrate(solvers.Euler(), term, x0, ts).x,
        rtol=1e-15,
        atol=1e-15,
    )


def test_fixed_and_variable_weights_agree_on_uniform_grids() -> None:
    term = ODETerm(lambda x, t: torch.cos(3 * t) * x)
    x0 = torch.ones(2, 3, dtype=F64)
    ts = solvers.uniform(1.0, -0.5, 9)
    a, b = integrate(IPNDM(), term, x0, ts), integrate(IPNDMVariable(), term, x0, ts)
    torch.testing.assert_close(a.x, b.x, rtol=1e-14, atol=1e-14)


def test_warm_up_raises_the_order_one_step_at_a_time() -> None:
    """Steps 0, 1, 2, 3 are AB1, AB2, AB3, AB4 written out with the fixed weights."""
    v = lambda x, t: torch.sin(t) * x + t  # noqa: E731
    x0 = torch.tensor([[0.3, -0.7]], dtype=F64)
    ts = solvers.uniform(0.0, 1.0, 5)
    h = ts[1] - ts[0]
    xs, ds = [x0], []
    for i in range(5):
        ds.insert(0, v(xs[-1], ts[i]))
        weights = FIXED[min(i, 3)]
        xs.append(xs[-1] + h * sum(w * d for w, d in zip(weights, ds)))
    torch.testing.assert_close(integrate(IPNDM(), ODETerm(v), x0, ts).x, xs[-1])


# --------------------------------------------------------------------------- (b) PF-ODE
# The Gaussian N(PF_MEAN, PF_COV) under VP (t_min = 1e-3), VE and EDM (see solver_helpers).
# Note that "logsnr" is uniform in t for VE (log sigma is linear in t) and that a uniform grid
# in sigma for EDM is far from its asymptotic regime below n ~ 2000 (the solution varies on the
# scale of the data standard deviation ~0.5, the steps are 80 / n).


def pf_errors(
    solver: IPNDM | IPNDMVariable, sde_name: str, grid: str, ns: list[int], exact_start: bool
) -> list[float]:
    sde = PF_SDES[sde_name]()
    oracle = sd.GaussianMixture.gaussian(PF_MEAN, PF_COV).score_model(sde)
    term = sd.ProbabilityFlowODE(sde, oracle.score)
    x_T = sde.prior_sample((8, 2), generator=torch.Generator().manual_seed(0)).to(F64)
    exact = oracle.flow_map(x_T, sde.T, sde.t_min)
    errors = []
    for n in ns:
        ts = solvers.make_grid(grid, sde, sde.T, sde.t_min, n)
        if exact_start:
            x = solve_exact_start(solver, term, x_T, ts, lambda t: oracle.flow_map(x_T, sde.T, t))
        else:
            sol = integrate(solver, term, x_T, ts)
            assert sol.nfe == n
            x = sol.x
        errors.append((x - exact).abs().max().item())
    return errors


def check_pf_order(
    solver: IPNDM | IPNDMVariable,
    sde_name: str,
    grid: str,
    ns: list[int],
    order: int,
    exact_start: bool,
) -> None:
    assert_order(ns, pf_errors(solver, sde_name, grid, ns, exact_start), order)


def test_variable_step_cold_start_is_fourth_order_on_the_edm_pf_ode() -> None:
    """As integrate runs it, on EDM's default grid: the warm-up error is negligible there
    (x(sigma) is nearly linear at sigma_max), measured 3.7-3.9."""
    check_pf_order(IPNDMVariable(), "edm", "karras", [64, 128, 256], 4, exact_start=False)


def test_fixed_weights_are_second_order_on_the_karras_grid() -> None:
    """IPNDM on a non-uniform grid, as integrate runs it: order 2 (measured 2.0-2.1)."""
    check_pf_order(IPNDM(), "edm", "karras", [32, 64, 128, 256], 2, exact_start=False)


def test_fixed_weights_are_fourth_order_on_a_uniform_grid_with_exact_start() -> None:
    """VE's log-SNR grid is uniform in t: IPNDM has order 4 there (measured 4.1)."""
    check_pf_order(IPNDM(), "ve", "logsnr", [32, 64, 128], 4, exact_start=True)


PF_SWEEP = [
    # (solver, sde, grid, step counts, expected order, exact start)
    *[
        (IPNDMVariable(), sde_name, grid, ns, 4, True)
        for sde_name, ns in (
            ("vp", [32, 64, 128, 256]),
            ("ve", [32, 64, 128, 256]),
            ("edm", [64, 128, 256, 512]),
        )
        for grid in ("karras", "logsnr")
    ],
    (IPNDM(), "vp", "uniform", [64, 128, 256], 4, True),
    (IPNDM(), "ve", "uniform", [32, 64, 128, 256], 4, True),
    (IPNDM(), "vp", "karras", [32, 64, 128, 256], 2, False),
    (IPNDM(), "vp", "logsnr", [32, 64, 128, 256], 2, False),
    (IPNDM(), "ve", "karras", [64, 128, 256, 512], 2, False),
    (IPNDM(), "edm", "logsnr", [32, 64, 128, 256], 2, False),
    (IPNDMVariable(max_order=3), "vp", "karras", [32, 64, 128, 256], 3, True),
    (IPNDMVariable(max_order=2), "edm", "karras", [32, 64, 128, 256], 2, False),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("solver", "sde_name", "grid", "ns", "order", "exact_start"),
    PF_SWEEP,
    ids=[
        f"{type(c[0]).__name__}{c[0].max_order}-{c[1]}-{c[2]}-{'exact' if c[5] else 'cold'}"
        for c in PF_SWEEP
    ],
)
def test_order_on_gaussian_pf_ode_sweep(
    solver: IPNDM | IPNDMVariable,
    sde_name: str,
    grid: str,
    ns: list[int],
    order: int,
    exact_start: bool,
) -> None:
    check_pf_order(solver, sde_name, grid, ns, order, exact_start)


# --------------------------------------------------------------------------- state and contracts
def _pf_problem(sde: Any, shape: tuple[int, ...] = (5, 2), dtype: torch.dtype = F64) -> Any:
    gmm = sd.GaussianMixture([0.5, 0.5], [[1.0, -1.0], [-1.0, 0.5]], [0.3, 0.2])
    term = sd.ProbabilityFlowODE(sde, gmm.score_model(sde).score)
    x_T = sde.prior_sample(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    return term, x_T


@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_history_lives_in_the_state(solver: IPNDM | IPNDMVariable) -> None:
    """Two solves with one instance are identical, also interleaved step by step, and the
    instance is never modified: everything that changes is in the returned state."""
    sde = sd.EDMSDE()
    term, x_T = _pf_problem(sde)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 8)
    before = dataclasses.asdict(solver)
    first, second = integrate(solver, term, x_T, ts), integrate(solver, term, x_T, ts)
    assert torch.equal(first.x, second.x)

    xa, xb = x_T, x_T.flip(0)
    sa, sb = solver.init(term, ts, xa), solver.init(term, ts, xb)
    for i in range(8):
        xa, sa = solver.step(term, ts[i], ts[i + 1], xa, sa, None)
        xb, sb = solver.step(term, ts[i], ts[i + 1], xb, sb, None)
        assert isinstance(sa, MultistepState)
        assert sa.index == i + 1 and len(sa.history) == min(i + 1, 3)
    assert torch.equal(xa, first.x)
    assert torch.equal(xb, integrate(solver, term, x_T.flip(0), ts).x)
    assert dataclasses.asdict(solver) == before


def test_history_holds_the_newest_velocities_first() -> None:
    term = ODETerm(lambda x, t: -t * x)
    ts = solvers.uniform(1.0, 0.0, 5)
    x = torch.ones(2, 2, dtype=F64)
    state = IPNDMVariable().init(term, ts, x)
    velocities = []
    for i in range(5):
        velocities.insert(0, term.velocity(x, ts[i]))
        x, state = IPNDMVariable().step(term, ts[i], ts[i + 1], x, state, None)
        for got, want in zip(state.history, velocities[:3], strict=True):
            assert torch.equal(got, want)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9])
def test_one_evaluation_per_step(n: int) -> None:
    sde = sd.VPSDE(t_min=1e-3)
    term, x_T = _pf_problem(sde)
    for solver in (IPNDM(), IPNDMVariable(), IPNDMVariable(max_order=2)):
        sol = integrate(solver, term, x_T, solvers.make_grid("karras", sde, sde.T, 1e-3, n))
        assert sol.nfe == n == solver.nfe_for_steps(n)
        assert solver.for_budget(n) == (solver, n)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("sde_name", ["vp-default", "ve", "edm"])
@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_one_and_two_step_solves_are_finite(
    solver: IPNDM | IPNDMVariable, sde_name: str, n: int
) -> None:
    sde = {"vp-default": sd.VPSDE(), "ve": sd.VESDE(), "edm": sd.EDMSDE()}[sde_name]
    term, x_T = _pf_problem(sde, dtype=torch.float32)
    ts = solvers.make_grid(solver.grid_for(sde, sde.T, sde.t_min), sde, sde.T, sde.t_min, n)
    sol = integrate(solver, term, x_T, ts)
    assert sol.x.shape == x_T.shape and bool(torch.isfinite(sol.x).all())


@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_float32_state_stays_float32_inside_steps(solver: IPNDM | IPNDMVariable) -> None:
    sde = sd.EDMSDE()
    term, x = _pf_problem(sde, dtype=torch.float32)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 6)
    state = solver.init(term, ts, x)
    assert state.coefficients.dtype == torch.float32 and state.coefficients.shape == (6, 4)
    for x_i, state in run_steps(solver, term, ts, x):
        assert x_i.dtype == torch.float32
        assert all(d.dtype == torch.float32 for d in state.history)


@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_2d_and_4d_states_agree(solver: IPNDM | IPNDMVariable) -> None:
    flat, _ = check_2d_and_4d_states_agree(solver, 7)
    assert flat.nfe == 7


def test_class_attributes_and_builtins() -> None:
    assert {"ipndm": IPNDM, "ipndm_v": IPNDMVariable} == BUILTINS
    for cls, ve_grid in ((IPNDM, "logsnr"), (IPNDMVariable, "karras")):
        solvers.check_solver_class(cls)
        assert (cls.order, cls.evals_per_step, cls.stochastic) == (4, 1, False)
        assert cls.term_type is solvers.ODETermLike
        assert (cls.default_grid, cls.default_grid_vp) == (ve_grid, "quadratic")
        assert cls().max_order == 4


@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_steps_make_no_host_synchronising_calls(solver: IPNDM | IPNDMVariable) -> None:
    """CPU stand-in for the CUDA check below: every Tensor -> Python conversion raises while
    the steps run (init may convert; steps may not)."""
    term = ODETerm(lambda x, t: -t * x)
    ts = solvers.karras(sd.EDMSDE(), 80.0, 0.002, 4)
    x = final_state(solver, term, ts, torch.ones(3, 2, dtype=torch.float32), no_host_sync)
    assert bool(torch.isfinite(x).all())


@pytest.mark.gpu
@pytest.mark.parametrize("solver", [IPNDM(), IPNDMVariable()], ids=["IPNDM", "IPNDMVariable"])
def test_steps_do_not_synchronise_with_the_device(solver: IPNDM | IPNDMVariable) -> None:
    """CUDA's sync debug mode raises on any host synchronisation inside the steps."""
    term = ODETerm(lambda x, t: -t * x)
    x = torch.randn(4, 3, device="cuda")
    ts = solvers.karras(sd.EDMSDE(), 80.0, 0.002, 6).cuda()
    assert solver.init(term, ts, x).coefficients.device.type == "cuda"
    x = final_state(solver, term, ts, x, cuda_sync_errors)
    assert x.device.type == "cuda" and x.dtype == torch.float32
