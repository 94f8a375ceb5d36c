"""Problems and helpers shared by the solver tests (``tests/test_solvers_*.py``).

* :func:`order_slope`, :func:`assert_order`: the measured convergence order and its check
  (diffrax ``test_ode_order``);
* :data:`LINEAR_PROBLEMS` and :func:`linear_grid`: scalar linear ODEs with exact flow maps
  (torchdiffeq's test-problem style) on uniform and smooth non-uniform grids;
* :data:`PF_MEAN`, :data:`PF_COV`, :data:`PF_SDES`: the Gaussian probability-flow problem of the
  fixed-step order tests;
* :class:`EDMSchedule`: a minimal test-local schedule (``alpha = 1``, ``sigma = t``);
* :func:`pf_ode_reference`: a tight scipy DOP853 solve of the PF-ODE, independent of the code
  under test;
* :func:`run_steps`, :func:`no_host_sync`, :func:`cuda_sync_errors`: a solver's own ``init`` and
  ``step`` calls over a grid, optionally with host synchronisation turned into an error;
* :func:`check_2d_and_4d_states_agree`: the shape-polymorphism contract.

Imported by the tests as ``from solver_helpers import ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.integrate import solve_ivp
from torch import Tensor

import scoresde as sd
import solvers

F64 = torch.float64


# --------------------------------------------------------------------------- measured order
def order_slope(ns: Sequence[int], errors: Sequence[float]) -> float:
    """Least-squares slope of ``-log(error)`` against ``log(n)``: the measured order (equal to
    the slope of ``log(error)`` against ``log(h)`` for steps ``h = (t1 - t0) / n``)."""
    xs = [math.log(n) for n in ns]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


ORDER_TOL = 0.35
"""Half-width of the window around the expected order that a measured order must fall in."""


def assert_order(
    ns: Sequence[int], errors: Sequence[float], expected: float, context: str = ""
) -> float:
    """Assert that the measured order :func:`order_slope` is within :data:`ORDER_TOL` of
    ``expected`` (the message names ``context``, both orders and the errors); return it."""
    measured = order_slope(ns, errors)
    assert abs(measured - expected) <= ORDER_TOL, (
        f"{context}measured order {measured:.3f}, expected {expected}, errors {list(errors)}"
    )
    return measured


# --------------------------------------------------------------------------- linear ODEs
@dataclass(frozen=True)
class LinearProblem:
    """``dx/dt = velocity(x, t)`` on ``[t_a, t_b]`` with exact flow map ``exact(x(s), s, t)``."""

    name: str
    velocity: Callable[[Tensor, Tensor], Tensor]
    exact: Callable[[Tensor, float, float], Tensor]
    t_a: float
    t_b: float


LAM = -1.3
LINEAR_PROBLEMS = [
    LinearProblem(  # dx/dt = lam x
        "exponential",
        lambda x, t: LAM * x,
        lambda x, s, t: x * math.exp(LAM * (t - s)),
        0.0,
        1.0,
    ),
    LinearProblem(  # dx/dt = 2 cos(t) x  =>  x(t) = x(s) exp(2 sin t - 2 sin s)
        "time-dependent",
        lambda x, t: 2.0 * torch.cos(t) * x,
        lambda x, s, t: x * math.exp(2.0 * (math.sin(t) - math.sin(s))),
        0.3,
        1.8,
    ),
    LinearProblem(  # dx/dt = -x + t  =>  x(t) = t - 1 + (x(s) - s + 1) exp(-(t - s))
        "forced",
        lambda x, t: -x + t,
        lambda x, s, t: t - 1.0 + (x - s + 1.0) * math.exp(-(t - s)),
        0.0,
        2.0,
    ),
]
LINEAR_IDS = [p.name for p in LINEAR_PROBLEMS]


def linear_grid(kind: str, t0: float, t1: float, n: int) -> Tensor:
    """A uniform grid, or a smooth non-uniform one (steps growing linearly along the grid)."""
    if kind == "uniform":
        return solvers.uniform(t0, t1, n)
    u = torch.linspace(0.0, 1.0, n + 1, dtype=F64)
    return t0 + (t1 - t0) * (0.5 * u + 0.5 * u**2)


# --------------------------------------------------------------------------- Gaussian PF-ODE
# Gaussian data N(mu, C) with a full covariance whose eigenvalues (0.28, 0.72) are not tiny:
# the PF-ODE then has no boundary layer at t_min and the asymptotic regime is reached with
# modest n. VP uses t_min = 1e-3: at the default 1e-5 the last steps are stiff for
# non-exponential methods (the velocity's Lipschitz constant grows like beta / sigma^2).
PF_MEAN = torch.tensor([0.5, -1.0], dtype=F64)
PF_COV = torch.tensor([[0.6, 0.2], [0.2, 0.4]], dtype=F64)
PF_SDES: dict[str, Callable[[], Any]] = {
    "vp": lambda: sd.VPSDE(t_min=1e-3),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
}


def pf_ode_reference(sde: Any, oracle: Any, x_T: Tensor, tol: float) -> Tensor:
    """``x(t_min)`` of the PF-ODE ``sd.ProbabilityFlowODE(sde, oracle.score)`` from ``x(T) =
    x_T`` by scipy's DOP853 at ``rtol = atol = tol`` in float64: the ODE in ``t``, independent
    of the solvers (and of the log-SNR machinery) under test."""
    ode = sd.ProbabilityFlowODE(sde, oracle.score)

    def fun(t: float, y: np.ndarray) -> np.ndarray:  # (t, y) adapter at the scipy boundary
        x = torch.from_numpy(y).reshape(x_T.shape)
        return ode.velocity(x, torch.tensor(t, dtype=F64)).reshape(-1).numpy()

    y0 = x_T.reshape(-1).numpy()
    res = solve_ivp(fun, (sde.T, sde.t_min), y0, method="DOP853", rtol=tol, atol=tol)
    assert res.success, res.message
    return torch.from_numpy(res.y[:, -1].copy()).reshape(x_T.shape)


# --------------------------------------------------------------------------- schedules
class EDMSchedule:
    """``alpha = 1``, ``sigma = t`` (Karras et al. 2022): ``log_snr = -2 log t``; defined down
    to ``t = 0`` (``log_snr(0) = +inf``)."""

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(t)

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam / 2.0)


# --------------------------------------------------------------------------- stepping, sync
_SYNCING = (
    "item",
    "tolist",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__complex__",
    "__format__",
    "__array__",
    "cpu",
    "numpy",
)


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """CPU stand-in for CUDA's sync debug mode: while active, every Tensor -> Python or host
    conversion (``.item()``, ``bool(t)``, ``float(t)``, indexing with a tensor, ``.tolist()``,
    ``.cpu()``, ``.numpy()``, formatting, ...) raises ``AssertionError``, also when called from
    inside another torch function (the methods are replaced on ``torch.Tensor``)."""
    saved = {name: torch.Tensor.__dict__.get(name) for name in _SYNCING}

    def forbidding(name: str) -> Callable[..., None]:
        def forbidden(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"host synchronisation inside a step: Tensor.{name}")

        return forbidden

    for name in _SYNCING:
        setattr(torch.Tensor, name, forbidding(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            if method is None:
                delattr(torch.Tensor, name)  # inherited from torch._C.TensorBase
            else:
                setattr(torch.Tensor, name, method)


@contextlib.contextmanager
def cuda_sync_errors() -> Iterator[None]:
    """CUDA's sync debug mode set to ``"error"``: any host synchronisation raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def run_steps(
    solver: solvers.Solver[Any, Any],
    term: Any,
    ts: Tensor,
    x: Tensor,
    guard: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Iterator[tuple[Tensor, Any]]:
    """The solver's own ``init`` and ``step`` calls over the grid ``ts`` (no casts or checks
    of :func:`solvers.integrate`), yielding ``(x, state)`` after every step; each ``step`` runs
    inside ``guard()`` (e.g. :func:`no_host_sync`; ``init`` may synchronise)."""
    state = solver.init(term, ts, x)
    for i in range(ts.numel() - 1):
        with guard():
            x, state = solver.step(term, ts[i], ts[i + 1], x, state, None)
        yield x, state


