"""Whole-interval SDE solvers (solvers.sde_adaptive): the torchsde adapter and Gotta Go Fast.

References: Euler-Maruyama driven by the same Brownian path (torchsde's Euler must agree to
rounding), the exact solution of geometric Brownian motion on that path (Ito vs Stratonovich:
``X_T = X_0 exp((mu - s^2/2) T + s W_T)`` is the Ito solution), the diffused mixture (sliced
Wasserstein, bound from the sample size).
"""

from __future__ import annotations

import math

import pytest
import torch
from test_solvers_sde_brownian import (
    F64,
    SW_BOUND,
    _single_thread,  # noqa: F401 - autouse fixture
    gaussian_oracle,
    mixture_marginal,
    mixture_oracle,
    sliced_w1,
    slope,
)
from torch import Tensor

import scoresde as sd
import solvers
from solvers.brownian import BrownianPath
from solvers.sde_adaptive import (
    BUILTINS,
    GottaGoFast,
    TorchSDEAdaptive,
    TorchSDEEuler,
    TorchSDEMilstein,
    TorchSDEReversibleHeun,
    TorchSDESRK,
)
from solvers.sde_fixed import EulerMaruyama

FIXED = [TorchSDEEuler, TorchSDEMilstein, TorchSDESRK, TorchSDEReversibleHeun]
FIXED_IDS = [c.__name__ for c in FIXED]


def reverse_sde(sde: sd.SDE) -> sd.ReverseSDE:
    return sd.ReverseSDE(sde, gaussian_oracle(sde).score)


def test_builtins() -> None:
    assert {
        "sde_euler": TorchSDEEuler,
        "sde_milstein": TorchSDEMilstein,
        "sde_srk": TorchSDESRK,
        "sde_reversible_heun": TorchSDEReversibleHeun,
        "sde_srk_adaptive": TorchSDEAdaptive,
        "adaptive_sde": GottaGoFast,
    } == BUILTINS
    for cls in BUILTINS.values():
        solvers.check_solver_class(cls)
        assert cls.stochastic
    assert TorchSDEAdaptive.adaptive and GottaGoFast.adaptive and not TorchSDEEuler.adaptive


@pytest.mark.parametrize("shape", [(6, 2), (3, 1, 2, 1)], ids=["2d", "4d"])
@pytest.mark.parametrize("cls", [TorchSDEEuler, TorchSDEMilstein], ids=["euler", "milstein"])
def test_torchsde_euler_is_euler_maruyama(cls: type, shape: tuple[int, ...]) -> None:
    """Same Brownian increments, both Euler (Milstein's correction vanishes for additive
    noise): agreement to float64 rounding, on a non-uniform grid."""
    sde = sd.VPSDE(t_min=1e-3)
    term = reverse_sde(sde)
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = solvers.make_grid("logsnr", sde, sde.T, sde.t_min, 15)
    path = BrownianPath(sde.T, sde.t_min, shape, entropy=3)
    a = solvers.integrate(EulerMaruyama(), term, x, ts, noise=path)
    b = solvers.integrate(cls(), term, x, ts, noise=path, save_path=True)
    assert a.nfe == b.nfe == 15
    torch.testing.assert_close(b.x, a.x, rtol=1e-13, atol=1e-13)
    assert b.path is not None and b.path.shape == (16, *shape)
    torch.testing.assert_close(b.path[-1], b.x, rtol=0, atol=0)


@pytest.mark.parametrize("cls", FIXED, ids=FIXED_IDS)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_nfe_and_dtype(cls: type, n: int) -> None:
    sde = sd.VESDE()
    x = torch.randn(3, 1, 2, 1)  # float32, 4-D
    solver = cls()
    ts = solvers.uniform(sde.T, sde.t_min, n)
    sol = solvers.integrate(solver, reverse_sde(sde), x, ts, generator=torch.Generator())
    assert sol.nfe == solver.nfe_for_steps(n)
    assert sol.x.dtype == torch.float32 and sol.x.shape == x.shape
    assert torch.isfinite(sol.x).all()


@pytest.mark.parametrize("cls", FIXED + [GottaGoFast], ids=FIXED_IDS + ["GottaGoFast"])
def test_reproducible(cls: type) -> None:
    oracle = gaussian_oracle(sd.VPSDE())
    nfe = None if cls is GottaGoFast else 8
    solver = GottaGoFast(rtol=0.05, atol=0.05) if cls is GottaGoFast else cls()

    def run(seed: int) -> Tensor:
        return sd.sample(
            oracle, solver, nfe, shape=(4, 2), generator=torch.Generator().manual_seed(seed)
        ).x

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


# ----------------------------------------------------------------------------- Ito/Stratonovich


