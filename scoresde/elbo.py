"""Variational bounds on the log-likelihood: the continuous-time ELBO and the discrete VDM ELBO.

Both are ``ELBO(x) = reconstruction - prior - denoising`` (``docs/math.md``, sections 3.3, 4.1
and 6.4), every term a function of the encoder's marginals ``q(z_t | x) = N(alpha_t x,
sigma_t^2 I)`` and of the network's eps prediction:

* **prior matching** ``KL(q(z_T | x) || N(0, sigma_p^2 I)) = 1/2 sum_d [(alpha_T^2 x_d^2 +
  sigma_T^2) / sigma_p^2 - 1 - log(sigma_T^2 / sigma_p^2)]``, closed form, no network;
* **reconstruction** ``E_{q(z_0 | x)} log p(x | z_0)`` at the first latent ``z_0`` (time
  ``t_min``, or the chain's first latent), with the decoder (Ho et al. 2020, eq. 13):
  continuous data, ``p(x | z_0) = N(x; x0_hat(z_0), s_0^2 I)``; discrete data, the probability of
  the data point's bin ``[x - Delta/2, x + Delta/2)`` under that Gaussian, per dimension, with
  the first and last bins extended to -inf and +inf. ``s_0 = sigma_0 / alpha_0`` is the noise
  scale of ``z_0 / alpha_0`` and ``x0_hat`` the network's denoised estimate;
* **denoising matching**. Discrete (``steps=N``, the chain ``sde.discretize(N)``), for
  ``i = 2..N``: ``L_i = 1/2 (SNR_{i-1} - SNR_i) E||x - x0_hat(z_i)||^2 = 1/2 (exp(lambda_{i-1} -
  lambda_i) - 1) E||eps - eps_hat(z_i; t_i)||^2`` (Kingma et al. 2021, eq. 13; the decoder
  ``p(z_{i-1} | z_i) = q(z_{i-1} | z_i, x = x0_hat)``). Continuous (``steps=None``): the limit
  ``1/2 int_{t_min}^T (-dlambda/dt) E||eps - eps_hat(z_t; t)||^2 dt = 1/2 int g^2 E||s_hat -
  grad log q(z_t | x)||^2 dt`` (Kingma et al. 2021, eq. 17; Song, Durkan, Murray & Ermon 2021,
  Theorem 1: the likelihood-weighted denoising score-matching bound).

Estimating the time integral (``t_sampling``):

* ``"importance"`` (default): t drawn with density ``q(t)`` proportional to the weight
  ``-dlambda/dt = g^2 / sigma^2`` by the numerical inverse CDF of
  :class:`scoresde.losses.ImportanceTimeSampler` (any schedule; for this weight, uniform in
  log-SNR), each draw weighted by ``1 / q(t)``. Discrete: ``i`` drawn with probability
  proportional to ``exp(lambda_{i-1} - lambda_i) - 1``.
* ``"uniform"``: t uniform on ``[t_min, T]`` (discrete: ``i`` uniform on ``2..N``).
* ``"quadrature"``: deterministic in t with **one** noise draw ``eps`` per data point shared by
  every time: Gauss-Legendre in log-SNR with ``n_samples`` nodes (the integrand
  ``||eps - eps_hat||^2 / 2`` is smooth in lambda); discrete: the exact sum of all ``N - 1``
  terms. With the same generator seed the continuous and discrete bounds see the same
  ``eps``, which is how ``docs/likelihood.md`` measures the rate at which the discrete bound
  approaches the continuous one.

All schedule maths and the bound are float64; the network runs in its own dtype (see
:mod:`scoresde.likelihood`). The ELBO bounds the log-likelihood of the model's *reverse SDE*
(and, for the discrete bound, of the N-step chain), not of the probability-flow ODE; for an
exact score the continuous bound is tight (the generative and forward path measures agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor

from scoresde.likelihood import (
    _check_input,
    _check_model,
    _check_on_grid,
    _check_quantization,
    _count,
    _model_dtype,
    _work_dtype,
    bits_per_dim,
)
from scoresde.losses import ImportanceTimeSampler, LikelihoodWeighting
from scoresde.sde import SDE
from solvers.broadcast import append_dims

__all__ = ["ELBOResult", "TSampling", "elbo"]

TSampling = Literal["importance", "uniform", "quadrature"]
"""How the time integral (or the sum over the chain's steps) is estimated."""

_F64 = torch.float64
_ROW_ELEMENTS = 1 << 20
"""Default bound on ``rows * D`` per network call."""


@dataclass(frozen=True)
class ELBOResult:
    """Result of :func:`elbo`. Per-sample tensors are float64 of shape (B,).

    ``elbo = reconstruction - prior - denoising`` (nats); each ``*_bpd`` is its term's
    contribution to ``bpd = -elbo / (D ln 2)``, an upper bound on the bits/dim (for discrete data
    a bound on the discrete bits/dim, in the units of :func:`scoresde.log_likelihood`'s
    dequantized bits/dim but often much looser: a decoder far narrower than a bin costs a model
    with a continuous density about ``D log(Delta / (s_0 sqrt(2 pi e)))`` nats;
    docs/likelihood.md, section 8).

    Attributes:
        elbo: the bound (a Monte-Carlo estimate), nats.
        bpd: ``-elbo / (D ln 2)``.
        reconstruction: ``E log p(x | z_0)``, nats (a log-probability for discrete data).
        prior: ``KL(q(z_T | x) || p(z_T))``, nats, >= 0.
        denoising: the sum of the denoising-matching KLs (discrete) or the diffusion loss
            (continuous), nats, >= 0.
        reconstruction_bpd: ``-reconstruction / (D ln 2)``.
        prior_bpd: ``prior / (D ln 2)``.
        denoising_bpd: ``denoising / (D ln 2)``.
        stderr: Monte-Carlo standard error of ``elbo`` over the ``n_samples`` draws (NaN when
            it cannot be estimated: one draw, or ``"quadrature"``).
        steps: N of the discrete chain, None for the continuous bound.
        nfe: network evaluations per data point.
        dim: D.
    """

    elbo: Tensor
    bpd: Tensor
    reconstruction: Tensor
    prior: Tensor
    denoising: Tensor
    reconstruction_bpd: Tensor
    prior_bpd: Tensor
    denoising_bpd: Tensor
    stderr: Tensor
    steps: int | None
    nfe: int
    dim: int


def _prior_kl(x: Tensor, alpha_t: float, sigma_t: float, sigma_p: float) -> Tensor:
    """KL(N(alpha x, sigma^2 I) || N(0, sigma_p^2 I)) per sample, (B,)."""
    flat = x.flatten(1)
    d = flat.shape[1]
    ratio = (sigma_t / sigma_p) ** 2
    quad = (alpha_t / sigma_p) ** 2 * flat.square().sum(1)
    return 0.5 * (quad + d * (ratio - 1.0 - math.log(ratio)))


def _log_diff_ndtr(a: Tensor, b: Tensor) -> Tensor:
    """``log(Phi(b) - Phi(a))`` for a < b (either may be infinite), without cancellation."""
    flip = a > 0  # both in the upper tail: Phi(b) - Phi(a) = Phi(-a) - Phi(-b)
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    log_lo = torch.special.log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1.0 - 1e-16))


