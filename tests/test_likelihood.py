"""Tests of the PF-ODE likelihood, the divergence estimators, bits/dim and encode/decode.

Ground truth: the exact score of a Gaussian mixture (the oracle) and its exact log-densities
``log p_t``. The prior mismatch at T is removed by passing the exact ``log p_T`` of the diffused
mixture as ``prior``; what remains is the error of the ODE solve, compared with the exact
``log p_{t_min}`` (``oracle.log_prob_t(x, t_min)``). With the default prior the mismatch is
bounded by ``|prior_logp(z) - log p_T(z)|``, computed from the same z.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor

import scoresde as sd
import solvers
from scoresde import likelihood as lik_mod
from scoresde.divergence import exact_divergence, hutchinson_divergence, sample_probes

F64 = torch.float64

SDES = {
    "vp": lambda: sd.VPSDE(),
    "subvp": lambda: sd.SubVPSDE(),
    "ve": lambda: sd.VESDE(),
}


@pytest.fixture(autouse=True)
def _single_thread():
    """Small tensors: one intra-op thread is faster, and much faster on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _mixture(d: int, k: int = 3, seed: int = 0) -> sd.GaussianMixture:
    g = _gen(seed)
    w = torch.rand(k, generator=g, dtype=F64) + 0.5
    mu = 2.0 * torch.randn(k, d, generator=g, dtype=F64)
    covs = 0.1 + 0.5 * torch.rand(k, d, generator=g, dtype=F64)
    return sd.GaussianMixture(w / w.sum(), mu, covs)


def oracle_for(gmm: sd.GaussianMixture, sde: sd.SDE) -> sd.GaussianMixtureOracle:
    """The exact score model (differentiable by autograd: the likelihood needs its Jacobian)."""
    return gmm.score_model(sde)


def _case(sde_name: str, d: int, b: int = 6, seed: int = 0):
    sde = SDES[sde_name]()
    gmm = _mixture(d, seed=seed)
    oracle = oracle_for(gmm, sde)
    x = gmm.sample(b, _gen(seed + 1), dtype=F64)
    return sde, gmm, oracle, x


def _exact_prior(oracle: sd.GaussianMixtureOracle):
    return lambda z: oracle.log_prob_t(z, oracle.sde.T)


# --------------------------------------------------------------------------- divergence
def test_exact_divergence_matches_the_jacobian_trace_in_chunks():
    a = torch.randn(6, 6, generator=_gen(0), dtype=F64)

    def fn(v: Tensor) -> Tensor:
        return torch.tanh(v.flatten(1) @ a).reshape(v.shape)

    x = torch.randn(3, 2, 3, generator=_gen(1), dtype=F64)
    trace = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v: fn(v[None])[0], x[i]).reshape(6, 6).trace()
            for i in range(3)
        ]
    )
    for chunk in (None, 1, 4, 6):
        out = exact_divergence(fn, x, chunk_size=chunk)
        torch.testing.assert_close(out.divergence, trace, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.value, fn(x))


def test_hutchinson_is_unbiased_and_rademacher_exact_on_diagonal_jacobians():
    x = torch.randn(4, 5, generator=_gen(2), dtype=F64)
    probes = sample_probes(x.shape, 3, "rademacher", generator=_gen(3), dtype=F64)
    assert set(probes.unique().tolist()) <= {-1.0, 1.0}
    out = hutchinson_divergence(lambda v: v**3, x, probes)  # diagonal Jacobian: exact
    torch.testing.assert_close(out.divergence, (3 * x**2).sum(1, keepdim=True).expand(4, 3))
    a = torch.randn(5, 5, generator=_gen(4), dtype=F64)
    gauss = sample_probes(x.shape, 20000, "gaussian", generator=_gen(5), dtype=F64)
    est = hutchinson_divergence(lambda v: v @ a, x, gauss).divergence
    se = est.std(1) / math.sqrt(est.shape[1])
    assert ((est.mean(1) - a.trace()).abs() < 4 * se).all()


