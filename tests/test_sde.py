"""SDE families against closed forms and the literature; the discrete chain; bad input."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde as sd
from scoresde.testing import discrete_vp_sdes, sdes, states, times, vp_sdes

ALL = [
    sd.VPSDE(),
    sd.SubVPSDE(),
    sd.CosineVPSDE(),
    sd.VESDE(),
    sd.EDMSDE(),
    sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000)),
]


# --------------------------------------------------------------------------- closed forms
def test_vp_matches_song_et_al_closed_form():
    sde = sd.VPSDE(0.1, 20.0)
    t = torch.linspace(1e-5, 1, 50, dtype=torch.float64)
    log_mean_coeff = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1  # score_sde's VPSDE.marginal_prob
    torch.testing.assert_close(sde.alpha(t), torch.exp(log_mean_coeff), rtol=1e-14, atol=0)
    torch.testing.assert_close(sde.sigma(t), torch.sqrt(1 - torch.exp(2 * log_mean_coeff)))
    torch.testing.assert_close(sde.f(t), -0.5 * (0.1 + t * 19.9))
    torch.testing.assert_close(sde.diffusion(t), torch.sqrt(0.1 + t * 19.9))


def test_cosine_alpha_bar_is_nichol_dhariwal():
    s = 0.008
    sde = sd.CosineVPSDE(s)
    t = torch.linspace(1e-5, 0.9946, 50, dtype=torch.float64)

    def fbar(u):
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    torch.testing.assert_close(
        sde.alpha(t) ** 2, fbar(t) / fbar(torch.zeros(1, dtype=torch.float64))
    )


def test_ve_and_edm_closed_forms():
    ve = sd.VESDE(0.01, 50.0)
    t = torch.linspace(0, 1, 11, dtype=torch.float64).clamp_min(ve.t_min)
    torch.testing.assert_close(ve.sigma(t), 0.01 * (50 / 0.01) ** t)
    torch.testing.assert_close(ve.diffusion(t), ve.sigma(t) * math.sqrt(2 * math.log(50 / 0.01)))
    assert torch.equal(ve.alpha(t), torch.ones_like(t))
    edm = sd.EDMSDE()
    t = torch.linspace(0.002, 80, 11, dtype=torch.float64)
    torch.testing.assert_close(edm.sigma(t), t)
    torch.testing.assert_close(edm.g2(t), 2 * t)
    assert (edm.t_min, edm.T, edm.prior_std) == (0.002, 80.0, 80.0)
    assert ve.prior_std == 50.0


@given(sde=sdes(), x=states(), data=st.data())
def test_marginal_and_drift_on_any_state_shape(sde, x, data):
    t = data.draw(times(sde, batch=x.shape[0]))
    mean, std = sde.marginal(x, t)
    assert mean.shape == x.shape and mean.dtype == x.dtype
    expected_mean = sd.SDE.alpha(sde, t).to(x.dtype).reshape(-1, *[1] * (x.ndim - 1)) * x
    torch.testing.assert_close(mean, expected_mean)
    torch.testing.assert_close(
        (std * torch.ones_like(x)).flatten(1)[:, 0], sde.sigma(t).to(x.dtype)
    )
    drift = sde.drift(x, t)
    assert drift.shape == x.shape and drift.dtype == x.dtype


def test_float32_stable_at_tiny_t():
    """The naive sqrt(1 - exp(-B)) is exactly 0 at t = 1e-7 in float32; ours is not."""
    sde = sd.VPSDE(t_min=1e-7)
    t = torch.tensor(1e-7, dtype=torch.float32)
    b = 0.1 * t + 0.5 * 19.9 * t**2
    assert float(torch.sqrt(1 - torch.exp(-b))) == 0.0  # the failure mode
    sigma = sde.sigma(t)
    assert sigma.dtype == torch.float32
    t64 = float(t)
    assert float(sigma) == pytest.approx(math.sqrt(0.1 * t64 + 9.95 * t64**2), rel=1e-6)
    for fn in (sde.log_snr, sde.alpha, sde.f, sde.g2, sde.diffusion):
        assert math.isfinite(float(fn(t)))
    sub = sd.SubVPSDE(t_min=1e-7)
    assert float(sub.sigma(t)) == pytest.approx(0.1 * t64 + 9.95 * t64**2, rel=1e-6)
    assert float(sub.g2(t)) > 0


def test_python_float_t_gives_default_dtype():
    assert sd.VPSDE().alpha(0.5).dtype == torch.get_default_dtype()
    assert sd.VPSDE().alpha(torch.tensor(0.5, dtype=torch.float64)).dtype == torch.float64


# --------------------------------------------------------------------------- discrete chains
def test_vp_discretize_is_ddpm_linear_schedule():
    chain = sd.VPSDE(0.1, 20.0).discretize(1000)
    torch.testing.assert_close(chain.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    torch.testing.assert_close(
        chain.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000).double(), 0)
    )
    torch.testing.assert_close(chain.t, torch.arange(1, 1001, dtype=torch.float64) / 1000)


def test_ve_discretize_is_smld_geometric_sequence():
    chain = sd.VESDE(0.01, 50.0).discretize(10)
    want = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), 10, dtype=torch.float64))
    torch.testing.assert_close(chain.sigmas, want)
    assert not chain.is_variance_preserving
    with pytest.raises(ValueError, match="variance-preserving"):
        _ = chain.betas
    torch.testing.assert_close(chain.transition_sigma[1:] ** 2, torch.diff(want**2))


@given(sde=discrete_vp_sdes())
def test_from_discrete_is_exact_at_the_chain_times(sde):
    chain = sde.discretize(sde.num_steps)
    n = torch.arange(sde.num_steps)
    t = (n + 1).double() / sde.num_steps  # 0-based DDPM timestep n <-> t = (n + 1) / N
    torch.testing.assert_close(sde.alpha(t) ** 2, chain.alphas_cumprod, rtol=1e-12, atol=0)
    again = sd.VPSDE.from_discrete(chain.betas)
    torch.testing.assert_close(
        again.discretize(sde.num_steps).betas, chain.betas, rtol=1e-9, atol=0
    )
    via_ac = sd.VPSDE.from_discrete(alphas_cumprod=chain.alphas_cumprod)
    torch.testing.assert_close(via_ac.alpha(t), sde.alpha(t), rtol=1e-12, atol=0)
    assert (sde.t_min, sde.T) == (1 / sde.num_steps, 1.0)


def _roundtrip_error(sde, n):
    """max |log alpha| error of from_discrete(discretize(n)); chain time i/N is SDE time i T/N."""
    cont = sd.VPSDE.from_discrete(alphas_cumprod=sde.discretize(n).alphas_cumprod)
    t = torch.linspace(max(cont.t_min, sde.t_min / sde.T), cont.T, 8001, dtype=torch.float64)
    return float((cont.log_alpha(t) - sde.log_alpha(t * sde.T)).abs().max())


@given(sde=vp_sdes())
def test_discretize_from_discrete_roundtrip_is_first_order(sde):
    """DDPM betas beta(t)/N: the chain's alphas differ from the SDE's by O(1/N)."""
    e1, e2, e3 = (_roundtrip_error(sde, n) for n in (400, 800, 1600))
    assert 1.8 < e1 / e2 < 2.2 and 1.8 < e2 / e3 < 2.2, (e1, e2, e3)


@pytest.mark.parametrize("sde", [sd.CosineVPSDE(), sd.CosineVPSDE(0.05, T=0.99)], ids=repr)
def test_generic_discretize_is_exact_at_grid_and_second_order_between(sde):
    """The generic chain samples alpha(t_i) exactly; between knots the interpolation is O(1/N^2)."""
    chain = sde.discretize(100)
    torch.testing.assert_close(chain.alpha, sde.alpha(chain.t), rtol=1e-12, atol=0)
    e1, e2 = (_roundtrip_error(sde, n) for n in (800, 1600))
    assert e1 / e2 > 3.3, (e1, e2)  # measured 3.34 and 3.59 here; -> 4 as N grows


def test_chain_transitions_compose_to_marginals():
    for sde in ALL:
        chain = sde.discretize(50)
        a, s = chain.transition_alpha, chain.transition_sigma
        alpha, var = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for i in range(chain.N):
            alpha, var = a[i] * alpha, a[i] ** 2 * var + s[i] ** 2
        torch.testing.assert_close(alpha, chain.alpha[-1])
        torch.testing.assert_close(var.sqrt(), chain.sigma[-1])


# --------------------------------------------------------------------------- prior
@pytest.mark.parametrize("sde", ALL, ids=repr)
def test_prior_sample_is_reproducible_and_has_prior_std(sde):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    z1 = sde.prior_sample((4000, 8), g1)
    assert torch.equal(z1, sde.prior_sample((4000, 8), g2))
    # sample std within 5 standard errors of prior_std (se of a std estimate ~ s / sqrt(2 n))
    se = sde.prior_std / math.sqrt(2 * z1.numel())
    assert abs(float(z1.std()) - sde.prior_std) < 5 * se


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: sd.VPSDE(beta_min=-0.1), "beta_min must be >= 0"),
        (lambda: sd.VPSDE(beta_min=20.0, beta_max=20.0), "beta_min must be < beta_max"),
        (lambda: sd.SubVPSDE(beta_min=5.0, beta_max=1.0), "beta_min must be < beta_max"),
        (lambda: sd.VPSDE(beta_max=float("inf")), "beta_max must be finite"),
        (lambda: sd.VESDE(sigma_min=1.0, sigma_max=1.0), "sigma_min must be < sigma_max"),
        (lambda: sd.VESDE(sigma_min=0.0), "sigma_min must be > 0"),
        (lambda: sd.EDMSDE(sigma_min=80.0, sigma_max=1.0), "sigma_min must be < sigma_max"),
        (lambda: sd.CosineVPSDE(T=1.0), "T must be < 1"),
        (lambda: sd.CosineVPSDE(s=0.0), "s must be > 0"),
        (lambda: sd.VPSDE(t_min=0.0), "t_min must be > 0"),
        (lambda: sd.VPSDE(t_min=0.5, T=0.5), "t_min must be < T"),
        (lambda: sd.VPSDE.from_discrete(torch.tensor([0.1, 1.2])), r"betas must lie in \(0, 1\)"),
        (lambda: sd.VPSDE.from_discrete(torch.tensor([0.0, 0.1])), r"betas\[0\]"),
        (lambda: sd.VPSDE.from_discrete(torch.tensor([0.2, 0.1])), "non-decreasing"),
        (
            lambda: sd.VPSDE.from_discrete(alphas_cumprod=torch.tensor([0.9, 0.95])),
            "strictly decreasing",
        ),
        (lambda: sd.VPSDE.from_discrete(torch.tensor([float("nan")])), "finite"),
        (lambda: sd.VPSDE.from_discrete(torch.ones(2, 2) * 0.1), "1-D"),
        (lambda: sd.VPSDE.from_discrete(), "exactly one"),
        (lambda: sd.VPSDE().discretize(0), "N .* must be an int >= 1"),
        (lambda: sd.VPSDE().discretize(10), r"N must exceed beta\(T\) T"),
        (lambda: sd.VPSDE(beta_min=0.0).discretize(100), "beta_min = 0"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("sde", ALL, ids=repr)
def test_bad_times_raise_value_error(sde):
    with pytest.raises(ValueError, match=r"t must lie in \[t_min, T\]"):
        sde.alpha(sde.T * 1.5 + 1)
    with pytest.raises(ValueError, match=r"t must lie in \[t_min, T\]"):
        sde.sigma(torch.tensor([sde.t_min, -1.0]))
    with pytest.raises(ValueError, match="t must be finite"):
        sde.log_snr(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="lam must lie in"):
        sde.t_from_log_snr(float(sde.log_snr(torch.tensor(sde.t_min, dtype=torch.float64))) + 5)
    with pytest.raises(TypeError, match="t must be a float or a torch.Tensor"):
        sde.alpha("0.5")
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"t must have shape \(\) or \(batch,\)"):
        sde.drift(x, torch.full((2,), sde.T))
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        sde.drift(torch.zeros(3, 2, dtype=torch.long), sde.T)
    with pytest.raises(ValueError, match="shape must be a non-empty tuple"):
        sde.prior_sample((0, 2))


def test_float32_rounding_of_the_endpoints_is_accepted():
    for sde in ALL:
        t = torch.tensor([sde.t_min, sde.T], dtype=torch.float32)
        assert torch.isfinite(sde.log_snr(t)).all()


def test_vp_discretize_respects_T():
    """With T != 1 the DDPM betas cover [0, T]: the chain ends near alpha(T), not alpha(1)."""
    sde = sd.VPSDE(T=0.5)
    chain = sde.discretize(1000)
    assert float(chain.t[-1]) == 0.5
    assert float(chain.alpha[-1]) == pytest.approx(float(sde.alpha(0.5)), rel=0.02)
    ve = sd.VESDE(T=0.5).discretize(10)
    assert float(ve.t[-1]) == 0.5
    assert float(ve.sigma[-1]) == pytest.approx(sd.VESDE(T=0.5).prior_std, rel=1e-12)


def test_wrong_parameter_types_raise_type_error():
    for make in (
        lambda: sd.CosineVPSDE(s="0.008"),
        lambda: sd.VPSDE(beta_min="0.1"),
        lambda: sd.VESDE(sigma_max=None),
    ):
        with pytest.raises(TypeError):
            make()