def _reconstruction(
    x: Tensor, x_hat: Tensor, s0: float, quant: tuple[int, float, float] | None
) -> Tensor:
    """``log p(x | z_0)`` per row: Gaussian density or discretized Gaussian bin mass."""
    flat, mean = x.flatten(1), x_hat.flatten(1)
    if quant is None:
        d = flat.shape[1]
        return -0.5 * ((flat - mean) / s0).square().sum(1) - 0.5 * d * math.log(2 * math.pi * s0**2)
    levels, lo, width = quant
    k = torch.round((flat - lo) / width)
    upper = torch.where(
        k >= levels - 1, torch.full_like(flat, math.inf), (flat + width / 2 - mean) / s0
    )
    lower = torch.where(k <= 0, torch.full_like(flat, -math.inf), (flat - width / 2 - mean) / s0)
    return _log_diff_ndtr(lower, upper).sum(1)


class _Network:
    """Chunked, dtype-managed evaluations of the model's eps and x0 predictions."""

    def __init__(self, model: Any, mdtype: torch.dtype, work: torch.dtype, rows: int) -> None:
        self.model, self.mdtype, self.work, self.rows = model, mdtype, work, rows

    def __call__(self, what: str, z: Tensor, t: Tensor) -> Tensor:
        fn = getattr(self.model, what)
        outs = [
            fn(z[i : i + self.rows].to(self.mdtype), t[i : i + self.rows]).to(self.work)
            for i in range(0, z.shape[0], self.rows)
        ]
        out = torch.cat(outs)
        bad = ~torch.isfinite(out.reshape(out.shape[0], -1)).all(1)
        if bool(bad.any()):  # one host sync per call; the ELBO is an evaluation, not a loop
            times = t[bad.to(t.device)]
            raise ValueError(
                f"model.{what} returned NaN or inf for {int(bad.sum())} of {out.shape[0]} "
                f"inputs (times {float(times.min()):.4g} to {float(times.max()):.4g}): the "
                "ELBO would be NaN; check the network and its checkpoint"
            )
        return out


