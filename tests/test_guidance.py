"""Conditional generation against exact answers: classifier-free guidance and classifier
guidance on a class-conditional Gaussian-mixture oracle (exact p_t(x | y), p_t(y | x)),
inpainting on a Gaussian (closed-form conditional), every registered solver."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

import scoresde as sd
import solvers
from scoresde.guidance import _forward_transition

ALL = sorted(solvers.SOLVERS)


def _whole_interval(cls: type) -> bool:
    """Adaptive methods and those that integrate the whole grid themselves (torchsde)."""
    return bool(cls.adaptive) or callable(getattr(cls, "solve", None))


STEPPING = sorted(name for name, cls in solvers.SOLVERS.items() if not _whole_interval(cls))
WHOLE_INTERVAL = sorted(name for name, cls in solvers.SOLVERS.items() if _whole_interval(cls))
F64 = torch.float64


def _labelled_oracle(sde: sd.SDE | None = None) -> sd.GaussianMixtureOracle:
    """Three classes in 2-D; class 1 has two components (so p_t(x | y) is itself a mixture)."""
    weights = torch.tensor([0.3, 0.2, 0.25, 0.25], dtype=F64)
    means = torch.tensor([[-1.5, 0.0], [0.0, 1.5], [1.0, 1.0], [1.5, -1.0]], dtype=F64)
    covs = torch.tensor([0.3, 0.2, 0.25, 0.4], dtype=F64) ** 2
    gmm = sd.GaussianMixture(weights, means, covs, labels=[0, 1, 1, 2])
    return gmm.score_model(sde if sde is not None else sd.VPSDE())


def _solver(name: str) -> solvers.Solver:
    """Adaptive methods at a loose tolerance: the tests check wiring, not accuracy."""
    cls = solvers.SOLVERS[name]
    if cls.adaptive:
        tol = 0.1 if cls.stochastic else 1e-2
        return solvers.get_solver(name, rtol=tol, atol=tol)
    return solvers.get_solver(name)


def _per_sample(fn, x, t, y):
    return torch.stack([fn(int(y[i]))(x[i : i + 1], t[i : i + 1])[0] for i in range(len(y))])


@pytest.fixture
def states():
    g = torch.Generator().manual_seed(0)
    x = 1.5 * torch.randn(6, 2, generator=g, dtype=F64)
    t = 0.02 + 0.96 * torch.rand(6, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 2, 2, 1, 0])
    return x, t, y


# --------------------------------------------------------------------------- CFG, exact


@pytest.mark.parametrize("family", ["vp", "ve"])
@pytest.mark.parametrize("prediction", sd.PREDICTIONS)
def test_cfg_w0_is_the_exact_conditional_score(family, prediction, states):
    sde = sd.VPSDE() if family == "vp" else sd.VESDE()
    oracle = _labelled_oracle(sde)
    x, t, y = states
    model = sd.CFGModel(
        sd.ConditionalOracleNet(oracle, prediction), sde, y=y, w=0.0, prediction=prediction
    )
    exact = _per_sample(lambda c: oracle.condition(c).score, x, t, y)
    torch.testing.assert_close(model.score(x, t), exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("w", [0.5, 2.0, 7.0])
@pytest.mark.parametrize("prediction", sd.PREDICTIONS)
def test_cfg_is_the_affine_combination_in_every_prediction_space(w, prediction, states):
    """(1 + w) cond - w uncond, whatever the network predicts and whatever is asked for."""
    oracle = _labelled_oracle()
    x, t, y = states
    model = sd.CFGModel(
        sd.ConditionalOracleNet(oracle, prediction), oracle.sde, y=y, w=w, prediction=prediction
    )
    assert model.null_label == oracle.gmm.n_classes and model.batch_multiplier == 2
    for target in sd.PREDICTIONS:
        cond = _per_sample(
            lambda c, tg=target: lambda a, b: oracle.condition(c).predict(a, b, tg), x, t, y
        )
        uncond = oracle.predict(x, t, target)
        torch.testing.assert_close(
            model.predict(x, t, target), (1 + w) * cond - w * uncond, rtol=1e-10, atol=1e-10
        )


def test_cfg_per_sample_scale_and_int_label(states):
    oracle = _labelled_oracle()
    x, t, _ = states
    w = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], dtype=F64)
    model = sd.CFGModel(sd.ConditionalOracleNet(oracle, "eps"), oracle.sde, y=1, w=w)
    cond, uncond = oracle.condition(1).eps(x, t), oracle.eps(x, t)
    want = (1 + w[:, None]) * cond - w[:, None] * uncond
    torch.testing.assert_close(model.eps(x, t), want, rtol=1e-10, atol=1e-10)


def test_cfg_equals_classifier_guidance_with_gamma_one_plus_w(states):
    """score + w (score(x|y) - score(x)) = score(x) + (1 + w) grad log p_t(y | x)."""
    oracle = _labelled_oracle()
    x, t, y = states
    w = 2.5
    cfg = sd.CFGModel(sd.ConditionalOracleNet(oracle), oracle.sde, y=y, w=w)
    cg = sd.ClassifierGuidedModel(oracle, oracle.class_log_prob, y=y, gamma=1 + w)
    torch.testing.assert_close(cfg.score(x, t), cg.score(x, t), rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- classifier guidance


@pytest.mark.parametrize("family", ["vp", "ve", "edm"])
def test_exact_classifier_with_gamma_one_gives_the_exact_conditional_score(family, states):
    sde = {"vp": sd.VPSDE(), "ve": sd.VESDE(), "edm": sd.EDMSDE()}[family]
    oracle = _labelled_oracle(sde)
    x, t, y = states
    t = sde.t_min + (sde.T - sde.t_min) * (t - 0.02) / 0.96  # spread over the SDE's range
    t = t.clamp(sde.t_min, 3.0) if family == "edm" else t  # EDM: where classes still differ
    model = sd.ClassifierGuidedModel(oracle, oracle.class_log_prob, y=y, gamma=1.0)
    exact = _per_sample(lambda c: oracle.condition(c).score, x, t, y)
    torch.testing.assert_close(model.score(x, t), exact, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.class_score(x, t), oracle.class_score(x, t, y))
    for target in ("eps", "x0", "v"):  # the guided model is a ScoreModel in every space
        want = _per_sample(
            lambda c, tg=target: lambda a, b: oracle.condition(c).predict(a, b, tg), x, t, y
        )
        torch.testing.assert_close(model.predict(x, t, target), want, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 4.0])
def test_classifier_guidance_scale_on_an_eps_model(gamma, states):
    """On a base model predicting eps (the gradient is converted with -sigma)."""
    oracle = _labelled_oracle()
    x, t, y = states
    base = sd.ScoreModel(lambda a, b: oracle.eps(a, b), oracle.sde, prediction="eps")
    model = sd.ClassifierGuidedModel(base, oracle.class_log_prob, y=y, gamma=gamma)
    want = oracle.score(x, t) + gamma * oracle.class_score(x, t, y)
    torch.testing.assert_close(model.score(x, t), want, rtol=1e-9, atol=1e-9)


def test_classifier_gradient_under_no_grad_and_inference_mode(states):
    oracle = _labelled_oracle()
    x, t, y = states
    clf = sd.NoisyClassifier(2, 3, width=16, depth=1).double()
    model = sd.ClassifierGuidedModel(oracle, clf, y=y, gamma=2.0)
    ref = model.score(x, t)
    with torch.no_grad():
        torch.testing.assert_close(model.score(x, t), ref)
    with torch.inference_mode():
        xi, ti = x.clone(), t.clone()  # inference tensors
        got = model.score(xi, ti)
    torch.testing.assert_close(got, ref)
    assert all(p.grad is None for p in clf.parameters())  # no gradient leaks into the classifier
    # the direction is really the classifier's: compare with autograd by hand
    xg = x.clone().requires_grad_(True)
    tt = t.clone()
    logp = torch.log_softmax(clf(xg, tt), -1).gather(1, y[:, None]).sum()
    (grad,) = torch.autograd.grad(logp, xg)
    torch.testing.assert_close(model.class_score(x, t), grad)


def test_classifier_guided_sampling_under_inference_mode_matches_no_grad():
    oracle = _labelled_oracle()
    model = sd.ClassifierGuidedModel(oracle, oracle.class_log_prob, y=2, gamma=2.0)
    runs = []
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            g = torch.Generator().manual_seed(3)
            runs.append(sd.sample(model, "dpmpp_2m", 6, shape=(5, 2), generator=g, dtype=F64).x)
    torch.testing.assert_close(runs[0], runs[1])


# --------------------------------------------------------------------------- every solver


@pytest.mark.parametrize("method", ALL)
def test_guided_sampling_with_every_solver(method):
    """CFG with scale w and classifier guidance with gamma = 1 + w (exact classifier) are two
    unrelated code paths for the same guided score: with every solver they give the same
    samples, and CFG makes exactly ``nfe`` network calls, each on the doubled batch. (One int
    label: a per-sample adaptive method evaluates subsets of the batch, which per-sample labels
    bound to the whole batch cannot follow.)"""
    oracle = _labelled_oracle()
    batches: list[int] = []
    net = sd.ConditionalOracleNet(oracle, "eps")

    def counting_net(x, t, y):
        batches.append(x.shape[0])
        return net(x, t, y)

    cfg = sd.CFGModel(counting_net, oracle.sde, y=1, w=2.0, null_label=3)
    cg = sd.ClassifierGuidedModel(oracle, oracle.class_log_prob, y=1, gamma=3.0)
    adaptive = solvers.SOLVERS[method].adaptive
    nfe = None if adaptive else 8
    runs = [
        sd.sample(
            m,
            _solver(method),
            nfe,
            shape=(6, 2),
            dtype=F64,
            generator=torch.Generator().manual_seed(1),
        )
        for m in (cfg, cg)
    ]
    assert runs[0].nfe == len(batches) == runs[1].nfe
    assert all(b % 2 == 0 for b in batches)  # conditional and null halves in one call
    assert adaptive or set(batches) == {12}  # one call = one NFE = a batch of 2B
    assert nfe is None or runs[0].nfe <= nfe
    assert torch.isfinite(runs[0].x).all()
    torch.testing.assert_close(runs[0].x, runs[1].x, rtol=1e-7, atol=1e-7)


def test_cfg_with_a_network_on_images_float32():
    """A class-conditional MLP on (B, 1, 4, 4) states: null label from net.num_classes, one
    doubled batch per evaluation, float32 throughout."""
    torch.manual_seed(0)
    net = sd.MLP(16, width=32, depth=1, num_classes=3)
    calls: list[tuple[int, torch.dtype]] = []

    def counting(x, t, y):
        calls.append((x.shape[0], x.dtype))
        assert y.tolist()[4:] == [3] * 4  # the second half carries the null label
        return net(x, t, y=y)

    sde = sd.VPSDE()
    model = sd.CFGModel(counting, sde, y=torch.tensor([0, 1, 2, 0]), w=1.5, null_label=3)
    res = sd.sample(
        model, "ddim", 5, shape=(4, 1, 4, 4), generator=torch.Generator().manual_seed(0)
    )
    assert res.x.shape == (4, 1, 4, 4) and res.x.dtype == torch.float32
    assert calls == [(8, torch.float32)] * res.nfe
    assert sd.CFGModel(net, sde, y=1, w=1.0).null_label == 3
    zero = sd.CFGModel(net, sde, y=1, w=0.0)
    assert zero.batch_multiplier == 1


def test_classifier_guidance_with_a_noisy_classifier_on_images():
    torch.manual_seed(0)
    sde = sd.VPSDE()
    score_net = sd.ScoreModel(sd.MLP(16, width=32, depth=1), sde, prediction="eps")
    clf = sd.NoisyClassifier(16, 3, width=32, depth=1)
    model = sd.ClassifierGuidedModel(score_net, clf, y=torch.tensor([0, 1, 2, 0]), gamma=2.0)
    res = sd.sample(
        model, "heun", 5, shape=(4, 1, 4, 4), generator=torch.Generator().manual_seed(0)
    )
    assert res.x.shape == (4, 1, 4, 4) and torch.isfinite(res.x).all() and res.nfe == 5


# --------------------------------------------------------------------------- training helpers


def test_drop_labels():
    y = torch.arange(5).repeat(2000)
    g = torch.Generator().manual_seed(0)
    out = sd.drop_labels(y, 0.2, 5, generator=g)
    dropped = out == 5
    assert out.dtype == torch.long and torch.equal(out[~dropped], y[~dropped])
    n = y.numel()
    assert abs(dropped.float().mean().item() - 0.2) < 5 * (0.2 * 0.8 / n) ** 0.5
    again = sd.drop_labels(y, 0.2, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert torch.equal(sd.drop_labels(y, 0.0, 5), y)
    assert (sd.drop_labels(y, 1.0, 5) == 5).all()
    with pytest.raises(ValueError, match="p must"):
        sd.drop_labels(y, 1.5, 5)
    with pytest.raises(ValueError, match="y must lie"):
        sd.drop_labels(y, 0.1, 3)
    with pytest.raises(ValueError, match="y must be"):
        sd.drop_labels(y.float(), 0.1, 5)


def test_classifier_loss_is_minimised_by_the_exact_posterior():
    """Cross-entropy on perturbed data: the exact p_t(y | x) beats a constant guess, and a
    NoisyClassifier trained a few steps moves towards it; same seed, same loss."""
    oracle = _labelled_oracle()
    data = oracle.gmm.sample_with_labels(256, torch.Generator().manual_seed(0))
    x0, y = data.x, data.label
    exact = sd.classifier_loss(
        oracle.class_log_prob,
        oracle.sde,
        x0.double(),
        y,
        generator=torch.Generator().manual_seed(1),
    )
    flat = sd.classifier_loss(
        lambda x, t: torch.zeros(x.shape[0], 3),
        oracle.sde,
        x0,
        y,
        generator=torch.Generator().manual_seed(1),
    )
    assert flat.loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-6)
    assert exact.loss.item() < flat.loss.item() - 0.2
    assert 0 <= exact.accuracy.item() <= 1 and exact.t.dtype == F64

    torch.manual_seed(0)
    clf = sd.NoisyClassifier(2, 3, width=32, depth=1)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(2)
    first = None
    for _ in range(60):
        out = sd.classifier_loss(clf, oracle.sde, x0, y, generator=g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = out.loss.item() if first is None else first
    g_eval = torch.Generator().manual_seed(1)
    trained = sd.classifier_loss(clf, oracle.sde, x0, y, generator=g_eval).loss.item()
    assert trained < first - 0.2
    assert trained < exact.loss.item() + 0.15  # close to the Bayes cross-entropy


# --------------------------------------------------------------------------- inpainting

MU = torch.tensor([0.5, -0.3], dtype=F64)
COV = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
KNOWN_VALUE = 1.5
# x2 | x1 = 1.5  ~  N(-0.3 + 0.8 (1.5 - 0.5), 1 - 0.8^2)
COND_MEAN, COND_VAR = -0.3 + 0.8 * (KNOWN_VALUE - 0.5), 1 - 0.8**2


def _impute(n, method, nfe, resample, seed=0):
    oracle = sd.GaussianMixture.gaussian(MU, COV).score_model(sd.VPSDE())
    x_known = torch.tensor([KNOWN_VALUE, float("nan")], dtype=F64).expand(n, 2).clone()
    g = torch.Generator().manual_seed(seed)
    res = sd.inpaint(oracle, x_known, method=method, nfe=nfe, resample=resample, generator=g)
    assert (res.x[:, 0] == KNOWN_VALUE).all()  # exactly, not approximately
    return res.x[:, 1], res


def test_inpainting_bias_and_resampling_on_a_gaussian():
    """Replacement is biased: the imputed x2 keeps much of the unconditional law (measured
    mean error -0.46 of the 0.8 shift, variance +0.24, over 10 seeds, Euler 50 steps). RePaint
    resampling (r = 10, same 50 steps) reduces both to the sample-size level plus a small
    discretisation bias (measured mean error -0.06 +- 0.03 over 10 seeds, n = 1000)."""
    n = 1000
    se_mean = (COND_VAR / n) ** 0.5  # 0.019
    plain, res1 = _impute(n, "euler", 50, 1)
    repaint, res10 = _impute(n, "euler", 500, 10)
    assert res1.nfe == 50 and res10.nfe == 500
    err_plain = (plain.mean() - COND_MEAN).item(), (plain.var() - COND_VAR).item()
    err_repaint = (repaint.mean() - COND_MEAN).item(), (repaint.var() - COND_VAR).item()
    assert err_plain[0] < -0.3 and err_plain[1] > 0.15  # the bias is real and large
    assert abs(err_repaint[0]) < 0.06 + 5 * se_mean  # measured bias + sampling noise
    assert abs(err_repaint[1]) < 0.08
    assert abs(err_repaint[0]) < abs(err_plain[0]) / 3
    assert abs(err_repaint[1]) < abs(err_plain[1]) / 3


@pytest.mark.slow
def test_inpainting_with_many_resamplings_matches_the_exact_conditional():
    """100 steps x 20 resamplings: within sample-size tolerance of the exact conditional."""
    n = 4000
    x2, _ = _impute(n, "euler", 2000, 20, seed=5)
    se_mean, se_var = (COND_VAR / n) ** 0.5, COND_VAR * (2 / (n - 1)) ** 0.5
    assert abs(x2.mean().item() - COND_MEAN) < 0.03 + 4 * se_mean
    assert abs(x2.var().item() - COND_VAR) < 0.02 + 4 * se_var


class _EulerMaruyama(solvers.Solver[solvers.SDETermLike, None]):
    """A local stochastic solver, to exercise the SDE-term inpainting wrapper whatever the
    registry holds."""

    order: ClassVar[int] = 1
    strong_order = 0.5
    weak_order = 1.0
    stochastic = True
    term_type = solvers.SDETermLike
    evals_per_step = 1

    def step(self, term, t0, t1, x, state, noise):
        dt = t1 - t0
        drift, g = term.drift(x, t0), term.diffusion(x, t0)
        return x + drift * dt.to(x.dtype) + g * dt.abs().sqrt().to(x.dtype) * noise, None


@pytest.mark.parametrize("method", [*STEPPING, "local_euler_maruyama"])
@pytest.mark.parametrize("resample", [1, 3])
def test_inpainting_with_every_fixed_step_solver(method, resample):
    oracle = _labelled_oracle()
    solver = _EulerMaruyama() if method == "local_euler_maruyama" else method
    g = torch.Generator().manual_seed(0)
    x_known = oracle.gmm.sample(4, g, dtype=F64)
    mask = torch.tensor([True, False])
    res = sd.inpaint(
        oracle,
        x_known,
        mask,
        method=solver,
        nfe=6 * resample,
        resample=resample,
        grid="uniform" if method == "local_euler_maruyama" else None,
        generator=g,
    )
    assert torch.equal(res.x[:, 0], x_known[:, 0])
    assert torch.isfinite(res.x).all() and res.x.shape == x_known.shape
    assert res.method.startswith("inpaint(")
    # resampling repeats every step: r times the evaluations of the same grid without it
    plain = sd.sample(
        oracle,
        solver,
        6,
        shape=(4, 2),
        dtype=F64,
        grid="uniform" if method == "local_euler_maruyama" else None,
    )
    assert torch.equal(res.ts, plain.ts)
    assert res.nfe == resample * plain.nfe <= 6 * resample


@pytest.mark.parametrize("method", WHOLE_INTERVAL)
def test_inpainting_rejects_whole_interval_solvers(method):
    oracle = _labelled_oracle()
    with pytest.raises(ValueError, match="step by step"):
        sd.inpaint(oracle, torch.zeros(2, 2, dtype=F64), torch.tensor([True, False]), method=method)


def test_inpainting_images_equals_inpainting_flat_vectors():
    """The same data as (B, 1, 4, 4) images and as (B, 16) vectors, the same seed: the same
    result (the oracle flattens; every operation is elementwise or per sample)."""
    g = torch.Generator().manual_seed(0)
    d = 16
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T / d + 0.1 * torch.eye(d, dtype=F64)
    oracle = sd.GaussianMixture.gaussian(torch.zeros(d, dtype=F64), cov).score_model(sd.VPSDE())
    images = torch.randn(3, 1, 4, 4, generator=g, dtype=F64)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2] = True  # left half known
    out_img = sd.inpaint(
        oracle,
        images,
        mask,
        method="dpmpp_2m",
        nfe=8,
        resample=2,
        generator=torch.Generator().manual_seed(1),
    )
    out_vec = sd.inpaint(
        oracle,
        images.reshape(3, d),
        mask.reshape(1, d),
        method="dpmpp_2m",
        nfe=8,
        resample=2,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(out_img.x.reshape(3, d), out_vec.x, rtol=1e-12, atol=1e-12)
    assert torch.equal(out_img.x[mask.expand(3, 1, 4, 4)], images[mask.expand(3, 1, 4, 4)])


def test_inpainting_budget_trajectory_and_errors():
    oracle = _labelled_oracle()
    x_known = torch.tensor([[0.5, float("nan")]] * 3, dtype=F64)
    res = sd.inpaint(
        oracle,
        x_known,
        method="heun",
        nfe=21,
        resample=3,
        return_trajectory=True,
        generator=torch.Generator().manual_seed(0),
    )
    # heun: 2 n - 1 evaluations for n steps; 21 // 3 = 7 -> 4 steps, 3 x 7 = 21 evaluations
    assert res.nfe == 21 and res.ts.numel() == 5 and res.trajectory.shape == (5, 3, 2)
    # every saved state carries the forward-marginal draw of the known entry
    assert torch.isfinite(res.trajectory).all()
    with pytest.raises(ValueError, match="resample"):
        sd.inpaint(oracle, x_known, method="euler", nfe=4, resample=0)
    with pytest.raises(ValueError, match="too small"):
        sd.inpaint(oracle, x_known, method="euler", nfe=2, resample=3)
    with pytest.raises(ValueError, match="broadcast"):
        sd.inpaint(oracle, x_known, torch.ones(3, dtype=torch.bool), method="euler", nfe=4)
    with pytest.raises(ValueError, match="finite"):
        sd.inpaint(oracle, x_known, torch.tensor([False, True]), method="euler", nfe=4)


def test_forward_transition_composes_the_marginals():
    """a alpha_1 = alpha_0 and a^2 sigma_1^2 + s^2 = sigma_0^2: a marginal sample at t1 jumped
    forward is a marginal sample at t0 (RePaint's jump)."""
    for sde in (sd.VPSDE(), sd.VESDE(), sd.EDMSDE(), sd.SubVPSDE()):
        t1 = torch.tensor(sde.t_min + 0.3 * (sde.T - sde.t_min), dtype=F64)
        t0 = torch.tensor(sde.t_min + 0.35 * (sde.T - sde.t_min), dtype=F64)
        a, s = _forward_transition(sde, t1, t0)
        torch.testing.assert_close(a * sde.alpha(t1), sde.alpha(t0), rtol=1e-12, atol=0)
        torch.testing.assert_close(
            a**2 * sde.sigma(t1) ** 2 + s**2, sde.sigma(t0) ** 2, rtol=1e-12, atol=0
        )


# --------------------------------------------------------------------------- validation


def test_bad_arguments_are_named():
    oracle = _labelled_oracle()
    net = sd.ConditionalOracleNet(oracle)
    with pytest.raises(ValueError, match="w must"):
        sd.CFGModel(net, oracle.sde, y=0, w=float("nan"))
    with pytest.raises(ValueError, match="y must"):
        sd.CFGModel(net, oracle.sde, y=-1, w=1.0)
    with pytest.raises(ValueError, match="null_label is required"):
        sd.CFGModel(lambda x, t, y: x, oracle.sde, y=0, w=1.0)
    with pytest.raises(ValueError, match="labels for a batch"):
        sd.CFGModel(net, oracle.sde, y=torch.tensor([0, 1]), w=1.0).eps(
            torch.zeros(3, 2, dtype=F64), 0.5
        )
    with pytest.raises(TypeError, match="ScoreModel"):
        sd.ClassifierGuidedModel(lambda x, t: x, oracle.class_log_prob, y=0)
    with pytest.raises(ValueError, match="logits of shape"):
        sd.ClassifierGuidedModel(oracle, lambda x, t: x.sum(1), y=0).score(
            torch.zeros(3, 2, dtype=F64), 0.5
        )
    with pytest.raises(ValueError, match="classes"):
        sd.ClassifierGuidedModel(oracle, oracle.class_log_prob, y=5).score(
            torch.zeros(3, 2, dtype=F64), 0.5
        )
    with pytest.raises(ValueError, match="num_classes must"):
        sd.NoisyClassifier(2, 1)


def test_guidance_and_inpainting_follow_the_device(device):
    """Guided sampling and inpainting on ``device`` with a CPU generator give the CPU result."""
    oracle = _labelled_oracle()
    y = torch.tensor([0, 1, 2, 1])
    x_init = oracle.sde.prior_sample((4, 2), torch.Generator().manual_seed(0), dtype=F64)
    x_known = torch.tensor([[0.5, float("nan")]] * 4, dtype=F64)
    out = {}
    for dev in ("cpu", device):
        cfg = sd.CFGModel(sd.ConditionalOracleNet(oracle), oracle.sde, y=y.to(dev), w=2.0)
        cg = sd.ClassifierGuidedModel(oracle, oracle.class_log_prob, y=y.to(dev), gamma=3.0)
        out[dev] = [
            sd.sample(cfg, "dpmpp_2m", 6, x_init=x_init.to(dev)).x,
            sd.sample(cg, "dpmpp_2m", 6, x_init=x_init.to(dev)).x,
            sd.inpaint(
                cfg,
                x_known.to(dev),
                method="ddim",
                nfe=6,
                resample=2,
                generator=torch.Generator().manual_seed(1),
            ).x,
        ]
    for got, want in zip(out[device], out["cpu"]):
        assert got.device.type == torch.device(device).type
        torch.testing.assert_close(got.cpu(), want, rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------------- the digits example


def _digits_example():
    """examples/guidance_digits.py as a module (it is a script, not a package module)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "guidance_digits.py"
    spec = importlib.util.spec_from_file_location("guidance_digits_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_digits_example_helpers_are_exact():
    ex = _digits_example()
    g = torch.Generator().manual_seed(0)
    train = torch.randn(30, 1, 4, 4, generator=g)
    x = train[[3, 17]].clone()
    mask = torch.rand(2, 1, 4, 4, generator=g) < 0.5
    # a training image is its own nearest neighbour on any known pixels: k = 1 restores it
    assert torch.equal(ex.knn_fill(train, torch.where(mask, x, 0.0), mask, 1), x)
    # precision and recall of a set against itself are 1; against a far-away set, 0
    assert ex.precision_recall(train, train) == (1.0, 1.0)
    assert ex.precision_recall(train + 100.0, train) == (0.0, 0.0)


def test_digits_example_smoke(tmp_path):
    """The example end to end in --smoke mode (a tiny network, a few steps): it writes both
    figures and metrics whose bookkeeping (scales, CFG batch sizes, NFE, masks) is right."""
    import json

    ex = _digits_example()
    with torch.random.fork_rng(devices=[]):
        assert ex.main(["--smoke", "--out", str(tmp_path)]) == 0
    for name in ("guidance_digits_samples.png", "guidance_digits_inpaint.png"):
        assert (tmp_path / name).stat().st_size > 1000
    m = json.loads((tmp_path / "guidance_digits_metrics.json").read_text())
    s = ex.SMOKE
    assert [row["w"] for row in m["guidance"].values()] == list(s.scales)
    n = 10 * s.per_class
    for row in m["guidance"].values():
        # one call per evaluation; the unconditional half only when w != 0
        assert row["batch_per_call"] == (n if row["w"] == 0 else 2 * n)
        assert row["nfe"] == s.nfe
        assert 0.0 <= row["accuracy"] <= 1.0 and len(row["accuracy_per_class"]) == 10
    for block in m["inpainting"].values():
        assert block["missing_fraction"] > 0.3
        rows = block["rows"]
        assert rows["(the true digits)"]["rmse_grey_levels"] == 0.0
        assert f"RePaint r = {s.resample}, {s.inpaint_steps} steps (5 NFE)" in rows
