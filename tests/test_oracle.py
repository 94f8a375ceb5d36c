"""The Gaussian-mixture oracle: exact p_t, score, posterior mean, classes, flow map.

References are independent closed forms: torch.distributions densities of the diffused
mixture, autograd of log p_t, the probability-flow ODE of scoresde.reverse, Bayes' rule.
"""

import math
import time

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

import scoresde as sd
from scoresde.testing import edm_sdes, sdes, times, ve_sdes, vp_sdes
from solvers.broadcast import append_dims

PREDS = ("eps", "x0", "score", "v")
F64 = torch.float64


def random_mixture(k, d, kind, seed, labels=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(k, generator=g, dtype=F64) + 0.2
    mu = 2 * torch.randn(k, d, generator=g, dtype=F64)
    if kind == "full":
        a = torch.randn(k, d, d, generator=g, dtype=F64) / math.sqrt(d)
        cov = a @ a.transpose(1, 2) + 0.05 * torch.eye(d, dtype=F64)
    elif kind == "diagonal":
        cov = 0.05 + torch.rand(k, d, generator=g, dtype=F64)
    else:
        cov = 0.05 + torch.rand(k, generator=g, dtype=F64)
    return sd.GaussianMixture(w / w.sum(), mu, cov, labels)


def diffused_reference(gmm, a, s):
    """p_t as a torch.distributions mixture of N(a mu_k, a^2 Sigma_k + s^2 I); a and s of
    shape () or (B,) (then the distribution has batch shape (B,))."""
    a, s = torch.as_tensor(a, dtype=F64), torch.as_tensor(s, dtype=F64)
    a3, s4 = a.reshape(*a.shape, 1, 1), s.reshape(*s.shape, 1, 1, 1)
    loc = a3 * gmm.means
    cov = (a3[..., None] ** 2) * gmm.covs + s4**2 * torch.eye(gmm.dim, dtype=F64)
    weights = gmm.weights.expand(*a.shape, gmm.n_components)
    return MixtureSameFamily(Categorical(probs=weights), MultivariateNormal(loc, cov))


@st.composite
def oracle_case(draw, dtypes=(F64,), max_k=3):
    """(oracle, x of shape (B, D) or (B, C, H, W), t of shape () or (B,))."""
    sde = draw(sdes())
    shape = draw(st.sampled_from([(1,), (3,), (2, 2, 2), (1, 3, 1)]))
    b = draw(st.integers(1, 4))
    d = math.prod(shape)
    k = draw(st.integers(1, max_k))
    kind = draw(st.sampled_from(["full", "diagonal", "isotropic"]))
    seed = draw(st.integers(0, 2**16))
    gmm = random_mixture(k, d, kind, seed, labels=torch.arange(k) % 2)
    oracle = gmm.score_model(sde)
    t = draw(st.one_of(times(sde), times(sde, batch=b)))
    g = torch.Generator().manual_seed(seed + 1)
    # states near the data at the given noise level, and some far out
    x = gmm.sample(b, g, dtype=F64).reshape(b, *shape)
    a, s = append_dims(sde.alpha(t), x.ndim), append_dims(sde.sigma(t), x.ndim)
    x = a * x + s * torch.randn(x.shape, generator=g, dtype=F64)
    return oracle, x.to(draw(st.sampled_from(dtypes))), t


# --------------------------------------------------------------------------- densities


@pytest.mark.parametrize("kind", ["full", "diagonal", "isotropic"])
@pytest.mark.parametrize("d", [1, 5])
def test_log_prob_is_the_mixture_density(kind, d):
    for k in (1, 4):
        gmm = random_mixture(k, d, kind, seed=k + d)
        x = torch.randn(7, d, dtype=F64) * 3
        want = diffused_reference(gmm, 1.0, 0.0).log_prob(x)
        torch.testing.assert_close(gmm.log_prob(x), want, rtol=1e-12, atol=1e-12)
        if k == 1:
            mvn = MultivariateNormal(gmm.means[0], gmm.covs[0])
            torch.testing.assert_close(gmm.log_prob(x), mvn.log_prob(x), rtol=1e-12, atol=1e-12)
        assert gmm.log_prob(x.float()).dtype == torch.float32


@given(case=oracle_case())
def test_log_prob_t_is_the_diffused_mixture(case):
    oracle, x, t = case
    flat = x.reshape(x.shape[0], -1)
    ref = diffused_reference(oracle.gmm, oracle.sde.alpha(t), oracle.sde.sigma(t))
    want = ref.log_prob(flat)
    got = oracle.log_prob_t(x, t)
    assert got.shape == (x.shape[0],)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@given(case=oracle_case())
def test_score_is_grad_log_prob_t_and_tweedie_is_the_posterior_mean(case):
    oracle, x, t = case
    xx = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(oracle.log_prob_t(xx, t).sum(), xx)
    score = oracle.score(x, t)
    scale = grad.abs().amax() + 1.0
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-10 * float(scale))
    # Tweedie (Efron 2011): (x + sigma^2 score) / alpha, through the shared conversion, equals
    # the directly computed mixture of per-component posterior means
    pm = oracle.posterior_mean(x, t)
    a = float(oracle.sde.alpha(t).min())
    tol = 1e-9 * (1 + float(x.abs().max())) / a
    torch.testing.assert_close(oracle.x0(x, t), pm, rtol=1e-9, atol=tol)
    # and the four views are consistent with the definitions
    s = append_dims(oracle.sde.sigma(t), x.ndim)
    av = append_dims(oracle.sde.alpha(t), x.ndim)
    eps = oracle.eps(x, t)
    torch.testing.assert_close(eps, -s * score, rtol=1e-12, atol=1e-12)
    v_scale = float((av * eps).abs().max() + (s * pm).abs().max()) + 1.0
    torch.testing.assert_close(oracle.v(x, t), av * eps - s * pm, rtol=1e-9, atol=1e-9 * v_scale)


