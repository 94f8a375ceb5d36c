"""Everything that needs autograd inside sampling and likelihoods also works under
``torch.inference_mode``, where ``torch.enable_grad()`` alone records nothing and a derivative
would silently come out as zero: the autograd defaults of a user SDE's ``f`` and ``g^2``, the
solver layer's drift coefficients, the divergences and the likelihood solve. Each is compared
with the same computation under ``torch.no_grad``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import scoresde as sd
import solvers
from solvers.predictor_corrector import drift_coefficients

F64 = torch.float64


class LinearVP(sd.SDE):
    """A user SDE defined by its log-space primitives only (``_f``, ``_g2`` by autograd):
    log alpha = -t^2 / 2 (beta(t) = 2t), sigma^2 = 1 - alpha^2."""

    def __init__(self) -> None:
        super().__init__(T=1.0, t_min=1e-3)

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * t * t

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * torch.log(-torch.expm1(-t * t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # lam = log(alpha^2 / sigma^2) = -log(expm1(t^2)), so t^2 = log1p(exp(-lam))
        return torch.sqrt(torch.log1p(torch.exp(-lam)))


def _mixture() -> sd.GaussianMixture:
    return sd.GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]], [0.09, 0.25])


def test_user_sde_derivatives_under_inference_mode() -> None:
    sde = LinearVP()
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    f, g2 = sde._f(t), sde._g2(t)
    torch.testing.assert_close(f, -t)  # d log alpha / dt
    torch.testing.assert_close(g2, 2.0 * t)  # beta(t) for a VP SDE
    with torch.inference_mode():
        ti = t.clone()  # an inference tensor
        torch.testing.assert_close(sde._f(ti), f)
        torch.testing.assert_close(sde._g2(ti), g2)
        torch.testing.assert_close(sde.drift(torch.ones(3, 2, dtype=F64), ti)[:, 0], f)


@pytest.mark.parametrize("method", ["euler", "heun", "euler_maruyama", "pc", "sde_euler"])
def test_sampling_a_user_sde_under_inference_mode(method: str) -> None:
    model = _mixture().score_model(LinearVP())
    results = []
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            g = torch.Generator().manual_seed(0)
            results.append(sd.sample(model, method, 12, shape=(16, 2), generator=g).x)
    torch.testing.assert_close(results[1], results[0], rtol=0.0, atol=1e-12)


def test_drift_coefficients_under_inference_mode() -> None:
    sde = sd.VPSDE()
    t = torch.tensor([0.2, 0.7], dtype=F64)
    f, g2 = drift_coefficients(sde, t)
    with torch.inference_mode():
        fi, g2i = drift_coefficients(sde, t.clone())
    torch.testing.assert_close(fi, f)
    torch.testing.assert_close(g2i, g2)
    torch.testing.assert_close(g2, sde.diffusion(t) ** 2)


def test_divergences_under_inference_mode() -> None:
    a = torch.tensor([[0.5, 2.0], [-1.0, 0.25]], dtype=F64)

    def fn(x: Tensor) -> Tensor:
        return x @ a.T + torch.sin(x)

    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = a.trace() + torch.cos(x).sum(1)
    probes = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    hutch = sd.hutchinson_divergence(fn, x, probes).divergence
    with torch.inference_mode():
        xi = x.clone()
        torch.testing.assert_close(sd.exact_divergence(fn, xi).divergence, exact)
        torch.testing.assert_close(sd.hutchinson_divergence(fn, xi, probes).divergence, hutch)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_log_likelihood_under_inference_mode(divergence: str) -> None:
    gmm = _mixture()
    model = gmm.score_model(sd.VPSDE())
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = []
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            g = torch.Generator().manual_seed(3)
            out.append(sd.log_likelihood(model, x, divergence=divergence, generator=g).log_prob)
    torch.testing.assert_close(out[1], out[0], rtol=0.0, atol=1e-10)
    if divergence == "exact":  # and it is the density of the diffused mixture at t_min, up
        # to the prior's mismatch at T and the solver's tolerance (~0.01 here; with a zero
        # divergence, the failure this guards against, it is off by ~12)
        exact = model.log_prob_t(x, model.sde.t_min)
        torch.testing.assert_close(out[1], exact, rtol=0.0, atol=0.05)


def test_adaptive_sde_noise_check_under_inference_mode() -> None:
    """torchsde's state-dependence check of the diffusion (decides whether an Ito-Stratonovich
    correction is needed) gives the same answer under inference mode."""
    model = _mixture().score_model(sd.VPSDE())
    xs = []
    for ctx in (torch.no_grad, torch.inference_mode):
        with ctx():
            g = torch.Generator().manual_seed(0)
            xs.append(sd.sample(model, "sde_milstein", 10, shape=(8, 2), generator=g).x)
    torch.testing.assert_close(xs[1], xs[0], rtol=0.0, atol=1e-12)
    assert solvers.SOLVERS["sde_milstein"].stochastic
