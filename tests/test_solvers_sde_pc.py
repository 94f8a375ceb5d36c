"""Predictor-corrector sampling (solvers.predictor_corrector) against exact answers.

References: the Langevin update written out by hand from the documented step sizes (score_sde's
``LangevinCorrector`` / ``AnnealedLangevinDynamics`` with per-sample or batch norms), the
exact covariance recursion of Langevin steps on a Gaussian target, the predictors run on their
own, the times at which the corrector evaluates the model, and the diffused mixture (sliced
Wasserstein).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from test_solvers_sde_brownian import (
    F64,
    SW_BOUND,
    _single_thread,  # noqa: F401 - autouse fixture
    exact_moments,
    gaussian_marginal,
    gaussian_oracle,
    mixture_marginal,
    mixture_oracle,
    sliced_w1,
)
from test_solvers_sde_fixed import FixedNoise
from torch import Tensor

import scoresde as sd
import solvers
from solvers.predictor_corrector import (
    BUILTINS,
    PREDICTORS,
    PredictorCorrector,
    drift_coefficients,
    probability_flow_term,
    reverse_sde_term,
)
from solvers.sde_fixed import EDMStochastic, EulerMaruyama, ReverseDiffusion


class RecordingTerm:
    """A denoiser term that records the time of every evaluation."""

    def __init__(self, oracle: Any) -> None:
        self.oracle, self.times = oracle, []
        self.schedule = oracle.sde

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        self.times.append(float(t))
        return self.oracle.x0(x, t)


def den(oracle: Any) -> solvers.DenoiserTerm:
    return solvers.DenoiserTerm(oracle.x0, oracle.sde)


def test_builtins_and_validation() -> None:
    assert {"pc": PredictorCorrector} == BUILTINS
    solvers.check_solver_class(PredictorCorrector)
    assert set(PREDICTORS) >= {"reverse_diffusion", "euler_maruyama", "ancestral", "none"}
    with pytest.raises(ValueError, match="unknown predictor"):
        PredictorCorrector(predictor="rk4")
    with pytest.raises(ValueError, match="snr"):
        PredictorCorrector(snr=0.0)
    with pytest.raises(ValueError, match="n_steps"):
        PredictorCorrector(n_steps=-1)
    with pytest.raises(ValueError, match="corrector"):
        PredictorCorrector(corrector="mala")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="predictor='none'"):
        PredictorCorrector(predictor="none", corrector="none")
    with pytest.raises(TypeError, match="fixed-grid"):
        PredictorCorrector(predictor=solvers.Dopri5())
    with pytest.raises(TypeError, match="another one"):
        PredictorCorrector(predictor=PredictorCorrector())


@pytest.mark.parametrize(
    "pc,per_step,extra",
    [
        (PredictorCorrector(), 2, 0),
        (PredictorCorrector(n_steps=3), 4, 0),
        (PredictorCorrector(predictor="none", n_steps=2), 2, 0),
        (PredictorCorrector(predictor="euler_maruyama", corrector="ald"), 2, 0),
        (PredictorCorrector(predictor=EDMStochastic(), n_steps=2), 4, -1),  # Heun: 2n - 1
        (PredictorCorrector(predictor=solvers.Heun()), 3, -1),
        (PredictorCorrector(corrector="none"), 1, 0),
    ],
)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_nfe(pc: PredictorCorrector, per_step: int, extra: int, n: int) -> None:
    """Every corrector step is one evaluation: n (predictor + n_steps) in all."""
    sde = sd.VPSDE()
    x = torch.randn(3, 1, 2, 1)  # 4-D, float32
    ts = solvers.uniform(sde.T, sde.t_min, n)
    sol = solvers.integrate(pc, den(gaussian_oracle(sde)), x, ts, generator=torch.Generator())
    assert sol.nfe == pc.nfe_for_steps(n) == n * per_step + extra
    assert sol.x.dtype == torch.float32 and torch.isfinite(sol.x).all()
    assert pc.noise_draws >= 1


@pytest.mark.parametrize("position", ["after", "before"])
def test_where_the_corrector_runs(position: str) -> None:
    """'after': Langevin steps at t_1 .. t_N (the paper); 'before': at t_0 .. t_{N-1}
    (score_sde's code), each n_steps times; the predictor evaluates at t_i."""
    sde = sd.VESDE()
    ts = solvers.uniform(sde.T, sde.t_min, 3)
    term = RecordingTerm(gaussian_oracle(sde))
    pc = PredictorCorrector(n_steps=2, corrector_position=position)  # type: ignore[arg-type]
    solvers.integrate(pc, term, torch.zeros(2, 2, dtype=F64), ts, generator=torch.Generator())
    t = ts.tolist()
    if position == "after":
        want = [t[0], t[1], t[1], t[1], t[2], t[2], t[2], t[3], t[3]]
    else:
        want = [t[0], t[0], t[0], t[1], t[1], t[1], t[2], t[2], t[2]]
    assert term.times == want


@pytest.mark.parametrize("norm", ["sample", "batch"])
@pytest.mark.parametrize("kind", ["langevin", "ald"])
def test_corrector_step_size(norm: str, kind: str) -> None:
    """One Langevin step x + eps s + sqrt(2 eps) z with eps = 2 a (snr ||z|| / ||s||)^2
    (norms per sample, or batch means) or eps = 2 a (snr sigma)^2, a = (alpha_0/alpha_1)^2."""
    sde = sd.VPSDE()
    oracle = gaussian_oracle(sde)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    z = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    t0, t1 = torch.tensor(0.5, dtype=F64), torch.tensor(0.4, dtype=F64)
    pc = PredictorCorrector(predictor="none", corrector=kind, snr=0.2, norm=norm)  # type: ignore[arg-type]
    got = solvers.integrate(pc, den(oracle), x, torch.stack([t0, t1]), noise=FixedNoise(z)).x
    a = float(sde.alpha(t0) / sde.alpha(t1)) ** 2
    s = oracle.score(x, t1)
    if kind == "ald":
        eps = 2 * a * (0.2 * sde.sigma(t1)) ** 2 * torch.ones(4, 1, dtype=F64)
    elif norm == "sample":
        eps = 2 * a * (0.2 * z.norm(dim=1, keepdim=True) / s.norm(dim=1, keepdim=True)) ** 2
    else:
        eps = (
            2
            * a
            * (0.2 * z.norm(dim=1).mean() / s.norm(dim=1).mean()) ** 2
            * torch.ones(4, 1, dtype=F64)
        )
    torch.testing.assert_close(got, x + eps * s + (2 * eps).sqrt() * z, rtol=1e-12, atol=1e-12)


def test_ald_stationary_covariance() -> None:
    """n_steps Langevin steps with the constant ALD step on the Gaussian p_t: the exact
    covariance recursion C <- (I - eps V^-1) C (I - eps V^-1)^T + 2 eps I, mean kept."""
    sde = sd.VESDE()
    oracle = gaussian_oracle(sde)
    ts = torch.tensor([0.31, 0.3], dtype=F64)
    m, v = gaussian_marginal(sde, 0.3)
    k = 30
    pc = PredictorCorrector(predictor="none", corrector="ald", snr=0.3, n_steps=k)
    mean, cov = exact_moments(pc, den(oracle), m, v, ts, draws=k)
    eps = 2 * (0.3 * float(sde.sigma(ts[1]))) ** 2
    step = torch.eye(2, dtype=F64) - eps * torch.linalg.inv(v)
    c = v.clone()
    for _ in range(k):
        c = step @ c @ step.T + 2 * eps * torch.eye(2, dtype=F64)
    torch.testing.assert_close(mean, m, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(cov, c, rtol=1e-10, atol=1e-10)


def test_predictors_through_rebuilt_terms() -> None:
    """Without a corrector, PC is its predictor: EM on the reverse SDE rebuilt from the
    denoiser (f, g^2 by autograd) = EM on sd.ReverseSDE; Euler on the rebuilt PF-ODE = Euler
    on sd.ProbabilityFlowODE."""
    for sde in (sd.VPSDE(), sd.VESDE(), sd.EDMSDE(), sd.SubVPSDE(), sd.CosineVPSDE()):
        oracle = gaussian_oracle(sde)
        x = sde.prior_sample((4, 2), torch.Generator().manual_seed(0), dtype=F64)
        ts = solvers.uniform(sde.T, sde.t_min, 5)
        pc = PredictorCorrector(predictor="euler_maruyama", corrector="none")
        a = solvers.integrate(pc, den(oracle), x, ts, generator=torch.Generator().manual_seed(1))
        b = solvers.integrate(
            EulerMaruyama(),
            sd.ReverseSDE(sde, oracle.score),
            x,
            ts,
            generator=torch.Generator().manual_seed(1),
        )
        torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)
        pc = PredictorCorrector(predictor=solvers.Euler(), corrector="none")
        a = solvers.integrate(pc, den(oracle), x, ts, generator=torch.Generator())
        b = solvers.integrate(solvers.Euler(), sd.ProbabilityFlowODE(sde, oracle.score), x, ts)
        torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)
    f, g2 = drift_coefficients(sd.VPSDE(), torch.tensor([0.2, 0.7], dtype=F64))
    torch.testing.assert_close(f, sd.VPSDE().f(torch.tensor([0.2, 0.7], dtype=F64)))
    torch.testing.assert_close(g2, sd.VPSDE().g2(torch.tensor([0.2, 0.7], dtype=F64)))
    assert isinstance(reverse_sde_term(den(gaussian_oracle(sd.VESDE()))), solvers.SDETermLike)
    assert isinstance(probability_flow_term(den(gaussian_oracle(sd.VESDE()))), solvers.ODETermLike)


