"""Adaptive ODE solvers (torchdiffeq dopri5/bosh3/adaptive_heun/dopri8, scipy RK45/DOP853).

References are exact: the closed-form probability-flow ODE flow map of a single Gaussian
(``GaussianMixture.flow_map``) under VP, VE and EDM, scalar ODEs with known solutions, and
``scipy.integrate.solve_ivp`` itself for the scipy wrappers. Orders are measured with the
error estimate switched off (huge rtol/atol) and the step forced to ``h`` through
``first_step = max_step = h``: the tableau's order, not the controller's.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import scipy.integrate
import torch
from torch import Tensor

import scoresde as sd
import solvers
from solvers import ODETerm, integrate
from solvers.adaptive import (
    BUILTINS,
    AdaptiveHeun,
    AdaptiveSolver,
    AdaptiveStepError,
    Bosh3,
    Dopri5,
    Dopri8,
    ScipyDOP853,
    ScipyRK45,
)
from solvers.integrate import NonFiniteError

F64 = torch.float64
NAMES = list(BUILTINS)
ORDERS = {"dopri5": 5, "bosh3": 3, "adaptive_heun": 2, "dopri8": 8, "rk45": 5, "dop853": 8}
HIGH_ORDER = ["dopri5", "dopri8", "dop853"]


class Counter:
    """A velocity that counts its own calls and records the times it was called at."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor]) -> None:
        self.fn = fn
        self.calls = 0
        self.times: list[float] = []

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        assert t.dtype == F64 and t.ndim == 0
        self.calls += 1
        self.times.append(float(t))
        return self.fn(x, t)


def grid(*points: float) -> Tensor:
    return solvers.as_grid(list(points))


def time_dependent(x: Tensor, t: Tensor) -> Tensor:
    """dx/dt = 2 cos(t) x  =>  x(t1) = x(t0) exp(2 sin t1 - 2 sin t0)."""
    return 2.0 * torch.cos(t).to(x.dtype) * x


def time_dependent_exact(x: Tensor, t0: float, t1: float) -> Tensor:
    return x * math.exp(2.0 * (math.sin(t1) - math.sin(t0)))


def gaussian_problem(
    sde: sd.SDE, batch: int = 8, dim: int = 2, dtype: torch.dtype = F64
) -> tuple[sd.ProbabilityFlowODE, Tensor, Tensor, object]:
    """PF-ODE of a correlated Gaussian: (term, x_T, exact x(t_min), oracle)."""
    mean = torch.linspace(-1.0, 0.5, dim, dtype=F64)
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(3), dtype=F64)
    cov = 0.5 * torch.eye(dim, dtype=F64) + 0.1 * a @ a.T
    oracle = sd.GaussianMixture.gaussian(mean, cov).score_model(sde)
    x_T = sde.prior_sample((batch, dim), torch.Generator().manual_seed(1), dtype=F64)
    exact = oracle.flow_map(x_T, sde.T, sde.t_min)
    return sd.ProbabilityFlowODE(sde, oracle.score), x_T.to(dtype), exact, oracle


SDES = {"VP": sd.VPSDE, "VE": sd.VESDE, "EDM": sd.EDMSDE}


# --------------------------------------------------------------------------- contract
def test_builtins_declare_the_contract() -> None:
    assert set(BUILTINS) == set(ORDERS)
    for name, cls in BUILTINS.items():
        solvers.check_solver_class(cls)
        assert issubclass(cls, AdaptiveSolver)
        assert cls.order == ORDERS[name]
        assert cls.term_type is solvers.ODETermLike
        assert cls.default_grid == "uniform"
        assert cls.adaptive is True and cls.stochastic is False
        solver = cls()
        assert (solver.rtol, solver.atol, solver.max_nfe) == (1e-5, 1e-5, None)
    evals = {name: cls.evals_per_step for name, cls in BUILTINS.items()}
    assert evals == {
        "dopri5": 6,
        "bosh3": 3,
        "adaptive_heun": 1,
        "dopri8": 13,
        "rk45": 6,
        "dop853": 12,
    }
    assert issubclass(AdaptiveStepError, RuntimeError)
    import solvers.adaptive as module

    assert {"AdaptiveSolver", "AdaptiveStepError", "BUILTINS"} <= set(module.__all__)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rtol": 0.0}, ValueError),
        ({"rtol": -1e-5}, ValueError),
        ({"rtol": math.nan}, ValueError),
        ({"atol": -1.0}, ValueError),
        ({"rtol": "1e-5"}, TypeError),
        ({"max_nfe": 0}, ValueError),
        ({"max_nfe": 10.0}, ValueError),
        ({"max_steps": True}, ValueError),
        ({"rel_min_step": 1.0}, ValueError),
        ({"first_step": 0.0}, ValueError),
        ({"max_step": math.inf}, ValueError),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error, match=next(iter(kwargs))):
        Dopri5(**kwargs)  # type: ignore[arg-type]