# --------------------------------------------------------------------------- oracle accuracy
@pytest.mark.parametrize("d", [2, 16])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_log_likelihood_matches_the_oracle(sde_name: str, d: int):
    """Exact divergence, rtol 1e-6: the ODE error is < 1e-4 nats/dim (the issue asks 1e-3);
    with the default prior the error is bounded by the prior mismatch at T."""
    sde, _, oracle, x = _case(sde_name, d)
    exact = oracle.log_prob_t(x, sde.t_min)
    res = sd.log_likelihood(oracle, x, rtol=1e-6, atol=1e-6, prior=_exact_prior(oracle))
    err = (res.log_prob - exact).abs() / d
    assert err.max() < 1e-4, err
    torch.testing.assert_close(res.log_prob, res.prior_logp + res.delta_logp)
    torch.testing.assert_close(res.bpd, -res.log_prob / (d * math.log(2)))
    assert res.stderr.eq(0).all() and res.log_prob.dtype == F64 and res.dim == d
    # the default prior on the same solve: off by at most the prior mismatch at T
    prior_logp = sde.prior_logp(res.z)
    mismatch = (prior_logp - oracle.log_prob_t(res.z, sde.T)).abs()
    default = res.delta_logp + prior_logp
    assert ((default - exact).abs() <= mismatch + 1e-4 * d).all()


@pytest.mark.slow
@pytest.mark.parametrize("sde", [sd.CosineVPSDE(), sd.EDMSDE()], ids=["cosine", "edm"])
def test_log_likelihood_matches_the_oracle_other_families(sde: sd.SDE):
    gmm = _mixture(8)
    oracle = oracle_for(gmm, sde)
    x = gmm.sample(6, _gen(1), dtype=F64)
    exact = oracle.log_prob_t(x, sde.t_min)
    for per_sample in (False, True):
        res = sd.log_likelihood(
            oracle, x, rtol=1e-6, atol=1e-6, prior=_exact_prior(oracle), per_sample=per_sample
        )
        assert ((res.log_prob - exact).abs() / 8).max() < 1e-4


def test_hutchinson_mean_within_3_stderr_and_stderr_shrinks_as_inverse_sqrt_k():
    """The estimated standard error is itself noisy for few probes (a t distribution with K - 1
    degrees of freedom), so the 3-sigma check uses K >= 16; the 1/sqrt(K) law is checked on
    the mean standard error over the batch, for Gaussian probes (Rademacher probes are nearly
    exact here: the mixture's Jacobian is close to diagonal)."""
    _, _, oracle, x = _case("vp", 16, b=6, seed=3)
    prior = _exact_prior(oracle)
    exact = sd.log_likelihood(oracle, x, rtol=1e-6, atol=1e-6, prior=prior).log_prob
    ks, mean_se = [4, 16, 64], []
    for k in ks:
        for probe in ("rademacher", "gaussian"):
            res = sd.log_likelihood(
                oracle, x, rtol=1e-6, atol=1e-6, prior=prior, divergence="hutchinson",
                n_probes=k, probe=probe, generator=_gen(10 + k),
            )  # fmt: skip
            if k >= 16:
                z = (res.log_prob - exact) / res.stderr
                assert z.abs().max() < 3.0, (k, probe, z)
            if probe == "gaussian":
                mean_se.append(float(res.stderr.mean()))
            else:
                rademacher_se = float(res.stderr.mean())
        assert rademacher_se < mean_se[-1]
    slope = (math.log(mean_se[-1]) - math.log(mean_se[0])) / (math.log(ks[-1]) - math.log(ks[0]))
    assert -0.65 < slope < -0.35, (mean_se, slope)
    one = sd.log_likelihood(oracle, x, divergence="hutchinson", generator=_gen(0))
    assert one.stderr.isnan().all()  # one probe: no standard error


def test_hutchinson_probes_are_drawn_once_per_solve_and_reproducible():
    _, _, oracle, x = _case("ve", 2, b=3)
    kw = dict(divergence="hutchinson", n_probes=3, rtol=1e-4, atol=1e-4)
    a = sd.log_likelihood(oracle, x, generator=_gen(7), **kw)
    b = sd.log_likelihood(oracle, x, generator=_gen(7), **kw)
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=0)


