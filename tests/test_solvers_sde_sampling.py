"""Every stochastic method through ``sd.sample`` with every SDE: budgets, dtype, shapes,
``denoise_final`` and per-sample seeds."""

from __future__ import annotations

import pytest
import torch
from test_solvers_sde_brownian import (
    F64,
    SAMPLING_SDES,
    _single_thread,  # noqa: F401 - autouse fixture
    gaussian_oracle,
)

import scoresde as sd
import solvers
from solvers.predictor_corrector import PredictorCorrector
from solvers.sde_adaptive import (
    GottaGoFast,
    TorchSDEAdaptive,
    TorchSDEEuler,
    TorchSDEMilstein,
    TorchSDEReversibleHeun,
    TorchSDESRK,
)
from solvers.sde_fixed import (
    Ancestral,
    DPMSolverPP2MSDE,
    DPMSolverPP3MSDE,
    EDMStochastic,
    EulerMaruyama,
    ReverseDiffusion,
)

FIXED = [
    EulerMaruyama(),
    ReverseDiffusion(),
    Ancestral(),
    EDMStochastic(),
    DPMSolverPP2MSDE(),
    DPMSolverPP3MSDE(),
    PredictorCorrector(),
    PredictorCorrector(predictor="none", corrector="ald", n_steps=2),
    TorchSDEEuler(),
    TorchSDEMilstein(),
    TorchSDESRK(),
    TorchSDEReversibleHeun(),
]
FIXED_IDS = [
    "euler_maruyama", "reverse_diffusion", "ancestral", "edm_stochastic", "dpmpp_2m_sde",
    "dpmpp_3m_sde", "pc", "ald", "sde_euler", "sde_milstein", "sde_srk", "sde_reversible_heun",
]  # fmt: skip
ADAPTIVE = [GottaGoFast(rtol=0.1, atol=0.1), TorchSDEAdaptive(rtol=0.1, atol=0.1)]


@pytest.mark.parametrize("key", list(SAMPLING_SDES))
@pytest.mark.parametrize("solver", FIXED, ids=FIXED_IDS)
def test_every_method_every_sde(solver: solvers.Solver, key: str) -> None:
    """A budget of 13 evaluations: the largest step count that fits, spent exactly (float32,
    4-D states)."""
    sde = SAMPLING_SDES[key]()
    oracle = gaussian_oracle(sde)
    res = sd.sample(
        oracle, solver, 13, shape=(8, 1, 2, 1), generator=torch.Generator().manual_seed(0)
    )
    _, n = solver.for_budget(13)
    assert res.nfe == solver.nfe_for_steps(n) <= 13
    assert res.nfe >= 13 - solver.nfe_for_steps(1)  # nothing left that would buy a step
    assert res.x.shape == (8, 1, 2, 1) and res.x.dtype == torch.float32
    assert torch.isfinite(res.x).all()
    assert res.ts.numel() == n + 1


@pytest.mark.parametrize("key", list(SAMPLING_SDES))
@pytest.mark.parametrize("solver", ADAPTIVE, ids=["adaptive_sde", "sde_srk_adaptive"])
def test_adaptive_every_sde(solver: solvers.Solver, key: str) -> None:
    sde = SAMPLING_SDES[key]()
    res = sd.sample(
        gaussian_oracle(sde), solver, 5000, shape=(8, 2), generator=torch.Generator().manual_seed(0)
    )
    assert 0 < res.nfe <= 5000 and torch.isfinite(res.x).all()
    assert res.ts.tolist() == [sde.T, sde.t_min]