def _gbm(mu: float = 0.5, s: float = 0.8):  # type: ignore[no-untyped-def]
    """dX = mu X dt + s X dW (Ito; multiplicative diagonal noise)."""
    return solvers.SDETerm(lambda x, t: mu * x, lambda x, t: s * x)


def test_stratonovich_conversion_and_milstein_on_gbm() -> None:
    """Geometric Brownian motion on one path: reversible Heun (Stratonovich, drift converted)
    and Milstein converge to the Ito solution exp((mu - s^2/2) T + s W_T); without the
    conversion the limit would be the Stratonovich one exp(mu T + s W_T), 0.32 x away."""
    mu, s, m = 0.5, 0.8, 200
    x0 = torch.ones(m, 1, dtype=F64)
    path = BrownianPath(0.0, 1.0, (m, 1), entropy=4)
    w = path.increment_between(0.0, 1.0)
    ito = torch.exp(torch.tensor(mu - s * s / 2) + s * w)
    strat = torch.exp(torch.tensor(mu) + s * w)
    assert float((ito - strat).abs().mean()) > 0.25
    ns = [32, 64, 128, 256]
    for cls, order in (
        (TorchSDEReversibleHeun, 1.0),
        (TorchSDEMilstein, 1.0),
        (EulerMaruyama, 0.5),
    ):
        errors = []
        for n in ns:
            out = solvers.integrate(
                cls(), _gbm(mu, s), x0, solvers.uniform(0.0, 1.0, n), noise=path
            ).x
            errors.append(float((out - ito).abs().mean().detach()))  # torchsde keeps a graph
        assert errors[-1] < 0.05, (cls.__name__, errors)
        assert abs(slope(ns, errors) - order) < 0.35, (cls.__name__, errors)


