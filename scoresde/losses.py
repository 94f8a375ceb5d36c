"""Denoising score matching objectives: weightings and time samplers, written once.

Denoising score matching (Vincent 2011) trains a network on ``x_t = alpha(t) x0 + sigma(t)
eps`` to predict eps, x0, the score or v (:mod:`scoresde.parametrization`). The objectives
used in the literature differ only in

* the **weighting**: a prediction space ``p`` and a weight ``w_p(t)`` on ``||p_hat - p||^2``;
* the **time distribution** of t (uniform, low-discrepancy, log-normal, importance sampled).

Because every prediction error is a multiple of the eps error at the same ``x_t``,
``p_hat - p = c_p(t) (eps_hat - eps)`` with ``c_p`` the ``c_y`` coefficient of
:func:`scoresde.conversion_coefficients` from ``"eps"`` to ``p``, every weighting is one
weight on the eps error,

    w_eps(t) = w_p(t) c_p(t)^2                                   (:meth:`Weighting.eps_weight`)

and one loss function (:func:`dsm_loss`) serves them all. With ``SNR = alpha^2 / sigma^2 =
exp(lambda)`` (lambda the log-SNR), ``s = sigma / alpha`` (EDM's noise level) and ``g^2`` the
squared diffusion of the SDE:

    =============  =======  ========================  ==================================
    weighting      space    w_p(t)                    w_eps(t)
    =============  =======  ========================  ==================================
    eps            eps      1                         1
    score          score    sigma^2                   1
    likelihood     score    g^2                       g^2 / sigma^2 = -d lambda / dt
    x0             x0       1                         1 / SNR
    v              v        1                         (1 + 1 / SNR) (alpha^2 + sigma^2)
    edm            x0       (s^2 + sd^2) / (s sd)^2   1 + s^2 / sd^2
    min_snr        x0       min(SNR, gamma)           min(1, gamma / SNR)
    =============  =======  ========================  ==================================

Sources: Ho et al. 2020 ("Denoising Diffusion Probabilistic Models", L_simple); Song et al. 2021
("Score-Based Generative Modeling through SDEs", eq. 7, lambda = sigma^2); Song, Durkan, Murray
& Ermon 2021 ("Maximum Likelihood Training of Score-Based Diffusion Models", likelihood
weighting g^2 and importance sampling of t); Kingma et al. 2021 ("Variational Diffusion
Models", the low-discrepancy sampler and the weighting as a function of the log-SNR); Salimans
& Ho 2022 ("Progressive Distillation", v); Karras et al. 2022 ("Elucidating the Design Space of
Diffusion-Based Generative Models", EDM weighting and log-normal noise levels); Hang et al. 2023
("Efficient Diffusion Training via Min-SNR Weighting Strategy").

The loss is evaluated in the network's *own* prediction space, with the weight
``w_eps / c_native^2``: mathematically identical to ``w_eps ||eps_hat - eps||^2``, but the
network's output is never divided by a small alpha or sigma (see the error-gain table of
:mod:`scoresde.parametrization`). All schedule quantities are computed in float64.

The objective estimated by :func:`dsm_loss` is ``E_{t ~ p(t)} E_{x0, eps}[w_eps(t) ||eps_hat -
eps||^2]`` with ``p(t)`` the sampler's distribution; the ``"importance"`` sampler draws t from
``q(t) ∝ w_eps(t)`` and multiplies by ``1 / ((T - t_min) q(t))``, so it estimates the same
objective as the uniform sampler, unbiased, with a lower variance. See
``docs/training-objectives.md``.
"""

from __future__ import annotations

import abc
import math
import weakref
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import Tensor

from scoresde.parametrization import (
    Prediction,
    ScoreModel,
    _linear_form,
    check_prediction,
    conversion_coefficients,
)
from scoresde.sde import SDE, TimeLike, _check_state
from solvers.broadcast import append_dims

