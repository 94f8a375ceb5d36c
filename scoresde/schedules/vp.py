"""The variance-preserving family (alpha^2 + sigma^2 = 1) and sub-VP.

Sources: Ho et al. 2020 (DDPM); Song et al. 2021 (score SDE: VP and sub-VP, eqs. 11 and 34);
Nichol & Dhariwal 2021 (cosine schedule); Kingma et al. 2021 (VDM); Lu et al. 2022
(DPM-Solver, the inverse log-SNR maps and the discrete-time interpolation).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from scoresde.sde import SDE, DiscreteChain, _check_steps

__all__ = ["VPFamily", "VPSDE", "SubVPSDE", "CosineVPSDE", "DiscreteVPSDE"]


def _log_one_minus_exp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, accurate for x near 0 and for x very negative."""
    return torch.log(-torch.expm1(x))


class VPFamily(SDE):
    """Base of the variance-preserving family: sigma(t) = sqrt(1 - alpha(t)^2).

    Subclasses implement ``_log_alpha`` and ``_t_from_log_alpha``. Then
    ``lambda = 2 log alpha - log(1 - alpha^2)``, ``log alpha = log sigmoid(lambda) / 2``, and
    ``g^2 = -2 f`` (since d sigma^2/dt = -2 f alpha^2). The prior is N(0, I).
    """

    variance_preserving = True

    def __init__(self, t_min: float, T: float) -> None:  # noqa: N803
        super().__init__(t_min, T)
        if self.t_min <= 0:
            raise ValueError(
                f"t_min must be > 0 for a variance-preserving SDE (sigma(0) = 0 makes the "
                f"log-SNR infinite), got t_min={t_min}"
            )

    @abc.abstractmethod
    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        """The t with log alpha(t) = log_alpha (float64, elementwise)."""

    def _log_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * _log_one_minus_exp(2.0 * self._log_alpha(t))

    def _log_snr(self, t: Tensor) -> Tensor:
        la2 = 2.0 * self._log_alpha(t)
        return la2 - _log_one_minus_exp(la2)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return self._t_from_log_alpha(0.5 * F.logsigmoid(lam))

    def _g2(self, t: Tensor) -> Tensor:
        return -2.0 * self._f(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class _LinearBeta:
    """beta(t) = beta_min + (beta_max - beta_min) t and its integral B(t) (Song et al. 2021)."""

    def __init__(self, beta_min: float, beta_max: float) -> None:
        for name, value in (("beta_min", beta_min), ("beta_max", beta_max)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {name}={value}")
        if beta_min < 0:
            raise ValueError(f"beta_min must be >= 0, got beta_min={beta_min}")
        if beta_min >= beta_max:
            raise ValueError(
                f"beta_min must be < beta_max, got beta_min={beta_min}, beta_max={beta_max}"
            )
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def integral(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def inverse_integral(self, b: Tensor) -> Tensor:
        """The t >= 0 with B(t) = b, in the cancellation-free form 2b / (bmin + sqrt(...))."""
        d = self.beta_max - self.beta_min
        return 2.0 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2.0 * d * b))


class VPSDE(VPFamily):
    """Variance-preserving SDE with a linear beta schedule (Song et al. 2021, eq. 11).

    ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw``, ``alpha(t) = exp(-B(t)/2)``,
    ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``; the continuous limit of DDPM
    (Ho et al. 2020) with ``beta_i = beta(t) / N``.

    Args:
        beta_min: beta(0) >= 0.
        beta_max: beta(1) > beta_min.
        t_min: smallest time used (default 1e-5, as score_sde's likelihood).
        T: final time (default 1).
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        *,
        t_min: float = 1e-5,
        T: float = 1.0,  # noqa: N803
    ) -> None:
        self._beta = _LinearBeta(beta_min, beta_max)
        self.beta_min, self.beta_max = self._beta.beta_min, self._beta.beta_max
        super().__init__(t_min, T)

    def _params_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, "

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta.integral(t)

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        return self._beta.inverse_integral(-2.0 * log_alpha)

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta.beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self._beta.beta(t)

    def discretize(self, N: int) -> DiscreteChain:  # noqa: N803
        """The DDPM chain: ``betas = linspace(beta(0) T / N, beta(T) T / N, N)``.

        For T = 1 these are the betas of Ho et al. 2020 (beta_min = 0.1, beta_max = 20,
        N = 1000 gives their ``linspace(1e-4, 0.02, 1000)``) and of score_sde's
        ``VPSDE.discretize``. Latent i (1-based) sits at ``t_i = i T / N``; the chain's alphas
        match ``alpha(t_i)`` to O(1/N).
        """
        _check_steps(N)
        if self.beta_min == 0.0:
            raise ValueError(
                "beta_min = 0 makes the first DDPM beta exactly 0 (a noiseless step with infinite "
                "log-SNR); use beta_min > 0 to discretize"
            )
        beta_end = self.beta_min + (self.beta_max - self.beta_min) * self.T
        if beta_end * self.T / N >= 1.0:
            raise ValueError(
                f"N must exceed beta(T) T = {beta_end * self.T} so that every DDPM beta_i = "
                f"beta(t) T / N is < 1; got N={N}"
            )
        betas = torch.linspace(self.beta_min, beta_end, N, dtype=torch.float64) * (self.T / N)
        log_ac = torch.cumsum(torch.log1p(-betas), 0)
        return DiscreteChain(
            self._chain_times(N),
            torch.exp(0.5 * log_ac),
            torch.exp(0.5 * _log_one_minus_exp(log_ac)),
        )

    @classmethod
    def from_discrete(
        cls,
        betas: Tensor | None = None,
        *,
        alphas_cumprod: Tensor | None = None,
    ) -> DiscreteVPSDE:
        """Turn a discrete DDPM/VDM chain into a continuous-time VP SDE.

        Give exactly one of ``betas`` (N,) with 0 < beta_i < 1, or ``alphas_cumprod`` (N,)
        strictly decreasing in (0, 1). The result's ``log alpha`` is piecewise linear in t
        through ``(t_i, log(alphas_cumprod_i) / 2)`` with ``t_i = i / N`` (and alpha = 1 at
        t = 0), so it is exact at the chain's times, on ``[t_min, T] = [1 / N, 1]``. The
        0-based DDPM timestep ``n`` is ``t = (n + 1) / N``. See :class:`DiscreteVPSDE`.
        """
        return DiscreteVPSDE(betas=betas, alphas_cumprod=alphas_cumprod)


class SubVPSDE(SDE):
    """The sub-VP SDE (Song et al. 2021, eq. 34): alpha = exp(-B/2), sigma = 1 - exp(-B).

    ``dx = -beta(t)/2 x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dw``; its variance is bounded by
    the VP SDE's with the same betas. The prior is N(0, I), as in score_sde.
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        *,
        t_min: float = 1e-5,
        T: float = 1.0,  # noqa: N803
    ) -> None:
        self._beta = _LinearBeta(beta_min, beta_max)
        self.beta_min, self.beta_max = self._beta.beta_min, self._beta.beta_max
        super().__init__(t_min, T)
        if self.t_min <= 0:
            raise ValueError(f"t_min must be > 0 for the sub-VP SDE, got t_min={t_min}")

    def _params_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, "

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta.integral(t)

    def _log_sigma(self, t: Tensor) -> Tensor:
        return _log_one_minus_exp(-self._beta.integral(t))

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        # lambda = -B - 2 log(1 - u) with u = exp(-B): e^lam (1 - u)^2 = u, a quadratic in u
        # whose root in (0, 1) gives B = -log u. Written per sign of lambda so nothing
        # overflows: B = log1p((w + sqrt(w (4 + w))) / 2) with w = exp(-lambda) for lambda >= 0,
        # and B = log((2 e + 1) + sqrt(4 e + 1)) - log 2 - lambda with e = exp(lambda) else.
        w = torch.exp(-lam.clamp_min(0.0))
        b_pos = torch.log1p(0.5 * (w + torch.sqrt(w * (4.0 + w))))
        e = torch.exp(lam.clamp_max(0.0))
        b_neg = torch.log((2.0 * e + 1.0) + torch.sqrt(4.0 * e + 1.0)) - math.log(2.0) - lam
        return self._beta.inverse_integral(torch.where(lam >= 0, b_pos, b_neg))

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self._beta.beta(t)

    def _g2(self, t: Tensor) -> Tensor:
        return self._beta.beta(t) * -torch.expm1(-2.0 * self._beta.integral(t))

    @property
    def prior_std(self) -> float:
        return 1.0


