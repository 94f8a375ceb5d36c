"""Linear diffusion SDEs with Gaussian perturbation kernels.

Every diffusion in scoresde is a linear SDE

    dx = f(t) x dt + g(t) dw,

whose perturbation kernel is Gaussian,

    x_t = alpha(t) x_0 + sigma(t) eps,   eps ~ N(0, I),   t in [t_min, T],

so the whole process is fixed by the pair (alpha, sigma), equivalently by the log
signal-to-noise ratio ``lambda(t) = log(alpha^2 / sigma^2)`` (strictly decreasing in t).
The SDE coefficients are *derived* from (alpha, sigma) (Song et al. 2021, "Score-Based
Generative Modeling through Stochastic Differential Equations", eqs. 5 and 29; Kingma et al.
2021, "Variational Diffusion Models", appendix):

    f(t)   = d log alpha / dt
    g^2(t) = d sigma^2 / dt - 2 f(t) sigma^2(t) = -sigma^2(t) d lambda / dt

A concrete SDE implements the float64 primitives ``_log_alpha``, ``_log_sigma`` and
``_t_from_log_snr``; ``_f`` and ``_g2`` default to autograd of the primitives and are
overridden by closed forms where one exists (the property suite holds the two against each
other). The public methods accept ``t`` as a Python float, a 0-d tensor or a tensor of any
shape (elementwise), validate it, compute in float64 and cast the result to the dtype of ``t``
(``torch.get_default_dtype()`` for Python numbers).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from solvers.autograd import autograd_enabled
from solvers.broadcast import append_dims

__all__ = ["SDE", "DiscreteChain", "Marginal", "TimeLike"]

TimeLike = float | int | Tensor

_REL_TOL = 1e-6  # relative slack on range checks: float32 rounding of t_min or T must pass
_ABS_TOL = 1e-12


def _slack(bound: float) -> float:
    return _REL_TOL * abs(bound) + _ABS_TOL


def _as_float64(value: TimeLike, name: str) -> tuple[Tensor, torch.dtype]:
    """Convert ``value`` to a float64 tensor; return it and the dtype results are cast to."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(
            f"{name} must be a float or a torch.Tensor, got {type(value).__name__} ({value!r})"
        )
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be a real floating tensor, got dtype {value.dtype}")
        out_dtype = value.dtype if value.is_floating_point() else torch.get_default_dtype()
        return value.to(torch.float64), out_dtype
    return torch.tensor(float(value), dtype=torch.float64), torch.get_default_dtype()


def _time_derivative(fn, t: Tensor) -> Tensor:
    """Elementwise d fn(t) / dt by autograd (fn must act elementwise on t).

    Also under ``torch.inference_mode`` (where ``enable_grad`` alone records nothing and the
    derivative would silently be zero): autograd runs with inference mode off, on a normal
    copy of ``t``."""
    with autograd_enabled():
        tt = t.detach().clone().requires_grad_(True)
        y = fn(tt)
        if not y.requires_grad:  # fn is constant in t
            return torch.zeros_like(t)
        (grad,) = torch.autograd.grad(y.sum(), tt)
    return grad


class Marginal(NamedTuple):
    """The perturbation kernel p(x_t | x_0) = N(mean, std^2 I).

    ``mean`` has the shape of ``x0``; ``std`` broadcasts against it (shape ``()`` or
    ``(B, 1, ..., 1)``).
    """

    mean: Tensor
    std: Tensor


