"""eps / x0 / score / v conversions, ScoreModel and EDM preconditioning.

References are the definitions (x_t = alpha x0 + sigma eps, score = -eps / sigma,
v = alpha eps - sigma x0) and the formulas of Karras et al. 2022 (Table 1), never numbers
printed by the code under test.
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import scoresde as sd
from scoresde.parametrization import edm_coefficients
from scoresde.testing import sdes, states, times
from solvers.broadcast import append_dims

PREDS = ("eps", "x0", "score", "v")


def _gain(src, tgt, a, s):
    """Closed-form |c_y|: how much a ``src`` prediction error is amplified in ``tgt``
    (the table of the module docstring, derived by hand from the definitions)."""
    r = a * a + s * s
    return {
        ("eps", "x0"): s / a,
        ("eps", "score"): 1 / s,
        ("eps", "v"): r / a,
        ("x0", "eps"): a / s,
        ("x0", "score"): a / s**2,
        ("x0", "v"): r / s,
        ("score", "eps"): s,
        ("score", "x0"): s**2 / a,
        ("score", "v"): s * r / a,
        ("v", "eps"): a / r,
        ("v", "x0"): s / r,
        ("v", "score"): a / (s * r),
    }.get((src, tgt), torch.ones_like(a))


def _coefs(sde, t, x):
    """alpha(t), sigma(t) in float64, shaped to broadcast against x."""
    t = t.to(torch.float64)
    return append_dims(sde.alpha(t), x.ndim), append_dims(sde.sigma(t), x.ndim)


def _truth(x0, eps, a, s):
    """All four predictions of a consistent (x0, eps) pair, from the definitions."""
    return {"eps": eps, "x0": x0, "score": -eps / s, "v": a * eps - s * x0}


@st.composite
def sde_t_state(draw, dtypes=(torch.float64,)):
    sde = draw(sdes())
    x = draw(states(dtypes=dtypes))
    t = draw(st.one_of(times(sde), times(sde, batch=x.shape[0])))
    return sde, t, x


@given(case=sde_t_state(), seed=st.integers(0, 2**16))
def test_convert_matches_the_definitions(case, seed):
    sde, t, x0 = case
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    a, s = _coefs(sde, t, x0)
    x = a * x0 + s * eps
    pred = _truth(x0, eps, a, s)
    for src in PREDS:
        for tgt in PREDS:
            got = sd.convert(pred[src], x, a, s, source=src, target=tgt)
            c_x, c_y = sd.conversion_coefficients(src, tgt, a, s)
            scale = c_x.abs() * x.abs() + c_y.abs() * pred[src].abs() + pred[tgt].abs()
            assert got.dtype == torch.float64 and got.shape == x.shape
            assert bool(((got - pred[tgt]).abs() <= 1e-11 * scale + 1e-300).all()), (src, tgt)


@given(case=sde_t_state(dtypes=(torch.float32, torch.float64)), seed=st.integers(0, 2**16))
def test_round_trips_through_every_prediction(case, seed):
    """y -> tgt -> y for arbitrary (x, y), with the intermediate stored in the state dtype.

    Error budget (factor 2 of slack): the intermediate's storage rounding times the return gain
    (the closed-form |c_y| of the docs), the float64 rounding of both conversions (each at most
    4 ulps of its terms |c_x x| and |c_y y|), and the final storage rounding."""
    sde, t, x = case
    y = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)
    a, s = _coefs(sde, t, x)
    u, u64 = torch.finfo(x.dtype).eps, torch.finfo(torch.float64).eps
    xa, ya = x.double().abs(), y.double().abs()
    for src in PREDS:
        for tgt in PREDS:
            mid = sd.convert(y, x, a, s, source=src, target=tgt).to(x.dtype)
            back = sd.convert(mid, x, a, s, source=tgt, target=src).to(x.dtype)
            assert back.dtype == x.dtype
            cx_f, cy_f = (c.abs() for c in sd.conversion_coefficients(src, tgt, a, s))
            cx_b, _ = (c.abs() for c in sd.conversion_coefficients(tgt, src, a, s))
            g_back, ma = _gain(tgt, src, a, s), mid.double().abs()
            tol = (
                u * g_back * ma
                + 4 * u64 * (cx_b * xa + g_back * ma)
                + 4 * u64 * g_back * (cx_f * xa + cy_f * ya)
                + u * ya
            )
            assert bool(((back.double() - y).abs() <= 2 * tol).all()), (src, tgt)


@given(sde=sdes(), data=st.data())
def test_documented_error_gains(sde, data):
    """|c_y| is the gain stated in the docs; v-conversions to x0/eps never amplify by more than
    1 / sqrt(alpha^2 + sigma^2)."""
    t = data.draw(times(sde, batch=4))
    a, s = sde.alpha(t), sde.sigma(t)
    for src in PREDS:
        for tgt in PREDS:
            _, c_y = sd.conversion_coefficients(src, tgt, a, s)
            torch.testing.assert_close(c_y.abs(), _gain(src, tgt, a, s), rtol=1e-12, atol=0)
    for tgt in ("x0", "eps"):
        _, c_y = sd.conversion_coefficients("v", tgt, a, s)
        assert bool((c_y.abs() <= (a * a + s * s).rsqrt() * (1 + 1e-12)).all())


class CountingNet:
    """A raw network returning a fixed function of (x, t); records every call."""

    def __init__(self, scale=1.0):
        self.calls = []
        self.scale = scale

    def __call__(self, x, t):
        self.calls.append((x.shape, t.shape, t.dtype, t.clone()))
        return self.scale * torch.tanh(x) + append_dims(t, x.ndim) * 0.01


@pytest.mark.parametrize("prediction", PREDS)
@pytest.mark.parametrize("shape", [(3, 2), (3, 2, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_network_call_per_method_and_net_sees_batched_t(prediction, shape, dtype):
    sde = sd.VPSDE()
    net = CountingNet()
    model = sd.ScoreModel(net, sde, prediction=prediction)
    x = torch.randn(shape, dtype=dtype)
    for t in (0.3, torch.tensor(0.3), torch.tensor([0.3, 0.5, 0.9])):
        for method in (model.eps, model.x0, model.score, model.v):
            n = len(net.calls)
            out = method(x, t)
            assert len(net.calls) == n + 1
            xs, ts, tdtype, tval = net.calls[-1]
            assert xs == x.shape and ts == (shape[0],) and tdtype == dtype
            want = torch.as_tensor(t, dtype=torch.float64).expand(shape[0]).to(dtype)
            assert torch.equal(tval, want)
            assert out.shape == x.shape and out.dtype == dtype


@given(case=sde_t_state(dtypes=(torch.float32, torch.float64)))
def test_score_model_computes_in_float64_and_casts_once(case):
    """Every method equals the float64 conversion of the (upcast) net output, cast once."""
    sde, t, x = case
    net = CountingNet(scale=2.0)
    for prediction in PREDS:
        model = sd.ScoreModel(net, sde, prediction=prediction)
        y = net(x, torch.as_tensor(t).to(x.dtype).expand(x.shape[0])).to(torch.float64)
        a, s = _coefs(sde, t, x)
        for tgt in PREDS:
            want = sd.convert(y, x.double(), a, s, source=prediction, target=tgt).to(x.dtype)
            got = model.predict(x, t, tgt)
            assert got.dtype == x.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    "sde", [sd.VPSDE(t_min=1e-5), sd.EDMSDE(), sd.VESDE(t_min=0.0), sd.CosineVPSDE()], ids=repr
)
@pytest.mark.parametrize("prediction", PREDS)
def test_float32_at_both_ends_is_finite(sde, prediction):
    """At t_min (sigma ~ 1e-3 for VP, 2e-3 for EDM) and at T, in float32, no inf/NaN for any
    prediction: coefficients such as 1 / sigma^2 are applied in float64."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 3, 4, 4, generator=g)
    eps = torch.randn(x0.shape, generator=g)
    for t in (sde.t_min, sde.T):
        tt = torch.tensor(t, dtype=torch.float64)
        a, s = float(sde.alpha(tt)), float(sde.sigma(tt))
        x = (a * x0.double() + s * eps.double()).float()
        truth = _truth(x0.double(), eps.double(), a, s)
        model = sd.ScoreModel(lambda x, t, p=truth[prediction]: p.float(), sde, prediction)
        for tgt in PREDS:
            out = model.predict(x, t, tgt)
            assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
            # well-conditioned directions are accurate in float32 too
            if _gain(prediction, tgt, torch.tensor(a), torch.tensor(s)) <= 1.0 and tgt != "score":
                torch.testing.assert_close(out.double(), truth[tgt], rtol=1e-4, atol=1e-4)