def test_log_prob_t_tends_to_log_prob_as_t_min_shrinks():
    gmm = random_mixture(3, 2, "full", seed=0)
    x = gmm.sample(50, torch.Generator().manual_seed(1), dtype=F64)
    errs = []
    for t_min in (1e-2, 1e-3, 1e-4, 1e-5, 1e-6):
        oracle = gmm.score_model(sd.VPSDE(t_min=t_min))
        errs.append(float((oracle.log_prob_t(x, t_min) - gmm.log_prob(x)).abs().max()))
    assert all(e1 < e0 for e0, e1 in zip(errs, errs[1:])), errs
    # first order in t: beta_min t_min / 2 per unit of...; a factor ~10 per decade
    assert errs[-1] < 1e-4 and errs[0] / errs[-1] > 1e3, errs


# --------------------------------------------------------------------------- ScoreModel parity


@given(case=oracle_case(dtypes=(F64, torch.float32)))
def test_score_model_of_the_oracle_as_net_reproduces_the_oracle(case):
    """ScoreModel(net = oracle's <pred> as a raw net, prediction=pred) gives the oracle's four
    views for every pred: the conversion paths agree with each other."""
    oracle, x, t = case
    want = {p: oracle.predict(x.double(), t, p) for p in PREDS}
    for pred in PREDS:

        def net(xx, tt, pred=pred):
            return getattr(oracle, pred)(xx, tt.double())

        model = sd.ScoreModel(net, oracle.sde, prediction=pred)
        for tgt in PREDS:
            got = model.predict(x, t, tgt)
            assert got.dtype == x.dtype and got.shape == x.shape
            ref = want[tgt]
            if x.dtype == F64:
                a = float(oracle.sde.alpha(t).min())
                s = float(oracle.sde.sigma(t).min())
                # the round trip pred -> tgt amplifies rounding by at most the larger gain
                gain = 1 + 1 / a + 1 / s + 1 / s**2 + float(oracle.sde.sigma(t).max()) / a
                tol = 1e-12 * gain * (1 + float(x.abs().max()) + float(ref.abs().max()))
                torch.testing.assert_close(got, ref, rtol=1e-9, atol=tol)
            else:
                assert bool(torch.isfinite(got).all())