__all__ = [
    "NoiseLevel",
    "noise_level",
    "Weighting",
    "EpsWeighting",
    "ScoreWeighting",
    "LikelihoodWeighting",
    "X0Weighting",
    "VWeighting",
    "EDMWeighting",
    "MinSNRWeighting",
    "WEIGHTINGS",
    "WeightingName",
    "get_weighting",
    "TimeSample",
    "TimeSampler",
    "UniformTimeSampler",
    "LowDiscrepancyTimeSampler",
    "LogNormalTimeSampler",
    "ImportanceTimeSampler",
    "T_SAMPLERS",
    "TSamplerName",
    "get_t_sampler",
    "Perturbed",
    "perturb",
    "LossOutput",
    "dsm_loss",
    "dsm_loss_at",
    "Reduce",
]

WeightingName = Literal["eps", "score", "likelihood", "x0", "v", "edm", "min_snr"]
"""Names of the built-in weightings (keys of :data:`WEIGHTINGS`)."""

TSamplerName = Literal["uniform", "low_discrepancy", "antithetic", "lognormal", "importance"]
"""Names of the built-in time samplers (keys of :data:`T_SAMPLERS`)."""

Reduce = Literal["mean", "sum"]
"""How the squared error is reduced over the non-batch dimensions of a sample."""


# --------------------------------------------------------------------------- noise levels