def test_eps_prediction_beats_x0_prediction_near_t_min():
    """The documented trade-off: the same 1e-3 error in a network's output costs ~alpha/sigma
    times more in eps when the network predicts x0, near t_min (VP)."""
    sde = sd.VPSDE(t_min=1e-5)
    t = torch.tensor(sde.t_min, dtype=torch.float64)
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    x0 = torch.randn(8, 4, dtype=torch.float64)
    eps = torch.randn(8, 4, dtype=torch.float64)
    x = a * x0 + s * eps
    err = 1e-3 * torch.ones_like(x)
    eps_net = sd.ScoreModel(lambda x, t: eps + err, sde, "eps")
    x0_net = sd.ScoreModel(lambda x, t: x0 + err, sde, "x0")
    e1 = (eps_net.eps(x, t) - eps).abs().max()
    e2 = (x0_net.eps(x, t) - eps).abs().max()
    assert math.isclose(float(e1), 1e-3, rel_tol=1e-6)
    assert math.isclose(float(e2), 1e-3 * a / s, rel_tol=1e-6) and float(e2) > 100 * float(e1)


def test_bad_arguments():
    sde = sd.VPSDE()
    with pytest.raises(
        ValueError, match=r"prediction must be one of \['eps', 'x0', 'score', 'v'\]"
    ):
        sd.ScoreModel(CountingNet(), sde, prediction="noise")
    with pytest.raises(ValueError, match="target must be one of"):
        sd.ScoreModel(CountingNet(), sde).predict(torch.zeros(2, 3), 0.5, "x_0")
    with pytest.raises(TypeError, match="net must be callable"):
        sd.ScoreModel(3, sde)
    with pytest.raises(TypeError, match="sde must be"):
        sd.ScoreModel(CountingNet(), "vp")
    bad = sd.ScoreModel(lambda x, t: x[:, :1], sde)
    with pytest.raises(ValueError, match=r"net returned shape \(2, 1\) for x of shape \(2, 3\)"):
        bad.eps(torch.zeros(2, 3), 0.5)
    model = sd.ScoreModel(CountingNet(), sde)
    with pytest.raises(ValueError, match=r"t must have shape \(\) or \(batch,\)"):
        model.eps(torch.zeros(2, 3), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="t must lie in"):
        model.eps(torch.zeros(2, 3), 2.0)
    with pytest.raises(ValueError, match="source must be one of"):
        sd.conversion_coefficients("e", "x0", torch.ones(()), torch.ones(()))
    with pytest.raises(ValueError, match="sigma_data must be a finite float > 0"):
        sd.EDMPrecond(CountingNet(), sde, sigma_data=0.0)