# --------------------------------------------------------------------------- DSM minimiser


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.EDMSDE(sigma_max=10.0), sd.SubVPSDE()], ids=repr)
def test_oracle_minimises_denoising_score_matching(sde):
    """Vincent 2011: E||h(x_t) - eps||^2 is minimised by h = E[eps | x_t]. For any h = oracle +
    delta(x_t, t) the expected excess loss is exactly E||delta||^2 (the cross term has mean 0);
    on N = 40000 draws with a fixed seed we check the observed excess is positive and within 6
    standard errors of E||delta||^2 (the cross-term's standard error is estimated from the same
    draws; the margin |delta|^2 / SE is above 10 for all three losses, so the comparison is
    statistically safe). The same holds for the x0 loss and the sigma^2-weighted score loss."""
    gmm = random_mixture(3, 2, "full", seed=3)
    g = torch.Generator().manual_seed(0)
    n = 40000
    x0 = gmm.sample(n, g, dtype=F64)
    u = torch.rand(n, generator=g, dtype=F64)
    t = sde.t_min + u * (sde.T - sde.t_min)
    eps = torch.randn(n, 2, generator=g, dtype=F64)
    a, s = append_dims(sde.alpha(t), 2), append_dims(sde.sigma(t), 2)
    xt = a * x0 + s * eps
    oracle = gmm.score_model(sde)
    perturbations = {
        "shift": lambda x: torch.full_like(x, 0.2),
        "nonlinear": lambda x: 0.3 * torch.tanh(x),
    }
    cases = {
        # name: (prediction, regression target, per-sample weight)
        "eps": ("eps", eps, torch.ones_like(s)),
        "x0": ("x0", x0, torch.ones_like(s)),
        "score": ("score", -eps / s, s * s),
    }
    for name, (pred, target, weight) in cases.items():
        h = oracle.predict(xt, t, pred)
        base = (weight * (h - target) ** 2).sum(1)
        for pname, delta_fn in perturbations.items():
            delta = delta_fn(xt) / weight.sqrt()  # comparable size under the weighting
            pert = (weight * (h + delta - target) ** 2).sum(1)
            excess = pert - base
            expected = (weight * delta**2).sum(1).mean()
            se = excess.std() / math.sqrt(n)
            assert float(excess.mean()) > 0, (name, pname)
            assert abs(float(excess.mean() - expected)) < 6 * float(se), (name, pname)
            assert float(expected) > 10 * float(se), (name, pname)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "k,d,shape", [(1, 1, (1,)), (25, 64, (64,)), (25, 64, (4, 4, 4)), (1, 64, (1, 8, 8))]
)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_shapes_dtypes_and_flattening(k, d, shape, dtype):
    gmm = random_mixture(k, d, "full", seed=k * d, labels=torch.arange(k) % 3)
    sde = sd.VPSDE()
    oracle = gmm.score_model(sde)
    b = 6
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, *shape, generator=g, dtype=dtype)
    t = torch.linspace(sde.t_min, sde.T, b, dtype=F64)
    flat = x.reshape(b, d)
    for method in ("eps", "x0", "score", "v", "posterior_mean"):
        out = getattr(oracle, method)(x, t)
        assert out.shape == x.shape and out.dtype == dtype
        assert bool(torch.isfinite(out).all())
        torch.testing.assert_close(out.reshape(b, d), getattr(oracle, method)(flat, t))
    lp = oracle.log_prob_t(x, t)
    assert lp.shape == (b,) and lp.dtype == dtype
    torch.testing.assert_close(lp, oracle.log_prob_t(flat, t))
    # per-sample t equals one call per time
    for i in (0, b - 1):
        torch.testing.assert_close(oracle.score(x, t)[i], oracle.score(x[i : i + 1], t[i])[0])
    assert oracle.class_log_prob(x, t).shape == (b, gmm.n_classes)
    with pytest.raises(ValueError, match="features per sample"):
        oracle.score(torch.zeros(b, d + 1, dtype=dtype), t)


@pytest.mark.parametrize(
    "sde", [sd.VPSDE(t_min=1e-5), sd.EDMSDE(), sd.VESDE(sigma_max=400.0)], ids=repr
)
def test_float32_is_finite_at_t_min_and_t_max(sde):
    gmm = random_mixture(5, 8, "full", seed=2)
    oracle = gmm.score_model(sde)
    g = torch.Generator().manual_seed(0)
    x0 = gmm.sample(32, g)
    for t in (sde.t_min, sde.T):
        tt = torch.tensor(t, dtype=F64)
        x = (sde.alpha(tt) * x0.double() + sde.sigma(tt) * torch.randn(32, 8, generator=g)).float()
        for p in PREDS:
            assert bool(torch.isfinite(oracle.predict(x, t, p)).all()), (p, t)
        assert bool(torch.isfinite(oracle.log_prob_t(x, t)).all())


