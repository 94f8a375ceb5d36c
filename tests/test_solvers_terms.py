"""Protocols, concrete terms, NFE counting wrappers and ``append_dims``."""

from __future__ import annotations

import pytest
import torch
from solver_helpers import EDMSchedule
from torch import Tensor

import solvers
from solvers import (
    DenoiserTerm,
    DenoiserTermLike,
    ODETerm,
    ODETermLike,
    Schedule,
    SDETerm,
    SDETermLike,
    append_dims,
    count_evaluations,
)
from solvers.terms import (
    CountingDenoiserTerm,
    CountingODETerm,
    CountingSDETerm,
    protocol_members,
)


def _x(shape: tuple[int, ...] = (3, 2)) -> Tensor:
    return torch.arange(float(torch.Size(shape).numel())).reshape(shape)


# --------------------------------------------------------------------------- protocols


def test_terms_satisfy_exactly_their_protocol() -> None:
    ode = ODETerm(lambda x, t: -x)
    sde = SDETerm(lambda x, t: -x, lambda x, t: torch.ones(()))
    den = DenoiserTerm(lambda x, t: 0.5 * x, EDMSchedule())
    assert isinstance(ode, ODETermLike) and not isinstance(ode, SDETermLike | DenoiserTermLike)
    assert isinstance(sde, SDETermLike) and not isinstance(sde, ODETermLike | DenoiserTermLike)
    assert isinstance(den, DenoiserTermLike) and not isinstance(den, ODETermLike | SDETermLike)
    assert isinstance(EDMSchedule(), Schedule)
    assert not isinstance(object(), Schedule)


def test_protocol_members() -> None:
    assert protocol_members(ODETermLike) == ["velocity"]
    assert protocol_members(SDETermLike) == ["diffusion", "drift"]
    assert protocol_members(DenoiserTermLike) == ["denoise", "schedule"]
    assert protocol_members(Schedule) == ["alpha", "log_snr", "sigma", "t_from_log_snr"]


def test_terms_forward_x_and_t() -> None:
    x, t = _x(), torch.tensor(0.25, dtype=torch.float64)
    assert torch.equal(ODETerm(lambda x, t: x * t).velocity(x, t), x * 0.25)
    sde = SDETerm(lambda x, t: x + t, lambda x, t: 2 * t)
    assert torch.equal(sde.drift(x, t), x + 0.25)
    assert float(sde.diffusion(x, t)) == 0.5
    schedule = EDMSchedule()
    den = DenoiserTerm(lambda x, t: x - t, schedule)
    assert torch.equal(den.denoise(x, t), x - 0.25)
    assert den.schedule is schedule


def test_terms_are_frozen() -> None:
    term = ODETerm(lambda x, t: x)
    with pytest.raises(AttributeError):
        term.velocity_fn = lambda x, t: -x  # type: ignore[misc]


# --------------------------------------------------------------------------- NFE counting


def test_counting_ode_term() -> None:
    counted = count_evaluations(ODETerm(lambda x, t: -x), ODETermLike)
    assert isinstance(counted, CountingODETerm) and counted.nfe == 0
    x, t = _x(), torch.tensor(0.0, dtype=torch.float64)
    for k in range(1, 4):
        assert torch.equal(counted.velocity(x, t), -x)
        assert counted.nfe == k
        assert isinstance(counted.nfe, int)


def test_counting_sde_term_counts_drift_not_diffusion() -> None:
    counted = count_evaluations(SDETerm(lambda x, t: -x, lambda x, t: 3 * t), SDETermLike)
    assert isinstance(counted, CountingSDETerm)
    x, t = _x(), torch.tensor(2.0, dtype=torch.float64)
    for _ in range(5):
        assert float(counted.diffusion(x, t)) == 6.0
    assert counted.nfe == 0
    for _ in range(3):
        counted.drift(x, t)
    assert counted.nfe == 3


