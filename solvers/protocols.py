"""What solvers consume, declared as structural types (``typing.Protocol``).

``solvers/`` never imports the diffusion layer: a term is anything with the right methods.
All protocols are ``runtime_checkable`` so :func:`solvers.integrate` can reject a term that does
not fit the solver (``isinstance`` checks the presence of the members, not their signatures).

Conventions shared by every protocol:

* argument order is ``(x, t)`` (state first, time second);
* ``x`` has shape ``(B, *dims)`` (any rank >= 1) and the floating dtype of the state;
* ``t`` given by a solver is a 0-d ``float64`` tensor on ``x``'s device (a grid point or a point
  between two grid points); a term casts/broadcasts it itself (``solvers.append_dims``);
* returned tensors have the shape of ``x`` (or broadcast to it, for ``diffusion``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["ODETermLike", "SDETermLike", "Schedule", "DenoiserTermLike"]


@runtime_checkable
class ODETermLike(Protocol):
    """An ODE ``dx/dt = v(x, t)`` given by its velocity field."""

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Velocity ``dx/dt`` at ``(x, t)``.

        Args:
            x: state, shape ``(B, *dims)``.
            t: time, 0-d ``float64`` tensor (or ``(B,)``).

        Returns:
            ``dx/dt``, shape ``(B, *dims)``, dtype of ``x``.
        """
        ...


@runtime_checkable
class SDETermLike(Protocol):
    """An Ito SDE ``dx = f(x, t) dt + g(x, t) dw`` with diagonal (or scalar) noise.

    ``dw`` is a standard Wiener process with the shape of ``x``; ``g`` multiplies it
    elementwise. The increment over a step ``t0 -> t1`` is ``x1 - x0 ~ f dt + g dW`` with
    ``dt = t1 - t0`` of either sign and ``dW ~ N(0, |dt| I)``. On a decreasing grid this is the
    reverse-time SDE in the forward time variable, ``dx = [f(t) x - g(t)^2 score] dt + g dw_bar``
    with ``dt < 0`` (Anderson 1982; Song et al. 2021, eq. 6): the term's ``drift`` is that
    bracket, unchanged; solvers never flip signs.
    """

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift ``f(x, t)``, shape ``(B, *dims)``; one network evaluation."""
        ...

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """Diffusion ``g(x, t)``, broadcastable to ``x`` (shape ``()``, ``(B, 1, ...)`` or
        ``x.shape``); never calls the network."""
        ...


@runtime_checkable
class Schedule(Protocol):
    """A Gaussian noise schedule ``x_t = alpha(t) x_0 + sigma(t) eps`` in log-SNR terms.

    ``log_snr(t) = log(alpha(t)^2 / sigma(t)^2)`` is strictly decreasing in ``t`` and
    ``t_from_log_snr`` is its inverse (dpm-solver ``marginal_lambda`` / ``inverse_lambda``).
    All four methods are elementwise on tensors of any shape.
    """

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``, same shape as ``t``."""
        ...

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``, same shape as ``t``."""
        ...

    def log_snr(self, t: Tensor) -> Tensor:
        """``lambda(t) = log(alpha^2 / sigma^2)``, strictly decreasing, same shape as ``t``."""
        ...

    def t_from_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of :meth:`log_snr`, same shape as ``lam``."""
        ...


@runtime_checkable
class DenoiserTermLike(Protocol):
    """A denoiser ``D(x, t) ~ E[x_0 | x_t = x]`` plus its schedule, for exponential integrators
    (DDIM, DPM-Solver, UniPC work in log-SNR time with the x0 prediction)."""

    @property
    def schedule(self) -> Schedule:
        """The schedule under which ``x`` is ``alpha(t) x_0 + sigma(t) eps``."""
        ...

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """x0 prediction at ``(x, t)``, shape ``(B, *dims)``; one network evaluation."""
        ...