def test_large_problem_is_fast():
    """K = 25, D = 64, B = 1000, full covariances, per-sample t: one score call takes ~0.035 s on
    a 2-core CPU; the bound leaves room for a loaded machine."""
    gmm = random_mixture(25, 64, "full", seed=0)
    sde = sd.VPSDE()
    oracle = gmm.score_model(sde)
    x = torch.randn(1000, 64)
    t = sde.t_min + torch.rand(1000, dtype=F64) * (sde.T - sde.t_min)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        oracle.score(x, t)
        best = min(best, time.perf_counter() - start)
    assert best < 0.5, best


def test_device_follows_x(device):
    gmm = random_mixture(3, 4, "full", seed=0, labels=[0, 1, 1])
    oracle = gmm.score_model(sd.VPSDE())
    x = torch.randn(5, 4, dtype=F64)
    t = torch.full((5,), 0.3, dtype=F64)
    for method in ("score", "x0", "posterior_mean", "log_prob_t", "class_log_prob"):
        got = getattr(oracle, method)(x.to(device), t.to(device))
        assert got.device.type == torch.device(device).type
        torch.testing.assert_close(got.cpu(), getattr(oracle, method)(x, t))
    xs = gmm.sample(10, torch.Generator(device=device).manual_seed(0))
    assert xs.device.type == torch.device(device).type and xs.shape == (10, 4)


# --------------------------------------------------------------------------- sampling


def test_sample_is_reproducible_and_has_the_mixture_moments():
    gmm = random_mixture(4, 3, "full", seed=5, labels=[0, 1, 0, 2])
    n = 200_000
    a = gmm.sample_with_labels(n, torch.Generator().manual_seed(7), dtype=F64)
    b = gmm.sample_with_labels(n, torch.Generator().manual_seed(7), dtype=F64)
    assert torch.equal(a.x, b.x) and torch.equal(a.component, b.component)
    assert a.x.shape == (n, 3) and a.component.shape == (n,)
    assert torch.equal(a.label, gmm.labels[a.component])
    # moments vs the closed form, with tolerances of 6 standard errors
    cov = gmm.covariance
    se_mean = (cov.diagonal() / n).sqrt()
    assert bool(((a.x.mean(0) - gmm.mean).abs() < 6 * se_mean).all())
    emp = torch.cov(a.x.T)
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert bool(((emp - cov).abs() < 6 * se_cov).all())
    freq = torch.bincount(a.component, minlength=4).double() / n
    assert bool(((freq - gmm.weights).abs() < 6 * (gmm.weights / n).sqrt()).all())
    # per-component moments: the samples of component k come from N(mu_k, Sigma_k)
    xk = a.x[a.component == 1]
    torch.testing.assert_close(xk.mean(0), gmm.means[1], rtol=0, atol=0.05)
    torch.testing.assert_close(torch.cov(xk.T), gmm.covs[1], rtol=0, atol=0.05)
    assert gmm.sample(4).dtype == torch.get_default_dtype()
    assert random_mixture(2, 3, "diagonal", 0).sample_with_labels(3).label is None


# --------------------------------------------------------------------------- classes


