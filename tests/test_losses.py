"""Tests of the DSM objectives: weightings, time samplers, importance sampling, the oracle.

The ground truth is the exact score model of a Gaussian mixture (``gmm.score_model(sde)``):
DSM is minimised by E[eps | x_t], so on the same draws its loss must be below that of any
other model, for every weighting and every SDE. The weightings are also checked one by one
against their formulas as written in the papers (in their own prediction space), and the
importance-sampled likelihood weighting against the exact expected loss of a Gaussian.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import scoresde as sd
from scoresde import losses as L

SDES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "cosine": lambda: sd.CosineVPSDE(),
    "ve": lambda: sd.VESDE(),
    "edm": lambda: sd.EDMSDE(),
    "discrete_vp": lambda: sd.VPSDE.from_discrete(torch.linspace(1e-4, 0.02, 1000)),
}
WEIGHTING_NAMES = sorted(L.WEIGHTINGS)
PREDICTIONS = ["eps", "x0", "score", "v"]

GMM = sd.GaussianMixture(
    [0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [[0.1, 0.2], [0.3, 0.05]]
)  # diagonal covariances
# A plausible imperfect model: the exact score of a mixture with moved means and wider covs.
WRONG_GMM = sd.GaussianMixture([0.3, 0.7], [[-0.5, 0.5], [1.0, 0.0]], [[0.2, 0.4], [0.6, 0.1]])


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are small: one intra-op thread is faster than several, and much faster
    when the cores are shared (thread oversubscription)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _offset_model(oracle: sd.ScoreModel, prediction: str, offset: float) -> sd.ScoreModel:
    """A network predicting ``prediction`` that is the oracle's plus ``offset`` (0: exact)."""

    def net(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return oracle.predict(x, t, prediction) + offset

    return sd.ScoreModel(net, oracle.sde, prediction=prediction)


# --------------------------------------------------------------------------- weights


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", WEIGHTING_NAMES)
def test_every_weight_finite_and_positive_at_both_ends(sde_name: str, name: str) -> None:
    sde = SDES[sde_name]()
    w = sd.get_weighting(name)
    t = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    level = L.noise_level(sde, t)
    weights = [w.weight(level), w.eps_weight(level)]
    weights += [w.native_weight(level, p) for p in PREDICTIONS]
    for value in weights:
        assert torch.isfinite(value).all() and (value > 0).all(), (name, value)
    # and the loss itself, evaluated exactly at t_min and T in float32, for each prediction
    x0 = GMM.sample(2, _gen(0), dtype=torch.float32)
    eps = torch.randn(x0.shape, generator=_gen(1))
    for p in PREDICTIONS:
        model = _offset_model(GMM.score_model(sde), p, 0.1)
        loss = sd.dsm_loss_at(model, x0, t, eps, weighting=name)
        assert loss.dtype == torch.float32 and torch.isfinite(loss).all(), (p, loss)


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("name", WEIGHTING_NAMES)
def test_closed_form_eps_weights_equal_the_generic_derivation(sde_name: str, name: str) -> None:
    """Each weighting's closed-form w_eps equals w_p(t) c_p(t)^2 (the base-class formula)."""
    sde = SDES[sde_name]()
    t = torch.linspace(sde.t_min, sde.T, 101, dtype=torch.float64)
    level = L.noise_level(sde, t)
    w = sd.get_weighting(name)
    generic = L.Weighting.eps_weight(w, level)
    torch.testing.assert_close(w.eps_weight(level), generic, rtol=1e-10, atol=0)


def _paper_formula(name: str, model: sd.ScoreModel, x0, eps, t) -> torch.Tensor:
    """Each weighting as written in its paper, in its own space, via the model's conversions.

    Written independently of scoresde.losses: alpha, sigma, g^2 from the SDE's public API.
    """
    sde = model.sde
    a, s, g2 = sde.alpha(t)[:, None], sde.sigma(t)[:, None], sde.g2(t)
    x_t = a * x0 + s * eps

    def mse(u: torch.Tensor) -> torch.Tensor:
        return u.square().mean(1)

    score_err = mse(model.score(x_t, t) + eps / s)  # true conditional score -eps / sigma
    x0_err = mse(model.x0(x_t, t) - x0)
    snr = (a / s).square()[:, 0]
    if name == "eps":  # Ho et al. 2020
        return mse(model.eps(x_t, t) - eps)
    if name == "score":  # Song et al. 2021, lambda = sigma^2
        return s[:, 0] ** 2 * score_err
    if name == "likelihood":  # Song, Durkan, Murray & Ermon 2021, lambda = g^2
        return g2 * score_err
    if name == "x0":
        return x0_err
    if name == "v":  # Salimans & Ho 2022
        return mse(model.v(x_t, t) - (a * eps - s * x0))
    if name == "edm":  # Karras et al. 2022: (sigma^2 + sd^2) / (sigma sd)^2, sigma = s / a
        noise, sd2 = (s / a)[:, 0], 0.5**2
        return (noise**2 + sd2) / (noise**2 * sd2) * x0_err
    if name == "min_snr":  # Hang et al. 2023, gamma = 5
        return snr.clamp_max(5.0) * x0_err
    raise AssertionError(name)


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "ve", "edm"])
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("name", WEIGHTING_NAMES)
def test_weightings_match_their_paper_formulas(sde_name: str, prediction: str, name: str) -> None:
    """The one eps-space implementation equals each paper's loss, whatever the network
    predicts (so the conversions and the weight table are consistent)."""
    sde = SDES[sde_name]()
    model = _offset_model(WRONG_GMM.score_model(sde), prediction, 0.05)
    n = 64
    x0 = GMM.sample(n, _gen(2), dtype=torch.float64)
    eps = torch.randn(n, 2, generator=_gen(3), dtype=torch.float64)
    t = sde.t_min + (sde.T - sde.t_min) * torch.rand(n, generator=_gen(4), dtype=torch.float64)
    t = t.clamp(min=sde.t_min + 1e-3 * (sde.T - sde.t_min))  # conversions stay well conditioned
    got = sd.dsm_loss_at(model, x0, t, eps, weighting=name)
    want = _paper_formula(name, model, x0, eps, t)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_reduce_sum_is_dim_times_mean() -> None:
    sde = sd.VPSDE()
    model = WRONG_GMM.score_model(sde)
    x0 = GMM.sample(32, _gen(0))
    mean = sd.dsm_loss(model, x0, weighting="v", generator=_gen(1)).per_sample
    total = sd.dsm_loss(model, x0, weighting="v", generator=_gen(1), reduce="sum").per_sample
    torch.testing.assert_close(total, 2 * mean)