# --------------------------------------------------------------------------- EDM


def test_edm_coefficients_are_table_1_and_keep_unit_variance():
    s = torch.logspace(-3, 2, 50, dtype=torch.float64)
    sd_ = 0.5
    c_skip, c_out, c_in, c_noise = edm_coefficients(s, sd_)
    torch.testing.assert_close(c_skip, sd_**2 / (s**2 + sd_**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_out, s * sd_ / torch.sqrt(s**2 + sd_**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_in, 1 / torch.sqrt(s**2 + sd_**2), rtol=1e-14, atol=0)
    torch.testing.assert_close(c_noise, torch.log(s) / 4, rtol=1e-14, atol=0)
    # data of variance sd^2: the network input c_in x_hat and its ideal output
    # (x0 - c_skip x_hat) / c_out both have unit variance (Karras et al. 2022, appendix B.6)
    torch.testing.assert_close(c_in**2 * (sd_**2 + s**2), torch.ones_like(s))
    var_target = ((1 - c_skip) ** 2 * sd_**2 + c_skip**2 * s**2) / c_out**2
    torch.testing.assert_close(var_target, torch.ones_like(s))


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 3, 3)])
def test_edm_precond_on_edmsde_is_the_paper_formula(shape):
    sde = sd.EDMSDE()
    sigma_data = 0.7
    w = torch.randn(shape[1:], dtype=torch.float64)

    def raw(x, c_noise):
        return torch.tanh(w * x) + append_dims(c_noise, x.ndim)

    x = torch.randn(shape, dtype=torch.float64) * 3
    t = torch.tensor([0.002, 0.1, 1.0, 10.0, 80.0], dtype=torch.float64)
    got = sd.EDMPrecond(raw, sde, sigma_data)(x, t)
    sig = append_dims(t, x.ndim)  # EDM: sigma = t, s(t) = 1
    c_skip = sigma_data**2 / (sig**2 + sigma_data**2)
    c_out = sig * sigma_data / (sig**2 + sigma_data**2).sqrt()
    c_in = 1 / (sigma_data**2 + sig**2).sqrt()
    want = c_skip * x + c_out * raw(c_in * x, torch.log(t) / 4)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


