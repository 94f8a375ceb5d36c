"""Property tests for SDEs: hypothesis strategies and :func:`check_sde`.

``check_sde(sde)`` runs the whole property suite of scoresde's own SDEs on any SDE — write a
new schedule as a subclass of :class:`scoresde.SDE` and run it::

    from scoresde.testing import check_sde

    check_sde(MySDE())  # raises SDECheckError listing every property that fails

The strategies (``sdes()``, ``vp_sdes()``, ..., ``times(sde)``, ``states()``) generate random
SDEs of every family with sensible parameters, times in range and states of any shape, for
your own hypothesis tests. This module needs ``hypothesis`` (``pip install scoresde[test]``).

Each property is a function ``(sde, t) -> None`` in :data:`PROPERTIES` that raises
``AssertionError`` with a message naming what failed; ``t`` is a sorted float64 tensor of
distinct times in ``[t_min, T]`` that includes both ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import strategies as st
from torch import Tensor

from scoresde.schedules import EDMSDE, VESDE, VPSDE, CosineVPSDE, DiscreteVPSDE, SubVPSDE
from scoresde.sde import SDE, _time_derivative

__all__ = [
    "PROPERTIES",
    "SDECheckError",
    "check_sde",
    "time_grid",
    "vp_sdes",
    "subvp_sdes",
    "cosine_sdes",
    "ve_sdes",
    "edm_sdes",
    "discrete_vp_sdes",
    "sdes",
    "times",
    "states",
    "gaussian_data",
]

Property = Callable[[SDE, Tensor], None]


class SDECheckError(AssertionError):
    """Raised by :func:`check_sde`; ``failures`` maps property name to its message."""

    def __init__(self, sde: SDE, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "\n".join(f"  - {name}: {msg}" for name, msg in failures.items())
        super().__init__(f"{sde!r} fails {len(failures)} SDE properties:\n{lines}")


def _close(name: str, got: Tensor, want: Tensor, *, rtol: float, atol: float) -> None:
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    if not bool((err <= bound).all()):
        i = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{name}: got {float(got.flatten()[i])}, want {float(want.flatten()[i])} "
            f"(|diff| {float(err.flatten()[i]):.3g} > {float(bound.flatten()[i]):.3g})"
        )


# --------------------------------------------------------------------------- properties
def prop_finite_positive(sde: SDE, t: Tensor) -> None:
    """alpha > 0, sigma > 0, g^2 > 0, and every coefficient finite, in float64 and float32."""
    for dtype in (torch.float64, torch.float32):
        tt = t.to(dtype)
        values = {
            "alpha": sde.alpha(tt),
            "sigma": sde.sigma(tt),
            "log_snr": sde.log_snr(tt),
            "f": sde.f(tt),
            "g2": sde.g2(tt),
            "diffusion": sde.diffusion(tt),
        }
        for name in ("alpha", "sigma", "g2"):  # signs first: sqrt of a negative g2 is NaN
            if not bool((values[name] > 0).all()):
                bad = float(tt[~(values[name] > 0)][0])
                raise AssertionError(f"{name}(t) is not > 0 in {dtype} at t={bad}")
        for name, v in values.items():
            if v.dtype != dtype:
                raise AssertionError(f"{name}(t) has dtype {v.dtype} for t of dtype {dtype}")
            if not bool(torch.isfinite(v).all()):
                bad = float(tt[~torch.isfinite(v)][0])
                raise AssertionError(f"{name}(t) is not finite in {dtype} at t={bad}")


def prop_log_snr_decreasing(sde: SDE, t: Tensor) -> None:
    """log-SNR is strictly decreasing on [t_min, T] (at times at least 1e-8 (T - t_min) apart,
    so that the decrease is above float64 rounding)."""
    keep = [0]
    for i in range(1, t.numel()):
        if float(t[i] - t[keep[-1]]) >= 1e-8 * (sde.T - sde.t_min):
            keep.append(i)
    t = t[keep]
    lam = sde.log_snr(t)
    d = torch.diff(lam)
    if not bool((d < 0).all()):
        i = int(torch.nonzero(d >= 0)[0])
        raise AssertionError(
            f"log_snr not strictly decreasing: log_snr({float(t[i])}) = {float(lam[i])} <= "
            f"log_snr({float(t[i + 1])}) = {float(lam[i + 1])}"
        )


def prop_log_snr_definition(sde: SDE, t: Tensor) -> None:
    """log_snr = 2 (log alpha - log sigma), and alpha, sigma = exp(log alpha), exp(log sigma)."""
    _close(
        "log_snr", sde.log_snr(t), 2 * (sde.log_alpha(t) - sde.log_sigma(t)), rtol=1e-9, atol=1e-9
    )
    _close("alpha", sde.alpha(t), torch.exp(sde.log_alpha(t)), rtol=1e-12, atol=0)
    _close("sigma", sde.sigma(t), torch.exp(sde.log_sigma(t)), rtol=1e-12, atol=0)


def prop_t_from_log_snr_roundtrip(sde: SDE, t: Tensor) -> None:
    """t_from_log_snr(log_snr(t)) == t and log_snr(t_from_log_snr(lam)) == lam."""
    _close(
        "t_from_log_snr(log_snr(t))",
        sde.t_from_log_snr(sde.log_snr(t)),
        t,
        rtol=1e-8,
        atol=1e-10 * max(1.0, abs(sde.T)),
    )
    lam_hi, lam_lo = (
        float(v) for v in sde.log_snr(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
    )
    lam = torch.linspace(lam_lo, lam_hi, t.numel(), dtype=torch.float64)
    _close(
        "log_snr(t_from_log_snr(lam))",
        sde.log_snr(sde.t_from_log_snr(lam)),
        lam,
        rtol=1e-8,
        atol=1e-8,
    )


def prop_f_is_dlogalpha(sde: SDE, t: Tensor) -> None:
    """f(t) equals autograd of log alpha(t)."""
    want = _time_derivative(sde._log_alpha, t)
    _close("f vs d log alpha/dt", sde.f(t), want, rtol=1e-7, atol=1e-9)


def prop_g2_definition(sde: SDE, t: Tensor) -> None:
    """g^2(t) equals d sigma^2/dt - 2 f sigma^2 computed by autograd of sigma alone."""
    f = _time_derivative(sde._log_alpha, t)
    var = torch.exp(2 * sde._log_sigma(t))
    dvar = _time_derivative(lambda s: torch.exp(2 * sde._log_sigma(s)), t)
    want = dvar - 2 * f * var
    # d sigma^2/dt and 2 f sigma^2 nearly cancel for sub-VP at small t: compare on their scale
    scale = dvar.abs() + (2 * f * var).abs()
    err = (sde.g2(t) - want).abs()
    if not bool((err <= 1e-7 * scale + 1e-300).all()):
        i = int(torch.argmax(err / (scale + 1e-300)))
        raise AssertionError(
            f"g2 vs d sigma^2/dt - 2 f sigma^2 at t={float(t[i])}: got {float(sde.g2(t)[i])}, "
            f"want {float(want[i])}"
        )
    _close("diffusion^2 vs g2", sde.diffusion(t) ** 2, sde.g2(t), rtol=1e-12, atol=0)


def prop_variance_preserving(sde: SDE, t: Tensor) -> None:
    """alpha^2 + sigma^2 = 1 when the SDE declares ``variance_preserving``."""
    if sde.variance_preserving:
        one = sde.alpha(t) ** 2 + sde.sigma(t) ** 2
        _close("alpha^2 + sigma^2", one, torch.ones_like(one), rtol=0, atol=1e-12)


def prop_gaussian_variance_ode(sde: SDE, t: Tensor) -> None:
    """For data N(mu, s^2 I), V = alpha^2 s^2 + sigma^2 solves dV/dt = 2 f V + g^2 and the mean
    m = alpha mu solves dm/dt = f m (Sarkka & Solin 2019, eq. 5.51), for s in {0.1, 1, 3}."""
    f, g2 = sde.f(t), sde.g2(t)
    for s in (0.1, 1.0, 3.0):

        def var(u: Tensor, s: float = s) -> Tensor:
            return torch.exp(2 * sde._log_alpha(u)) * s**2 + torch.exp(2 * sde._log_sigma(u))

        dv = _time_derivative(var, t)
        rhs = 2 * f * var(t) + g2
        scale = float(((2 * f * var(t)).abs() + g2).max())  # the two terms cancel for VP, s = 1
        _close(f"dV/dt for s={s}", dv, rhs, rtol=1e-6, atol=1e-10 * scale)
    dm = _time_derivative(lambda u: torch.exp(sde._log_alpha(u)), t)
    _close("d alpha/dt = f alpha", dm, f * sde.alpha(t), rtol=1e-7, atol=1e-12)


def prop_prior_matches_marginal(sde: SDE, t: Tensor, kl_tol: float = 1e-2) -> None:
    """KL(p_T || prior) per dimension <= kl_tol for standardised data N(0, I), and
    prior_logp is the log-density of N(0, prior_std^2 I)."""
    del t
    a, s = float(sde.alpha(sde.T)), float(sde.sigma(sde.T))
    p2 = sde.prior_std**2
    r = (a * a + s * s) / p2
    kl = 0.5 * (r - 1 - math.log(r))
    if not kl <= kl_tol:
        raise AssertionError(
            f"KL(p_T || prior) = {kl:.3g} nats/dim > {kl_tol} for N(0, I) data: marginal std "
            f"{math.sqrt(a * a + s * s):.6g} at T vs prior_std {sde.prior_std:.6g}"
        )
    g = torch.Generator().manual_seed(0)
    z = sde.prior_sample((4, 3), generator=g, dtype=torch.float64)
    std = torch.tensor(sde.prior_std, dtype=torch.float64)
    want = torch.distributions.Normal(torch.zeros_like(std), std).log_prob(z).sum(1)
    _close("prior_logp", sde.prior_logp(z), want, rtol=1e-10, atol=1e-10)


def prop_shape_polymorphism(sde: SDE, t: Tensor) -> None:
    """Elementwise on t of any shape; drift/marginal agree for t of shape () and (B,), and for
    states (B, D) and (B, C, H, W)."""
    lam = sde.log_snr(t)
    _close("log_snr on t[:, None]", sde.log_snr(t[:, None]).squeeze(1), lam, rtol=0, atol=0)
    for i in (0, t.numel() - 1):
        _close("log_snr on t of shape ()", sde.log_snr(t[i]), lam[i], rtol=0, atol=0)
    b = t.numel()
    g = torch.Generator().manual_seed(1)
    x4 = torch.randn(b, 2, 3, 3, generator=g, dtype=torch.float64)
    x2 = x4.flatten(1)
    d4, d2 = sde.drift(x4, t), sde.drift(x2, t)
    _close("drift (B, C, H, W) vs (B, D)", d4.flatten(1), d2, rtol=0, atol=0)
    _close("drift = f x", d2, sde.f(t)[:, None] * x2, rtol=1e-12, atol=0)
    m4 = sde.marginal(x4, t)
    if m4.mean.shape != x4.shape:
        raise AssertionError(f"marginal mean shape {tuple(m4.mean.shape)} != {tuple(x4.shape)}")
    _close("marginal mean", m4.mean.flatten(1), sde.alpha(t)[:, None] * x2, rtol=1e-12, atol=0)
    _close(
        "marginal std",
        (m4.std * torch.ones_like(x4)).flatten(1)[:, 0],
        sde.sigma(t),
        rtol=1e-12,
        atol=0,
    )
    t0 = t[t.numel() // 2]
    _close(
        "drift with t of shape () vs (B,)",
        sde.drift(x2, t0),
        sde.drift(x2, t0.expand(b)),
        rtol=0,
        atol=0,
    )


def prop_float32_agrees(sde: SDE, t: Tensor) -> None:
    """float32 results agree with float64 to float32 accuracy."""
    t32 = t.float()
    t_back = t32.double()  # compare at the float32-representable times
    for name in ("alpha", "sigma", "f", "g2"):
        fn = getattr(sde, name)
        _close(f"{name} float32 vs float64", fn(t32).double(), fn(t_back), rtol=1e-5, atol=1e-30)
    _close(
        "log_snr float32 vs float64",
        sde.log_snr(t32).double(),
        sde.log_snr(t_back),
        rtol=1e-5,
        atol=1e-5,
    )


def prop_rejects_out_of_range(sde: SDE, t: Tensor) -> None:
    """t outside [t_min, T] or non-finite raises ValueError."""
    del t
    span = sde.T - sde.t_min
    for bad in (sde.T + 0.01 * span, sde.t_min - 0.01 * span - 1e-3 * abs(sde.t_min), float("nan")):
        try:
            sde.alpha(torch.tensor([bad], dtype=torch.float64))
        except ValueError:
            continue
        raise AssertionError(f"alpha(t) accepted t={bad} outside [{sde.t_min}, {sde.T}]")


def prop_discrete_chain(sde: SDE, t: Tensor) -> None:
    """discretize(N) is a valid Gaussian Markov chain: transition variances >= 0, log-SNR
    strictly decreasing along the chain; for VP chains 0 < beta_i < 1 and
    prod(1 - beta_i) = alphas_cumprod."""
    del t
    for n in (50, 200, 1000):
        chain = sde.discretize(n)
        if n != chain.N:
            raise AssertionError(f"discretize({n}) has {chain.N} steps")
        if n > 1 and not bool((torch.diff(chain.log_snr) < 0).all()):
            raise AssertionError(
                f"discretize({n}): log-SNR not strictly decreasing along the chain"
            )
        if not bool((chain.transition_sigma >= 0).all() and (chain.transition_alpha > 0).all()):
            raise AssertionError(f"discretize({n}): invalid transition")
        if sde.variance_preserving:
            beta = chain.betas
            if not bool(((beta > 0) & (beta < 1)).all()):
                raise AssertionError(f"discretize({n}): betas outside (0, 1): {beta.tolist()[:5]}")
            _close(
                f"discretize({n}) prod(1 - beta)",
                torch.cumprod(1 - beta, 0),
                chain.alphas_cumprod,
                rtol=1e-10,
                atol=0,
            )
            _close(
                f"discretize({n}) transition",
                chain.transition_sigma**2,
                beta,
                rtol=1e-8,
                atol=1e-14,
            )


PROPERTIES: dict[str, Property] = {
    "finite_positive": prop_finite_positive,
    "log_snr_decreasing": prop_log_snr_decreasing,
    "log_snr_definition": prop_log_snr_definition,
    "t_from_log_snr_roundtrip": prop_t_from_log_snr_roundtrip,
    "f_is_dlogalpha": prop_f_is_dlogalpha,
    "g2_definition": prop_g2_definition,
    "variance_preserving": prop_variance_preserving,
    "gaussian_variance_ode": prop_gaussian_variance_ode,
    "prior_matches_marginal": prop_prior_matches_marginal,
    "shape_polymorphism": prop_shape_polymorphism,
    "float32_agrees": prop_float32_agrees,
    "rejects_out_of_range": prop_rejects_out_of_range,
    "discrete_chain": prop_discrete_chain,
}
"""Every property of the suite, by name; each takes (sde, t) and raises AssertionError."""


def time_grid(sde: SDE, n: int = 129, *, seed: int = 0) -> Tensor:
    """Sorted distinct float64 times covering [t_min, T]: both ends, a uniform grid, a
    log-spaced grid near t_min and random points."""
    lo, hi = sde.t_min, sde.T
    g = torch.Generator().manual_seed(seed)
    parts = [
        torch.linspace(lo, hi, n, dtype=torch.float64),
        lo + (hi - lo) * torch.logspace(-6, 0, n // 2, dtype=torch.float64),
        lo + (hi - lo) * torch.rand(n // 2, generator=g, dtype=torch.float64),
    ]
    t = torch.unique(torch.cat(parts).clamp(lo, hi))
    return t


def check_sde(
    sde: SDE, *, t: Tensor | None = None, properties: list[str] | None = None
) -> list[str]:
    """Run the property suite on ``sde``; return the names checked or raise SDECheckError.

    Args:
        sde: any :class:`scoresde.SDE`.
        t: sorted distinct float64 times in [t_min, T] to check at (default :func:`time_grid`).
        properties: names from :data:`PROPERTIES` to run (default all).
    """
    names = list(PROPERTIES) if properties is None else properties
    unknown = [n for n in names if n not in PROPERTIES]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; known: {sorted(PROPERTIES)}")
    grid = time_grid(sde) if t is None else t.to(torch.float64)
    failures: dict[str, str] = {}
    for name in names:
        try:
            PROPERTIES[name](sde, grid)
        except (AssertionError, ValueError, RuntimeError, TypeError) as exc:
            failures[name] = f"{type(exc).__name__}: {exc}"
    if failures:
        raise SDECheckError(sde, failures)
    return names


# --------------------------------------------------------------------------- strategies
def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


@st.composite
def vp_sdes(draw: st.DrawFn) -> VPSDE:
    """Random linear-beta VP SDEs: beta_min in [0.01, 2], beta_max - beta_min in [5, 40]."""
    b0 = draw(st.floats(0.01, 2.0))
    return VPSDE(b0, b0 + draw(st.floats(5.0, 40.0)), t_min=draw(_log_uniform(1e-6, 1e-2)))


@st.composite
def subvp_sdes(draw: st.DrawFn) -> SubVPSDE:
    """Random sub-VP SDEs with the parameter ranges of :func:`vp_sdes`."""
    b0 = draw(st.floats(0.01, 2.0))
    return SubVPSDE(b0, b0 + draw(st.floats(5.0, 40.0)), t_min=draw(_log_uniform(1e-6, 1e-2)))


@st.composite
def cosine_sdes(draw: st.DrawFn) -> CosineVPSDE:
    """Random cosine-schedule VP SDEs: s in [1e-3, 0.1], T in [0.95, 0.999]."""
    return CosineVPSDE(
        draw(_log_uniform(1e-3, 0.1)),
        t_min=draw(_log_uniform(1e-6, 1e-2)),
        T=draw(st.floats(0.95, 0.999)),
    )


@st.composite
def ve_sdes(draw: st.DrawFn) -> VESDE:
    """Random geometric VE SDEs: sigma_min in [1e-3, 0.1], sigma_max in [10, 400]."""
    return VESDE(
        draw(_log_uniform(1e-3, 0.1)),
        draw(_log_uniform(10.0, 400.0)),
        t_min=draw(st.sampled_from([0.0, 1e-5, 1e-3])),
    )


@st.composite
def edm_sdes(draw: st.DrawFn) -> EDMSDE:
    """Random EDM SDEs: sigma_min in [1e-3, 0.05], sigma_max in [10, 200]."""
    return EDMSDE(draw(_log_uniform(1e-3, 0.05)), draw(_log_uniform(10.0, 200.0)))


@st.composite
def discrete_vp_sdes(draw: st.DrawFn) -> DiscreteVPSDE:
    """Continuous-time SDEs of random DDPM chains (linear betas, N in [50, 2000])."""
    n = draw(st.integers(50, 2000))
    b0 = draw(st.floats(0.01, 2.0))
    b1 = b0 + draw(st.floats(5.0, 30.0))
    return VPSDE.from_discrete(torch.linspace(b0 / n, b1 / n, n, dtype=torch.float64))


def sdes() -> st.SearchStrategy[SDE]:
    """Random SDEs of every built-in family."""
    return st.one_of(
        vp_sdes(), subvp_sdes(), cosine_sdes(), ve_sdes(), edm_sdes(), discrete_vp_sdes()
    )


def times(sde: SDE, *, batch: int | None = None) -> st.SearchStrategy[Tensor]:
    """Float64 times in [t_min, T]: shape () if ``batch`` is None, else (batch,)."""
    one = st.one_of(
        st.floats(sde.t_min, sde.T),
        st.sampled_from([sde.t_min, sde.T]),
        st.floats(0.0, 1.0).map(
            lambda u: min(sde.T, sde.t_min * (sde.T / max(sde.t_min, 1e-300)) ** u)
        )
        if sde.t_min > 0
        else st.floats(sde.t_min, sde.T),
    )
    if batch is None:
        return one.map(lambda v: torch.tensor(v, dtype=torch.float64))
    return st.lists(one, min_size=batch, max_size=batch).map(
        lambda v: torch.tensor(v, dtype=torch.float64)
    )


@st.composite
def states(
    draw: st.DrawFn,
    *,
    batch: int | None = None,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64),
) -> Tensor:
    """Random states of shape (B, D) or (B, C, H, W) with B in [1, 5] (or ``batch``)."""
    b = batch if batch is not None else draw(st.integers(1, 5))
    tail = draw(
        st.one_of(
            st.tuples(st.integers(1, 8)),
            st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
        )
    )
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randn((b, *tail), generator=g, dtype=draw(st.sampled_from(dtypes)))


@st.composite
def gaussian_data(draw: st.DrawFn) -> tuple[float, float]:
    """(mu, s): a 1-D Gaussian data distribution N(mu, s^2), |mu| <= 3, s in [0.05, 3]."""
    return draw(st.floats(-3.0, 3.0)), draw(_log_uniform(0.05, 3.0))