@dataclass(frozen=True)
class NoiseLevel:
    """The schedule at times t: every quantity a weighting may use, float64, shape of ``t``.

    Attributes:
        t: the times.
        alpha: signal scale alpha(t).
        sigma: noise scale sigma(t).
        log_snr: lambda(t) = log(alpha^2 / sigma^2).
        g2: squared diffusion g^2(t) = -sigma^2 d lambda / dt.
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor
    log_snr: Tensor
    g2: Tensor

    @classmethod
    def _at(cls, sde: SDE, t64: Tensor) -> NoiseLevel:
        """From an already validated float64 ``t`` (no range check)."""
        log_alpha, log_sigma = sde._log_alpha(t64), sde._log_sigma(t64)
        return cls(
            t=t64,
            alpha=torch.exp(log_alpha),
            sigma=torch.exp(log_sigma),
            log_snr=sde._log_snr(t64),
            g2=sde._g2(t64),
        )


def noise_level(sde: SDE, t: TimeLike) -> NoiseLevel:
    """alpha, sigma, log-SNR and g^2 of ``sde`` at ``t`` (float, 0-d or any-shape tensor in
    [t_min, T]), in float64."""
    t64, _ = sde._time(t)
    return NoiseLevel._at(sde, t64)


# --------------------------------------------------------------------------- weightings


def _error_gain(space: Prediction, level: NoiseLevel) -> Tensor:
    """c with ``p_hat - p = c (eps_hat - eps)`` at a fixed state (the conversion's ``c_y``)."""
    _, c_y = conversion_coefficients("eps", space, level.alpha, level.sigma)
    return c_y


class Weighting(abc.ABC):
    """A DSM weighting: the prediction space it compares in and its weight w_p(t) there.

    Subclasses set ``name``, ``space`` (and ``default_t_sampler``) and implement
    :meth:`weight`; :meth:`eps_weight` turns any of them into the equivalent weight on the eps
    error, the one form :func:`dsm_loss` uses. Weightings are frozen dataclasses (hashable),
    so derived tables (the importance sampler's inverse CDF) are cached per weighting.
    """

    name: ClassVar[str]
    space: ClassVar[Prediction]
    default_t_sampler: ClassVar[str] = "uniform"

    @abc.abstractmethod
    def weight(self, level: NoiseLevel) -> Tensor:
        """w_p(t), the weight on ``||p_hat - p||^2`` in :attr:`space`, float64, t's shape."""

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        """The same objective as a weight on ``||eps_hat - eps||^2``: ``w_p(t) c_p(t)^2``."""
        return self.weight(level) * _error_gain(self.space, level).square()

    def native_weight(self, level: NoiseLevel, prediction: Prediction) -> Tensor:
        """The same objective as a weight on the squared error of a ``prediction`` network's
        own output: ``w_eps(t) / c_prediction(t)^2``."""
        prediction = check_prediction(prediction)
        return self.eps_weight(level) / _error_gain(prediction, level).square()


@dataclass(frozen=True)
class EpsWeighting(Weighting):
    """The simple loss ``||eps_hat - eps||^2`` of Ho et al. 2020 (L_simple, their eq. 14)."""

    name: ClassVar[str] = "eps"
    space: ClassVar[Prediction] = "eps"

    def weight(self, level: NoiseLevel) -> Tensor:
        return torch.ones_like(level.t)


@dataclass(frozen=True)
class ScoreWeighting(Weighting):
    """``sigma^2 ||s_hat - grad log p(x_t | x0)||^2`` (Song et al. 2021, eq. 7 with lambda(t) =
    sigma^2(t)); equal to the eps loss, since ``sigma (s_hat - s) = -(eps_hat - eps)``."""

    name: ClassVar[str] = "score"
    space: ClassVar[Prediction] = "score"

    def weight(self, level: NoiseLevel) -> Tensor:
        return level.sigma.square()

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        return torch.ones_like(level.t)  # sigma^2 (1 / sigma)^2, without the rounding


@dataclass(frozen=True)
class LikelihoodWeighting(Weighting):
    """Likelihood weighting ``g^2 ||s_hat - grad log p(x_t | x0)||^2`` (Song, Durkan, Murray &
    Ermon 2021, Theorem 1; Kingma et al. 2021): with the squared error summed over dimensions,
    ``(T - t_min) / 2`` times its uniform-t expectation bounds the negative log-likelihood up
    to terms independent of the model. In eps space ``g^2 / sigma^2 = -d lambda / dt``; by
    default t is importance sampled with density proportional to it.
    """

    name: ClassVar[str] = "likelihood"
    space: ClassVar[Prediction] = "score"
    default_t_sampler: ClassVar[str] = "importance"

    def weight(self, level: NoiseLevel) -> Tensor:
        return level.g2

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        return level.g2 / level.sigma.square()


@dataclass(frozen=True)
class X0Weighting(Weighting):
    """Unweighted denoising error ``||x0_hat - x0||^2``; ``1 / SNR`` on the eps error."""

    name: ClassVar[str] = "x0"
    space: ClassVar[Prediction] = "x0"

    def weight(self, level: NoiseLevel) -> Tensor:
        return torch.ones_like(level.t)

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        return torch.exp(-level.log_snr)


@dataclass(frozen=True)
class VWeighting(Weighting):
    """Unweighted v error ``||v_hat - v||^2``, ``v = alpha eps - sigma x0`` (Salimans & Ho
    2022, sec. 4): ``SNR + 1`` on the x0 error for VP; in general ``(1 + 1/SNR)(alpha^2 +
    sigma^2)`` on the eps error."""

    name: ClassVar[str] = "v"
    space: ClassVar[Prediction] = "v"

    def weight(self, level: NoiseLevel) -> Tensor:
        return torch.ones_like(level.t)

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        return (1.0 + torch.exp(-level.log_snr)) * (level.alpha.square() + level.sigma.square())


@dataclass(frozen=True)
class EDMWeighting(Weighting):
    """EDM weighting (Karras et al. 2022, sec. 5, Table 1): ``lambda(s) = (s^2 + sd^2) / (s
    sd)^2`` on the denoiser (x0) error at noise level ``s = sigma / alpha``, which makes the
    preconditioned network's target unit-variance; ``1 + s^2 / sd^2`` on the eps error. Paired
    by default with the log-normal noise-level sampler.

    Args:
        sigma_data: standard deviation of the data (0.5 for images in [-1, 1]).
    """

    name: ClassVar[str] = "edm"
    space: ClassVar[Prediction] = "x0"
    default_t_sampler: ClassVar[str] = "lognormal"
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        _check_positive(self.sigma_data, "sigma_data")

    def weight(self, level: NoiseLevel) -> Tensor:
        s2 = torch.exp(-level.log_snr)
        sd2 = self.sigma_data**2
        return (s2 + sd2) / (s2 * sd2)

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        return 1.0 + torch.exp(-level.log_snr) / self.sigma_data**2


@dataclass(frozen=True)
class MinSNRWeighting(Weighting):
    """Min-SNR-gamma weighting (Hang et al. 2023, eq. 8): ``min(SNR, gamma)`` on the x0 error,
    ``min(1, gamma / SNR)`` on the eps error.

    Args:
        gamma: the SNR clip (5 in the paper).
    """

    name: ClassVar[str] = "min_snr"
    space: ClassVar[Prediction] = "x0"
    gamma: float = 5.0

    def __post_init__(self) -> None:
        _check_positive(self.gamma, "gamma")

    def weight(self, level: NoiseLevel) -> Tensor:
        return torch.exp(level.log_snr).clamp_max(self.gamma)

    def eps_weight(self, level: NoiseLevel) -> Tensor:
        return (math.log(self.gamma) - level.log_snr).clamp_max(0.0).exp()


def _check_positive(value: object, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite float > 0, got {name}={value!r}")


WEIGHTINGS: dict[str, type[Weighting]] = {
    cls.name: cls
    for cls in (
        EpsWeighting,
        ScoreWeighting,
        LikelihoodWeighting,
        X0Weighting,
        VWeighting,
        EDMWeighting,
        MinSNRWeighting,
    )
}
"""Built-in weightings by name."""
assert set(WEIGHTINGS) == set(get_args(WeightingName))


def _from_registry(arg: str, value: object, table: dict[str, Any], base: type, kwargs: dict) -> Any:
    """``value`` if it is an instance of ``base``, else ``table[value](**kwargs)``; errors name
    ``arg`` and list the known names."""
    if isinstance(value, base):
        if kwargs:
            raise ValueError(f"keyword parameters apply only when {arg} is given by name")
        return value
    if not isinstance(value, str) or value not in table:
        raise ValueError(f"{arg} must be one of {sorted(table)}, got {value!r}")
    return table[value](**kwargs)


def get_weighting(weighting: str | Weighting, **kwargs: float) -> Weighting:
    """A :class:`Weighting` from its name (with its parameters as keywords) or an instance.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    return _from_registry("weighting", weighting, WEIGHTINGS, Weighting, kwargs)


# --------------------------------------------------------------------------- time samplers


@dataclass(frozen=True)
class TimeSample:
    """Times drawn by a :class:`TimeSampler`.

    Attributes:
        t: the times, (n,) float64 in [t_min, T].
        importance: (n,) float64 factor multiplying each sample's loss; ``1 / ((T - t_min)
            q(t))`` for importance sampling from a density q (so the estimate is that of the
            uniform-t objective), ones otherwise.
    """

    t: Tensor
    importance: Tensor


def _uniform(n: int, generator: torch.Generator | None, device: torch.device | None) -> Tensor:
    gen_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=gen_device)
    return u if device is None else u.to(device)


def _low_discrepancy(
    n: int, generator: torch.Generator | None, device: torch.device | None
) -> Tensor:
    """``u_i = (u_0 + i / n) mod 1``: marginally uniform, one point per stratum of width 1/n."""
    u0 = _uniform(1, generator, device)
    return torch.remainder(u0 + torch.arange(n, dtype=torch.float64, device=u0.device) / n, 1.0)


class TimeSampler(abc.ABC):
    """A distribution of training times on [t_min, T]."""

    name: ClassVar[str]

    @abc.abstractmethod
    def sample(
        self,
        n: int,
        sde: SDE,
        weighting: Weighting,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TimeSample:
        """Draw n times for ``sde`` (``weighting`` is used by importance sampling only).

        Randomness comes from ``generator`` only (None: torch's global generator); the draws
        are made on the generator's device and moved to ``device``.
        """


def _uniform_times(
    draw: Any, n: int, sde: SDE, generator: torch.Generator | None, device: Any
) -> TimeSample:
    """Times ``t_min + (T - t_min) u`` with unit density ratio, u from ``draw(n, g, device)``."""
    u = draw(_check_n(n), generator, _device(device))
    t = sde.t_min + (sde.T - sde.t_min) * u
    return TimeSample(t, torch.ones_like(t))


@dataclass(frozen=True)
class UniformTimeSampler(TimeSampler):
    """t ~ U[t_min, T] (Song et al. 2021; Ho et al. 2020 in discrete time)."""

    name: ClassVar[str] = "uniform"

    def sample(
        self,
        n: int,
        sde: SDE,
        weighting: Weighting,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TimeSample:
        return _uniform_times(_uniform, n, sde, generator, device)


@dataclass(frozen=True)
class LowDiscrepancyTimeSampler(TimeSampler):
    """Low-discrepancy ("antithetic") uniform times of Kingma et al. 2021 (appendix I.1):
    ``t_i = t_min + (T - t_min) ((u + i / n) mod 1)`` with one u per batch. Each t_i is
    uniform, so the loss is unbiased, and the batch covers [t_min, T] evenly, which lowers the
    variance of the batch mean."""

    name: ClassVar[str] = "low_discrepancy"

    def sample(
        self,
        n: int,
        sde: SDE,
        weighting: Weighting,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TimeSample:
        return _uniform_times(_low_discrepancy, n, sde, generator, device)


@dataclass(frozen=True)
class LogNormalTimeSampler(TimeSampler):
    """EDM's log-normal noise levels (Karras et al. 2022, sec. 5): ``ln s ~ N(p_mean,
    p_std^2)`` for ``s = sigma / alpha = exp(-lambda / 2)``, truncated to the SDE's range
    [s(t_min), s(T)] (by inverse-CDF sampling, so no mass piles up at the ends) and mapped to
    ``t = t_from_log_snr(-2 ln s)``. It defines the objective's time distribution (no
    importance factor).

    Args:
        p_mean: mean of ln s (-1.2 in EDM).
        p_std: standard deviation of ln s (1.2 in EDM).
    """

    name: ClassVar[str] = "lognormal"
    p_mean: float = -1.2
    p_std: float = 1.2

    def __post_init__(self) -> None:
        if isinstance(self.p_mean, bool) or not isinstance(self.p_mean, (int, float)):
            raise ValueError(f"p_mean must be a float, got p_mean={self.p_mean!r}")
        if not math.isfinite(self.p_mean):
            raise ValueError(f"p_mean must be finite, got p_mean={self.p_mean!r}")
        _check_positive(self.p_std, "p_std")

    def sample(
        self,
        n: int,
        sde: SDE,
        weighting: Weighting,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TimeSample:
        u = _uniform(_check_n(n), generator, _device(device))
        ends = sde._log_snr(torch.tensor([sde.t_min, sde.T], dtype=torch.float64))
        lam_hi, lam_lo = float(ends[0]), float(ends[1])
        ln_s_lo, ln_s_hi = -0.5 * lam_hi, -0.5 * lam_lo  # ln s(t_min) < ln s(T)
        z_ends = torch.tensor([ln_s_lo, ln_s_hi], dtype=torch.float64) - self.p_mean
        lo, hi = torch.special.ndtr(z_ends / self.p_std).tolist()
        if hi - lo > 1e-12:
            ln_s = self.p_mean + self.p_std * torch.special.ndtri(lo + (hi - lo) * u)
        else:  # the whole range lies far in one tail: uniform in ln s instead
            ln_s = ln_s_lo + (ln_s_hi - ln_s_lo) * u
        lam = (-2.0 * ln_s).clamp(lam_lo, lam_hi)
        t = sde._t_from_log_snr(lam).clamp(sde.t_min, sde.T)
        return TimeSample(t, torch.ones_like(t))


@dataclass(frozen=True)
class _InverseCDF:
    """A piecewise-constant density on a float64 grid, proportional to a weight."""

    grid: Tensor  # (M,) increasing, grid[0] = t_min, grid[-1] = T
    cdf: Tensor  # (M,) cumulative (unnormalised) mass, cdf[0] = 0
    density: Tensor  # (M - 1,) normalised density on each interval

    @property
    def total(self) -> float:
        return float(self.cdf[-1])


_CDF_CACHE: weakref.WeakKeyDictionary[SDE, dict[tuple[Weighting, int], _InverseCDF]] = (
    weakref.WeakKeyDictionary()
)


def _time_grid(sde: SDE, size: int) -> Tensor:
    """Union of a uniform grid in t and a uniform grid in log-SNR (fine where lambda moves
    fast, which is where weights like g^2 / sigma^2 = -d lambda / dt concentrate)."""
    t_uni = torch.linspace(sde.t_min, sde.T, size, dtype=torch.float64)
    ends = sde._log_snr(torch.tensor([sde.T, sde.t_min], dtype=torch.float64))
    lam = torch.linspace(float(ends[0]), float(ends[1]), size, dtype=torch.float64)
    t_lam = sde._t_from_log_snr(lam).clamp(sde.t_min, sde.T)
    grid = torch.unique(torch.cat([t_uni, t_lam]))  # sorted
    grid = grid[(grid > sde.t_min) & (grid < sde.T)]
    ends_t = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    return torch.cat([ends_t[:1], grid, ends_t[1:]])


def _inverse_cdf(sde: SDE, weighting: Weighting, size: int) -> _InverseCDF:
    per_sde = _CDF_CACHE.setdefault(sde, {})
    key = (weighting, size)
    if key not in per_sde:
        grid = _time_grid(sde, size)
        w = weighting.eps_weight(NoiseLevel._at(sde, grid))
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(
                f"importance sampling needs a finite, non-negative weight on [t_min, T]; "
                f"{weighting!r} is not on {sde!r}"
            )
        mass = 0.5 * (w[1:] + w[:-1]) * torch.diff(grid)  # trapezoid rule per interval
        cdf = torch.cat([mass.new_zeros(1), torch.cumsum(mass, 0)])
        total = float(cdf[-1])
        if not total > 0:
            raise ValueError(f"{weighting!r} has zero total weight on {sde!r}")
        per_sde[key] = _InverseCDF(grid, cdf, mass / (torch.diff(grid) * total))
    return per_sde[key]


@dataclass(frozen=True)
class ImportanceTimeSampler(TimeSampler):
    """Importance sampling of t with density ``q(t) ∝ w_eps(t)`` (Song, Durkan, Murray & Ermon
    2021, sec. 5; Huang et al. 2021), for any weighting and any schedule.

    The weight is integrated once per (SDE, weighting) on a fine float64 grid (``grid_size``
    points uniform in t plus ``grid_size`` uniform in log-SNR; trapezoid rule) and t is drawn
    by inverting the cumulative weight, linearly within each grid interval. The density that
    is divided by is that of the draws themselves (piecewise constant), so the estimator
    ``w_eps(t) ||eps_hat - eps||^2 / ((T - t_min) q(t))`` is unbiased for the uniform-t
    objective whatever the grid; the grid only decides how close to constant ``w_eps / q`` is.
    For the likelihood weighting, ``q`` is (up to the grid) uniform in log-SNR.

    Args:
        grid_size: points of each of the two grids.
        stratified: draw the uniform variates low-discrepancy (Kingma et al. 2021) instead of
            independently.
    """

    name: ClassVar[str] = "importance"
    grid_size: int = 4096
    stratified: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.grid_size, bool) or not isinstance(self.grid_size, int):
            raise ValueError(f"grid_size must be an int >= 2, got grid_size={self.grid_size!r}")
        if self.grid_size < 2:
            raise ValueError(f"grid_size must be an int >= 2, got grid_size={self.grid_size!r}")

    def density(self, sde: SDE, weighting: Weighting, t: Tensor) -> Tensor:
        """The sampling density q(t) (float64, t's shape) for t in [t_min, T]."""
        table = _inverse_cdf(sde, weighting, self.grid_size)
        t64 = t.to(torch.float64).cpu()
        idx = (torch.searchsorted(table.grid, t64.contiguous(), right=True) - 1).clamp(
            0, table.density.numel() - 1
        )
        return table.density[idx].to(t.device)

    def sample(
        self,
        n: int,
        sde: SDE,
        weighting: Weighting,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> TimeSample:
        n = _check_n(n)
        table = _inverse_cdf(sde, weighting, self.grid_size)
        draw = _low_discrepancy if self.stratified else _uniform
        u = draw(n, generator, None).cpu()
        target = u * table.total
        idx = (torch.searchsorted(table.cdf, target, right=True) - 1).clamp(
            0, table.density.numel() - 1
        )
        lo, hi = table.grid[idx], table.grid[idx + 1]
        c_lo, c_hi = table.cdf[idx], table.cdf[idx + 1]
        frac = ((target - c_lo) / (c_hi - c_lo)).clamp(0.0, 1.0)
        t = (lo + frac * (hi - lo)).clamp(sde.t_min, sde.T)
        importance = 1.0 / ((sde.T - sde.t_min) * table.density[idx])
        dev = _device(device)
        if dev is not None:
            t, importance = t.to(dev), importance.to(dev)
        return TimeSample(t, importance)


T_SAMPLERS: dict[str, type[TimeSampler]] = {
    "uniform": UniformTimeSampler,
    "low_discrepancy": LowDiscrepancyTimeSampler,
    "antithetic": LowDiscrepancyTimeSampler,
    "lognormal": LogNormalTimeSampler,
    "importance": ImportanceTimeSampler,
}
"""Built-in time samplers by name (``"antithetic"`` is another name of the low-discrepancy
sampler)."""
assert set(T_SAMPLERS) == set(get_args(TSamplerName))


def get_t_sampler(sampler: str | TimeSampler, **kwargs: object) -> TimeSampler:
    """A :class:`TimeSampler` from its name (with its parameters as keywords) or an instance.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    return _from_registry("t_sampler", sampler, T_SAMPLERS, TimeSampler, kwargs)


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got n={n!r}")
    return n


def _device(device: torch.device | str | None) -> torch.device | None:
    return None if device is None else torch.device(device)


# --------------------------------------------------------------------------- perturbation


@dataclass(frozen=True)
class Perturbed:
    """A draw of the perturbation kernel.

    Attributes:
        x_t: ``alpha(t) x0 + sigma(t) eps``, shape and dtype of x0.
        eps: the standard normal noise used, same shape.
    """

    x_t: Tensor
    eps: Tensor


def perturb(
    sde: SDE,
    x0: Tensor,
    t: TimeLike,
    *,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Perturbed:
    """Draw ``x_t = alpha(t) x0 + sigma(t) eps`` from ``sde.marginal`` (the forward kernel).

    Args:
        sde: the diffusion.
        x0: clean data, shape (B, ...).
        t: time, a float, 0-d or (B,) tensor in [t_min, T].
        eps: the noise to use (x0's shape); drawn from ``generator`` when None.
        generator: randomness for eps (None: torch's global generator); eps is drawn on the
            generator's device and moved to x0's.

    Returns:
        :class:`Perturbed` with ``x_t`` and ``eps``.
    """
    _check_state(x0, "x0")
    if eps is None:
        gen_device = generator.device if generator is not None else x0.device
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device)
        eps = eps.to(x0.device)
    elif eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    mean, std = sde.marginal(x0, t)
    return Perturbed(mean + std * eps, eps)


# --------------------------------------------------------------------------- the loss


@dataclass(frozen=True)
class LossOutput:
    """Result of :func:`dsm_loss`.

    Attributes:
        loss: mean of ``per_sample``, a 0-d tensor to call ``backward()`` on.
        per_sample: (B,) weighted squared errors (importance factor included), x0's dtype.
        t: (B,) float64 times drawn.
        weight: (B,) float64 weight on the eps error of each sample, ``w_eps(t)`` times the
            importance factor.
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    weight: Tensor


def dsm_loss_at(
    model: ScoreModel,
    x0: Tensor,
    t: Tensor,
    eps: Tensor,
    *,
    weighting: str | Weighting = "eps",
    reduce: Reduce = "mean",
) -> Tensor:
    """The weighted DSM error of each sample at given times and noise: the one place where
    every weighting is evaluated.

    With ``x_t = alpha x0 + sigma eps`` (:func:`perturb`), returns ``w_eps(t) ||eps_hat -
    eps||^2`` per sample, computed in the network's own prediction space as ``w_native(t)
    ||y_hat - y||^2``, where ``y = a x0 + b eps`` is the exact target of that prediction
    (:mod:`scoresde.parametrization`) and ``w_native = w_eps / c^2``
    (:meth:`Weighting.native_weight`). One network evaluation.

    Args:
        model: a :class:`~scoresde.ScoreModel` (any prediction) or an exact oracle.
        x0: clean data, shape (B, ...).
        t: (B,) times in [t_min, T] (any float dtype; float64 keeps them exact).
        eps: the standard normal noise, x0's shape.
        weighting: a name in :data:`WEIGHTINGS` or a :class:`Weighting` instance.
        reduce: ``"mean"`` or ``"sum"`` of the squared error over the non-batch dimensions.

    Returns:
        (B,) weighted squared errors, x0's dtype, differentiable through the network.
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a scoresde.ScoreModel, got {type(model).__name__}")
    _check_state(x0, "x0")
    if reduce not in get_args(Reduce):
        raise ValueError(f"reduce must be one of {list(get_args(Reduce))}, got {reduce!r}")
    if not isinstance(t, Tensor) or t.shape != (x0.shape[0],):
        shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"t must be a ({x0.shape[0]},) tensor, one time per sample, got {shape}")
    w = get_weighting(weighting)
    sde = model.sde
    pert = perturb(sde, x0, t, eps=eps)
    y_hat = model.predict(pert.x_t, t, model.prediction)  # the network's own output
    level = NoiseLevel._at(sde, sde._time(t)[0].to(x0.device))
    alpha, sigma = append_dims(level.alpha, x0.ndim), append_dims(level.sigma, x0.ndim)
    a, b = _linear_form(model.prediction, alpha, sigma)
    target = (a * x0.to(torch.float64) + b * pert.eps.to(torch.float64)).to(x0.dtype)
    sq = (y_hat - target).square().flatten(1)
    err = sq.mean(1) if reduce == "mean" else sq.sum(1)
    return w.native_weight(level, model.prediction).to(err.dtype) * err


def dsm_loss(
    model: ScoreModel,
    x0: Tensor,
    *,
    weighting: str | Weighting = "eps",
    t_sampler: str | TimeSampler | None = None,
    generator: torch.Generator | None = None,
    reduce: Reduce = "mean",
) -> LossOutput:
    """Denoising score matching loss (Vincent 2011; Song et al. 2021) with any weighting.

    Draws ``t`` from the sampler, then ``eps ~ N(0, I)`` (both from ``generator``), and
    returns, per sample, ``importance(t) * w_eps(t) * ||eps_hat - eps||^2``
    (:func:`dsm_loss_at`); ``loss`` is their mean. A class-conditional network is bound to
    its labels first, e.g. ``ScoreModel(functools.partial(net, y=labels), sde)``.

    Args:
        model: a :class:`~scoresde.ScoreModel` (any prediction) or an exact oracle.
        x0: clean data, shape (B, ...).
        weighting: a name in :data:`WEIGHTINGS` or a :class:`Weighting` instance.
        t_sampler: a name in :data:`T_SAMPLERS`, a :class:`TimeSampler`, or None for the
            weighting's default (``"importance"`` for likelihood, ``"lognormal"`` for edm,
            ``"uniform"`` otherwise).
        generator: the only source of randomness (None: torch's global generator).
        reduce: ``"mean"`` (Ho et al. 2020) or ``"sum"`` (Song et al. 2021; the likelihood
            bound) of the squared error over the non-batch dimensions.

    Returns:
        :class:`LossOutput` (``loss``, ``per_sample``, ``t``, ``weight``).

    Example::

        model = sd.ScoreModel(sd.MLP(2), sd.VPSDE(), prediction="eps")
        out = sd.dsm_loss(model, x0, weighting="likelihood", generator=g)
        out.loss.backward()
    """
    if not isinstance(model, ScoreModel):
        raise TypeError(f"model must be a scoresde.ScoreModel, got {type(model).__name__}")
    _check_state(x0, "x0")
    w = get_weighting(weighting)
    sampler = get_t_sampler(t_sampler if t_sampler is not None else w.default_t_sampler)
    draw = sampler.sample(x0.shape[0], model.sde, w, generator=generator, device=x0.device)
    gen_device = generator.device if generator is not None else x0.device
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gen_device)
    err = dsm_loss_at(model, x0, draw.t, eps.to(x0.device), weighting=w, reduce=reduce)
    per_sample = draw.importance.to(err.dtype) * err
    weight = w.eps_weight(NoiseLevel._at(model.sde, draw.t)) * draw.importance
    return LossOutput(loss=per_sample.mean(), per_sample=per_sample, t=draw.t, weight=weight)
