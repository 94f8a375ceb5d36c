"""Fixed-step ODE solvers: the measured convergence order matches the declared ``order``.

Each problem carries its exact solution (torchdiffeq's test-problem style); we solve with
``n = 2^k`` steps, regress ``log(error)`` on ``log(h)`` (the slope of ``-log(error)`` on
``log(n)``, :func:`solver_helpers.order_slope`) and check it (diffrax ``test_ode_order``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from solver_helpers import (
    LINEAR_IDS,
    LINEAR_PROBLEMS,
    LinearProblem,
    final_state,
    no_host_sync,
    order_slope,
)
from torch import Tensor

import solvers
from solvers import ODETerm, integrate, uniform

F64 = torch.float64
PROBLEMS = LINEAR_PROBLEMS


def measured_order(
    solver: solvers.Solver,
    problem: LinearProblem,
    backwards: bool,
    ks: range,
    shape: tuple[int, ...],
    dtype: torch.dtype = F64,
) -> float:
    t0, t1 = (problem.t_b, problem.t_a) if backwards else (problem.t_a, problem.t_b)
    x0 = 0.5 + torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    exact = problem.exact(x0, t0, t1)
    ns, errors = [2**k for k in ks], []
    for n in ns:
        sol = integrate(solver, ODETerm(problem.velocity), x0, uniform(t0, t1, n))
        assert sol.x.dtype == dtype
        assert sol.nfe == n * type(solver).evals_per_step
        errors.append((sol.x - exact).abs().max().item())
    assert all(e > 0 for e in errors)
    return order_slope(ns, errors)  # = slope of log(error) against log(h), h = |t1 - t0| / n


@pytest.mark.parametrize("backwards", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("problem", PROBLEMS, ids=LINEAR_IDS)
def test_euler_convergence_order(problem: LinearProblem, backwards: bool) -> None:
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


@pytest.mark.parametrize(
    "sync",
    [
        lambda dt: dt.item(),
        lambda dt: float(dt),
        lambda dt: bool(dt < 0),
        lambda dt: 1.0 if dt < 0 else 2.0,
        lambda dt: f"{dt:.3f}",
        lambda dt: dt.tolist(),
        lambda dt: dt.cpu(),
        lambda dt: [0, 1, 2][dt.abs().ceil().long()],
        lambda dt: math.exp(dt),
    ],
    ids=["item", "float", "bool", "if", "format", "tolist", "cpu", "index", "math"],
)
def test_no_host_sync_would_catch_a_syncing_step(sync: Callable[[Tensor], object]) -> None:
    """Sanity of the sync harness: a step that converts a tensor to Python fails under
    no_host_sync (also when the conversion happens inside another torch function), and the
    tensor methods are restored afterwards."""

    class SyncingEuler(solvers.Euler):
        """Test-only Euler that synchronises with the host inside its step."""

        def step(self, term, t0, t1, x, state, noise):
            sync(t1 - t0)
            return super().step(term, t0, t1, x, state, noise)

    term, ts, x = ODETerm(lambda x, t: -x), uniform(1.0, 0.0, 2), torch.ones(2, 2)
    with pytest.raises(AssertionError, match="host synchronisation inside a step"):
        final_state(SyncingEuler(), term, ts, x, no_host_sync)
    final_state(SyncingEuler(), term, ts, x)  # no guard: fine, and the methods are back
    t = torch.tensor(0.5, dtype=F64)
    assert (t.item(), float(t), bool(t), f"{t:.1f}", t.tolist()) == (0.5, 0.5, True, "0.5", 0.5)


def test_euler_single_step_matches_formula() -> None:
    x = torch.tensor([[1.0, -2.0]], dtype=F64)
    t0, t1 = torch.tensor(0.4, dtype=F64), torch.tensor(0.1, dtype=F64)
    term = ODETerm(lambda x, t: x * t)
    x1, state = solvers.Euler().step(term, t0, t1, x, None, None)
    assert state is None
    torch.testing.assert_close(x1, x + (t1 - t0) * x * t0)