def test_budget_helpers() -> None:
    solver, n = Dopri5(rtol=1e-6).for_budget(200)
    assert n == 1 and solver == Dopri5(rtol=1e-6, max_nfe=200)
    capped, _ = Dopri5(max_nfe=50).for_budget(200)
    assert capped.max_nfe == 50  # the smaller cap wins
    with pytest.raises(ValueError, match="nfe"):
        Dopri5().for_budget(0)
    with pytest.raises(TypeError, match="max_nfe"):
        Dopri5().nfe_for_steps(3)
    x = torch.ones(2, 1, dtype=F64)
    t0, t1 = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    with pytest.raises(TypeError, match="integrate"):
        ScipyRK45().step(ODETerm(time_dependent), t0, t1, x, None, None)


# --------------------------------------------------------------------------- order
def growth(x: Tensor, t: Tensor) -> Tensor:
    """dx/d|t| = x: the solution grows by e^|t1 - t0| in either direction."""
    return x


# Problem, interval and step counts 2^k per method, chosen so the errors stay in the
# asymptotic range and above round-off (1e-3 .. 1e-13). The 8th-order pairs leave the
# asymptotic regime within a few halvings, so they get a problem whose error constant is
# regular (linear and growing); on the trigonometric problem their slopes read 8.7-9.
ORDER_SETUPS: dict[str, tuple[str, range]] = {
    "dopri5": ("trig", range(2, 7)),
    "rk45": ("trig", range(2, 7)),
    "bosh3": ("trig", range(3, 8)),
    "adaptive_heun": ("trig", range(4, 9)),
    "dopri8": ("growth", range(1, 5)),
    "dop853": ("growth", range(1, 5)),
}


def measured_order(name: str, backwards: bool, extra: int = 0) -> float:
    """Slope of log2(relative error) vs log2(h) with the step forced to h (error control
    off), over the step counts of ORDER_SETUPS (plus ``extra`` halvings)."""
    problem, ks = ORDER_SETUPS[name]
    t_a, t_b = (1.8, 0.3) if problem == "trig" else (3.0, 0.0)
    if not backwards:
        t_a, t_b = t_b, t_a
    x0 = 0.5 + torch.rand((4, 3), generator=torch.Generator().manual_seed(0), dtype=F64)
    if problem == "trig":
        velocity, exact = time_dependent, time_dependent_exact(x0, t_a, t_b)
    else:
        sign = 1.0 if t_b > t_a else -1.0
        velocity, exact = (lambda x, t: sign * growth(x, t)), x0 * math.exp(abs(t_b - t_a))
    log_h, log_e = [], []
    for k in range(ks.start, ks.stop + extra):
        h = abs(t_b - t_a) / 2**k
        solver = BUILTINS[name](rtol=1e3, atol=1e3, first_step=h, max_step=h)
        sol = integrate(solver, ODETerm(velocity), x0, grid(t_a, t_b))
        log_h.append(math.log2(h))
        log_e.append(math.log2(((sol.x - exact) / exact).abs().max().item()))
    return float(np.polyfit(log_h, log_e, 1)[0])


