"""sd.sample: budget semantics, every registered method with every SDE, reproducibility, shapes,
dtypes, bad input; convergence through the public API against exact Gaussian flows."""

from functools import partial

import numpy as np
import pytest
import torch

import scoresde as sd
import solvers

FIXED = sorted(
    name for name, cls in solvers.SOLVERS.items() if not cls.stochastic and not cls.adaptive
)
ALL = sorted(solvers.SOLVERS)
SDES = {
    "vp": sd.VPSDE(t_min=1e-3),
    "ve": sd.VESDE(),
    "edm": sd.EDMSDE(),
}


def _gaussian_oracle(sde, dim=2):
    mean = torch.linspace(-0.5, 0.5, dim, dtype=torch.float64)
    cov = torch.diag(torch.linspace(0.2, 1.0, dim, dtype=torch.float64) ** 2)
    return sd.GaussianMixture.gaussian(mean, cov).score_model(sde)


def _mixture_oracle(sde):
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)
    means = torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64)
    return sd.GaussianMixture(weights, means, torch.tensor([0.3, 0.5]) ** 2).score_model(sde)


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("nfe", [1, 2, 3, 7])
def test_every_method_respects_the_budget(method, nfe):
    model = _mixture_oracle(sd.VPSDE())
    g = torch.Generator().manual_seed(0)
    try:
        res = sd.sample(model, method, nfe, shape=(8, 2), generator=g)
    except ValueError as err:  # a method that needs more than nfe for one step says so
        assert "too small" in str(err) or "nfe" in str(err)
        return
    except solvers.AdaptiveStepError as err:  # an adaptive method stops at its cap, saying so
        assert solvers.SOLVERS[method].adaptive and err.nfe <= nfe and "nfe" in str(err)
        return
    assert res.nfe <= nfe
    assert torch.isfinite(res.x).all()
    assert res.ts[0] == model.sde.T and res.ts[-1] == model.sde.t_min


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("family", sorted(SDES))
def test_every_fixed_step_method_works_with_every_sde(method, family):
    """Every method converges towards the exact PF-ODE solution on its default grid: the error
    at 200 evaluations is small on the data's scale and well below the error at 50."""
    sde = SDES[family]
    model = _gaussian_oracle(sde)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = model.flow_map(x_T, sde.T, sde.t_min)
    err = {
        nfe: float((sd.sample(model, method, nfe, x_init=x_T).x - exact).abs().max())
        for nfe in (50, 200)
    }
    scale = float(exact.abs().max())
    assert err[200] < 0.15 * scale, (method, err)
    assert err[200] < 0.6 * err[50], (method, err)


def test_denoise_final_spends_one_evaluation_on_tweedie():
    sde = sd.VPSDE()
    model = _mixture_oracle(sde)
    x_T = sde.prior_sample((4, 2), torch.Generator().manual_seed(2), dtype=torch.float64)
    plain = sd.sample(model, "euler", 9, x_init=x_T, grid="logsnr")
    final = sd.sample(model, "euler", 10, x_init=x_T, grid="logsnr", denoise_final=True)
    assert final.nfe == 10 and plain.nfe == 9
    torch.testing.assert_close(final.x, model.x0(plain.x, sde.t_min))