# --------------------------------------------------------------------------- the oracle wins


@pytest.mark.parametrize("sde_name", ["vp", "subvp", "cosine", "ve", "edm"])
@pytest.mark.parametrize("name", WEIGHTING_NAMES)
def test_oracle_loss_is_lowest_on_the_same_draws(sde_name: str, name: str) -> None:
    """DSM's minimiser is E[eps | x_t]: the exact score model beats perturbed models.

    For a model m, L(m) - L(oracle) = E[w ||delta||^2] + 2 E[w <delta, eps_o - eps>] with
    delta = eps_m - eps_o; the second term has mean 0 (E[eps | x_t] = eps_o), so the paired
    per-sample difference has a positive mean. Same t and eps for both (same seed), 8192
    samples: over all SDEs, weightings and both models the difference's mean measured 6 to 40
    standard errors while writing the test, so asking for 3 keeps a margin of 3 standard
    errors against the luck of the draw, while a loss whose minimiser is not the oracle fails.
    """
    sde = SDES[sde_name]()
    oracle = GMM.score_model(sde)
    x0 = GMM.sample(8192, _gen(11))
    base = sd.dsm_loss(oracle, x0, weighting=name, generator=_gen(12)).per_sample.double()
    perturbed = {
        "wrong mixture": WRONG_GMM.score_model(sde),
        "eps offset": _offset_model(oracle, "eps", 0.2),
    }
    for label, model in perturbed.items():
        other = sd.dsm_loss(model, x0, weighting=name, generator=_gen(12)).per_sample.double()
        diff = other - base
        z = diff.mean() / (diff.std() / math.sqrt(diff.numel()))
        assert other.mean() > base.mean(), (label, float(other.mean()), float(base.mean()))
        assert z > 3.0, (label, float(z))