@pytest.mark.parametrize("name", NAMES)
def test_convergence_order(name: str) -> None:
    """Measured (backwards, as in sampling): dopri5 4.79, rk45 4.79, bosh3 3.01,
    adaptive_heun 1.96, dopri8 8.23, dop853 7.74."""
    slope = measured_order(name, backwards=True)
    assert abs(slope - ORDERS[name]) <= 0.35, f"{name}: measured order {slope:.2f}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_convergence_order_forwards(name: str) -> None:
    """Forwards, one more halving except for the 8th-order pairs (round-off): dopri5 4.91,
    rk45 4.91, bosh3 2.97, adaptive_heun 1.98, dopri8 8.23, dop853 7.74."""
    extra = 0 if ORDERS[name] == 8 else 1
    slope = measured_order(name, backwards=False, extra=extra)
    assert abs(slope - ORDERS[name]) <= 0.35, f"{name}: measured order {slope:.2f}"


def test_dopri5_and_rk45_are_the_same_method() -> None:
    """With the same forced steps, torchdiffeq's dopri5 and scipy's RK45 (both Dormand-Prince
    5(4)) give the same numbers up to round-off."""
    x0 = torch.tensor([[0.7, -1.2], [2.0, 0.1]], dtype=F64)
    results = [
        integrate(
            cls(rtol=1e3, atol=1e3, first_step=0.05, max_step=0.05),
            ODETerm(time_dependent),
            x0,
            grid(1.8, 0.3),
        ).x
        for cls in (Dopri5, ScipyRK45)
    ]
    torch.testing.assert_close(results[0], results[1], rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------------- scipy fidelity
@pytest.mark.parametrize(("cls", "method"), [(ScipyRK45, "RK45"), (ScipyDOP853, "DOP853")])
def test_scipy_wrapper_reproduces_solve_ivp(cls: type[AdaptiveSolver], method: str) -> None:
    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return 2.0 * torch.cos(t) * x - 0.3 * x**2

    def fun(t: float, y: np.ndarray) -> np.ndarray:
        return 2.0 * math.cos(t) * y - 0.3 * y**2

    x0 = torch.tensor([[1.0, -0.5], [0.3, 2.0]], dtype=F64)
    solver = cls(rtol=1e-7, atol=1e-9)
    sol = integrate(solver, ODETerm(velocity), x0, grid(1.8, 0.3))
    ref = scipy.integrate.solve_ivp(
        fun, (1.8, 0.3), x0.numpy().ravel(), method=method, rtol=1e-7, atol=1e-9
    )
    assert sol.nfe == ref.nfev
    np.testing.assert_allclose(sol.x.numpy().ravel(), ref.y[:, -1], rtol=0, atol=1e-15)
    # intermediate output times: read from the same dense output as solve_ivp's t_eval
    ts = grid(1.8, 1.2, 0.7, 0.3)
    sol = integrate(solver, ODETerm(velocity), x0, ts, save_path=True)
    ref = scipy.integrate.solve_ivp(
        fun, (1.8, 0.3), x0.numpy().ravel(), method=method, rtol=1e-7, atol=1e-9, t_eval=ts.numpy()
    )
    assert sol.path is not None
    np.testing.assert_allclose(sol.path.numpy().reshape(4, -1), ref.y.T, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- accuracy
def _tolerances(name: str) -> tuple[float, ...]:
    # the low-order methods need ~tol^(-1/order) evaluations: keep them at moderate tolerances
    return {"bosh3": (1e-4, 1e-6), "adaptive_heun": (1e-3, 1e-5)}.get(name, (1e-4, 1e-6, 1e-8))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sde_name", list(SDES))
def test_gaussian_flow_map_error_falls_with_tolerance(sde_name: str, name: str) -> None:
    """Against the exact PF-ODE flow map (K = 1) over the whole interval [t_min, T] (VP with
    t_min = 1e-5, VE, EDM sigma 80 -> 0.002): the error falls with the tolerance and stays
    within a small multiple of it (global error ~ 1-30 x tol here)."""
    sde = SDES[sde_name]()
    term, x_T, exact, _ = gaussian_problem(sde)
    errors = []
    for tol in _tolerances(name):
        sol = integrate(BUILTINS[name](rtol=tol, atol=tol), term, x_T, grid(sde.T, sde.t_min))
        errors.append((sol.x - exact).abs().max().item())
        assert errors[-1] < 30 * tol, f"{name} {sde_name} tol={tol}: error {errors[-1]:.2e}"
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    if name in HIGH_ORDER:
        assert errors[-1] < 1e-6


def _mixture(sde: sd.SDE) -> tuple[sd.ProbabilityFlowODE, Tensor]:
    weights = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
    means = torch.tensor([[2.0, 0.0], [-1.0, 1.0], [0.0, -2.0]], dtype=F64)
    covs = torch.stack(
        [
            0.3 * torch.eye(2, dtype=F64),
            torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=F64),
            0.1 * torch.eye(2, dtype=F64),
        ]
    )
    oracle = sd.GaussianMixture(weights, means, covs).score_model(sde)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(2), dtype=F64)
    return sd.ProbabilityFlowODE(sde, oracle.score), x_T