class CosineVPSDE(VPFamily):
    """VP SDE with the cosine schedule of Nichol & Dhariwal 2021 (eq. 17).

    ``alpha(t) = cos(phi(t)) / cos(phi(0))`` with ``phi(t) = (t + s) / (1 + s) * pi / 2``, so
    ``alpha^2`` is their ``alpha_bar(t)``; ``f(t) = -tan(phi(t)) pi / (2 (1 + s))``. alpha(1) = 0,
    so T must be < 1: the default T = 0.9946 (Lu et al. 2022) keeps log-SNR(T) finite, about -9.5.
    """

    def __init__(self, s: float = 0.008, *, t_min: float = 1e-5, T: float = 0.9946) -> None:  # noqa: N803
        if isinstance(s, bool) or not isinstance(s, (int, float)):
            raise TypeError(f"s must be a float, got {type(s).__name__}")
        if not math.isfinite(s):
            raise ValueError(f"s must be finite, got s={s}")
        if s <= 0:
            raise ValueError(f"s must be > 0 (the offset keeping beta finite at t = 0), got s={s}")
        if not T < 1.0:
            raise ValueError(f"T must be < 1 for the cosine schedule (alpha(1) = 0), got T={T}")
        self.s = float(s)
        self._scale = math.pi / (2.0 * (1.0 + self.s))
        self._log_cos0 = math.log(math.cos(self.s * self._scale))
        super().__init__(t_min, T)

    def _params_repr(self) -> str:
        return f"s={self.s}, "

    def _phi(self, t: Tensor) -> Tensor:
        return (t + self.s) * self._scale

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.log(torch.cos(self._phi(t))) - self._log_cos0

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        return torch.arccos(torch.exp(log_alpha + self._log_cos0)) / self._scale - self.s

    def _f(self, t: Tensor) -> Tensor:
        return -torch.tan(self._phi(t)) * self._scale