@dataclass(frozen=True)
class DiscreteChain:
    """A discrete-time Gaussian diffusion (DDPM / VDM / SMLD chain) with N noisy latents.

    Latent ``x_i`` (i = 1..N) has marginal ``q(x_i | x_0) = N(alpha[i-1] x_0, sigma[i-1]^2 I)``
    and corresponds to the continuous time ``t[i-1]``; ``x_0`` is the data (alpha = 1,
    sigma = 0). The Markov transitions are ``q(x_i | x_{i-1}) = N(a_i x_{i-1}, s_i^2 I)`` with
    ``a_i = alpha_i / alpha_{i-1}`` and ``s_i^2 = sigma_i^2 - a_i^2 sigma_{i-1}^2`` (Kingma et
    al. 2021, eq. 3-4). All tensors are float64 of shape ``(N,)``.

    Index <-> time map: 0-based timestep ``n`` of DDPM code (``n = 0..N-1``, Ho et al.'s
    1-based ``n + 1``) is ``t[n]``; for the VP family ``t[n] = (n + 1) / N * T``.
    """

    t: Tensor
    alpha: Tensor
    sigma: Tensor

    def __post_init__(self) -> None:
        shapes = {self.t.shape, self.alpha.shape, self.sigma.shape}
        if len(shapes) != 1 or self.t.ndim != 1 or self.t.numel() < 1:
            raise ValueError(f"t, alpha, sigma must be 1-D of equal length, got shapes {shapes}")

    @property
    def N(self) -> int:  # noqa: N802 - the number of steps is N in every paper
        return int(self.t.numel())

    @property
    def alphas_cumprod(self) -> Tensor:
        """``alpha_bar_i = alpha_i^2`` (Ho et al. 2020 notation), shape (N,)."""
        return self.alpha**2

    @property
    def sigmas(self) -> Tensor:
        """Marginal noise levels ``sigma_i`` (the SMLD noise scales for VE), shape (N,)."""
        return self.sigma

    @property
    def is_variance_preserving(self) -> bool:
        return bool(torch.allclose(self.alpha**2 + self.sigma**2, torch.ones_like(self.alpha)))

    @property
    def transition_alpha(self) -> Tensor:
        """``a_i = alpha_i / alpha_{i-1}`` with ``alpha_0 = 1``, shape (N,)."""
        prev = torch.cat([self.alpha.new_ones(1), self.alpha[:-1]])
        return self.alpha / prev

    @property
    def transition_sigma(self) -> Tensor:
        """``s_i = sqrt(sigma_i^2 - a_i^2 sigma_{i-1}^2)`` with ``sigma_0 = 0``, shape (N,).

        Computed as ``sigma_i sqrt(-expm1(lambda_i - lambda_{i-1}))`` (lambda_0 = +inf), free of
        the cancellation of the difference form.
        """
        lam = self.log_snr
        prev = torch.cat([lam.new_full((1,), math.inf), lam[:-1]])
        return self.sigma * torch.sqrt(-torch.expm1(lam - prev))

    @property
    def betas(self) -> Tensor:
        """DDPM ``beta_i = 1 - alpha_bar_i / alpha_bar_{i-1}`` (variance-preserving chains)."""
        if not self.is_variance_preserving:
            raise ValueError(
                "betas are defined for variance-preserving chains (alpha^2 + sigma^2 = 1); "
                "this chain is not one: use transition_alpha and transition_sigma instead"
            )
        log_ratio = 2.0 * (
            torch.log(self.alpha) - torch.log(torch.cat([self.alpha.new_ones(1), self.alpha[:-1]]))
        )
        return -torch.expm1(log_ratio)

    @property
    def log_snr(self) -> Tensor:
        return 2.0 * (torch.log(self.alpha) - torch.log(self.sigma))