def test_counting_denoiser_term_counts_denoise_not_schedule() -> None:
    schedule = EDMSchedule()
    counted = count_evaluations(DenoiserTerm(lambda x, t: 0 * x, schedule), DenoiserTermLike)
    assert isinstance(counted, CountingDenoiserTerm)
    assert counted.schedule is schedule
    assert counted.nfe == 0
    counted.denoise(_x(), torch.tensor(1.0, dtype=torch.float64))
    counted.denoise(_x(), torch.tensor(1.0, dtype=torch.float64))
    assert counted.nfe == 2


def test_counting_wrapper_exposes_only_its_protocol() -> None:
    class Both:
        """A term that is both an ODE and an SDE term."""

        def velocity(self, x: Tensor, t: Tensor) -> Tensor:
            return x

        def drift(self, x: Tensor, t: Tensor) -> Tensor:
            return x

        def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
            return torch.ones(())

    counted = count_evaluations(Both(), ODETermLike)
    assert isinstance(counted, ODETermLike)
    assert not isinstance(counted, SDETermLike)
    assert not hasattr(counted, "drift")


def test_counting_unknown_protocol() -> None:
    with pytest.raises(TypeError, match="ODETermLike"):
        count_evaluations(ODETerm(lambda x, t: x), Schedule)


def test_counted_terms_in_integrate_count_per_protocol() -> None:
    """A denoiser-consuming solver: integrate counts ``denoise`` calls, one per step."""
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class DDIMLike(solvers.Solver[DenoiserTermLike, None]):
        """Test-only deterministic DDIM step (Song et al. 2021, eta = 0)."""

        order = 1
        term_type = DenoiserTermLike
        evals_per_step = 1

        def step(
            self,
            term: DenoiserTermLike,
            t0: Tensor,
            t1: Tensor,
            x: Tensor,
            state: None,
            noise: Tensor | None,
        ) -> tuple[Tensor, None]:
            s = term.schedule
            x0_hat = term.denoise(x, t0)
            eps_hat = (x - s.alpha(t0) * x0_hat) / s.sigma(t0)
            return s.alpha(t1) * x0_hat + s.sigma(t1) * eps_hat, None

    mu = 0.7
    term = DenoiserTerm(lambda x, t: torch.full_like(x, mu), EDMSchedule())
    x0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sol = solvers.integrate(DDIMLike(), term, x0, solvers.uniform(10.0, 0.5, 7))
    assert sol.nfe == 7
    # point-mass data: DDIM is exact, x(t) = mu + (t / t_start) (x0 - mu)
    torch.testing.assert_close(sol.x, mu + (0.5 / 10.0) * (x0 - mu))
    with pytest.raises(TypeError, match="DenoiserTermLike"):
        solvers.integrate(DDIMLike(), ODETerm(lambda x, t: x), x0, solvers.uniform(1.0, 0.5, 2))


# --------------------------------------------------------------------------- append_dims


@pytest.mark.parametrize("shape", [(5, 3), (5, 3, 4, 4), (5,)])
def test_append_dims_per_sample(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    v = torch.arange(1.0, 6.0)
    out = append_dims(v, x.ndim)
    assert out.shape == (5,) + (1,) * (x.ndim - 1)
    assert out.data_ptr() == v.data_ptr()  # a view
    scaled = out * x
    for b in range(5):
        torch.testing.assert_close(scaled[b], v[b] * x[b])


def test_append_dims_scalar_is_unchanged() -> None:
    v = torch.tensor(2.0)
    assert append_dims(v, 4).shape == ()
    assert append_dims(v, 0).shape == ()


def test_append_dims_too_many_dims() -> None:
    with pytest.raises(ValueError, match=r"2 dims.*ndim=1"):
        append_dims(torch.zeros(3, 2), 1)


@pytest.mark.parametrize("ndim", [-1, 1.5, True])
def test_append_dims_bad_ndim(ndim: object) -> None:
    with pytest.raises(ValueError, match="ndim"):
        append_dims(torch.zeros(3), ndim)  # type: ignore[arg-type]
