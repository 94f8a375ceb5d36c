"""Noise sources (solvers.brownian), the noise plumbing of solvers.integrate, and the exact
references shared by the SDE-solver tests (imported by the other ``test_solvers_sde_*`` files).

References used across the SDE tests, none of them numbers printed by the code under test:

* Gaussian data: the marginal at every t is ``N(alpha mu, alpha^2 Sigma + sigma^2 I)``.
* :func:`exact_moments`: every solver here is affine in ``(x_T, z_0, z_1, ...)`` when the data
  are Gaussian (the denoiser is affine), so the mean and covariance of its output are
  computed exactly (no Monte-Carlo error) by running it on the basis vectors: one batch row
  per input coordinate, the noise source putting ``e_d`` into row ``(draw, d)``.
* :func:`sliced_w1`: the sliced 1-Wasserstein distance between samples and the exact diffused
  mixture (projected CDFs in closed form), with its expected value for an exact sample of the
  same size, ``sqrt(2 / (pi n)) int sqrt(F (1 - F))`` (Brownian-bridge limit of the empirical
  CDF), averaged over the directions. Over 40 exact samples of the test mixture (n = 4000) the
  ratio had mean 0.98, sd 0.37 and max 2.36; the tests use 3.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

import scoresde as sd
import solvers
from solvers.brownian import (
    BrownianPath,
    GaussianNoise,
    NoiseSource,
    PerSampleNoise,
    flip_time,
)
from solvers.integrate import standard_normal_noise
from solvers.sde_fixed import EulerMaruyama

F64 = torch.float64

# ----------------------------------------------------------------------------- shared data
GAUSS_MEAN = torch.tensor([0.5, -1.0], dtype=F64)
GAUSS_COV = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
MIX_W = torch.tensor([0.3, 0.5, 0.2], dtype=F64)
MIX_MU = torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype=F64)
MIX_COV = torch.stack(
    [
        torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64),
        torch.tensor([[0.2, -0.05], [-0.05, 0.4]], dtype=F64),
        0.15 * torch.eye(2, dtype=F64),
    ]
)
SW_BOUND = 3.5  # see the module docstring

SDES: dict[str, Callable[[], Any]] = {
    # VP-family t_min = 1e-3 for order tests: the asymptotic regime with modest step counts
    "vp": lambda: sd.VPSDE(t_min=1e-3),
    "subvp": lambda: sd.SubVPSDE(t_min=1e-3),
    "cosine": lambda: sd.CosineVPSDE(t_min=1e-3),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
}
SAMPLING_SDES: dict[str, Callable[[], Any]] = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "cosine": lambda: sd.CosineVPSDE(),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
}


@pytest.fixture(autouse=True)
def _single_thread():
    """The oracle's small matrix products run far faster on one intra-op thread on shared
    cores (2 threads under load: ~50x slower per call)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _time(t: float) -> Tensor:
    return torch.tensor(t, dtype=F64)


def gaussian_marginal(sde: Any, t: float) -> tuple[Tensor, Tensor]:
    """Mean and covariance of the Gaussian test data diffused to time t."""
    a, s = float(sde.alpha(_time(t))), float(sde.sigma(_time(t)))
    return a * GAUSS_MEAN, a * a * GAUSS_COV + s * s * torch.eye(2, dtype=F64)