def _weight(sde: SDE, t: Tensor) -> Tensor:
    """``-dlambda/dt = g^2 / sigma^2`` (docs/math.md, section 6.1), float64."""
    return sde._g2(t) / torch.exp(2.0 * sde._log_sigma(t))


def elbo(
    model: Any,
    x: Tensor,
    steps: int | None = None,
    *,
    n_samples: int = 16,
    t_sampling: TSampling = "importance",
    generator: torch.Generator | None = None,
    levels: int | None = None,
    data_range: tuple[float, float] | None = None,
    batch_rows: int | None = None,
    model_dtype: torch.dtype | None = None,
) -> ELBOResult:
    """The evidence lower bound of data under a score model, continuous or discrete in time.

    See the module docstring for the three terms and the estimators.

    Args:
        model: a score model (``sde``, ``eps(x, t)``, ``x0(x, t)``): a
            :class:`scoresde.ScoreModel` or an oracle.
        x: data ``(B, *dims)``, any floating dtype (computed in float64).
        steps: None for the continuous-time bound on ``[t_min, T]``; N for the discrete VDM
            bound of the chain ``model.sde.discretize(N)`` (network times below ``t_min``, as
            the VE chain's first level at t = 0, are clamped to ``t_min``).
        n_samples: Monte-Carlo draws (t, eps) per data point (``"quadrature"``: the number of
            Gauss-Legendre nodes of the continuous bound; unused by the discrete one, which sums
            all N - 1 terms). The reconstruction term uses ``n_samples`` draws too (one with
            quadrature).
        t_sampling: ``"importance"``, ``"uniform"`` or ``"quadrature"``.
        generator: randomness (noise, then times). The noise is drawn first, so the same seed
            gives the same eps for every ``steps``.
        levels: number of levels per dimension of discrete data, or None (continuous; see
            :func:`scoresde.log_likelihood`): the reconstruction is then a bin probability and
            the bound one on log P(x).
        data_range: ``(lo, hi)``, the values of the first and last level (with ``levels``).
        batch_rows: rows per network call (default: about ``2^20 / D``, at least B).
        model_dtype: dtype the network is evaluated in (default: its parameters').

    Returns:
        :class:`ELBOResult`.
    """
    sde = _check_model(model)
    for name in ("eps", "x0"):
        if not callable(getattr(model, name, None)):
            raise TypeError(f"model must have a method {name}(x, t) (a scoresde.ScoreModel)")
    x = _check_input(x, "x")
    if t_sampling not in get_args(TSampling):
        raise ValueError(
            f"t_sampling must be one of {list(get_args(TSampling))}, got {t_sampling!r}"
        )
    n_samples = _count("n_samples", n_samples)
    if steps is not None:
        steps = _count("steps", steps)
    quant = _check_quantization(levels, data_range)
    work = _work_dtype(x.device)
    mdtype = _model_dtype(model, work, model_dtype)
    dev = x.device
    b, dims = x.shape[0], tuple(x.shape[1:])
    d = math.prod(dims)
    xw = x.detach().to(work)
    if quant is not None:
        xw = _check_on_grid(xw, *quant, x.dtype)
    if batch_rows is None:
        batch_rows = max(b, _ROW_ELEMENTS // d)
    net = _Network(model, mdtype, work, _count("batch_rows", batch_rows))
    quadrature = t_sampling == "quadrature"
    n_draws = 1 if quadrature else n_samples
    gen_device = generator.device if generator is not None else dev

    def randn(n: int) -> Tensor:
        return torch.randn((n, b, *dims), generator=generator, device=gen_device, dtype=work).to(
            dev
        )

    eps = randn(n_draws)  # first, so every `steps` sees the same noise for the same seed
    eps_rec = eps if quadrature else randn(n_draws)

    # ---------------------------------------------------------------- the schedule's ends
    t_min, t_max = sde.t_min, sde.T
    if steps is None:
        ends = torch.tensor([t_min, t_max], dtype=_F64)
        alpha_e = torch.exp(sde._log_alpha(ends))
        sigma_e = torch.exp(sde._log_sigma(ends))
        t_rec = t_min
    else:
        chain = sde.discretize(steps)
        alpha_e = chain.alpha[[0, -1]]
        sigma_e = chain.sigma[[0, -1]]
        t_rec = min(max(float(chain.t[0]), t_min), t_max)
    alpha0, alpha_T = float(alpha_e[0]), float(alpha_e[1])
    sigma0, sigma_T = float(sigma_e[0]), float(sigma_e[1])

    # ---------------------------------------------------------------- prior matching
    prior = _prior_kl(xw, alpha_T, sigma_T, sde.prior_std)

    # ---------------------------------------------------------------- reconstruction
    z0 = alpha0 * xw.unsqueeze(0) + sigma0 * eps_rec  # (n, B, *dims)
    t_rows = torch.full((n_draws * b,), t_rec, dtype=_F64, device=dev)
    x_hat = net("x0", z0.reshape(n_draws * b, *dims), t_rows)
    x_rep = xw.unsqueeze(0).expand(n_draws, *xw.shape).reshape(n_draws * b, *dims)
    recon = _reconstruction(x_rep, x_hat, sigma0 / alpha0, quant).reshape(n_draws, b)
    nfe = n_draws

    # ---------------------------------------------------------------- denoising matching
    # times (rows of n_t per data point) with their coefficients c: L = c ||eps - eps_hat||^2
    n_terms: int
    if steps is None:
        if quadrature:
            lam_ends = sde._log_snr(torch.tensor([t_max, t_min], dtype=_F64))
            nodes, wq = np.polynomial.legendre.leggauss(n_samples)
            half = 0.5 * float(lam_ends[1] - lam_ends[0])
            lam = float(lam_ends[0]) + half * (torch.from_numpy(nodes).to(_F64) + 1.0)
            t_nodes = sde._t_from_log_snr(lam).clamp(t_min, t_max)
            t_mat = t_nodes[:, None].expand(n_samples, b)
            c_mat = (0.5 * half * torch.from_numpy(wq).to(_F64))[:, None].expand(n_samples, b)
            n_terms = n_samples
        else:
            if t_sampling == "importance":
                drawn = ImportanceTimeSampler().sample(
                    n_samples * b, sde, LikelihoodWeighting(), generator=generator
                )
                t_flat = drawn.t.cpu()
                scale = (t_max - t_min) * drawn.importance.cpu()
            else:
                u = torch.rand(n_samples * b, generator=generator, device=gen_device, dtype=_F64)
                t_flat = t_min + (t_max - t_min) * u.cpu()
                scale = torch.full_like(t_flat, t_max - t_min)
            t_mat = t_flat.reshape(n_samples, b)
            c_mat = (0.5 * scale * _weight(sde, t_flat)).reshape(n_samples, b)
            n_terms = n_samples
        alpha_mat = torch.exp(sde._log_alpha(t_mat))
        sigma_mat = torch.exp(sde._log_sigma(t_mat))
    else:
        lam_chain = chain.log_snr
        w_chain = 0.5 * torch.expm1(lam_chain[:-1] - lam_chain[1:])  # terms i = 2..N
        if steps == 1:
            i_mat = torch.zeros(0, b, dtype=torch.int64)
            c_mat = torch.zeros(0, b, dtype=_F64)
        elif quadrature:
            i_mat = torch.arange(1, steps)[:, None].expand(steps - 1, b)
            c_mat = w_chain[:, None].expand(steps - 1, b)
        elif t_sampling == "importance":
            p = w_chain / w_chain.sum()
            draws = torch.multinomial(
                p.to(gen_device), n_samples * b, replacement=True, generator=generator
            ).cpu()
            i_mat = (draws + 1).reshape(n_samples, b)
            c_mat = (w_chain[draws] / p[draws]).reshape(n_samples, b)
        else:
            draws = torch.randint(
                0, steps - 1, (n_samples * b,), generator=generator, device=gen_device
            ).cpu()
            i_mat = (draws + 1).reshape(n_samples, b)
            c_mat = ((steps - 1) * w_chain[draws]).reshape(n_samples, b)
        n_terms = i_mat.shape[0]
        t_mat = chain.t[i_mat].clamp(t_min, t_max)
        alpha_mat, sigma_mat = chain.alpha[i_mat], chain.sigma[i_mat]

    if n_terms > 0:
        e = eps.expand(n_terms, *eps.shape[1:]) if quadrature else eps
        a_ = append_dims(alpha_mat.to(dev, work), e.ndim)
        s_ = append_dims(sigma_mat.to(dev, work), e.ndim)
        z = a_ * xw.unsqueeze(0) + s_ * e
        eps_hat = net("eps", z.reshape(n_terms * b, *dims), t_mat.reshape(-1).to(dev))
        sq = (e.reshape(n_terms * b, -1) - eps_hat.reshape(n_terms * b, -1)).square().sum(1)
        terms = c_mat.to(dev, work) * sq.reshape(n_terms, b)
        nfe += n_terms
    else:
        terms = torch.zeros(1, b, dtype=work, device=dev)
    denoise = terms.sum(0, keepdim=True) if quadrature else terms

    # ---------------------------------------------------------------- combine
    per_draw = recon - prior - denoise  # (n_draws, B)
    value = per_draw.mean(0)
    if n_draws > 1:
        stderr = per_draw.std(0) / math.sqrt(n_draws)
    else:
        stderr = torch.full_like(value, math.nan)
    rec, den = recon.mean(0), denoise.mean(0)
    return ELBOResult(
        elbo=value,
        bpd=bits_per_dim(value, d),
        reconstruction=rec,
        prior=prior,
        denoising=den,
        reconstruction_bpd=bits_per_dim(rec, d),
        prior_bpd=-bits_per_dim(prior, d),
        denoising_bpd=-bits_per_dim(den, d),
        stderr=stderr,
        steps=steps,
        nfe=nfe,
        dim=d,
    )