@pytest.mark.parametrize(
    "solver",
    FIXED[:8] + [TorchSDEEuler(), ADAPTIVE[0]],
    ids=FIXED_IDS[:8] + ["sde_euler", "adaptive_sde"],
)
def test_denoise_final(solver: solvers.Solver) -> None:
    """denoise_final spends one evaluation on the Tweedie estimate x0(x, t_min) of the very
    sample the solver produced with the rest of the budget."""
    sde = sd.VPSDE()
    oracle = gaussian_oracle(sde)
    nfe = None if solver.adaptive else 11

    def run(final: bool, budget: int | None) -> sd.SampleResult:
        g = torch.Generator().manual_seed(3)
        return sd.sample(
            oracle, solver, budget, shape=(6, 2), generator=g, dtype=F64, denoise_final=final
        )

    plain = run(False, None if nfe is None else nfe - 1)
    final = run(True, nfe)
    assert final.nfe == plain.nfe + 1
    t_min = torch.tensor(sde.t_min, dtype=F64)
    torch.testing.assert_close(final.x, oracle.x0(plain.x, t_min), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "solver",
    [Ancestral(), EDMStochastic(), DPMSolverPP2MSDE(), TorchSDEEuler()],
    ids=["ancestral", "edm_stochastic", "dpmpp_2m_sde", "sde_euler"],
)
def test_seeds_make_samples_batch_independent(solver: solvers.Solver) -> None:
    """With seeds, sample i's prior draw and solver noise come from its own generator."""
    oracle = gaussian_oracle(sd.VESDE())

    def run(seeds: list[int]) -> torch.Tensor:
        return sd.sample(oracle, solver, 10, shape=(len(seeds), 2), seeds=seeds, dtype=F64).x

    batch = run([11, 12, 13])
    torch.testing.assert_close(batch[1], run([12])[0], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(batch[0], batch[1])
    assert torch.equal(batch, run([11, 12, 13]))


@pytest.mark.parametrize(
    "solver", [EulerMaruyama(), Ancestral()], ids=["euler_maruyama", "ancestral"]
)
def test_one_and_two_steps(solver: solvers.Solver) -> None:
    for nfe in (1, 2):
        res = sd.sample(
            gaussian_oracle(sd.VPSDE()), solver, nfe, shape=(4, 2), generator=torch.Generator()
        )
        assert res.nfe == nfe and res.ts.numel() == nfe + 1 and torch.isfinite(res.x).all()


class _ToyVP:
    """A VP schedule in plain torch (no validation, so no host synchronisation):
    B(t) = 0.1 t + 9.95 t^2, alpha = exp(-B/2), sigma = sqrt(1 - alpha^2)."""

    @staticmethod
    def _b(t: torch.Tensor) -> torch.Tensor:
        return 0.1 * t + 9.95 * t * t

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * self._b(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return (-torch.expm1(-self._b(t))).sqrt()

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.log(torch.expm1(self._b(t)))

    def t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:
        b = torch.log1p(torch.exp(-lam))
        return (-0.1 + (0.01 + 4 * 9.95 * b).sqrt()) / (2 * 9.95)


@pytest.mark.parametrize(
    "solver",
    [Ancestral(), ReverseDiffusion(), EDMStochastic(), DPMSolverPP3MSDE(), PredictorCorrector(),
     PredictorCorrector(predictor="euler_maruyama", corrector="ald", n_steps=2)],
    ids=["ancestral", "reverse_diffusion", "edm_stochastic", "dpmpp_3m_sde", "pc", "pc-em-ald"],
)  # fmt: skip
def test_steps_do_not_synchronise(solver: solvers.Solver, device: str) -> None:
    """init + step loop on the device with a pure-torch denoiser and schedule; on CUDA any
    host synchronisation inside the steps raises (torch.cuda sync debug mode)."""
    term = solvers.DenoiserTerm(lambda x, t: 0.5 * torch.tanh(x), _ToyVP())
    ts = solvers.uniform(1.0, 1e-3, 6).to(device)
    x = torch.randn(4, 3, 2, device=device)
    draws = int(getattr(solver, "noise_draws", 1))
    zs = torch.randn(6, draws, 4, 3, 2, device=device)
    state = solver.init(term, ts, x)
    mode = torch.cuda.get_sync_debug_mode() if device == "cuda" else None
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(6):
            z = zs[i, 0] if draws == 1 else zs[i]
            x, state = solver.step(term, ts[i], ts[i + 1], x, state, z)
    finally:
        if mode is not None:
            torch.cuda.set_sync_debug_mode(mode)
    assert x.device.type == device and x.dtype == torch.float32
    assert torch.isfinite(x).all()


@pytest.mark.gpu
@pytest.mark.parametrize(
    "solver", [EulerMaruyama(), Ancestral(), TorchSDEEuler(), ADAPTIVE[0], PredictorCorrector()],
    ids=["euler_maruyama", "ancestral", "sde_euler", "adaptive_sde", "pc"],
)  # fmt: skip
def test_sample_on_cuda(solver: solvers.Solver) -> None:
    """A CPU generator gives the same initial noise on CUDA; the samples stay on CUDA."""
    oracle = gaussian_oracle(sd.VPSDE())
    nfe = None if solver.adaptive else 12
    res = sd.sample(
        oracle,
        solver,
        nfe,
        shape=(16, 2),
        generator=torch.Generator().manual_seed(0),
        device="cuda",
    )
    assert res.x.device.type == "cuda" and torch.isfinite(res.x).all()
