"""sd.sample: budget semantics, every registered method with every SDE, reproducibility, shapes,
dtypes, bad input; convergence through the public API against exact Gaussian flows."""

import numpy as np
import pytest
import torch

import scoresde as sd
import solvers

FIXED = sorted(
    name
    for name, cls in solvers.SOLVERS.items()
    if not cls.stochastic and not getattr(cls, "adaptive", False)
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
    assert res.nfe <= nfe
    assert torch.isfinite(res.x).all()
    assert res.ts[0] == model.sde.T and res.ts[-1] == model.sde.t_min


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("family", sorted(SDES))
def test_every_fixed_step_method_works_with_every_sde(method, family):
    """At a moderate budget every method lands near the exact PF-ODE solution."""
    sde = SDES[family]
    model = _gaussian_oracle(sde)
    x_T = sde.prior_sample((16, 2), torch.Generator().manual_seed(1), dtype=torch.float64)
    res = sd.sample(model, method, 200, x_init=x_T)
    exact = model.flow_map(x_T, sde.T, sde.t_min)
    scale = float(exact.abs().max())
    assert float((res.x - exact).abs().max()) < 0.05 * scale, method


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
    with pytest.raises(ValueError, match=r"grid must lie in \[t_min, T\]"):
        sd.sample(model, "euler", shape=(2, 2), grid=torch.linspace(2.0, 0.5, 4).double())


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
        assert info.kind in ("ode", "sde") and info.order >= 1


def _slope(sde, model, method, budgets):
    x_T = sde.prior_sample((8, 2), torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = model.flow_map(x_T, sde.T, sde.t_min)
    errs, evals = [], []
    for nfe in budgets:
        res = sd.sample(model, method, nfe, x_init=x_T, grid="logsnr")
        errs.append(float((res.x - exact).abs().max()))
        evals.append(res.nfe)
    return -np.polyfit(np.log(evals), np.log(errs), 1)[0], errs


@pytest.mark.slow
@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("family", sorted(SDES))
def test_convergence_order_through_sample(method, family):
    """Empirical order (error vs NFE on the log-SNR grid) within 0.35 of the declared order."""
    sde = SDES[family]
    model = _gaussian_oracle(sde)
    order = solvers.SOLVERS[method].order
    budgets = [64, 96, 128, 192] if order <= 2 else [24, 32, 48, 64]
    slope, errs = _slope(sde, model, method, budgets)
    assert abs(slope - order) < 0.35, (method, family, slope, errs)


def test_euler_order_through_sample():
    sde = SDES["edm"]
    slope, errs = _slope(sde, _gaussian_oracle(sde), "euler", [64, 128, 256])
    assert abs(slope - 1) < 0.35, (slope, errs)