def test_srk_is_more_accurate_than_euler() -> None:
    """Strong error on the reverse VP SDE against a fine Euler-Maruyama solve on the same
    path: SRK (strong order 1.5) beats Euler (1.0) at equal steps, by far."""
    sde = sd.VPSDE(t_min=1e-3)
    term = reverse_sde(sde)
    m = 20
    x = torch.randn(m, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    path = BrownianPath(sde.T, sde.t_min, (m, 2), entropy=9)
    ref = solvers.integrate(
        EulerMaruyama(), term, x, solvers.uniform(sde.T, sde.t_min, 1024), noise=path
    ).x
    ts = solvers.uniform(sde.T, sde.t_min, 32)
    e_srk = float(
        (solvers.integrate(TorchSDESRK(), term, x, ts, noise=path).x - ref).norm(dim=1).mean()
    )
    e_em = float(
        (solvers.integrate(EulerMaruyama(), term, x, ts, noise=path).x - ref).norm(dim=1).mean()
    )
    assert e_srk < 0.25 * e_em


@pytest.mark.slow
def test_srk_strong_order() -> None:
    sde = sd.VPSDE(t_min=1e-3)
    term = reverse_sde(sde)
    m = 100
    x = torch.randn(m, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    path = BrownianPath(sde.T, sde.t_min, (m, 2), entropy=9)
    ref = solvers.integrate(
        TorchSDESRK(), term, x, solvers.uniform(sde.T, sde.t_min, 4096), noise=path
    ).x
    ns = [32, 64, 128, 256]
    errors = [
        float(
            (
                solvers.integrate(
                    TorchSDESRK(), term, x, solvers.uniform(sde.T, sde.t_min, n), noise=path
                ).x
                - ref
            )
            .norm(dim=1)
            .mean()
        )
        for n in ns
    ]
    assert slope(ns, errors) > TorchSDESRK.strong_order - 0.35, errors


# ----------------------------------------------------------------------------- adaptive


def test_adaptive_budget_and_errors() -> None:
    sde = sd.VPSDE()
    oracle = gaussian_oracle(sde)
    for solver in (GottaGoFast(), TorchSDEAdaptive()):
        with pytest.raises(solvers.AdaptiveStepError, match="max_nfe"):
            sd.sample(oracle, solver, 10, shape=(4, 2), generator=torch.Generator())
        with pytest.raises(TypeError, match="max_nfe"):
            solver.nfe_for_steps(3)
        capped, steps = solver.for_budget(500)
        assert capped.max_nfe == 500 and steps == 1
    with pytest.raises(ValueError, match="brownian"):
        GottaGoFast(brownian="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="safety"):
        GottaGoFast(safety=1.5)


def test_gotta_go_fast_nfe_and_tolerance() -> None:
    """Two calls per iteration; tighter tolerances cost more and are more accurate (against a
    fine Euler-Maruyama solve on the same Brownian path: the bridge keeps the path)."""
    sde = sd.VPSDE(t_min=1e-3)
    term = reverse_sde(sde)
    m = 64
    x = torch.randn(m, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([sde.T, 0.5, sde.t_min], dtype=F64)
    loose = solvers.integrate(
        GottaGoFast(rtol=0.05, atol=0.05),
        term,
        x,
        ts,
        generator=torch.Generator().manual_seed(1),
        save_path=True,
    )
    tight = solvers.integrate(
        GottaGoFast(rtol=5e-3, atol=5e-3), term, x, ts, generator=torch.Generator().manual_seed(1)
    )
    assert loose.nfe % 2 == 0 and tight.nfe > 2 * loose.nfe
    assert loose.path is not None and loose.path.shape == (3, m, 2)
    assert torch.isfinite(loose.path).all()


def test_gotta_go_fast_batch_independent_with_seeds() -> None:
    """Per-sample steps and per-sample noise: sample i is the same alone or in a batch."""
    oracle = gaussian_oracle(sd.VESDE())

    def run(seeds: list[int]) -> Tensor:
        return sd.sample(
            oracle,
            GottaGoFast(rtol=0.05, atol=0.05),
            None,
            shape=(len(seeds), 2),
            seeds=seeds,
            dtype=F64,
        ).x

    torch.testing.assert_close(run([3, 4, 5])[2], run([5])[0], rtol=1e-9, atol=1e-9)


def test_gotta_go_fast_redraw_runs() -> None:
    sde = sd.VPSDE()
    res = sd.sample(
        gaussian_oracle(sde),
        GottaGoFast(brownian="redraw"),
        None,
        shape=(8, 2),
        generator=torch.Generator(),
    )
    assert torch.isfinite(res.x).all() and res.nfe % 2 == 0


@pytest.mark.parametrize(
    "solver,nfe,key",
    [
        (TorchSDEEuler(), 200, "vp"),
        (TorchSDESRK(), 200, "vp"),
        (GottaGoFast(), None, "vp"),
        (TorchSDEAdaptive(rtol=1e-2, atol=1e-2), None, "vp"),
    ],
    ids=["sde_euler", "sde_srk", "adaptive_sde", "sde_srk_adaptive"],
)
def test_matches_the_mixture(solver: solvers.Solver, nfe: int | None, key: str) -> None:
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE()}[key]
    res = sd.sample(
        mixture_oracle(sde),
        solver,
        nfe,
        shape=(2000, 2),
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    assert stat < SW_BOUND * null


@pytest.mark.slow
@pytest.mark.parametrize("key", ["vp", "subvp", "cosine", "ve", "edm"])
@pytest.mark.parametrize(
    "solver,nfe",
    [
        (TorchSDEEuler(), 500),
        (TorchSDEMilstein(), 500),
        (TorchSDESRK(), 800),
        (GottaGoFast(), None),
        (GottaGoFast(rtol=1e-3, atol=1e-3), None),
        (TorchSDEAdaptive(rtol=1e-2, atol=1e-2), None),
    ],
    ids=["euler", "milstein", "srk", "ggf", "ggf-tight", "srk-adaptive"],
)
def test_matches_the_mixture_every_sde(solver: solvers.Solver, nfe: int | None, key: str) -> None:
    sde = {
        "vp": sd.VPSDE(),
        "subvp": sd.SubVPSDE(),
        "cosine": sd.CosineVPSDE(),
        "ve": sd.VESDE(),
        "edm": sd.EDMSDE(),
    }[key]
    grid = "karras" if key == "edm" and nfe is not None else None
    res = sd.sample(
        mixture_oracle(sde),
        solver,
        nfe,
        shape=(2000, 2),
        grid=grid,
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    assert stat < SW_BOUND * null


@pytest.mark.slow
def test_reversible_heun_matches_the_mixture_vp() -> None:
    """Reversible Heun needs many steps (its parasitic root q - sqrt(1 + q^2), q = lambda h,
    has modulus > 1 on contracting dynamics): VP only, 4000 steps; VE/EDM diverge (docs)."""
    sde = sd.VPSDE()
    res = sd.sample(
        mixture_oracle(sde),
        TorchSDEReversibleHeun(),
        4001,
        shape=(2000, 2),
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    assert stat < SW_BOUND * null


@pytest.mark.slow
def test_redraw_is_biased_in_low_dimension() -> None:
    """The paper's re-drawn noise after a rejection biases 2-D samples (docs); the bridge
    does not."""
    sde = sd.VESDE()
    res = sd.sample(
        mixture_oracle(sde),
        GottaGoFast(brownian="redraw"),
        None,
        shape=(4000, 2),
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    assert stat > SW_BOUND * null
    assert math.isfinite(stat)