# --------------------------------------------------------------------------- importance sampling


def _exact_expected_likelihood_loss(sde: sd.SDE, var: float, dim: int) -> float:
    """E_{t ~ U} [g^2 / sigma^2 E||E[eps | x_t] - eps||^2] for x0 ~ N(m, var I): the residual
    of eps given x_t has variance alpha^2 var / (alpha^2 var + sigma^2) per dimension. Integrated
    by the trapezoid rule on a grid fine both in t and in log-SNR (where g^2 / sigma^2 peaks)."""
    lam_ends = sde.log_snr(torch.tensor([sde.T, sde.t_min], dtype=torch.float64))
    lam = torch.linspace(float(lam_ends[0]), float(lam_ends[1]), 200_001, dtype=torch.float64)
    t = torch.cat(
        [sde.t_from_log_snr(lam), torch.linspace(sde.t_min, sde.T, 200_001, dtype=torch.float64)]
    )
    t = torch.unique(t.clamp(sde.t_min, sde.T))
    a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
    f = sde.g2(t) / s2 * dim * a2 * var / (a2 * var + s2)
    return float(torch.trapezoid(f, t)) / (sde.T - sde.t_min)


@pytest.mark.parametrize("sde_name", ["vp", "cosine", "edm"])
def test_importance_sampling_is_unbiased_and_reduces_variance(sde_name: str) -> None:
    """Both estimators of the likelihood-weighted loss agree with the exact expectation of a
    Gaussian's oracle within 4 standard errors (measured), and with each other; importance
    sampling lowers the variance (by over 100x here; we ask for 10x)."""
    sde = SDES[sde_name]()
    var, n = 0.25, 20_000
    gaussian = sd.GaussianMixture.gaussian([0.5, -0.5], var)
    oracle = gaussian.score_model(sde)
    x0 = gaussian.sample(n, _gen(3), dtype=torch.float64)
    exact = _exact_expected_likelihood_loss(sde, var, dim=2)

    def per_sample(sampler: str, seed: int) -> torch.Tensor:
        out = sd.dsm_loss(
            oracle, x0, weighting="likelihood", t_sampler=sampler, generator=_gen(seed),
            reduce="sum",
        )  # fmt: skip
        return out.per_sample

    plain, importance = per_sample("uniform", 4), per_sample("importance", 5)
    se_plain, se_imp = plain.std() / math.sqrt(n), importance.std() / math.sqrt(n)
    assert abs(float(importance.mean()) - exact) < 4 * float(se_imp)
    assert abs(float(plain.mean()) - exact) < 4 * float(se_plain)
    diff = float(plain.mean() - importance.mean())
    assert abs(diff) < 4 * math.hypot(float(se_plain), float(se_imp))
    assert importance.var() < plain.var() / 10


def test_importance_sampler_for_likelihood_is_uniform_in_log_snr() -> None:
    """q(t) ∝ g^2 / sigma^2 = -d lambda / dt means lambda(t) ~ U[lambda(T), lambda(t_min)]
    (the closed form; the sampler only integrates the weight numerically)."""
    sde = sd.VPSDE()
    sampler = sd.get_t_sampler("importance")
    w = sd.get_weighting("likelihood")
    draw = sampler.sample(20_000, sde, w, generator=_gen(0))
    lam = sde.log_snr(draw.t)
    lo, hi = float(sde.log_snr(sde.T)), float(sde.log_snr(sde.t_min))
    u = (lam - lo) / (hi - lo)
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3
    # the importance factor is 1 / ((T - t_min) q(t)) with q = w / (lambda(t_min) - lambda(T))
    level = L.noise_level(sde, draw.t)
    expected = (hi - lo) / ((sde.T - sde.t_min) * w.eps_weight(level))
    torch.testing.assert_close(draw.importance, expected, rtol=2e-2, atol=0)