@given(case=sde_t_state(dtypes=(torch.float32, torch.float64)), seed=st.integers(0, 2**16))
def test_edm_precond_recovers_x0_for_any_sde(case, seed):
    """A raw net that outputs the ideal F = (x0 - c_skip x_hat) / c_out (computed from what it
    receives: c_in x_hat and c_noise = log(s) / 4, s = sigma / alpha) gives back x0."""
    sde, t, x = case
    sigma_data = 0.5
    x0 = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    a, s = _coefs(sde, t, x)
    xt = (a * x0 + s * x.double()).to(x.dtype)
    seen = []

    def raw(x_in, c_noise):
        seen.append(c_noise)
        level = append_dims(torch.exp(4 * c_noise.double()), x_in.ndim)
        c_skip, c_out, c_in, _ = edm_coefficients(level, sigma_data)
        x_hat = x_in.double() / c_in
        return ((x0 - c_skip * x_hat) / c_out).to(x_in.dtype)

    model = sd.ScoreModel(sd.EDMPrecond(raw, sde, sigma_data), sde, prediction="x0")
    got = model.x0(xt, t)
    assert got.dtype == x.dtype and got.shape == x.shape
    # c_noise = log(sigma / alpha) / 4 = -log_snr / 8, seen in x's dtype with shape (B,)
    want_noise = (-sde.log_snr(torch.as_tensor(t)) / 8).expand(x.shape[0])
    assert seen[-1].shape == (x.shape[0],) and seen[-1].dtype == x.dtype
    torch.testing.assert_close(seen[-1].double(), want_noise.double(), rtol=1e-6, atol=1e-6)
    if x.dtype == torch.float64:
        torch.testing.assert_close(got, x0, rtol=1e-9, atol=1e-9)
    else:
        # x0 passes through a float32 network output scaled by c_out <= sigma_data
        torch.testing.assert_close(got.double(), x0, rtol=1e-5, atol=1e-5)