def final_state(
    solver: solvers.Solver[Any, Any],
    term: Any,
    ts: Tensor,
    x: Tensor,
    guard: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> Tensor:
    """The last ``x`` of :func:`run_steps`."""
    for x_next, _ in run_steps(solver, term, ts, x, guard):
        x = x_next
    return x


# --------------------------------------------------------------------------- shapes
def check_2d_and_4d_states_agree(
    solver: solvers.Solver[Any, Any], n: int
) -> tuple[solvers.Solution, solvers.Solution]:
    """A ``(3, 4)`` state and the same numbers as ``(3, 1, 2, 2)`` give the same solve of the
    PF-ODE of a 4-D Gaussian (VP, ``t_min = 1e-3``, ``n`` karras steps): same shape, NFE and
    values (1e-12). Returns the two solutions."""
    sde = sd.VPSDE(t_min=1e-3)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=g, dtype=F64)
    gmm = sd.GaussianMixture.gaussian(torch.randn(4, generator=g, dtype=F64), a @ a.T + 0.5)
    term = sd.ProbabilityFlowODE(sde, gmm.score_model(sde).score)
    x_T = sde.prior_sample((3, 4), generator=g).to(F64)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, n)
    flat = solvers.integrate(solver, term, x_T, ts)
    image = solvers.integrate(solver, term, x_T.reshape(3, 1, 2, 2), ts)
    assert image.x.shape == (3, 1, 2, 2) and image.nfe == flat.nfe
    torch.testing.assert_close(image.x.reshape(3, 4), flat.x, rtol=1e-12, atol=1e-12)
    return flat, image
