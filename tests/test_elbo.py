"""Tests of the variational bounds: the continuous-time ELBO and the discrete VDM ELBO.

Ground truth: the exact score of a Gaussian mixture. For the exact score the continuous bound is
tight (the generative and forward path measures agree), so its Monte-Carlo estimate must match
``log p`` within its standard error; for a wrong model it must lie below ``E log p`` (Gibbs'
inequality plus the bound). The discrete bound is compared with the continuous one on the same
noise draw (``t_sampling="quadrature"``), where the difference is deterministic and its decay
with N can be measured.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import scoresde as sd

F64 = torch.float64
EULER_GAMMA = 0.5772156649015329


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


GMM = sd.GaussianMixture(
    [0.3, 0.5, 0.2],
    [[1.5, -1.0], [-1.0, 0.5], [0.5, 1.5]],
    [[0.3, 0.2], [0.15, 0.4], [0.25, 0.25]],
)
WRONG = sd.GaussianMixture(  # means moved by (0.8, 0.8), wider: KL(GMM || WRONG) ~ 1.8 nats
    [0.3, 0.5, 0.2],
    [[2.3, -0.2], [-0.2, 1.3], [1.3, 2.3]],
    [[0.45, 0.3], [0.25, 0.6], [0.4, 0.4]],
)
X = GMM.sample(8, _gen(1), dtype=F64)


# --------------------------------------------------------------------------- the bound
@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.VESDE()], ids=["vp", "ve"])
def test_continuous_elbo_is_tight_for_the_exact_score_and_below_log_p(sde: sd.SDE):
    oracle = GMM.score_model(sde)
    log_p = GMM.log_prob(X)
    res = sd.elbo(oracle, X, n_samples=3000, generator=_gen(2))
    se = float(res.stderr.square().sum().sqrt()) / X.shape[0]
    gap = float((res.elbo - log_p).mean())
    assert gap < 3 * se, (gap, se)  # ELBO <= log p, up to the Monte-Carlo error
    assert abs(gap) < 3 * se + 0.02, (gap, se)  # and tight for the exact score
    torch.testing.assert_close(res.elbo, res.reconstruction - res.prior - res.denoising)
    torch.testing.assert_close(res.bpd, res.reconstruction_bpd + res.prior_bpd + res.denoising_bpd)
    torch.testing.assert_close(res.bpd, -res.elbo / (2 * math.log(2)))
    assert res.steps is None and res.nfe == 6000 and res.dim == 2
    assert (res.prior >= 0).all() and (res.denoising >= 0).all()


def test_elbo_of_a_wrong_model_is_below_the_exact_log_likelihood():
    sde = sd.VPSDE()
    x = GMM.sample(64, _gen(3), dtype=F64)
    res = sd.elbo(WRONG.score_model(sde), x, n_samples=200, generator=_gen(4))
    se = float(res.stderr.square().sum().sqrt()) / x.shape[0]
    margin = float((GMM.log_prob(x) - res.elbo).mean())
    kl = float((GMM.log_prob(x) - WRONG.log_prob(x)).mean())  # E log p - E log p_wrong
    assert margin > 5 * se and margin > kl - 3 * se, (margin, kl, se)


def test_importance_sampling_lowers_the_variance_and_agrees_with_uniform():
    sde = sd.VPSDE()
    oracle = GMM.score_model(sde)
    imp = sd.elbo(oracle, X, n_samples=2000, generator=_gen(5))
    uni = sd.elbo(oracle, X, n_samples=2000, t_sampling="uniform", generator=_gen(6))
    assert float(imp.stderr.mean()) < 0.5 * float(uni.stderr.mean())
    se = float((imp.stderr.square() + uni.stderr.square()).sum().sqrt()) / X.shape[0]
    assert abs(float((imp.elbo - uni.elbo).mean())) < 4 * se


# --------------------------------------------------------------------------- the terms
def test_prior_and_reconstruction_terms_have_their_closed_forms():
    sde = sd.VPSDE()
    oracle = GMM.score_model(sde)
    res = sd.elbo(oracle, X, n_samples=4000, generator=_gen(7))
    a_t, s_t = float(sde.alpha(sde.T)), float(sde.sigma(sde.T))
    kl = 0.5 * ((a_t**2 * X.square() + s_t**2) - 1.0 - math.log(s_t**2)).sum(1)
    torch.testing.assert_close(res.prior, kl)
    # Gaussian decoder N(x0_hat, s0^2), x - x0_hat ~ s0 eps at t_min: -D/2 log(2 pi e s0^2)
    s0 = float(sde.sigma(sde.t_min) / sde.alpha(sde.t_min))
    expected = -math.log(2 * math.pi * math.e * s0**2)
    assert (res.reconstruction - expected).abs().max() < 0.1


def test_discrete_data_reconstruction_is_a_bin_probability():
    """17 levels: the bound is on log P(x) (bins), below the exact bin probability."""
    sde = sd.VPSDE()
    mu = torch.tensor([[-0.4, 0.3], [0.5, -0.2]], dtype=F64)
    var = torch.tensor([[0.04, 0.09], [0.06, 0.03]], dtype=F64)
    gmm = sd.GaussianMixture([0.4, 0.6], mu, var)
    k = torch.randint(3, 14, (8, 2), generator=_gen(0))
    x = -1.0 + k.double() / 8.0
    res = sd.elbo(
        gmm.score_model(sde),
        x,
        n_samples=1000,
        generator=_gen(1),
        levels=17,
        data_range=(-1.0, 1.0),
    )
    nd = torch.special.ndtr
    mass = (
        nd((x[:, None] + 1 / 16 - mu) / var.sqrt()) - nd((x[:, None] - 1 / 16 - mu) / var.sqrt())
    ).prod(-1)
    exact = torch.log((gmm.weights * mass).sum(1))
    se = float(res.stderr.square().sum().sqrt()) / 8
    assert float((res.elbo - exact).mean()) < 3 * se
    assert (res.reconstruction <= 0).all() and (res.reconstruction > -1e-3).all()  # s0 << bin
    assert (res.bpd > 0).all()


# --------------------------------------------------------------------------- discrete vs continuous
def test_discrete_elbo_is_a_looser_bound():
    sde = sd.VPSDE()
    oracle = GMM.score_model(sde)
    log_p = GMM.log_prob(X)
    cont = sd.elbo(oracle, X, n_samples=1000, generator=_gen(8))
    disc = sd.elbo(oracle, X, steps=100, n_samples=1000, generator=_gen(9))
    se = float((cont.stderr.square() + disc.stderr.square()).sum().sqrt()) / X.shape[0]
    assert float((disc.elbo - log_p).mean()) < 3 * se
    assert float((cont.elbo - disc.elbo).mean()) > 3 * se
    assert disc.steps == 100 and disc.nfe == 2000


def _rate(errors: list[float], ns: list[int]) -> float:
    return float(np.polyfit(np.log(ns), np.log(errors), 1)[0])


def test_discrete_elbo_converges_to_the_continuous_one_at_rate_one_ve():
    """VE chain (geometric sigma levels from sigma_min, t in [0, T]): log-SNR steps of size
    O(1/N) everywhere, so on the same noise the discrete bound tends to the continuous one on
    [0, T] like 1/N (measured slope about -1.05)."""
    sde = sd.VESDE(t_min=0.0)
    oracle = GMM.score_model(sde)
    cont = sd.elbo(oracle, X, t_sampling="quadrature", n_samples=128, generator=_gen(5)).elbo
    ns = [50, 100, 200, 400]
    errors = [
        float(
            (cont - sd.elbo(oracle, X, steps=n, t_sampling="quadrature", generator=_gen(5)).elbo)
            .abs()
            .mean()
        )
        for n in ns
    ]
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert -1.25 < _rate(errors, ns) < -0.85, errors


def test_ddpm_chain_leaves_a_euler_gamma_gap():
    """The DDPM chain (``VPSDE.discretize``) puts latent i at t = i/N: near t = 0 its log-SNR
    steps are log(i / (i - 1)) whatever N, and where the data look flat the decoders' too-small
    variance costs ``|eps|^2 / 2 sum_k (1/k - log(1 + 1/k)) = gamma |eps|^2 / 2`` nats (Euler's
    gamma) on the noise draw ``eps``. With that constant removed the difference from the
    continuous bound on [1/N, 1] vanishes (about like log(N)/N: measured slope -0.8)."""
    ns = [50, 100, 200, 400]
    eps = torch.randn((1, *X.shape), generator=_gen(5), dtype=F64)[0]
    gamma_gap = EULER_GAMMA * eps.square().sum(1) / 2
    raw, errors = [], []
    for n in ns:
        oracle = GMM.score_model(sd.VPSDE(t_min=1.0 / n))
        cont = sd.elbo(oracle, X, t_sampling="quadrature", n_samples=128, generator=_gen(5)).elbo
        disc = sd.elbo(oracle, X, steps=n, t_sampling="quadrature", generator=_gen(5)).elbo
        raw.append(cont - disc)
        errors.append(float((cont - disc - gamma_gap).abs().mean()))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert _rate(errors, ns) < -0.6, errors
    assert float(raw[-1].mean()) > float(gamma_gap.mean())  # the raw difference does not vanish


def test_quadrature_is_converged_and_deterministic():
    oracle = GMM.score_model(sd.VPSDE())
    a = sd.elbo(oracle, X, t_sampling="quadrature", n_samples=128, generator=_gen(0))
    b = sd.elbo(oracle, X, t_sampling="quadrature", n_samples=192, generator=_gen(0))
    assert (a.elbo - b.elbo).abs().max() < 1e-5
    assert a.stderr.isnan().all() and a.nfe == 129


# --------------------------------------------------------------------------- shapes, validation
def test_4d_inputs_and_half_precision():
    gmm = sd.GaussianMixture([1.0], [[0.1] * 16], [[0.3] * 16])
    oracle = gmm.score_model(sd.VESDE())
    x = gmm.sample(3, _gen(0), dtype=F64)
    flat = sd.elbo(oracle, x, n_samples=8, generator=_gen(1))
    img = sd.elbo(oracle, x.reshape(3, 1, 4, 4), n_samples=8, generator=_gen(1))
    torch.testing.assert_close(flat.elbo, img.elbo)
    half = sd.elbo(oracle, x.half(), n_samples=8, generator=_gen(1))
    assert half.elbo.dtype == F64 and half.elbo.isfinite().all()


def test_arguments_are_validated():
    oracle = GMM.score_model(sd.VPSDE())
    with pytest.raises(ValueError, match="t_sampling must be one of"):
        sd.elbo(oracle, X, t_sampling="stratified")
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        sd.elbo(oracle, X, steps=0)
    with pytest.raises(ValueError, match="N must exceed"):
        sd.elbo(oracle, X, steps=10)  # the DDPM betas would reach 1
    with pytest.raises(ValueError, match="not on the grid"):
        sd.elbo(oracle, X, levels=17, data_range=(-1.0, 1.0))
    with pytest.raises(TypeError, match="model must have"):
        sd.elbo(object(), X)


def test_non_finite_data_or_network_output_is_an_error_not_a_nan_bound():
    model = GMM.score_model(sd.VPSDE())
    x = torch.tensor([[0.1, -0.2], [0.3, 0.4]], dtype=torch.float64)
    bad = x.clone()
    bad[0, 1] = math.inf
    with pytest.raises(ValueError, match=r"x must be finite: samples \[0\]"):
        sd.elbo(model, bad)

    class Broken:
        """The exact model with a network that returns NaN below t = 0.5."""

        def __init__(self, inner):
            self.inner, self.sde = inner, inner.sde

        def eps(self, z, t):
            out = self.inner.eps(z, t)
            return torch.where((t < 0.5).reshape(-1, 1), torch.full_like(out, math.nan), out)

        def x0(self, z, t):
            return self.inner.x0(z, t)

        def score(self, z, t):
            return self.inner.score(z, t)

    with pytest.raises(ValueError, match=r"model\.eps returned NaN or inf"):
        sd.elbo(Broken(model), x, generator=_gen(0))
    assert bool(torch.isfinite(sd.elbo(model, x, generator=_gen(0)).elbo).all())
