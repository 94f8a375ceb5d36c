"""The probability-flow ODE in EDM variables (solvers.EDMVariables, solvers.EDMVariablesTerm).

Karras et al. 2022, sec. 4: with ``y = x / alpha`` and ``s = sigma / alpha`` the PF-ODE of any
Gaussian schedule is ``dy/ds = (y - D) / s``. Checked as maths:

* exact identities: Euler in these variables is DDIM, iPNDM is PLMS (fixed Adams-Bashforth
  weights on eps through the DDIM transfer), and under EDM (``alpha = 1``, ``sigma = t``) the
  wrapper is the wrapped solver on the ODE in ``t``;
* an independent k-diffusion-style loop (Euler, and EDM's Heun with an Euler last step) gives
  the same numbers under VP and VE;
* measured convergence orders under VP and VE against the closed-form Gaussian flow map;
* budgets, NFE, shapes, dtypes, no host synchronisation inside steps, bad input.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from solver_helpers import PF_COV, PF_MEAN, assert_order, no_host_sync, run_steps
from torch import Tensor

import scoresde as sd
import solvers
from solvers.exponential import DDIM
from solvers.exponential_multistep import PLMS
from solvers.linear_multistep import IPNDM, IPNDMVariable
from solvers.ode_fixed import RK4, EDMVariables, EDMVariablesState, Euler, Heun, Midpoint

F64 = torch.float64
WRAPPED = [Euler(), Heun(), Midpoint(), RK4(), IPNDM(), IPNDMVariable()]
IDS = [type(s).__name__ for s in WRAPPED]
SDES = {
    "vp": lambda: sd.VPSDE(t_min=1e-3),
    "ddpm": lambda: sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000, dtype=F64)),
    "cosine": lambda: sd.CosineVPSDE(),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
}


def _mixture(sde: Any) -> Any:
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=F64)
    return sd.GaussianMixture(weights, means, torch.tensor([0.3, 0.5]) ** 2).score_model(sde)


def _x_T(sde: Any, n: int = 6, seed: int = 0) -> Tensor:
    return sde.prior_sample((n, 2), torch.Generator().manual_seed(seed), dtype=F64)


# --------------------------------------------------------------------------- identities
@pytest.mark.parametrize("grid", ["karras", "logsnr", "uniform"])
@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_euler_in_edm_variables_is_ddim(sde_name: str, grid: str) -> None:
    """y1 = y0 + (s1 - s0) eps is DDIM's x1 = alpha1 x0_hat + sigma1 eps_hat (Song et al. 2021,
    eq. 12 with eta = 0), on any grid and schedule."""
    sde = SDES[sde_name]()
    model, x_T = _mixture(sde), _x_T(sde)
    a = sd.sample(model, EDMVariables(Euler()), 8, x_init=x_T, grid=grid)
    b = sd.sample(model, DDIM(), 8, x_init=x_T, grid=grid)
    assert a.nfe == b.nfe == 8
    torch.testing.assert_close(a.x, b.x, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_ipndm_in_edm_variables_is_plms(sde_name: str) -> None:
    """Fixed Adams-Bashforth weights on eps, stepped in s, is PLMS's DDIM transfer of the same
    combination (Liu et al. 2022)."""
    sde = SDES[sde_name]()
    model, x_T = _mixture(sde), _x_T(sde)
    a = sd.sample(model, EDMVariables(IPNDM()), 10, x_init=x_T, grid="logsnr")
    b = sd.sample(model, PLMS(), 10, x_init=x_T, grid="logsnr")
    torch.testing.assert_close(a.x, b.x, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("solver", WRAPPED, ids=IDS)
def test_under_edm_the_wrapper_is_the_wrapped_solver(solver: solvers.Solver[Any, Any]) -> None:
    """alpha = 1 and sigma = t: the EDM variables are (x, t) themselves."""
    sde = sd.EDMSDE()
    model, x_T = _mixture(sde), _x_T(sde)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 6)
    a = sd.sample(model, EDMVariables(solver), x_init=x_T, grid=ts)
    b = sd.sample(model, solver, x_init=x_T, grid=ts)
    assert a.nfe == b.nfe
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


def _k_diffusion_style(model: Any, x_T: Tensor, ts: Tensor, heun: bool) -> Tensor:
    """An independent transcription of k-diffusion's ``sample_euler`` / EDM's Algorithm 1
    (Heun with an Euler last step) on a VP/VE model in EDM variables: ``x_d = x / alpha``,
    ``sigma_d = sigma / alpha``, ``d = (x_d - D(x_d alpha(t), t)) / sigma_d``."""
    sde = model.sde
    alpha = sde.alpha(ts)
    sig = sde.sigma(ts) / alpha
    x = x_T / alpha[0]

    def deriv(x_d: Tensor, i: int) -> Tensor:
        return (x_d - model.x0(x_d * alpha[i], ts[i])) / sig[i]

    n = ts.numel() - 1
    for i in range(n):
        d = deriv(x, i)
        x_next = x + (sig[i + 1] - sig[i]) * d
        if heun and i < n - 1:
            x_next = x + (sig[i + 1] - sig[i]) * (d + deriv(x_next, i + 1)) / 2
        x = x_next
    return x * alpha[-1]


@pytest.mark.parametrize("sde_name", ["vp", "ddpm", "ve"])
@pytest.mark.parametrize("heun", [False, True], ids=["euler", "heun"])
def test_matches_a_k_diffusion_style_loop(sde_name: str, heun: bool) -> None:
    sde = SDES[sde_name]()
    model, x_T = _mixture(sde), _x_T(sde)
    ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, 7)
    solver = EDMVariables(Heun() if heun else Euler())
    ours = sd.sample(model, solver, x_init=x_T, grid=ts)
    ref = _k_diffusion_style(model, x_T, ts, heun)
    assert ours.nfe == (13 if heun else 7)
    torch.testing.assert_close(ours.x, ref, rtol=1e-11, atol=1e-11)


def test_the_term_is_eps_in_the_scaled_variables() -> None:
    """EDMVariablesTerm.velocity(y, s) = eps_hat(alpha y, t(s)) = -sigma score."""
    sde = sd.VPSDE()
    model = _mixture(sde)
    term = solvers.EDMVariablesTerm(solvers.DenoiserTerm(model.x0, sde))
    t = torch.tensor(0.37, dtype=F64)
    alpha, sigma = sde.alpha(t), sde.sigma(t)
    x = _x_T(sde)
    v = term.velocity(x / alpha, sigma / alpha)
    torch.testing.assert_close(v, -sigma * model.score(x, t), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- orders
# Gaussian data: the closed-form flow map is the reference (GaussianMixture.flow_map)
ORDER_NS: dict[type, list[int]] = {
    Euler: [64, 128, 256],
    Heun: [32, 64, 128, 256],
    Midpoint: [32, 64, 128, 256],
    RK4: [16, 32, 64, 128],
    IPNDMVariable: [64, 128, 256, 512],
}


def _expected_order(solver: solvers.Solver[Any, Any]) -> int:
    """The declared order, except the midpoint rule: in EDM variables every Gaussian PF-ODE is
    the EDM one, on which the midpoint rule is superconvergent (order 3; see
    ``tests/test_solvers_rk.py::expected_order``)."""
    return 3 if isinstance(solver, Midpoint) else type(solver).order


def _order_errors(solver: solvers.Solver[Any, Any], sde: Any, ns: list[int]) -> list[float]:
    gmm = sd.GaussianMixture.gaussian(PF_MEAN, PF_COV)
    oracle = gmm.score_model(sde)
    x_T = _x_T(sde, 8, 1)
    exact = oracle.flow_map(x_T, sde.T, sde.t_min)
    errors = []
    for n in ns:
        ts = solvers.make_grid("karras", sde, sde.T, sde.t_min, n)
        res = sd.sample(oracle, EDMVariables(solver), x_init=x_T, grid=ts)
        assert res.nfe == solver.nfe_for_steps(n)
        errors.append(float((res.x - exact).abs().max()))
    return errors


@pytest.mark.parametrize(
    ("solver", "sde_name"),
    [(Heun(), "vp"), (RK4(), "ve")],
    ids=["heun-vp", "rk4-ve"],
)
def test_convergence_order(solver: solvers.Solver[Any, Any], sde_name: str) -> None:
    """Fast subset: the order of the wrapped method survives the change of variables."""
    ns = ORDER_NS[type(solver)]
    errors = _order_errors(solver, SDES[sde_name](), ns)
    assert_order(ns, errors, type(solver).order, f"EDMVariables({type(solver).__name__}) ")


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", ["vp", "cosine", "ve"])
@pytest.mark.parametrize("solver", [Euler(), Heun(), Midpoint(), RK4(), IPNDMVariable()])
def test_convergence_order_sweep(solver: solvers.Solver[Any, Any], sde_name: str) -> None:
    ns = ORDER_NS[type(solver)]
    errors = _order_errors(solver, SDES[sde_name](), ns)
    assert_order(ns, errors, _expected_order(solver), f"EDMVariables({type(solver).__name__}) ")


# --------------------------------------------------------------------------- contract
def test_budget_and_orders_are_those_of_the_wrapped_solver() -> None:
    solver = EDMVariables(Heun())
    budgeted, n = solver.for_budget(10)
    assert isinstance(budgeted, EDMVariables) and isinstance(budgeted.solver, Heun) and n == 5
    assert solver.nfe_for_steps(5) == 9 and solver.convergence_order == 2
    assert EDMVariables(IPNDMVariable()).cold_start_order == IPNDMVariable().cold_start_order
    for inner in (RK4(), Heun(), IPNDMVariable()):  # the instance reports the wrapped solver's
        wrapped = EDMVariables(inner)
        assert (wrapped.order, wrapped.evals_per_step) == (inner.order, inner.evals_per_step)
        assert wrapped.for_budget(12)[0].evals_per_step == inner.evals_per_step
    sde = sd.VPSDE()
    res = sd.sample(_mixture(sde), solver, 10, shape=(4, 2), generator=torch.Generator())
    assert res.nfe == 9 and res.ts.numel() == 6


class _LinearLogSNR:
    """A test-local VP schedule with a closed form and no validation (no host syncs):
    lambda(t) = 8 - 16 t, alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda)."""

    def log_snr(self, t: Tensor) -> Tensor:
        return 8.0 - 16.0 * t

    def alpha(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.log_snr(t)).sqrt()

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sigmoid(-self.log_snr(t)).sqrt()

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (8.0 - lam) / 16.0


def _gaussian_denoiser_term(dtype: torch.dtype = F64) -> solvers.DenoiserTerm:
    """D(x, t) of data N(0.5, 0.3^2 I) under :class:`_LinearLogSNR`, in pure torch."""
    schedule = _LinearLogSNR()

    def denoise(x: Tensor, t: Tensor) -> Tensor:
        a, s = schedule.alpha(t).to(x.dtype), schedule.sigma(t).to(x.dtype)
        return 0.5 + a * 0.09 / (a * a * 0.09 + s * s) * (x - a * 0.5)

    return solvers.DenoiserTerm(denoise, schedule)


@pytest.mark.parametrize("solver", WRAPPED, ids=IDS)
def test_steps_make_no_host_synchronising_calls(solver: solvers.Solver[Any, Any]) -> None:
    term = _gaussian_denoiser_term()
    ts = solvers.karras(_LinearLogSNR(), 1.0, 0.0, 6)
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    states = list(run_steps(EDMVariables(solver), term, ts, x, guard=no_host_sync))
    assert len(states) == 6 and isinstance(states[-1][1], EDMVariablesState)
    assert states[-1][1].index == 6 and torch.isfinite(states[-1][0]).all()


@pytest.mark.parametrize("solver", WRAPPED, ids=IDS)
def test_float32_stays_float32_and_4d_states_agree(solver: solvers.Solver[Any, Any]) -> None:
    term = _gaussian_denoiser_term()
    ts = solvers.karras(_LinearLogSNR(), 1.0, 0.0, 5)
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    flat = solvers.integrate(EDMVariables(solver), term, x, ts)
    image = solvers.integrate(EDMVariables(solver), term, x.reshape(3, 1, 2, 2), ts)
    torch.testing.assert_close(image.x.reshape(3, 4), flat.x, rtol=1e-12, atol=1e-12)
    low = solvers.integrate(EDMVariables(solver), term, x.float(), ts)
    assert low.x.dtype == torch.float32
    torch.testing.assert_close(low.x, flat.x.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "inner",
    [DDIM(), solvers.EulerMaruyama(), solvers.Dopri5(), "heun", EDMVariables(Euler())],
    ids=["denoiser-solver", "stochastic", "adaptive", "a-name", "already-wrapped"],
)
def test_rejects_what_it_cannot_wrap(inner: Any) -> None:
    with pytest.raises(TypeError, match="EDMVariables: solver must be"):
        EDMVariables(inner)


def test_noise_to_signal_is_sigma_over_alpha() -> None:
    sde = sd.CosineVPSDE()
    t = torch.linspace(sde.t_min, sde.T, 7, dtype=F64)
    torch.testing.assert_close(solvers.noise_to_signal(sde, t), sde.sigma(t) / sde.alpha(t))
    assert math.isclose(float(solvers.noise_to_signal(sd.EDMSDE(), torch.tensor(3.0))), 3.0)
