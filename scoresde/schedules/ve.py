"""Variance-exploding SDEs (alpha = 1): the geometric VE SDE and the EDM parametrisation.

Sources: Song & Ermon 2019 (SMLD noise levels); Song et al. 2021 (VE SDE, eq. 9);
Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models", EDM:
sigma(t) = t, s(t) = 1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scoresde.sde import SDE, DiscreteChain, _check_steps

__all__ = ["VESDE", "EDMSDE"]


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a float, got {type(value).__name__}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {name}={value}")
    if sigma_min <= 0:
        raise ValueError(f"sigma_min must be > 0, got sigma_min={sigma_min}")
    if sigma_min >= sigma_max:
        raise ValueError(
            f"sigma_min must be < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


class _VarianceExploding(SDE):
    """alpha(t) = 1: f = 0 and g^2 = d sigma^2 / dt; the prior is N(0, sigma(T)^2 I)."""

    def _log_alpha(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)


class VESDE(_VarianceExploding):
    """Variance-exploding SDE with geometric noise (Song et al. 2021, eq. 9).

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, ``dx = sigma(t) sqrt(2 log(sigma_max /
    sigma_min)) dw``; the continuous limit of SMLD (Song & Ermon 2019).

    Args:
        sigma_min: sigma(0) > 0.
        sigma_max: sigma(1) > sigma_min; the prior is N(0, sigma_max^2 I) (for T = 1).
        t_min: smallest time used (default 1e-5, as score_sde).
        T: final time (default 1).
    """

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        *,
        t_min: float = 1e-5,
        T: float = 1.0,  # noqa: N803
    ) -> None:
        _check_sigma_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_smin = math.log(self.sigma_min)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        super().__init__(t_min, T)

    def _params_repr(self) -> str:
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, "

    @property
    def prior_std(self) -> float:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** self.T

    def _log_sigma(self, t: Tensor) -> Tensor:
        return self._log_smin + self._log_ratio * t

    def _log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * self._log_sigma(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return (-0.5 * lam - self._log_smin) / self._log_ratio

    def _g2(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * torch.exp(2.0 * self._log_sigma(t))

    def discretize(self, N: int) -> DiscreteChain:  # noqa: N803
        """The SMLD noise levels ``sigmas = exp(linspace(log sigma(0), log sigma(T), N))``.

        As score_sde's ``VESDE.discretize`` (for T = 1: from sigma_min to sigma_max): latent i
        (1-based) sits at ``t = (i - 1) T / (N - 1)`` (``t = T`` when N = 1). The first level,
        at t = 0, lies below the default t_min = 1e-5; VE is well defined there.
        """
        _check_steps(N)
        if N > 1:
            t = torch.linspace(0.0, self.T, N, dtype=torch.float64)
        else:
            t = torch.full((1,), self.T, dtype=torch.float64)
        return DiscreteChain(t, torch.ones_like(t), torch.exp(self._log_sigma(t)))


class EDMSDE(_VarianceExploding):
    """The EDM diffusion of Karras et al. 2022: alpha = 1, sigma(t) = t.

    Time *is* the noise level: ``t in [sigma_min, sigma_max]``, ``g^2(t) = 2 t``, the PF-ODE is
    ``dx/dt = -t score(x, t)`` (their eq. 4 with s = 1), the prior N(0, sigma_max^2 I).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        _check_sigma_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        super().__init__(self.sigma_min, self.sigma_max)

    def __repr__(self) -> str:
        return f"EDMSDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def _log_sigma(self, t: Tensor) -> Tensor:
        return torch.log(t)

    def _log_snr(self, t: Tensor) -> Tensor:
        return -2.0 * torch.log(t)

    def _t_from_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-0.5 * lam)

    def _g2(self, t: Tensor) -> Tensor:
        return 2.0 * t