# --------------------------------------------------------------------------- step control
def test_per_sample_steps_agree_save_evaluations_and_ignore_the_batch():
    sde, _, oracle, x = _case("vp", 2, b=8, seed=5)
    prior = _exact_prior(oracle)
    exact = oracle.log_prob_t(x, sde.t_min)
    shared = sd.log_likelihood(oracle, x, rtol=1e-6, atol=1e-6, prior=prior)
    own = sd.log_likelihood(oracle, x, rtol=1e-6, atol=1e-6, prior=prior, per_sample=True)
    assert (own.log_prob - exact).abs().max() < 1e-4
    assert (shared.nfe_per_sample == shared.nfe).all()
    assert own.nfe_per_sample.sum() < shared.nfe_per_sample.sum()
    assert own.nfe >= own.nfe_per_sample.max()
    # a sample's result does not depend on the rest of the batch
    alone = sd.log_likelihood(oracle, x[2:3], rtol=1e-6, atol=1e-6, prior=prior, per_sample=True)
    assert abs(float(alone.log_prob[0] - own.log_prob[2])) < 1e-9
    assert int(alone.nfe_per_sample[0]) == int(own.nfe_per_sample[2])


def test_batched_dopri5_agrees_with_the_solvers_adaptive_methods():
    sde, _, oracle, x = _case("vp", 2, b=4)
    ref = sd.log_likelihood(oracle, x, rtol=1e-7, atol=1e-7)
    for method in ("bosh3", "dopri8", "rk45"):
        res = sd.log_likelihood(oracle, x, method=method, rtol=1e-5, atol=1e-5)
        assert (res.log_prob - ref.log_prob).abs().max() < 1e-4, method
        assert res.nfe > 0


def test_a_solve_that_does_not_converge_names_its_samples():
    sde, gmm, oracle, x = _case("vp", 2, b=5)
    with pytest.raises(sd.ConvergenceError, match="did not converge") as info:
        sd.log_likelihood(oracle, x, max_steps=3)
    assert info.value.samples == list(range(5)) and "max_steps" in info.value.reasons

    class Poisoned:  # the score is NaN for sample 3 only (its first coordinate is 100)
        def __init__(self) -> None:
            self.sde = sde

        def score(self, v: Tensor, t: Tensor) -> Tensor:
            s = oracle.score(v, t)
            return torch.where(v[:, :1] > 50, torch.full_like(s, math.nan), s)

    bad = x.clone()
    bad[3, 0] = 100.0
    for per_sample in (True, False):
        with pytest.raises(sd.ConvergenceError) as info:
            sd.log_likelihood(Poisoned(), bad, per_sample=per_sample)
        assert info.value.samples == [3], per_sample
        assert info.value.reasons == ["non-finite state or velocity"]
    assert isinstance(info.value, solvers.AdaptiveStepError)


# --------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_encode_decode_round_trip(sde_name: str):
    sde, _, oracle, x = _case(sde_name, 16, b=4)
    z = sd.encode(oracle, x, rtol=1e-6, atol=1e-6)
    back = sd.decode(oracle, z, rtol=1e-6, atol=1e-6)
    assert (back - x).abs().max() < 1e-4
    lik = sd.log_likelihood(oracle, x, rtol=1e-6, atol=1e-6)
    assert (lik.z - z).abs().max() < 1e-5 * sde.prior_std
    # z follows the prior's scale
    assert z.std() > 0.5 * sde.prior_std