@given(case=oracle_case(max_k=4))
def test_class_conditional_consistency(case):
    oracle, x, t = case
    gmm = oracle.gmm
    p_y = gmm.class_weights
    log_joint = []
    for y in range(gmm.n_classes):
        cond = oracle.condition(y)
        log_joint.append(torch.log(p_y[y]) + cond.log_prob_t(x, t))
    # sum_y p(y) p_t(x | y) = p_t(x)
    torch.testing.assert_close(
        torch.logsumexp(torch.stack(log_joint), 0), oracle.log_prob_t(x, t), rtol=1e-10, atol=1e-10
    )
    clp = oracle.class_log_prob(x, t)
    assert clp.shape == (x.shape[0], gmm.n_classes)
    torch.testing.assert_close(clp.exp().sum(1), torch.ones(x.shape[0], dtype=F64))
    torch.testing.assert_close(clp, torch.stack(log_joint, 1) - oracle.log_prob_t(x, t)[:, None])
    # Bayes: grad_x log p_t(y | x) = score(x | y) - score(x), three ways
    for y in range(gmm.n_classes):
        xx = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(oracle.class_log_prob(xx, t)[:, y].sum(), xx)
        diff = oracle.condition(y).score(x, t) - oracle.score(x, t)
        scale = 1e-9 * (1 + float(oracle.score(x, t).abs().max()))
        torch.testing.assert_close(grad, diff, rtol=1e-7, atol=scale)
        torch.testing.assert_close(oracle.class_score(x, t, y), diff, rtol=1e-7, atol=scale)
    # per-sample labels
    ys = torch.arange(x.shape[0]) % gmm.n_classes
    per = oracle.class_score(x, t, ys)
    for i, y in enumerate(ys.tolist()):
        torch.testing.assert_close(per[i], oracle.class_score(x, t, y)[i])


def test_condition_selects_and_renormalises():
    gmm = sd.GaussianMixture(
        [0.1, 0.2, 0.3, 0.4],
        [[0.0], [1.0], [2.0], [3.0]],
        [1.0, 2.0, 3.0, 4.0],
        labels=[1, 0, 1, 0],
    )
    c = gmm.condition(1)
    torch.testing.assert_close(c.weights, torch.tensor([0.25, 0.75], dtype=F64))
    torch.testing.assert_close(c.means, torch.tensor([[0.0], [2.0]], dtype=F64))
    torch.testing.assert_close(c.covs, torch.tensor([[[1.0]], [[3.0]]], dtype=F64))
    torch.testing.assert_close(gmm.class_weights, torch.tensor([0.6, 0.4], dtype=F64))
    with pytest.raises(ValueError, match="y must be an int class in"):
        gmm.condition(2)
    with pytest.raises(ValueError, match="has no labels"):
        random_mixture(2, 1, "full", 0).condition(0)


# --------------------------------------------------------------------------- flow map


@st.composite
def gaussian_case(draw):
    sde = draw(sdes())
    d = draw(st.sampled_from([1, 3]))
    kind = draw(st.sampled_from(["full", "diagonal", "isotropic"]))
    gmm = random_mixture(1, d, kind, seed=draw(st.integers(0, 2**16)))
    s, t = draw(times(sde, batch=3)), draw(times(sde, batch=3))
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(draw(st.integers(0, 99))))
    return gmm.score_model(sde), x.double() * 3, s, t