def mixture_marginal(sde: Any, t: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means, covariances of the test mixture diffused to time t."""
    a, s = float(sde.alpha(_time(t))), float(sde.sigma(_time(t)))
    return MIX_W, a * MIX_MU, a * a * MIX_COV + s * s * torch.eye(2, dtype=F64)


def gaussian_oracle(sde: Any) -> Any:
    return sd.GaussianMixture.gaussian(GAUSS_MEAN, GAUSS_COV).score_model(sde)


def mixture_oracle(sde: Any) -> Any:
    return sd.GaussianMixture(MIX_W, MIX_MU, MIX_COV).score_model(sde)


def slope(ns: list[int], errors: list[float]) -> float:
    """Least-squares slope of -log(error) against log(n): the measured order."""
    xs = [math.log(n) for n in ns]
    ys = [-math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )


class BasisNoise(NoiseSource):
    """Draw number ``c`` (in call order) is ``e_d`` in batch row ``1 + D + c D + d``, zero
    elsewhere: with :func:`exact_moments`, the columns of the affine map from the noise."""

    def __init__(self, dim: int, calls: int) -> None:
        self.dim, self.calls, self.max_calls = dim, 0, calls

    def _z(self, x: Tensor) -> Tensor:
        z = torch.zeros(x.shape, dtype=x.dtype)
        c = self.calls
        self.calls += 1
        assert c < self.max_calls, "more noise draws than expected"
        for d in range(self.dim):
            z[1 + self.dim + c * self.dim + d].view(-1)[d] = 1.0
        return z

    def increment(self, t0: Tensor, t1: Tensor, x: Tensor) -> Tensor:
        return self._z(x)

    def normal(self, x: Tensor, rows: Tensor | None = None) -> Tensor:
        return self._z(x)

    def brownian_motion(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


def exact_moments(
    solver: solvers.Solver, term: object, m0: Tensor, p0: Tensor, ts: Tensor, draws: int = 1
) -> tuple[Tensor, Tensor]:
    """Exact mean and covariance of an affine stochastic solve started from ``N(m0, p0)``.

    Row 0 is the solve from ``m0`` with zero noise (the mean); rows ``1..D`` perturb ``x_T``
    by ``e_d``; the following rows put ``e_d`` into one noise draw each. Their differences to
    row 0 are the columns ``A`` (of ``x_T``) and ``C`` (of the noise) of the affine map, and
    ``Cov = A p0 A^T + C C^T``.
    """
    dim = m0.numel()
    calls = (ts.numel() - 1) * draws
    rows = 1 + dim + calls * dim
    x = m0.expand(rows, dim).clone()
    for d in range(dim):
        x[1 + d, d] += 1.0
    source = BasisNoise(dim, calls)
    out = solvers.integrate(solver, term, x, ts, noise=source).x
    assert source.calls == calls
    cols = (out[1:] - out[0]).T
    a, c = cols[:, :dim], cols[:, dim:]
    return out[0], a @ p0 @ a.T + c @ c.T


def _directions(dim: int, k: int) -> Tensor:
    if dim == 2:
        angle = torch.arange(k, dtype=F64) * math.pi / k
        return torch.stack([angle.cos(), angle.sin()], 1)
    u = torch.randn(k, dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    return u / u.norm(dim=1, keepdim=True)


def sliced_w1(
    x: Tensor, weights: Tensor, means: Tensor, covs: Tensor, k: int = 16
) -> tuple[float, float]:
    """Sliced W1 between the samples ``x`` (n, D) and the mixture, and its expected value for
    an exact sample of size n (module docstring)."""
    x = x.to(F64).flatten(1)
    n = x.shape[0]
    stats, nulls = [], []
    for u in _directions(x.shape[1], k):
        p = (x @ u).sort().values
        m = means @ u
        s = torch.einsum("i,kij,j->k", u, covs, u).sqrt()
        lo = min(float(p[0]), float((m - 8 * s).min()))
        hi = max(float(p[-1]), float((m + 8 * s).max()))
        z = torch.linspace(lo, hi, 4001, dtype=F64)
        cdf = weights[:, None] * 0.5 * (1 + torch.erf((z - m[:, None]) / (s[:, None] * 2**0.5)))
        cdf = cdf.sum(0)
        emp = torch.searchsorted(p, z, right=True).to(F64) / n
        stats.append(float(torch.trapezoid((emp - cdf).abs(), z)))
        spread = float(torch.trapezoid((cdf * (1 - cdf)).clamp_min(0).sqrt(), z))
        nulls.append(math.sqrt(2.0 / (math.pi * n)) * spread)
    return sum(stats) / k, sum(nulls) / k


def moment_tolerance(cov: Tensor, n: int, sigmas: float = 5.0) -> tuple[Tensor, Tensor]:
    """``sigmas`` standard errors of the sample mean and of the sample covariance entries
    (Gaussian: ``Var(S_ij) = (S_ii S_jj + S_ij^2) / n``) for n samples."""
    diag = cov.diagonal()
    mean_tol = sigmas * (diag / n).sqrt()
    cov_tol = sigmas * ((diag[:, None] * diag[None, :] + cov**2) / n).sqrt()
    return mean_tol, cov_tol


# ----------------------------------------------------------------------------- sources


def test_gaussian_noise_is_standard_normal_noise() -> None:
    x = torch.zeros(4, 3, dtype=torch.float32)
    a = GaussianNoise(torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    t = _time(0.5)
    assert torch.equal(a.increment(t, t, x), standard_normal_noise(x, g))
    assert torch.equal(a.normal(x), standard_normal_noise(x, g))


def test_integrate_default_noise_unchanged() -> None:
    """The default source is the generator, drawn exactly as before (standard_normal_noise)."""
    sde = sd.VPSDE(t_min=1e-3)
    term = sd.ReverseSDE(sde, gaussian_oracle(sde).score)
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = solvers.uniform(sde.T, sde.t_min, 6)
    a = solvers.integrate(EulerMaruyama(), term, x, ts, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    y = x
    for i in range(6):  # the manual loop with the documented draws
        dt = ts[i + 1] - ts[i]
        z = standard_normal_noise(y, g)
        y = y + term.drift(y, ts[i]) * dt + term.diffusion(y, ts[i]) * dt.abs().sqrt() * z
    torch.testing.assert_close(a.x, y, rtol=1e-14, atol=1e-14)
    b = solvers.integrate(
        EulerMaruyama(), term, x, ts, noise=GaussianNoise(torch.Generator().manual_seed(1))
    )
    assert torch.equal(a.x, b.x)


def test_integrate_noise_validation() -> None:
    term = solvers.SDETerm(lambda x, t: -x, lambda x, t: torch.ones(()))
    x = torch.zeros(2, 2)
    ts = solvers.uniform(1.0, 0.0, 2)
    with pytest.raises(ValueError, match="generator or noise"):
        solvers.integrate(
            EulerMaruyama(), term, x, ts, generator=torch.Generator(), noise=GaussianNoise()
        )
    with pytest.raises(TypeError, match="NoiseSource"):
        solvers.integrate(EulerMaruyama(), term, x, ts, noise=torch.Generator())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs noise"):
        EulerMaruyama().step(term, ts[0], ts[1], x, None, None)


class _Draws(solvers.Solver[solvers.SDETermLike, None]):
    """A stochastic solver asking for three draws per step (records what it gets)."""

    order = 1
    stochastic = True
    term_type = solvers.SDETermLike
    evals_per_step = 0
    noise_draws = 3

    def __init__(self) -> None:
        self.seen: list[Tensor] = []

    def step(self, term, t0, t1, x, state, noise):  # type: ignore[no-untyped-def]
        self.seen.append(noise)
        return x, None


def test_integrate_stacks_multiple_draws() -> None:
    solver = _Draws()
    term = solvers.SDETerm(lambda x, t: x, lambda x, t: torch.ones(()))
    x = torch.zeros(4, 1, 2)
    solvers.integrate(solver, term, x, solvers.uniform(1.0, 0.0, 2), generator=torch.Generator())
    assert [tuple(z.shape) for z in solver.seen] == [(3, 4, 1, 2)] * 2
    g = torch.Generator()
    expected = torch.stack([standard_normal_noise(x, g) for _ in range(3)])
    assert torch.equal(solver.seen[0], expected)  # increment first, then the extra draws


def test_per_sample_noise_is_batch_independent() -> None:
    x = torch.zeros(4, 3, dtype=F64)
    full = PerSampleNoise.from_seeds([7, 8, 9, 10]).normal(x)
    alone = PerSampleNoise.from_seeds([9]).normal(x[:1])
    assert torch.equal(full[2], alone[0])
    sub = PerSampleNoise.from_seeds([7, 8, 9, 10])
    part = sub.normal(x[:2], torch.tensor([3, 1]))
    assert torch.equal(part[0], full[3]) and torch.equal(part[1], full[1])
    with pytest.raises(ValueError, match="batch size"):
        PerSampleNoise.from_seeds([1, 2]).normal(x)
    with pytest.raises(TypeError):
        PerSampleNoise.from_seeds([1.5])  # type: ignore[list-item]


def test_flip_time() -> None:
    ts = torch.tensor([1.0, 0.75, 0.0], dtype=F64)
    assert torch.equal(flip_time(ts, ts[0]), torch.tensor([0.0, 0.25, 1.0], dtype=F64))


def test_brownian_path_same_path_at_every_resolution() -> None:
    path = BrownianPath(1.0, 0.0, (3, 2), entropy=5)
    x = torch.zeros(3, 2, dtype=F64)
    t = [_time(v) for v in (1.0, 0.7, 0.4)]
    coarse = path.increment(t[0], t[2], x) * 0.6**0.5
    fine = path.increment(t[0], t[1], x) * 0.3**0.5 + path.increment(t[1], t[2], x) * 0.3**0.5
    torch.testing.assert_close(coarse, fine, rtol=0, atol=1e-12)
    back = path.increment(t[2], t[0], x) * 0.6**0.5  # against the path's direction
    torch.testing.assert_close(back, -coarse, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shape"):
        path.increment(t[0], t[1], torch.zeros(2, 2, dtype=F64))


def test_brownian_path_increments_are_standard_normal() -> None:
    n = 4000
    path = BrownianPath(1.0, 0.0, (n, 1), entropy=11)
    x = torch.zeros(n, 1, dtype=F64)
    z = torch.cat([path.increment(_time(a), _time(a - 0.25), x) for a in (1.0, 0.75, 0.5)])
    m = z.numel()
    assert abs(float(z.mean())) < 5 / m**0.5
    assert abs(float(z.var()) - 1) < 5 * (2 / m) ** 0.5


def test_brownian_path_as_torchsde_motion() -> None:
    path = BrownianPath(2.0, 0.0, (2, 3), entropy=1)
    bm = path.brownian_motion(2.0, 0.0, (2, 3), F64, torch.device("cpu"))
    assert bm is path.bm
    shifted = path.brownian_motion(1.5, 0.0, (2, 3), F64, torch.device("cpu"))
    torch.testing.assert_close(shifted(0.0, 0.5), path.bm(0.5, 1.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="direction"):
        path.brownian_motion(0.0, 2.0, (2, 3), F64, torch.device("cpu"))
    with pytest.raises(ValueError, match="size"):
        path.brownian_motion(2.0, 0.0, (3, 3), F64, torch.device("cpu"))


# ----------------------------------------------------------------------------- the references


def test_exact_moments_match_monte_carlo() -> None:
    """The basis computation of the moments against plain sampling (tolerance: 5 standard
    errors of n = 20000 samples)."""
    sde = sd.VPSDE(t_min=1e-3)
    term = sd.ReverseSDE(sde, gaussian_oracle(sde).score)
    ts = solvers.uniform(sde.T, sde.t_min, 8)
    m_t, p_t = gaussian_marginal(sde, sde.T)
    mean, cov = exact_moments(EulerMaruyama(), term, m_t, p_t, ts)
    n = 20000
    g = torch.Generator().manual_seed(0)
    x = m_t + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(p_t).T
    out = solvers.integrate(EulerMaruyama(), term, x, ts, generator=g).x
    mean_tol, cov_tol = moment_tolerance(cov, n)
    assert ((out.mean(0) - mean).abs() <= mean_tol).all()
    assert ((torch.cov(out.T) - cov).abs() <= cov_tol).all()


def test_sliced_w1_bound() -> None:
    """Exact samples pass the bound; a slightly wrong distribution fails it."""
    w, mu, cov = MIX_W, MIX_MU, MIX_COV
    gmm = sd.GaussianMixture(w, mu, cov)
    x = gmm.sample(4000, torch.Generator().manual_seed(3), dtype=F64)
    stat, null = sliced_w1(x, w, mu, cov)
    assert stat < SW_BOUND * null
    stat, null = sliced_w1(1.1 * x, w, mu, cov)  # 10% too wide
    assert stat > SW_BOUND * null