def test_encode_of_a_single_gaussian_is_its_flow_map():
    sde = sd.VPSDE()
    gmm = sd.GaussianMixture([1.0], [[0.5, -1.0, 2.0]], [[0.2, 0.5, 1.5]])
    oracle = oracle_for(gmm, sde)
    x = gmm.sample(5, _gen(0), dtype=F64)
    z = sd.encode(oracle, x, rtol=1e-7, atol=1e-7, per_sample=True)
    torch.testing.assert_close(z, oracle.flow_map(x, sde.t_min, sde.T), rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- shapes, dtypes
def test_4d_inputs_give_the_flat_result():
    _, _, oracle, x = _case("vp", 16, b=3)
    flat = sd.log_likelihood(oracle, x, rtol=1e-6, atol=1e-6)
    img = sd.log_likelihood(oracle, x.reshape(3, 1, 4, 4), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(img.log_prob, flat.log_prob)
    assert img.z.shape == (3, 1, 4, 4)
    h = sd.log_likelihood(
        oracle, x.reshape(3, 1, 4, 4), divergence="hutchinson", n_probes=2, generator=_gen(0)
    )
    assert h.log_prob.isfinite().all() and h.stderr.shape == (3,)


def test_half_precision_input_is_upcast_not_integrated():
    _, _, oracle, x = _case("ve", 2, b=3)
    half = x.half()
    res = sd.log_likelihood(oracle, half)
    assert res.log_prob.dtype == F64 and res.z.dtype == F64
    torch.testing.assert_close(res.log_prob, sd.log_likelihood(oracle, half.double()).log_prob)
    assert sd.encode(oracle, x.bfloat16()).dtype == F64


def test_mps_falls_back_to_float32_with_a_warning(monkeypatch):
    monkeypatch.setattr(lik_mod, "_MPS_WARNED", False)
    with pytest.warns(RuntimeWarning, match="float32 on MPS"):
        assert lik_mod._work_dtype(torch.device("mps")) == torch.float32
    assert lik_mod._work_dtype(torch.device("cpu")) == F64


def test_a_float32_network_runs_in_its_own_dtype():
    sde = sd.VESDE()
    torch.manual_seed(0)
    net = sd.MLP(2, width=16, depth=1)
    calls: list[torch.dtype] = []

    def spy(v: Tensor, t: Tensor) -> Tensor:
        calls.append(v.dtype)
        return net(v, t)

    model = sd.ScoreModel(spy, sde, prediction="eps")
    x = torch.randn(4, 2, generator=_gen(0))
    res = sd.log_likelihood(model, x, model_dtype=torch.float32, rtol=1e-3, atol=1e-3)
    assert set(calls) == {torch.float32} and res.log_prob.isfinite().all()
    res2 = sd.log_likelihood(sd.ScoreModel(net, sde, prediction="eps"), x, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(res.log_prob, res2.log_prob)


# --------------------------------------------------------------------------- bits per dim
def _grid_mixture(scale: float) -> sd.GaussianMixture:
    """A 2-D mixture whose mass sits on the grid of 17 levels of [-scale, scale]."""
    mu = torch.tensor([[-0.4, 0.3], [0.5, -0.2]], dtype=F64) * scale
    covs = torch.tensor([[0.04, 0.09], [0.06, 0.03]], dtype=F64) * scale**2
    return sd.GaussianMixture([0.4, 0.6], mu, covs)


def _grid_data(scale: float, n: int = 6) -> Tensor:
    k = torch.randint(3, 14, (n, 2), generator=_gen(0))
    return (-1.0 + k.double() / 8.0) * scale


def test_bits_per_dim_does_not_depend_on_the_data_range():
    """17 levels on [-1, 1] and on [-8, 8]: the VE SDE scaled with the data is the same model
    in other units, so the discrete bits/dim agree; the continuous ones differ by log2(8)."""
    out = {}
    for scale in (1.0, 8.0):
        sde = sd.VESDE(sigma_min=0.01 * scale, sigma_max=20.0 * scale)
        oracle = oracle_for(_grid_mixture(scale), sde)
        x = _grid_data(scale)
        out[scale] = (
            sd.log_likelihood(
                oracle, x, levels=17, data_range=(-scale, scale), n_dequant=2,
                generator=_gen(1), rtol=1e-7, atol=1e-7 * scale,
            ),
            sd.log_likelihood(oracle, x, rtol=1e-7, atol=1e-7 * scale),
        )  # fmt: skip
    torch.testing.assert_close(out[1.0][0].bpd, out[8.0][0].bpd, rtol=0, atol=1e-5)
    diff = out[8.0][1].bpd - out[1.0][1].bpd
    torch.testing.assert_close(diff, torch.full((6,), 3.0, dtype=F64), rtol=0, atol=1e-5)
    # [0, 16] (a shift too), against [-8, 8]: equal with the exact prior of each (the default
    # prior N(0, sigma_max^2) is not shift-invariant)
    res = {}
    for shift in (0.0, 8.0):
        gmm = _grid_mixture(8.0)
        moved = sd.GaussianMixture(gmm.weights, gmm.means + shift, gmm.covs)
        oracle = oracle_for(moved, sd.VESDE(sigma_min=0.08, sigma_max=160.0))
        res[shift] = sd.log_likelihood(
            oracle, _grid_data(8.0) + shift, levels=17, data_range=(-8.0 + shift, 8.0 + shift),
            n_dequant=2, generator=_gen(1), rtol=1e-7, atol=1e-6, prior=_exact_prior(oracle),
        ).bpd  # fmt: skip
    assert (res[0.0] - res[8.0]).abs().max() < 1e-5


def test_the_8_bit_convention_is_the_density_in_pixel_units():
    """bpd = -(log p(y) + D log Delta) / (D ln 2) for y the dequantized data in data units:
    the density of the dequantized pixels in [0, 256) units (Ho et al. 2020; Song et al. 2021)."""
    sde = sd.VESDE(sigma_min=0.01, sigma_max=20.0)
    oracle = oracle_for(_grid_mixture(1.0), sde)
    k = torch.randint(60, 200, (4, 2), generator=_gen(3)).double()
    x = -1.0 + 2.0 * k / 255.0
    disc = sd.log_likelihood(oracle, x, levels=256, data_range=(-1.0, 1.0), generator=_gen(4))
    y = sd.dequantize(x, 256, (-1.0, 1.0), generator=_gen(4))[0]
    cont = sd.log_likelihood(oracle, y)
    expected = cont.bpd + math.log2(255.0 / 2.0)  # + log2(1 / Delta), Delta = 2 / 255
    torch.testing.assert_close(disc.bpd, expected)
    assert ((y - x).abs() <= 1.0 / 255.0).all()


def test_dequantization_bounds_the_exact_bin_probability():
    """Diagonal mixture, 17 levels: the exact bin mass is a product of normal CDF differences;
    uniform dequantization bounds it (Jensen), the importance-weighted bound is tighter."""
    gmm = _grid_mixture(1.0)
    sde = sd.VPSDE()
    oracle = oracle_for(gmm, sde)
    x = _grid_data(1.0, n=16)
    half = 1.0 / 16.0
    mu, sd_ = gmm.means, torch.diagonal(gmm.covs, dim1=-2, dim2=-1).sqrt()
    ndtr = torch.special.ndtr
    mass = (ndtr((x[:, None] + half - mu) / sd_) - ndtr((x[:, None] - half - mu) / sd_)).prod(-1)
    exact = torch.log((gmm.weights * mass).sum(1))
    prior = _exact_prior(oracle)
    kw = dict(levels=17, data_range=(-1.0, 1.0), rtol=1e-6, atol=1e-6, prior=prior)
    one = sd.log_likelihood(oracle, x, n_dequant=1, generator=_gen(0), **kw)
    many = sd.log_likelihood(oracle, x, n_dequant=32, generator=_gen(0), **kw)
    mid = sd.log_likelihood(oracle, x, n_dequant=0, **kw)
    gap_one = float((exact - one.log_prob).mean())
    gap_many = float((exact - many.log_prob).mean())
    # E[gap] >= 0 for both; the 32-draw bound's gap is about the 1-draw gap / 32 (~0.003 here),
    # within its Monte-Carlo noise (~0.016 for the mean of 16 points) of 0
    assert gap_one > gap_many + 0.05 and abs(gap_many) < 0.06, (gap_many, gap_one)
    # n_dequant=0: the density at the level times the bin volume (a midpoint rule, not a bound)
    midpoint = oracle.log_prob_t(x, sde.t_min) + 2 * math.log(0.125)
    assert (mid.log_prob - midpoint).abs().max() < 1e-4
    assert many.nfe_per_sample.shape == (16,) and many.z.shape == x.shape


# --------------------------------------------------------------------------- validation
def test_arguments_are_validated():
    _, _, oracle, x = _case("vp", 2, b=2)
    with pytest.raises(ValueError, match="divergence must be one of"):
        sd.log_likelihood(oracle, x, divergence="trace")
    with pytest.raises(ValueError, match="levels and data_range go together"):
        sd.log_likelihood(oracle, x, levels=17)
    with pytest.raises(ValueError, match="not on the grid"):
        sd.log_likelihood(oracle, x, levels=17, data_range=(-1.0, 1.0))
    with pytest.raises(ValueError, match="needs discrete data"):
        sd.log_likelihood(oracle, x, n_dequant=2)
    with pytest.raises(ValueError, match="n_probes applies"):
        sd.log_likelihood(oracle, x, n_probes=4)
    with pytest.raises(ValueError, match="per_sample=True needs"):
        sd.log_likelihood(oracle, x, method="dopri8", per_sample=True)
    with pytest.raises(ValueError, match="adaptive ODE method, one of .*dopri5"):
        sd.log_likelihood(oracle, x, method="euler")
    for sde_method in ("adaptive_sde", "sde_srk_adaptive"):  # adaptive, but SDE solvers
        with pytest.raises(ValueError, match="adaptive ODE method, one of"):
            sd.log_likelihood(oracle, x, method=sde_method)
    with pytest.raises(ValueError, match="rtol must be finite and > 0"):
        sd.log_likelihood(oracle, x, rtol=0.0)
    with pytest.raises(ValueError, match=r"shape \(B, \*dims\)"):
        sd.log_likelihood(oracle, x[:, 0])
    with pytest.raises(TypeError, match="model must have an SDE"):
        sd.log_likelihood(object(), x)
    with pytest.raises(ValueError, match="probe must be one of"):
        sd.log_likelihood(oracle, x, divergence="hutchinson", probe="uniform")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.log_likelihood(oracle, x, rtol=1e-3, atol=1e-3)


def test_bad_inputs_that_would_give_silent_wrong_answers_are_errors():
    """NaN/inf data, a score that autograd cannot differentiate (its divergence would be 0),
    and the importance-weighted bound over Hutchinson estimates (biased above log P)."""
    _, sde, oracle, x = _case("vp", 2, b=3)
    bad = x.clone()
    bad[1, 0] = math.nan
    with pytest.raises(ValueError, match=r"x must be finite: samples \[1\]"):
        sd.log_likelihood(oracle, bad)

    class Detached:
        def __init__(self, model):
            self.model, self.sde = model, model.sde

        def score(self, xx, t):
            with torch.no_grad():
                return self.model.score(xx, t)

    for name in ("vp", "ve"):
        _, _, orc, xs = _case(name, 2, b=2)
        for divergence in ("exact", "hutchinson"):
            with pytest.raises(ValueError, match="not differentiable in x"):
                sd.log_likelihood(Detached(orc), xs, divergence=divergence, generator=_gen(0))
    grid = torch.tensor([[-1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="is not a bound"):
        sd.log_likelihood(
            oracle, grid, levels=5, data_range=(-1.0, 1.0), n_dequant=2, divergence="hutchinson"
        )
    # the generic divergences: a constant map has divergence 0 unless strict
    const = lambda xx: torch.ones_like(xx)  # noqa: E731
    assert torch.equal(exact_divergence(const, x).divergence, torch.zeros(3, dtype=x.dtype))
    with pytest.raises(ValueError, match="not differentiable in x"):
        exact_divergence(const, x, strict=True)
    with pytest.raises(ValueError, match="not differentiable in x"):
        hutchinson_divergence(const, x, sample_probes(x.shape, 2, generator=_gen(1)), strict=True)


def test_discrete_data_in_half_precision_is_snapped_to_its_levels():
    """8-bit levels stored in float16 sit up to ~0.03 bins off the grid: accepted, snapped, and
    the result is that of the float32 data; bfloat16 cannot tell the levels apart: an error."""
    _, _, oracle, _ = _case("vp", 2, b=4)
    k = torch.randint(0, 256, (4, 2), generator=_gen(0))
    x32 = (k * 2 / 255 - 1).float()
    assert float(((x32.half().double() + 1) * 255 / 2 - k).abs().max()) > 1e-3  # off the grid
    kw = {"levels": 256, "data_range": (-1.0, 1.0)}
    ref = sd.log_likelihood(oracle, x32, generator=_gen(1), **kw).log_prob
    half = sd.log_likelihood(oracle, x32.half(), generator=_gen(1), **kw).log_prob
    torch.testing.assert_close(half, ref, rtol=0.0, atol=1e-12)
    with pytest.raises(ValueError, match="cannot tell the levels apart"):
        sd.log_likelihood(oracle, x32.bfloat16(), **kw)
    e32 = sd.elbo(oracle, x32, generator=_gen(2), **kw).elbo
    e16 = sd.elbo(oracle, x32.half(), generator=_gen(2), **kw).elbo
    torch.testing.assert_close(e16, e32, rtol=0.0, atol=1e-12)