def _check_mixture_agreement(sde: sd.SDE) -> None:
    term, x_T = _mixture(sde)
    ts = grid(sde.T, sde.t_min)
    reference = integrate(ScipyDOP853(rtol=1e-11, atol=1e-11), term, x_T, ts).x
    for name, cls in BUILTINS.items():
        tol = {"bosh3": 1e-7, "adaptive_heun": 1e-5}.get(name, 1e-8)
        x = integrate(cls(rtol=tol, atol=tol), term, x_T, ts).x
        error = (x - reference).abs().max().item()
        assert error < 30 * tol, f"{name}: {error:.2e} from the DOP853 reference at tol={tol}"


def test_all_methods_agree_on_a_mixture_edm() -> None:
    """K = 3 mixture (no closed form): every method agrees with a DOP853 solve at 1e-11."""
    _check_mixture_agreement(sd.EDMSDE())


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["VP", "VE"])
def test_all_methods_agree_on_a_mixture(sde_name: str) -> None:
    _check_mixture_agreement(SDES[sde_name]())


# --------------------------------------------------------------------------- NFE, domain
@pytest.mark.parametrize("name", NAMES)
def test_nfe_is_counted_exactly(name: str) -> None:
    """Every evaluation counts: start, initial step heuristic, rejected steps, dense output."""
    sde = sd.VESDE()
    term, x_T, _, _ = gaussian_problem(sde)
    for ts in (grid(sde.T, sde.t_min), grid(sde.T, 0.5, 0.1, 0.02, sde.t_min)):
        counter = Counter(term.velocity)
        sol = integrate(BUILTINS[name](rtol=1e-3, atol=1e-4), ODETerm(counter), x_T, ts)
        assert sol.nfe == counter.calls > 2


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=["float64", "float32"])
def test_velocity_is_only_evaluated_inside_the_interval(name: str, dtype: torch.dtype) -> None:
    """The last step is clipped to the end point (torchdiffeq would otherwise step past it and
    interpolate back): a diffusion model is never queried below t_min (VP, t_min = 1e-5)."""
    sde = sd.VPSDE()
    term, x_T, _, _ = gaussian_problem(sde, dtype=dtype)
    counter = Counter(term.velocity)
    integrate(BUILTINS[name](rtol=1e-3, atol=1e-3), ODETerm(counter), x_T, grid(1.0, 1e-5))
    assert min(counter.times) >= 1e-5 and max(counter.times) <= 1.0
    assert min(counter.times) == pytest.approx(1e-5, rel=1e-6)