def test_importance_sampling_of_a_constant_weight_is_uniform() -> None:
    """For VE the likelihood weight g^2 / sigma^2 = 2 log(sigma_max / sigma_min) is constant:
    importance sampling reduces to uniform sampling with factor 1."""
    sde = sd.VESDE()
    draw = sd.get_t_sampler("importance").sample(
        4096, sde, sd.get_weighting("likelihood"), generator=_gen(1)
    )
    torch.testing.assert_close(draw.importance, torch.ones_like(draw.t), rtol=1e-9, atol=0)
    u = (draw.t - sde.t_min) / (sde.T - sde.t_min)
    assert stats.kstest(u.numpy(), "uniform").pvalue > 1e-3


def test_importance_density_integrates_to_one() -> None:
    sde = sd.CosineVPSDE()
    sampler = L.ImportanceTimeSampler()
    t = torch.linspace(sde.t_min, sde.T, 400_001, dtype=torch.float64)
    for name in ("likelihood", "x0", "edm"):
        q = sampler.density(sde, sd.get_weighting(name), t)
        assert abs(float(torch.trapezoid(q, t)) - 1.0) < 1e-3, name


# --------------------------------------------------------------------------- other samplers


@pytest.mark.parametrize("sde_name", sorted(SDES))
@pytest.mark.parametrize("sampler", sorted(L.T_SAMPLERS))
def test_samplers_stay_in_range_and_are_reproducible(sde_name: str, sampler: str) -> None:
    sde = SDES[sde_name]()
    s = sd.get_t_sampler(sampler)
    w = sd.get_weighting("likelihood")
    a = s.sample(512, sde, w, generator=_gen(9))
    b = s.sample(512, sde, w, generator=_gen(9))
    assert a.t.dtype == torch.float64 and a.t.shape == (512,)
    assert bool((a.t >= sde.t_min).all()) and bool((a.t <= sde.T).all())
    assert torch.isfinite(a.importance).all() and (a.importance > 0).all()
    torch.testing.assert_close(a.t, b.t, rtol=0, atol=0)


def test_low_discrepancy_puts_one_time_in_each_stratum() -> None:
    sde = sd.VPSDE()
    n = 64
    draw = sd.get_t_sampler("low_discrepancy").sample(
        n, sde, sd.get_weighting("eps"), generator=_gen(2)
    )
    strata = torch.floor((draw.t - sde.t_min) / (sde.T - sde.t_min) * n).long()
    assert sorted(strata.tolist()) == list(range(n))
    # and each t is marginally uniform: the offsets of many batches are
    firsts = torch.stack(
        [
            sd.get_t_sampler("antithetic")
            .sample(8, sde, sd.get_weighting("eps"), generator=_gen(100 + i))
            .t[0]
            for i in range(400)
        ]
    )
    assert (
        stats.kstest(((firsts - sde.t_min) / (sde.T - sde.t_min)).numpy(), "uniform").pvalue > 1e-3
    )


def test_lognormal_sampler_matches_edm_noise_distribution() -> None:
    """For EDM (t = sigma), ln t ~ N(-1.2, 1.2^2) truncated to [ln 0.002, ln 80]: nearly no
    truncation, so the sample mean and std of ln t are within 4 standard errors of the
    normal's."""
    sde = sd.EDMSDE()
    n = 20_000
    draw = sd.get_t_sampler("lognormal").sample(n, sde, sd.get_weighting("edm"), generator=_gen(3))
    ln_t = torch.log(draw.t)
    assert abs(float(ln_t.mean()) + 1.2) < 4 * 1.2 / math.sqrt(n)
    assert abs(float(ln_t.std()) - 1.2) < 4 * 1.2 / math.sqrt(2 * n)
    assert stats.kstest(ln_t.numpy(), "norm", args=(-1.2, 1.2)).pvalue > 1e-3