def test_reverse_diffusion_predictor_is_the_solver() -> None:
    sde = sd.VPSDE()
    oracle = gaussian_oracle(sde)
    x = sde.prior_sample((4, 2), torch.Generator().manual_seed(0), dtype=F64)
    ts = solvers.uniform(sde.T, sde.t_min, 6)
    a = solvers.integrate(
        PredictorCorrector(corrector="none"),
        den(oracle),
        x,
        ts,
        generator=torch.Generator().manual_seed(2),
    )
    b = solvers.integrate(
        ReverseDiffusion(), den(oracle), x, ts, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(a.x, b.x)


def test_batch_independence_with_seeds() -> None:
    """Per-sample norms: sample i depends on its seed only; batch norms couple the batch."""
    oracle = gaussian_oracle(sd.VESDE())

    def run(pc: PredictorCorrector, seeds: list[int]) -> Tensor:
        return sd.sample(oracle, pc, 12, shape=(len(seeds), 2), seeds=seeds, dtype=F64).x

    pc = PredictorCorrector(norm="sample")
    torch.testing.assert_close(run(pc, [4, 5, 6])[1], run(pc, [5])[0], rtol=1e-12, atol=1e-12)
    pc = PredictorCorrector(norm="batch")
    assert not torch.allclose(run(pc, [4, 5, 6])[1], run(pc, [5])[0])


@pytest.mark.parametrize(
    "pc",
    [
        PredictorCorrector(norm="batch"),
        PredictorCorrector(predictor="euler_maruyama", norm="batch", corrector_position="before"),
        PredictorCorrector(predictor="ancestral", corrector="ald", snr=0.1),
    ],
    ids=["rd-langevin-batch", "em-langevin-before", "ancestral-ald"],
)
def test_matches_the_mixture(pc: PredictorCorrector) -> None:
    """At 400 evaluations (200 PC steps) on VP. Per-sample norms are not used here: in 2-D
    the step size 2 a (snr ||z|| / ||s||)^2 is heavy-tailed and position-dependent and biases
    the Langevin steps (docs)."""
    sde = sd.VPSDE()
    n = 2000
    res = sd.sample(
        mixture_oracle(sde),
        pc,
        400,
        shape=(n, 2),
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    assert res.nfe == 400
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    assert stat < SW_BOUND * null


def test_per_sample_norms_in_high_dimension() -> None:
    """score_sde's step with per-sample norms is fine in high dimension: 200 Langevin steps at
    one level of a 256-D standard Gaussian (VE) leave the variance within 6% (the
    batch-norm/ULA bias is snr^2 = 2.6%; in 2-D the per-sample variant is off by a factor 19)."""
    sde = sd.VESDE()
    d = 256
    oracle = sd.GaussianMixture.gaussian(
        torch.zeros(d, dtype=F64), torch.ones(d, dtype=F64)
    ).score_model(sde)
    v = 1 + float(sde.sigma(torch.tensor(0.5, dtype=F64))) ** 2
    x = v**0.5 * torch.randn(256, d, dtype=F64, generator=torch.Generator().manual_seed(0))
    pc = PredictorCorrector(predictor="none", n_steps=200)
    out = solvers.integrate(
        pc,
        den(oracle),
        x,
        torch.tensor([0.6, 0.5], dtype=F64),
        generator=torch.Generator().manual_seed(1),
    ).x
    ratio = float(out.var(0).mean()) / v
    assert 0.97 < ratio < 1.06


@pytest.mark.slow
@pytest.mark.parametrize("key", ["vp", "subvp", "cosine", "ve", "edm"])
def test_matches_the_mixture_every_sde(key: str) -> None:
    sde = {
        "vp": sd.VPSDE(),
        "subvp": sd.SubVPSDE(),
        "cosine": sd.CosineVPSDE(),
        "ve": sd.VESDE(),
        "edm": sd.EDMSDE(),
    }[key]
    grid = "karras" if key == "edm" else None
    res = sd.sample(
        mixture_oracle(sde),
        PredictorCorrector(norm="batch", snr=0.05),
        1000,
        shape=(2000, 2),
        grid=grid,
        generator=torch.Generator().manual_seed(1),
        dtype=F64,
    )
    stat, null = sliced_w1(res.x, *mixture_marginal(sde, sde.t_min))
    assert stat < SW_BOUND * null
