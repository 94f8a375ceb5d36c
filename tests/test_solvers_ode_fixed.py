"""Fixed-step ODE solvers: the measured convergence order matches the declared ``order``.

Each problem carries its exact solution (torchdiffeq's test-problem style); we solve with
``n = 2^k`` steps, regress ``log2(error)`` on ``log2(h)`` and check the slope (diffrax
``test_ode_order``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

import solvers
from solvers import ODETerm, integrate, uniform

F64 = torch.float64


@dataclass(frozen=True)
class Problem:
    """dx/dt = velocity(x, t) with exact flow map x(t1) = exact(x(t0), t0, t1)."""

    name: str
    velocity: Callable[[Tensor, Tensor], Tensor]
    exact: Callable[[Tensor, float, float], Tensor]
    t_a: float
    t_b: float


LAM = -1.3
PROBLEMS = [
    Problem(
        "exponential",  # dx/dt = lam x
        lambda x, t: LAM * x,
        lambda x, t0, t1: x * math.exp(LAM * (t1 - t0)),
        0.0,
        1.0,
    ),
    Problem(
        "time-dependent",  # dx/dt = 2 cos(t) x  =>  x(t1) = x(t0) exp(2 sin t1 - 2 sin t0)
        lambda x, t: 2.0 * torch.cos(t) * x,
        lambda x, t0, t1: x * math.exp(2.0 * (math.sin(t1) - math.sin(t0))),
        0.3,
        1.8,
    ),
    Problem(
        "forced",  # dx/dt = -x + t  =>  x(t1) = t1 - 1 + (x(t0) - t0 + 1) exp(-(t1 - t0))
        lambda x, t: -x + t,
        lambda x, t0, t1: t1 - 1.0 + (x - t0 + 1.0) * math.exp(-(t1 - t0)),
        0.0,
        2.0,
    ),
]


def _slope(hs: list[float], errors: list[float]) -> float:
    """Least-squares slope of log2(error) against log2(h)."""
    xs = [math.log2(h) for h in hs]
    ys = [math.log2(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def measured_order(
    solver: solvers.Solver,
    problem: Problem,
    backwards: bool,
    ks: range,
    shape: tuple[int, ...],
    dtype: torch.dtype = F64,
) -> float:
    t0, t1 = (problem.t_b, problem.t_a) if backwards else (problem.t_a, problem.t_b)
    x0 = 0.5 + torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    exact = problem.exact(x0, t0, t1)
    hs, errors = [], []
    for k in ks:
        n = 2**k
        sol = integrate(solver, ODETerm(problem.velocity), x0, uniform(t0, t1, n))
        assert sol.x.dtype == dtype
        assert sol.nfe == n * type(solver).evals_per_step
        hs.append(abs(t1 - t0) / n)
        errors.append((sol.x - exact).abs().max().item())
    assert all(e > 0 for e in errors)
    return _slope(hs, errors)


@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("problem", PROBLEMS, ids=[p.name for p in PROBLEMS])
def test_euler_convergence_order(problem: Problem, backwards: bool) -> None:
    slope = measured_order(solvers.Euler(), problem, backwards, range(5, 11), (4, 3))
    assert solvers.Euler.order == 1
    assert 0.9 <= slope <= 1.1, f"measured order {slope:.3f}"


def test_euler_convergence_order_4d_float32_state() -> None:
    """The order shows in a 4-D state too (coarse steps, where float32 round-off is small)."""
    slope = measured_order(
        solvers.Euler(), PROBLEMS[1], True, range(3, 8), (2, 3, 2, 2), torch.float32
    )
    assert 0.9 <= slope <= 1.1, f"measured order {slope:.3f}"


def test_order_check_would_catch_a_wrong_method() -> None:
    """Sanity of the harness: a broken Euler that takes half the step does not converge, and
    the measured slope (~0) falls outside the window."""

    class HalfStep(solvers.Euler):
        """Test-only broken Euler: x1 = x0 + dt/2 v(x0, t0)."""

        def step(self, term, t0, t1, x, state, noise):
            return x + 0.5 * (t1 - t0) * term.velocity(x, t0), None

    slope = measured_order(HalfStep(), PROBLEMS[0], False, range(5, 9), (2, 2))
    assert abs(slope) < 0.1


def test_euler_single_step_matches_formula() -> None:
    x = torch.tensor([[1.0, -2.0]], dtype=F64)
    t0, t1 = torch.tensor(0.4, dtype=F64), torch.tensor(0.1, dtype=F64)
    term = ODETerm(lambda x, t: x * t)
    x1, state = solvers.Euler().step(term, t0, t1, x, None, None)
    assert state is None
    torch.testing.assert_close(x1, x + (t1 - t0) * x * t0)
