"""The SDE property suite (scoresde.testing.PROPERTIES) on random SDEs of every family."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde as sd
from scoresde.testing import (
    PROPERTIES,
    SDECheckError,
    check_sde,
    gaussian_data,
    sdes,
    time_grid,
    times,
    vp_sdes,
)


@st.composite
def sde_and_grid(draw):
    sde = draw(sdes())
    grid = time_grid(sde, n=33, seed=draw(st.integers(0, 2**16)))
    extra = draw(times(sde, batch=8))
    return sde, torch.unique(torch.cat([grid, extra]))


@pytest.mark.parametrize("name", sorted(PROPERTIES))
@given(case=sde_and_grid())
def test_property_holds_for_every_family(name, case):
    sde, t = case
    PROPERTIES[name](sde, t)


@pytest.mark.parametrize(
    "sde",
    [
        sd.VPSDE(),
        sd.SubVPSDE(),
        sd.CosineVPSDE(),
        sd.VESDE(),
        sd.EDMSDE(),
        sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000)),
    ],
    ids=repr,
)
def test_check_sde_passes_on_defaults(sde):
    assert check_sde(sde) == list(PROPERTIES)


@given(sde=vp_sdes(), t=st.floats(0.0, 1.0), data=gaussian_data())
def test_subvp_sigma_below_vp(sde, t, data):
    sub = sd.SubVPSDE(sde.beta_min, sde.beta_max, t_min=sde.t_min)
    tt = torch.tensor(sde.t_min + t * (sde.T - sde.t_min), dtype=torch.float64)
    assert float(sub.sigma(tt)) <= float(sde.sigma(tt))
    # ... and so is the marginal variance of any Gaussian data: sub-VP's is bounded by VP's
    mu, s = data
    a = float(sde.alpha(tt))
    assert a**2 * s**2 + float(sub.sigma(tt)) ** 2 <= a**2 * s**2 + float(sde.sigma(tt)) ** 2
    assert float(sub.alpha(tt)) == pytest.approx(a, rel=1e-15)


@given(sde=vp_sdes(), data=gaussian_data())
def test_vp_prior_kl_bound(sde, data):
    """For VP and data N(mu, s^2): KL(p_T || N(0, 1)) per dimension is at most
    alpha_T^2 mu^2 / 2 + delta^2 / (2 (1 + delta)) with delta = alpha_T^2 (s^2 - 1)
    (from x - log(1 + x) <= x^2 / (1 + x) for x > -1)."""
    mu, s = data
    a2 = float(sde.alpha(sde.T)) ** 2
    v = a2 * s**2 + float(sde.sigma(sde.T)) ** 2
    kl = 0.5 * (a2 * mu**2 + v - 1 - torch.log(torch.tensor(v, dtype=torch.float64)).item())
    delta = a2 * (s**2 - 1)
    assert 0 <= kl <= 0.5 * a2 * mu**2 + 0.5 * delta**2 / (1 + delta) + 1e-12


def test_vp_default_prior_kl_is_small_for_image_range_data():
    """Stated bound: for VPSDE(0.1, 20) and data with |mu| <= 1, s <= 1, KL < 1e-4 nats/dim."""
    sde = sd.VPSDE()
    a2 = float(sde.alpha(1.0)) ** 2
    for mu in (-1.0, 0.0, 1.0):
        for s in (0.01, 0.5, 1.0):
            v = a2 * s**2 + 1 - a2
            kl = 0.5 * (a2 * mu**2 + v - 1 - torch.log(torch.tensor(v)).item())
            assert kl < 1e-4


class _WrongDiffusion(sd.VPSDE):
    def _g2(self, t):  # forgot the factor: g^2 = beta, not beta / 2
        return 0.5 * self._beta.beta(t)


class _WrongInverse(sd.VESDE):
    def _t_from_log_snr(self, lam):  # sign error
        return (0.5 * lam - self._log_smin) / self._log_ratio


class _WrongPrior(sd.VESDE):
    @property
    def prior_std(self):  # N(0, I) prior for a VE SDE
        return 1.0


class _NonMonotone(sd.SDE):
    """alpha = 1, sigma = t exp(sin(12 t) / 2): sigma falls near t = 0.26."""

    def __init__(self):
        super().__init__(0.01, 1.0)

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return torch.log(t) + 0.5 * torch.sin(12.0 * t)

    def _t_from_log_snr(self, lam):  # the inverse of sigma = t only
        return torch.exp(-0.5 * lam)


@pytest.mark.parametrize(
    ("sde", "expected"),
    [
        (_WrongDiffusion(), {"g2_definition", "gaussian_variance_ode"}),
        (_WrongInverse(), {"t_from_log_snr_roundtrip"}),
        (_WrongPrior(), {"prior_matches_marginal"}),
        (_NonMonotone(), {"log_snr_decreasing"}),
    ],
    ids=["g2", "inverse", "prior", "monotone"],
)
def test_check_sde_finds_broken_sdes(sde, expected):
    with pytest.raises(SDECheckError) as info:
        check_sde(sde)
    assert expected <= set(info.value.failures), info.value.failures
    for name in expected:
        assert name in str(info.value)


def test_check_sde_rejects_unknown_property_names():
    with pytest.raises(ValueError, match="unknown properties"):
        check_sde(sd.VPSDE(), properties=["nope"])