class SDE(abc.ABC):
    """A linear diffusion ``x_t = alpha(t) x_0 + sigma(t) eps`` on ``[t_min, T]``.

    Subclasses implement ``_log_alpha``, ``_log_sigma`` and ``_t_from_log_snr`` on float64
    tensors (no validation); closed forms of ``_f`` and ``_g2`` are optional.

    Args:
        t_min: smallest time at which the process is used (sampling ends, likelihood starts).
        T: largest time (sampling starts from the prior at T).
    """

    variance_preserving: bool = False
    """True when alpha(t)^2 + sigma(t)^2 = 1 for all t (the VP family)."""

    def __init__(self, t_min: float, T: float) -> None:  # noqa: N803 - T is the paper's name
        for name, value in (("t_min", t_min), ("T", T)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {type(value).__name__}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {name}={value}")
        if not t_min < T:
            raise ValueError(f"t_min must be < T, got t_min={t_min}, T={T}")
        self.t_min = float(t_min)
        self.T = float(T)

    # ------------------------------------------------------------------ primitives (float64)
    @abc.abstractmethod
    def _log_alpha(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _log_sigma(self, t: Tensor) -> Tensor: ...

    @abc.abstractmethod
    def _t_from_log_snr(self, lam: Tensor) -> Tensor: ...

    def _log_snr(self, t: Tensor) -> Tensor:
        return 2.0 * (self._log_alpha(t) - self._log_sigma(t))

    def _f(self, t: Tensor) -> Tensor:
        """f(t) = d log alpha / dt (autograd default)."""
        return _time_derivative(self._log_alpha, t)

    def _g2(self, t: Tensor) -> Tensor:
        """g^2(t) = -sigma^2(t) d lambda / dt (autograd default)."""
        return -torch.exp(2.0 * self._log_sigma(t)) * _time_derivative(self._log_snr, t)

    @property
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at T (default sigma(T))."""
        return float(torch.exp(self._log_sigma(torch.tensor(self.T, dtype=torch.float64))))

    # ------------------------------------------------------------------ validation
    def _time(self, t: TimeLike, name: str = "t") -> tuple[Tensor, torch.dtype]:
        t64, out_dtype = _as_float64(t, name)
        # Checks need the values on the host: done for CPU tensors and Python numbers; skipped
        # on accelerators, where they would cost a host synchronisation on every call.
        if t64.device.type == "cpu" and t64.numel() > 0:
            t_host = t64.detach()
            if not bool(torch.isfinite(t_host).all()):
                raise ValueError(f"{name} must be finite, got {t_host.flatten()[:8].tolist()} ...")
            lo, hi = float(t_host.min()), float(t_host.max())
            if lo < self.t_min - _slack(self.t_min) or hi > self.T + _slack(self.T):
                raise ValueError(
                    f"{name} must lie in [t_min, T] = [{self.t_min}, {self.T}] for {self!r}; "
                    f"got values in [{lo}, {hi}]. Clamp or rescale {name} to the SDE's range."
                )
        return t64, out_dtype

    # ------------------------------------------------------------------ schedule
    def log_alpha(self, t: TimeLike) -> Tensor:
        """log alpha(t), elementwise, dtype of t."""
        t64, dtype = self._time(t)
        return self._log_alpha(t64).to(dtype)

    def log_sigma(self, t: TimeLike) -> Tensor:
        """log sigma(t), elementwise, dtype of t."""
        t64, dtype = self._time(t)
        return self._log_sigma(t64).to(dtype)

    def alpha(self, t: TimeLike) -> Tensor:
        """Signal scale alpha(t) of the perturbation kernel, elementwise, dtype of t."""
        t64, dtype = self._time(t)
        return torch.exp(self._log_alpha(t64)).to(dtype)

    def sigma(self, t: TimeLike) -> Tensor:
        """Noise scale sigma(t) of the perturbation kernel, elementwise, dtype of t."""
        t64, dtype = self._time(t)
        return torch.exp(self._log_sigma(t64)).to(dtype)

    def log_snr(self, t: TimeLike) -> Tensor:
        """lambda(t) = log(alpha^2 / sigma^2), strictly decreasing, elementwise."""
        t64, dtype = self._time(t)
        return self._log_snr(t64).to(dtype)

    def t_from_log_snr(self, lam: TimeLike) -> Tensor:
        """Inverse of :meth:`log_snr`: the t in [t_min, T] with ``log_snr(t) == lam``."""
        lam64, dtype = _as_float64(lam, "lam")
        if lam64.device.type == "cpu" and lam64.numel() > 0:
            if bool(torch.isnan(lam64).any()):
                raise ValueError("lam must not be NaN")
            bounds = self._log_snr(torch.tensor([self.T, self.t_min], dtype=torch.float64))
            lo_b, hi_b = float(bounds[0]), float(bounds[1])
            lo, hi = float(lam64.min()), float(lam64.max())
            if lo < lo_b - _slack(lo_b) - 1e-9 or hi > hi_b + _slack(hi_b) + 1e-9:
                raise ValueError(
                    f"lam must lie in [log_snr(T), log_snr(t_min)] = [{lo_b}, {hi_b}] for "
                    f"{self!r}; got values in [{lo}, {hi}]"
                )
        t = self._t_from_log_snr(lam64).clamp(self.t_min, self.T)
        return t.to(dtype)

    def f(self, t: TimeLike) -> Tensor:
        """Drift coefficient f(t) = d log alpha / dt, elementwise."""
        t64, dtype = self._time(t)
        return self._f(t64).to(dtype)

    def g2(self, t: TimeLike) -> Tensor:
        """Squared diffusion g^2(t) = d sigma^2/dt - 2 f(t) sigma^2(t) (> 0), elementwise."""
        t64, dtype = self._time(t)
        return self._g2(t64).to(dtype)

    def diffusion(self, t: TimeLike) -> Tensor:
        """Diffusion coefficient g(t), elementwise."""
        t64, dtype = self._time(t)
        return torch.sqrt(self._g2(t64)).to(dtype)

    # ------------------------------------------------------------------ state-level
    def _batch_coef(self, coef: Tensor, x: Tensor, t_name: str = "t") -> Tensor:
        if coef.ndim > 1 or (coef.ndim == 1 and coef.shape[0] != x.shape[0]):
            raise ValueError(
                f"{t_name} must have shape () or (batch,) = ({x.shape[0]},) for a state of "
                f"shape {tuple(x.shape)}, got shape {tuple(coef.shape)}"
            )
        return append_dims(coef.to(device=x.device, dtype=x.dtype), x.ndim)

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """Forward drift f(t) x; ``x`` of shape (B, ...), ``t`` of shape () or (B,)."""
        _check_state(x, "x")
        t64, _ = self._time(t)
        return self._batch_coef(self._f(t64), x) * x

    def marginal(self, x0: Tensor, t: TimeLike) -> Marginal:
        """Perturbation kernel p(x_t | x_0) = N(alpha(t) x0, sigma(t)^2 I); ``x0`` of shape
        (B, ...), ``t`` of shape () or (B,). See :class:`Marginal` for the result's shapes."""
        _check_state(x0, "x0")
        t64, _ = self._time(t)
        mean = self._batch_coef(torch.exp(self._log_alpha(t64)), x0) * x0
        return Marginal(mean, self._batch_coef(torch.exp(self._log_sigma(t64)), x0))

    def prior_sample(
        self,
        shape: tuple[int, ...] | torch.Size,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw x_T ~ N(0, prior_std^2 I) of the given shape (B, ...)."""
        shape = tuple(shape)
        if len(shape) < 1 or any(not isinstance(s, int) or s < 1 for s in shape):
            raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape}")
        if generator is not None and device is None:
            device = generator.device
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z * self.prior_std

    def prior_logp(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) summed over all but the batch dimension, shape (B,)."""
        _check_state(z, "z")
        s = self.prior_std
        z64 = z.to(torch.float64).flatten(1)
        d = z64.shape[1]
        logp = -0.5 * (z64 / s).pow(2).sum(1) - d * (math.log(s) + 0.5 * math.log(2 * math.pi))
        return logp.to(z.dtype)

    # ------------------------------------------------------------------ discrete chain
    def _chain_times(self, N: int) -> Tensor:  # noqa: N803
        """Times of the N chain latents: ``t_i = i T / N`` for i = 1..N (DDPM convention)."""
        return torch.arange(1, N + 1, dtype=torch.float64) * (self.T / N)

    def discretize(self, N: int) -> DiscreteChain:  # noqa: N803
        """The discrete Gaussian chain (DDPM/VDM) with N latents whose marginals are this SDE's.

        Latent i (1-based) sits at ``t_i = i T / N``; see :class:`DiscreteChain`. Families
        override this where the literature defines the chain otherwise (VP: the betas of Ho et
        al. 2020 / Song et al. 2021; VE: the SMLD noise levels).
        """
        _check_steps(N)
        t = self._chain_times(N)
        return DiscreteChain(t, torch.exp(self._log_alpha(t)), torch.exp(self._log_sigma(t)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._params_repr()}t_min={self.t_min}, T={self.T})"

    def _params_repr(self) -> str:
        return ""


def _check_state(x: object, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"{name} must have a batch dimension (shape (B, ...)), got shape ()")


def _check_steps(N: object) -> None:  # noqa: N803
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N (the number of chain steps) must be an int >= 1, got N={N!r}")