class DiscreteVPSDE(VPFamily):
    """A VP SDE interpolating a discrete DDPM/VDM chain (Lu et al. 2022, section 3.4 style).

    ``log alpha(t)`` is piecewise linear through the knots ``(0, 0)`` and
    ``(i / N, log(alphas_cumprod_i) / 2)``, i = 1..N, so f(t) is piecewise constant and
    ``alpha(i / N)^2 == alphas_cumprod_i``. Time range ``[1 / N, 1]``: 0-based timestep n of a
    DDPM codebase is ``t = (n + 1) / N``; ``discretize(N)`` returns the original chain.

    Args:
        betas: (N,) with 0 < beta_i < 1, or
        alphas_cumprod: (N,) strictly decreasing values in (0, 1). Exactly one of the two.
    """

    def __init__(
        self, betas: Tensor | None = None, *, alphas_cumprod: Tensor | None = None
    ) -> None:
        log_ac = _validated_log_alphas_cumprod(betas, alphas_cumprod)
        n = int(log_ac.numel())
        self.num_steps = n
        knot_la = torch.cat([log_ac.new_zeros(1), 0.5 * log_ac])
        self._knots_cpu = (
            torch.arange(n + 1, dtype=torch.float64) / n,  # knot times i / N
            knot_la,  # log alpha at the knots (strictly decreasing)
            torch.diff(knot_la) * n,  # slope of log alpha on each segment = f(t)
        )
        self._knots_by_device: dict[torch.device, tuple[Tensor, Tensor, Tensor]] = {}
        super().__init__(1.0 / n, 1.0)

    def _knots(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """(knot times, knot log alphas, slopes) on ``device``, copied there once."""
        if device not in self._knots_by_device:
            self._knots_by_device[device] = tuple(k.to(device) for k in self._knots_cpu)  # type: ignore[assignment]
        return self._knots_by_device[device]

    def _params_repr(self) -> str:
        return f"N={self.num_steps}, "

    def _segment(self, t: Tensor, knot_t: Tensor) -> Tensor:
        idx = torch.searchsorted(knot_t, t.detach().contiguous(), right=True)
        return (idx - 1).clamp(0, self.num_steps - 1)

    def _log_alpha(self, t: Tensor) -> Tensor:
        knot_t, knot_la, slopes = self._knots(t.device)
        k = self._segment(t, knot_t)
        # Tensor.take, not [k]: a 0-d index tensor would be read on the host (a sync on CUDA)
        return knot_la.take(k) + slopes.take(k) * (t - knot_t.take(k))

    def _f(self, t: Tensor) -> Tensor:
        knot_t, _, slopes = self._knots(t.device)
        return slopes.take(self._segment(t, knot_t))

    def _t_from_log_alpha(self, log_alpha: Tensor) -> Tensor:
        knot_t, knot_la, slopes = self._knots(log_alpha.device)
        idx = torch.searchsorted(-knot_la, (-log_alpha).contiguous(), right=True)
        k = (idx - 1).clamp(0, self.num_steps - 1)
        return knot_t.take(k) + (log_alpha - knot_la.take(k)) / slopes.take(k)

    def discretize(self, N: int) -> DiscreteChain:  # noqa: N803
        """The chain at ``t_i = i / N``; for N equal to the source chain's length, that chain."""
        return super().discretize(N)


def _validated_log_alphas_cumprod(betas: Tensor | None, alphas_cumprod: Tensor | None) -> Tensor:
    if (betas is None) == (alphas_cumprod is None):
        raise ValueError("give exactly one of betas or alphas_cumprod to from_discrete")
    name, value = ("betas", betas) if betas is not None else ("alphas_cumprod", alphas_cumprod)
    v = torch.as_tensor(value).detach().to("cpu", torch.float64)
    if v.ndim != 1 or v.numel() < 1:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite")
    if betas is not None:
        bad = torch.nonzero((v <= 0) | (v >= 1)).flatten()
        if bad.numel():
            i = int(bad[0])
            raise ValueError(f"betas must lie in (0, 1); betas[{i}] = {float(v[i])}")
        if v.numel() > 1 and not bool((torch.diff(v) >= 0).all()):
            i = int(torch.nonzero(torch.diff(v) < 0).flatten()[0])
            raise ValueError(
                f"betas must be non-decreasing (every DDPM schedule is); betas[{i}] = "
                f"{float(v[i])} > betas[{i + 1}] = {float(v[i + 1])}. If the chain really is "
                "non-monotone, pass alphas_cumprod=torch.cumprod(1 - betas, 0) instead"
            )
        return torch.cumsum(torch.log1p(-v), 0)
    bad = torch.nonzero((v <= 0) | (v >= 1)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"alphas_cumprod must lie in (0, 1); alphas_cumprod[{i}] = {float(v[i])}")
    if v.numel() > 1 and not bool((torch.diff(v) < 0).all()):
        i = int(torch.nonzero(torch.diff(v) >= 0).flatten()[0])
        raise ValueError(
            f"alphas_cumprod must be strictly decreasing; alphas_cumprod[{i}] = {float(v[i])} "
            f"<= alphas_cumprod[{i + 1}] = {float(v[i + 1])}"
        )
    return torch.log(v)