def test_lognormal_sampler_truncates_without_point_masses() -> None:
    """A range far from EDM's typical noise levels: all draws inside, none piled on an end."""
    sde = sd.VESDE(sigma_min=2.0, sigma_max=10.0)
    draw = sd.get_t_sampler("lognormal").sample(
        4096, sde, sd.get_weighting("edm"), generator=_gen(4)
    )
    assert bool((draw.t >= sde.t_min).all()) and bool((draw.t <= sde.T).all())
    assert int((draw.t == sde.t_min).sum()) <= 1 and int((draw.t == sde.T).sum()) <= 1


# --------------------------------------------------------------------------- API


def test_perturb_uses_the_marginal() -> None:
    sde = sd.SubVPSDE()
    x0 = torch.randn(5, 1, 2, 2, generator=_gen(0))
    t = torch.linspace(0.1, 0.9, 5)
    out = sd.perturb(sde, x0, t, generator=_gen(1))
    mean, std = sde.marginal(x0, t)
    torch.testing.assert_close(out.x_t, mean + std * out.eps)
    again = sd.perturb(sde, x0, t, generator=_gen(1))
    torch.testing.assert_close(out.eps, again.eps, rtol=0, atol=0)
    eps = torch.zeros_like(x0)
    torch.testing.assert_close(sd.perturb(sde, x0, t, eps=eps).x_t, mean)


def test_dsm_loss_trains_a_network_and_reports_its_draws() -> None:
    torch.manual_seed(0)
    net = sd.MLP(2, width=16, depth=1)
    model = sd.ScoreModel(net, sd.VPSDE(), prediction="v")
    x0 = GMM.sample(16, _gen(0))
    out = sd.dsm_loss(model, x0, weighting="min_snr", generator=_gen(1))
    assert out.loss.ndim == 0 and out.per_sample.shape == (16,) and out.t.shape == (16,)
    torch.testing.assert_close(out.loss, out.per_sample.mean())
    out.loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    again = sd.dsm_loss(model, x0, weighting="min_snr", generator=_gen(1))
    torch.testing.assert_close(again.t, out.t, rtol=0, atol=0)
    torch.testing.assert_close(again.per_sample, out.per_sample)


def test_default_t_samplers_follow_the_weighting() -> None:
    sde = sd.VPSDE()
    x0 = GMM.sample(8, _gen(0))
    oracle = GMM.score_model(sde)
    for name, sampler in (("likelihood", "importance"), ("edm", "lognormal"), ("x0", "uniform")):
        default = sd.dsm_loss(oracle, x0, weighting=name, generator=_gen(1))
        explicit = sd.dsm_loss(oracle, x0, weighting=name, t_sampler=sampler, generator=_gen(1))
        torch.testing.assert_close(default.t, explicit.t, rtol=0, atol=0)


def test_weighting_parameters() -> None:
    level = L.noise_level(sd.VPSDE(), torch.tensor([0.05, 0.5]))
    w2 = sd.get_weighting("min_snr", gamma=2.0).eps_weight(level)
    w5 = sd.get_weighting("min_snr").eps_weight(level)
    assert bool((w2 <= w5).all()) and bool((w2 < w5).any())
    assert sd.get_weighting("edm", sigma_data=1.0) == L.EDMWeighting(sigma_data=1.0)


def test_bad_options_name_what_is_allowed() -> None:
    model = GMM.score_model(sd.VPSDE())
    x0 = GMM.sample(4, _gen(0))
    with pytest.raises(ValueError, match="likelihood"):
        sd.dsm_loss(model, x0, weighting="elbo")
    with pytest.raises(ValueError, match="lognormal"):
        sd.dsm_loss(model, x0, t_sampler="sobol")
    with pytest.raises(ValueError, match="reduce"):
        sd.dsm_loss(model, x0, reduce="max")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ScoreModel"):
        sd.dsm_loss(lambda x, t: x, x0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma"):
        sd.get_weighting("min_snr", gamma=0.0)
    with pytest.raises(ValueError, match="t must be"):
        sd.dsm_loss_at(model, x0, torch.full((3,), 0.5), torch.randn(4, 2))