def test_same_generator_same_samples_and_seeds_are_batch_invariant():
    model = _mixture_oracle(sd.EDMSDE())
    a = sd.sample(model, "euler", 10, shape=(6, 2), generator=torch.Generator().manual_seed(5))
    b = sd.sample(model, "euler", 10, shape=(6, 2), generator=torch.Generator().manual_seed(5))
    c = sd.sample(model, "euler", 10, shape=(6, 2), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    big = sd.sample(model, "euler", 10, shape=(6, 2), seeds=list(range(6)))
    small = sd.sample(model, "euler", 10, shape=(2, 2), seeds=[4, 5])
    torch.testing.assert_close(big.x[4:], small.x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_and_4d_state_are_kept(dtype):
    sde = sd.VPSDE()
    gmm = sd.GaussianMixture.gaussian(torch.zeros(12), torch.eye(12) * 0.25)
    model = gmm.score_model(sde)
    res = sd.sample(model, "euler", 5, shape=(3, 3, 2, 2), dtype=dtype, return_trajectory=True)
    assert res.x.shape == (3, 3, 2, 2) and res.x.dtype == dtype
    assert res.trajectory is not None and res.trajectory.shape == (6, 3, 3, 2, 2)
    assert res.ts.dtype == torch.float64


def test_works_under_inference_mode_and_with_callback():
    model = _mixture_oracle(sd.VPSDE())
    seen = []
    with torch.inference_mode():
        res = sd.sample(model, "euler", 4, shape=(2, 2), callback=lambda i, t, x: seen.append(i))
    assert seen == [0, 1, 2, 3] and res.nfe == 4


@pytest.mark.parametrize(("family", "grid"), [("vp", "quadratic"), ("edm", "logsnr")])
def test_default_grid_depends_on_the_kind_of_sde(family, grid):
    """No grid: the method's grid_for(sde, T, t_min) (docs/solvers.md, "Default time grids")."""
    sde = SDES[family]
    res = sd.sample(_mixture_oracle(sde), "dpmpp_2m", 6, shape=(2, 2))
    assert solvers.get_solver("dpmpp_2m").grid_for(sde, sde.T, sde.t_min) == grid
    assert torch.equal(res.ts, solvers.make_grid(grid, sde, sde.T, sde.t_min, 6))


def test_user_grid_fixes_the_steps_and_must_fit_the_budget():
    sde = sd.VPSDE()
    model = _mixture_oracle(sde)
    grid = torch.linspace(1.0, 1e-5, 6, dtype=torch.float64)
    res = sd.sample(model, "euler", shape=(2, 2), grid=grid)
    assert res.nfe == 5 and torch.equal(res.ts, grid)
    with pytest.raises(ValueError, match="over the budget"):
        sd.sample(model, "euler", 4, shape=(2, 2), grid=grid)
    with pytest.raises(ValueError, match="grid must decrease"):
        sd.sample(model, "euler", shape=(2, 2), grid=grid.flip(0))
    bumpy = torch.tensor([1.0, 0.5, 0.6, 0.1], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^grid must be strictly monotone"):
        sd.sample(model, "euler", shape=(2, 2), grid=bumpy)
    with pytest.raises(ValueError, match=r"grid must lie in \[t_min, T\]"):
        sd.sample(model, "euler", shape=(2, 2), grid=torch.linspace(2.0, 0.5, 4).double())
    # a grid starting below T needs the state there: the prior sample lives at T
    late = torch.linspace(0.5, 1e-3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"starts at t=0\.5, but shape= draws x from the prior"):
        sd.sample(model, "euler", shape=(2, 2), grid=late)
    x_half = sde.marginal(torch.zeros(2, 2, dtype=torch.float64), 0.5).mean
    res = sd.sample(model, "euler", x_init=x_half, grid=late)
    assert res.nfe == 4 and torch.equal(res.ts, late)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nfe": 0}, ValueError, "nfe must be an int >= 1"),
        ({"nfe": -3}, ValueError, "nfe must be an int >= 1"),
        ({"nfe": None}, ValueError, "nfe .* is required"),
        ({"nfe": 5, "method": "nope"}, ValueError, "euler"),
        ({"nfe": 5, "x_init": torch.zeros(2, 2)}, ValueError, "exactly one of shape"),
        ({"nfe": 5, "grid": "nope"}, ValueError, "karras"),
        ({"nfe": 5, "seeds": [1, 2, 3]}, ValueError, "one seed per sample"),
        ({"nfe": 1, "denoise_final": True}, ValueError, "nothing for the solver"),
        ({"nfe": 5, "method": 3}, TypeError, "method must be a solver name"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, error, match):
    model = _mixture_oracle(sd.VPSDE())
    kwargs = {"method": "euler", **kwargs}
    with pytest.raises(error, match=match):
        sd.sample(model, shape=(2, 2), **kwargs)


def test_solvers_available_lists_every_registered_method():
    infos = sd.solvers_available()
    assert {i.name for i in infos} == set(solvers.SOLVERS)
    for info in infos:
        assert info.kind in ("ode", "sde")
        assert info.order == solvers.get_solver(info.name).convergence_order >= 1


_REFERENCES: dict[str, tuple] = {}


def _reference(family):
    """A two-component mixture (no special cancellations, unlike a single Gaussian), the time
    t_end where log-SNR = 2, and the PF-ODE solution from T to t_end by scipy's DOP853 at
    rtol = atol = 1e-12 in float64. Stopping at log-SNR 2 rather than t_min keeps the measured
    slope at the methods' order: towards t_min the x0-prediction flattens and the leading
    error terms of some multistep methods cancel (they then converge faster than their order)."""
    if family not in _REFERENCES:
        sde = SDES[family]
        model = _mixture_oracle(sde)
        x_T = sde.prior_sample((8, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
        t_end = float(sde.t_from_log_snr(torch.tensor(2.0, dtype=torch.float64)))
        span = torch.tensor([sde.T, t_end], dtype=torch.float64)
        ref = sd.sample(model, solvers.ScipyDOP853(rtol=1e-12, atol=1e-12), x_init=x_T, grid=span)
        _REFERENCES[family] = (model, x_T, t_end, ref.x)
    return _REFERENCES[family]


def _graded_logsnr_grid(sde, t_start, t_end, n):
    """``n`` steps from ``t_start`` to ``t_end`` at log-SNR ``lam_0 + (lam_1 - lam_0) u^2`` for
    ``u = i / n``: a smooth grid whose first step is ``O(h^2)``, so that the lower-order
    warm-up of a multistep method makes starting values accurate to its order (local error
    ``O(h^4)`` from the Euler first step: Hairer, Norsett & Wanner, Solving ODEs I, sec. III.2)
    and the formula's order shows."""
    ends = torch.tensor([t_start, t_end], dtype=torch.float64)
    lam0, lam1 = (float(v) for v in sde.log_snr(ends))
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    ts = sde.t_from_log_snr(lam0 + (lam1 - lam0) * u**2).to(torch.float64)
    ts[0], ts[-1] = t_start, t_end
    return ts


def _slope(family, solver, steps, graded=False):
    """Slope of log error against log steps on the log-SNR grid from T to t_end (``graded``:
    :func:`_graded_logsnr_grid`); every step at the solver's own order (a fixed grid, so no
    budget-driven order lowering)."""
    model, x_T, t_end, exact = _reference(family)
    make = _graded_logsnr_grid if graded else partial(solvers.make_grid, "logsnr")
    errs = []
    for n in steps:
        grid = make(model.sde, model.sde.T, t_end, n)
        res = sd.sample(model, solver, x_init=x_T, grid=grid)
        assert res.nfe == solver.nfe_for_steps(n)
        errs.append(float((res.x - exact).abs().max()))
    return -np.polyfit(np.log(steps), np.log(errs), 1)[0], errs


@pytest.mark.slow
@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("family", sorted(SDES))
def test_convergence_order_through_sample(method, family):
    """Empirical order within 0.35 of the declared order (``convergence_order``, the order
    ``sd.solvers_available()`` lists), on the log-SNR grid; for a multistep method whose
    lower-order warm-up would cap its order (``cold_start_order`` below it: ipndm_v, deis) on
    a grid with a graded start, which gives starting values of the method's order."""
    solver = solvers.get_solver(method)
    graded = solver.cold_start_order < solver.convergence_order
    slope, errs = _slope(family, solver, [128, 192, 256, 384, 512], graded=graded)
    assert abs(slope - solver.convergence_order) < 0.35, (method, family, slope, errs)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in FIXED if m in ("ipndm_v", "deis")])
@pytest.mark.parametrize("family", sorted(SDES))
def test_cold_started_multistep_methods_between_warm_up_and_formula_order(method, family):
    """From a cold start on the plain log-SNR grid, the first (Euler) step's local error caps
    the asymptotic order at ``cold_start_order``; at practical step counts the measured order
    lies between it and the declared order."""
    solver = solvers.get_solver(method)
    slope, errs = _slope(family, solver, [64, 96, 128, 192, 256])
    low, high = solver.cold_start_order - 0.35, solver.convergence_order + 0.35
    assert low < slope < high, (method, family, slope, errs)


@pytest.mark.parametrize(
    ("method", "kwargs", "order"),
    [("euler", {}, 1), ("dpmpp_2m", {"lower_order_final": False}, 2), ("heun", {}, 2)],
)
def test_orders_through_sample_fast_subset(method, kwargs, order):
    """The fast subset of the sweep above (EDM; DPM-Solver++(2M) without its default
    first-order last step, which adds an O(h^2) term with a different constant)."""
    slope, errs = _slope("edm", solvers.get_solver(method, **kwargs), [32, 64, 128])
    assert abs(slope - order) < 0.35, (method, slope, errs)


@pytest.mark.parametrize(
    ("method", "family", "steps"),
    [
        ("rk4", "ve", [32, 64, 128]),
        ("dpm_solver_3", "vp", [32, 64, 128]),
        ("unipc", "ve", [32, 64, 128]),
        ("ipndm", "vp", [128, 192, 256]),
        ("deis", "vp", [64, 96, 128]),
        ("ipndm_v", "edm", [128, 192, 256]),
    ],
)
def test_orders_through_sample_fast_subset_other_families(method, family, steps):
    """More of the sweep in the default run: one method of each family (Runge-Kutta,
    single-step and multistep exponential, fixed- and variable-weight Adams) under VP, VE or
    EDM, each within 0.35 of its listed order (graded start where the warm-up caps it)."""
    solver = solvers.get_solver(method)
    graded = solver.cold_start_order < solver.convergence_order
    slope, errs = _slope(family, solver, steps, graded=graded)
    assert abs(slope - solver.convergence_order) < 0.35, (method, family, slope, errs)