@given(case=gaussian_case())
def test_flow_map_solves_the_probability_flow_ode(case):
    oracle, x_s, s, t = case
    sde = oracle.sde
    x_t = oracle.flow_map(x_s, s, t)
    # d/dt of the flow map (forward-mode autograd, float64) is the PF-ODE velocity at x_t
    _, dxdt = torch.autograd.functional.jvp(
        lambda tt: oracle.flow_map(x_s, s, tt), t, torch.ones_like(t)
    )
    vel = sd.ProbabilityFlowODE(sde, oracle.score).velocity(x_t, t)
    scale = float(vel.abs().max() + dxdt.abs().max()) + 1.0
    torch.testing.assert_close(dxdt, vel, rtol=1e-7, atol=1e-9 * scale)
    # s -> t -> s is the identity, and s -> s too
    ratio = float(sde.sigma(torch.cat([s, t])).max() / sde.sigma(torch.cat([s, t])).min())
    back = oracle.flow_map(x_t, t, s)
    torch.testing.assert_close(back, x_s, rtol=1e-9, atol=1e-11 * ratio * (1 + x_s.abs().max()))
    torch.testing.assert_close(oracle.flow_map(x_s, s, s), x_s, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sde", [sd.VPSDE(), sd.EDMSDE(), sd.CosineVPSDE()], ids=repr)
def test_flow_map_isotropic_closed_form_and_pushforward(sde):
    """Isotropic N(mu, sd^2 I): x_t = alpha_t mu + sqrt(v_t / v_s) (x_s - alpha_s mu) (the
    formula of the style guide), and samples of p_s are mapped to samples of p_t."""
    mu, var = torch.tensor([1.0, -2.0], dtype=F64), 0.3
    gmm = sd.GaussianMixture.gaussian(mu, var)
    s, t = torch.tensor(sde.T, dtype=F64), torch.tensor(0.5 * (sde.t_min + sde.T), dtype=F64)
    x_s = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    a_s, a_t = sde.alpha(s), sde.alpha(t)
    v_s = a_s**2 * var + sde.sigma(s) ** 2
    v_t = a_t**2 * var + sde.sigma(t) ** 2
    x_s = a_s * mu + v_s.sqrt() * x_s
    want = a_t * mu + (v_t / v_s).sqrt() * (x_s - a_s * mu)
    got = gmm.flow_map(sde, x_s, s, t)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # the pushforward of p_s is p_t: standardised samples have mean 0 and variance 1
    z = (got - a_t * mu) / v_t.sqrt()
    assert float(z.mean(0).abs().max()) < 6 / math.sqrt(4000)
    assert float((z.var(0) - 1).abs().max()) < 6 * math.sqrt(2 / 4000)


def test_flow_map_needs_one_component():
    gmm = random_mixture(2, 2, "full", 0)
    with pytest.raises(ValueError, match="K = 1"):
        gmm.flow_map(sd.VPSDE(), torch.zeros(1, 2), 0.5, 0.2)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, -0.5, 1.0]), "weights must be >= 0"),
        (dict(weights=[0.5, 0.4, 0.2]), "weights must sum to 1"),
        (dict(weights=[[0.5, 0.5]]), "weights must have shape"),
        (dict(means=[[0.0, 0.0], [1.0, 1.0]]), r"means must have shape \(K, D\) = \(3, D\)"),
        (dict(covs=[1.0, 1.0]), "covs must have shape"),
        (dict(covs=torch.ones(3, 2, 3)), "covs must have shape"),
        (dict(covs=[1.0, 0.0, 1.0]), r"covs must be positive definite; covs\[1\]"),
        (dict(covs=[[1.0, 1.0], [1.0, -1.0], [1.0, 1.0]]), r"covs\[1\]"),
        (
            dict(covs=torch.tensor([[[1.0, 2.0], [2.0, 1.0]]] * 3)),
            r"covs must be positive definite; covs\[0\]",
        ),
        (dict(covs=torch.tensor([[[1.0, 0.5], [0.0, 1.0]]] * 3)), "covs must be symmetric"),
        (dict(labels=[0, 1]), r"labels must have shape \(K,\) = \(3,\)"),
        (dict(labels=[0, -1, 1]), "labels must be >= 0"),
        (dict(labels=[0.5, 1.0, 2.0]), "labels must be integers"),
        (dict(means=[[0.0, math.nan]] * 3), "means must be finite"),
    ],
)
def test_bad_mixture_arguments_raise_value_error_naming_them(kwargs, match):
    args = dict(
        weights=[0.2, 0.3, 0.5], means=[[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]], covs=[1.0, 1.0, 1.0]
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sd.GaussianMixture(**args)


def test_weights_within_tolerance_are_accepted_and_renormalised():
    gmm = sd.GaussianMixture([0.5, 0.5 + 5e-7], [[0.0], [1.0]], [1.0, 1.0])
    assert abs(float(gmm.weights.sum()) - 1.0) < 1e-15
    with pytest.raises(ValueError, match="weights must sum to 1"):
        sd.GaussianMixture([0.5, 0.5 + 5e-6], [[0.0], [1.0]], [1.0, 1.0])


@given(sde=st.one_of(vp_sdes(), ve_sdes(), edm_sdes()))
def test_bad_times_and_labels_for_the_oracle(sde):
    oracle = random_mixture(2, 2, "full", 0, labels=[0, 1]).score_model(sde)
    x = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match=r"t must have shape \(\) or \(batch,\)"):
        oracle.log_prob_t(x, torch.full((2,), sde.T))
    with pytest.raises(ValueError, match="t must lie in"):
        oracle.posterior_mean(x, sde.T * 2 + 1)
    with pytest.raises(ValueError, match=r"y must be in \[0, 2\)"):
        oracle.class_score(x, sde.T, 2)