# --------------------------------------------------------------------------- failures
@pytest.mark.parametrize("name", NAMES)
def test_min_step_guard_on_finite_time_blow_up(name: str) -> None:
    """dx/dt = x^2, x(0) = 1 has x = 1 / (1 - t): it blows up at t = 1 inside [0, 2]."""
    counter = Counter(lambda x, t: x**2)
    x0 = torch.ones(1, 1, dtype=F64)
    with pytest.raises(AdaptiveStepError) as info:
        integrate(BUILTINS[name](rtol=1e-3, atol=1e-6), ODETerm(counter), x0, grid(0.0, 2.0))
    err = info.value
    message = str(err)
    assert "step size" in message and "minimum step" in message and "blow up" in message
    assert "rtol=0.001" in message and "atol=1e-06" in message
    assert f"{counter.calls} evaluations so far" in message
    assert f"t = {err.t!r}" in message
    assert abs(err.t - 1.0) < 1e-2  # the numerical blow-up time is off by ~rtol
    assert err.nfe == counter.calls and (err.rtol, err.atol) == (1e-3, 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_max_nfe_bound(name: str) -> None:
    counter = Counter(time_dependent)
    x0 = torch.ones(2, 3, dtype=F64)
    with pytest.raises(AdaptiveStepError, match="raise nfe") as info:
        integrate(
            BUILTINS[name](rtol=1e-9, atol=1e-9, max_nfe=40), ODETerm(counter), x0, grid(0.3, 1.8)
        )
    assert counter.calls == info.value.nfe == 40  # the call over the cap is never made
    assert "max_nfe=40" in str(info.value) and "rtol=1e-09" in str(info.value)
    assert 0.3 <= info.value.t < 1.8


def test_max_steps_bound() -> None:
    with pytest.raises(AdaptiveStepError, match="max_steps=3"):
        integrate(
            Bosh3(max_steps=3), ODETerm(time_dependent), torch.ones(1, 1, dtype=F64), grid(0.3, 1.8)
        )
    with pytest.raises(AdaptiveStepError, match="max_steps=3"):
        integrate(
            ScipyRK45(max_steps=3, rtol=1e-8),
            ODETerm(time_dependent),
            torch.ones(1, 1, dtype=F64),
            grid(0.3, 1.8),
        )


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_velocity(name: str) -> None:
    def velocity(x: Tensor, t: Tensor) -> Tensor:
        return torch.where(t < 0.5, torch.full_like(x, math.nan), -x)

    with pytest.raises(NonFiniteError, match="NaN or inf"):
        integrate(BUILTINS[name](), ODETerm(velocity), torch.ones(2, 2, dtype=F64), grid(1.0, 0.0))


def test_solve_called_directly_takes_the_smaller_cap() -> None:
    counter = Counter(time_dependent)
    with pytest.raises(AdaptiveStepError, match="max_nfe=20"):
        Dopri5(max_nfe=100, rtol=1e-9).solve(
            ODETerm(counter), torch.ones(1, 2, dtype=F64), grid(0.3, 1.8), max_nfe=20
        )
    assert counter.calls == 20
    x, path = ScipyRK45().solve(
        ODETerm(time_dependent), torch.ones(1, 2, dtype=F64), grid(0.3, 1.8)
    )
    assert path is None and x.shape == (1, 2)


# --------------------------------------------------------------------------- dtypes, shapes
@pytest.mark.parametrize("name", NAMES)
def test_float32_state_with_loose_tolerances(name: str) -> None:
    sde = sd.VPSDE()
    term, x_T, exact, _ = gaussian_problem(sde, dtype=torch.float32)
    sol = integrate(BUILTINS[name](rtol=1e-4, atol=1e-4), term, x_T, grid(sde.T, sde.t_min))
    assert sol.x.dtype == torch.float32 and sol.x.shape == x_T.shape
    assert (sol.x.double() - exact).abs().max().item() < 3e-3


@pytest.mark.parametrize("name", NAMES)
def test_4d_state(name: str) -> None:
    """A (B, C, H, W) state of a 4-dimensional Gaussian under EDM."""
    sde = sd.EDMSDE()
    term, x_T, exact, _ = gaussian_problem(sde, batch=3, dim=4)
    x4 = x_T.reshape(3, 1, 2, 2)
    tol = 1e-5 if name == "adaptive_heun" else 1e-6  # (cost ~ tol^(-1/2) for heun)
    sol = integrate(BUILTINS[name](rtol=tol, atol=tol), term, x4, grid(sde.T, sde.t_min))
    assert sol.x.shape == (3, 1, 2, 2)
    assert (sol.x.reshape(3, 4) - exact).abs().max().item() < 30 * tol


@pytest.mark.parametrize("name", ["dopri5", "dop853"])
def test_output_times_path_and_callback(name: str) -> None:
    """Intermediate output times are saved (at the exact flow map's values) and the callback
    runs once per output time."""
    sde = sd.VPSDE()
    term, x_T, _, oracle = gaussian_problem(sde)
    ts = grid(1.0, 0.6, 0.2, 0.01, sde.t_min)
    seen: list[tuple[int, float]] = []
    sol = integrate(
        BUILTINS[name](rtol=1e-9, atol=1e-9),
        term,
        x_T,
        ts,
        save_path=True,
        callback=lambda i, t, x: seen.append((i, float(t))),
    )
    assert seen == [(i, float(ts[i + 1])) for i in range(4)]
    assert sol.path is not None and sol.path.shape == (5, *x_T.shape)
    torch.testing.assert_close(sol.path[0], x_T)
    for i in range(1, 5):
        exact = oracle.flow_map(x_T, sde.T, float(ts[i]))
        assert (sol.path[i] - exact).abs().max().item() < 1e-7
    torch.testing.assert_close(sol.path[-1], sol.x)


def test_gradient_flows_through_torchdiffeq() -> None:
    """dx(t1)/dx(t0) = exp(2 sin t1 - 2 sin t0) for the linear problem."""
    x0 = torch.ones(2, 2, dtype=F64, requires_grad=True)
    sol = integrate(Dopri5(rtol=1e-9, atol=1e-9), ODETerm(time_dependent), x0, grid(0.3, 1.8))
    (grad,) = torch.autograd.grad(sol.x.sum(), x0)
    expected = math.exp(2.0 * (math.sin(1.8) - math.sin(0.3)))
    torch.testing.assert_close(grad, torch.full_like(grad, expected), rtol=1e-7, atol=0)


# --------------------------------------------------------------------------- sd.sample
@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry names, whether or not solvers.registry merges BUILTINS yet."""
    for name, cls in BUILTINS.items():
        monkeypatch.setitem(solvers.SOLVERS, name, cls)


@pytest.mark.usefixtures("registered")
def test_sample_without_budget_and_with_a_cap() -> None:
    sde = sd.VPSDE()
    _, x_T, exact, oracle = gaussian_problem(sde)
    res = sd.sample(oracle, "dopri5", nfe=None, x_init=x_T)
    assert res.method == "dopri5" and res.nfe > 0
    torch.testing.assert_close(res.ts, grid(sde.T, sde.t_min))
    assert (res.x - exact).abs().max().item() < 1e-4

    capped = sd.sample(oracle, "dopri5", nfe=1000, x_init=x_T)
    assert capped.nfe == res.nfe <= 1000
    torch.testing.assert_close(capped.x, res.x)

    with pytest.raises(AdaptiveStepError, match="max_nfe=20"):
        sd.sample(oracle, "dopri5", nfe=20, x_init=x_T)

    drawn = sd.sample(oracle, "rk45", shape=(5, 2), generator=torch.Generator().manual_seed(0))
    assert drawn.x.shape == (5, 2) and drawn.nfe > 0


@pytest.mark.usefixtures("registered")
def test_sample_output_grid_and_denoise_final() -> None:
    sde = sd.EDMSDE()
    _, x_T, _, oracle = gaussian_problem(sde)
    ts = grid(sde.T, 1.0, sde.t_min)
    res = sd.sample(
        oracle, "dop853", x_init=x_T, grid=ts, return_trajectory=True, denoise_final=True, nfe=2000
    )
    assert res.trajectory is not None and res.trajectory.shape == (3, *x_T.shape)
    torch.testing.assert_close(
        res.trajectory[1], oracle.flow_map(x_T, sde.T, 1.0), rtol=0, atol=1e-4
    )
    assert res.nfe <= 2000


def test_sample_with_a_configured_instance() -> None:
    sde = sd.VESDE()
    _, x_T, exact, oracle = gaussian_problem(sde)
    res = sd.sample(oracle, Dopri8(rtol=1e-8, atol=1e-8), x_init=x_T)
    assert (res.x - exact).abs().max().item() < 1e-6


# --------------------------------------------------------------------------- device
@pytest.mark.parametrize("cls", [Dopri5, AdaptiveHeun, Dopri8, ScipyDOP853])
def test_state_stays_on_its_device(device: str, cls: type[AdaptiveSolver]) -> None:
    x0 = torch.ones(3, 2, dtype=torch.float32, device=device)
    counter = Counter(lambda x, t: -x * t.to(x.dtype))
    sol = integrate(cls(), ODETerm(counter), x0, grid(1.0, 0.0))
    assert sol.x.device == x0.device and sol.x.dtype == torch.float32
    expected = math.exp(0.5)  # x(0) = x(1) exp((1 - 0) / 2)
    torch.testing.assert_close(sol.x.cpu(), torch.full((3, 2), expected), rtol=1e-4, atol=0)
