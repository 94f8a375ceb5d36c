"""Concrete terms built from plain callables, and the NFE-counting wrappers used by
:func:`solvers.integrate`.

A term is what a solver sees (diffrax ``ODETerm`` / ``MultiTerm``): the solver never knows it
is solving a diffusion. Every callable takes ``(x, t)``; see :mod:`solvers.protocols` for the
shapes and what ``t`` looks like.

NFE accounting: one call of ``velocity``, ``drift`` or ``denoise`` is one network function
evaluation. ``diffusion`` (the coefficient ``g``) never calls the network and is not counted,
nor is reading ``schedule``. The count is a plain Python ``int`` on the wrapper, so counting
never synchronises with the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from solvers.broadcast import coef
from solvers.protocols import DenoiserTermLike, ODETermLike, Schedule, SDETermLike

__all__ = [
    "ODETerm",
    "SDETerm",
    "DenoiserTerm",
    "EDMVariablesTerm",
    "noise_to_signal",
    "CountingTerm",
    "CountingODETerm",
    "CountingSDETerm",
    "CountingDenoiserTerm",
    "COUNTING_TERMS",
    "count_evaluations",
    "protocol_members",
]

TermFn = Callable[[Tensor, Tensor], Tensor]
"""A function of ``(x, t)`` returning a tensor shaped (or broadcastable) like ``x``."""


@dataclass(frozen=True)
class ODETerm:
    """``dx/dt = velocity_fn(x, t)``; implements :class:`ODETermLike`.

    Args:
        velocity_fn: ``(x (B, *dims), t) -> dx/dt (B, *dims)``.
    """

    velocity_fn: TermFn

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """``dx/dt`` at ``(x, t)``, shape of ``x``."""
        return self.velocity_fn(x, t)


@dataclass(frozen=True)
class SDETerm:
    """Ito SDE ``dx = drift_fn(x, t) dt + diffusion_fn(x, t) dw``; implements
    :class:`SDETermLike` (diagonal noise: ``g`` multiplies ``dw`` elementwise).

    Args:
        drift_fn: ``(x (B, *dims), t) -> f (B, *dims)``.
        diffusion_fn: ``(x, t) -> g`` broadcastable to ``x`` (e.g. shape ``()``).
    """

    drift_fn: TermFn
    diffusion_fn: TermFn

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Drift ``f(x, t)``, shape of ``x``."""
        return self.drift_fn(x, t)

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """Diffusion ``g(x, t)`` for ``x`` of shape (B, ...) and ``t`` 0-d or (B,),
        broadcastable to ``x``."""
        return self.diffusion_fn(x, t)


@dataclass(frozen=True)
class DenoiserTerm:
    """An x0-predicting denoiser with its schedule; implements :class:`DenoiserTermLike`.

    Args:
        denoiser_fn: ``(x (B, *dims), t) -> x0_hat (B, *dims)``.
        schedule: the :class:`Schedule` ``(alpha, sigma, log_snr, t_from_log_snr)`` of ``x``.
    """

    denoiser_fn: TermFn
    schedule: Schedule

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """x0 prediction at ``(x, t)``, shape of ``x``."""
        return self.denoiser_fn(x, t)


def noise_to_signal(schedule: Schedule, t: Tensor) -> Tensor:
    """``s(t) = sigma(t) / alpha(t) = exp(-log_snr(t) / 2)`` in float64: the EDM noise level
    of the scaled state ``x / alpha`` (Karras et al. 2022, sec. 4, ``sigma(t) / s(t)``).

    Args:
        schedule: the :class:`Schedule`.
        t: times, any shape.

    Returns:
        ``sigma / alpha`` at ``t``, float64, same shape (``0`` where ``log_snr = +inf``).
    """
    return torch.exp(-0.5 * schedule.log_snr(t.to(torch.float64)).to(torch.float64))


@dataclass(frozen=True)
class EDMVariablesTerm:
    """The probability-flow ODE of a denoiser term written in EDM variables, as an ODE term.

    Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models",
    sec. 4 and eq. 4 with ``s(t) = alpha(t)``): with the scaled state ``y = x / alpha(t)`` and
    the noise-to-signal ratio ``s = sigma(t) / alpha(t)`` as the time variable, the PF-ODE of
    any Gaussian schedule ``x_t = alpha(t) x_0 + sigma(t) eps`` becomes

        dy/ds = (y - D(alpha(t) y, t)) / s = eps_hat(x, t),      t = t(s),

    whatever ``(alpha, sigma)`` are: the schedule only decides which noise levels ``s`` a grid
    visits. For ``alpha = 1`` and ``sigma = t`` (EDM) it is the ODE in ``t`` itself. An explicit
    Euler step in these variables is DDIM (Song et al. 2021) exactly; Heun's method in them is
    EDM's Algorithm 1 for any schedule.

    ``velocity(y, s)`` maps ``s`` back to the schedule's time with ``t_from_log_snr(-2 log s)``
    (one inversion per call, no host synchronisation) and makes one ``denoise`` call (one
    network evaluation).

    Args:
        term: the denoiser term (x0 prediction and schedule).
    """

    term: DenoiserTermLike

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """``dy/ds`` at the scaled state ``x = y`` and noise-to-signal ratio ``t = s``.

        Args:
            x: scaled state ``y = x / alpha``, shape ``(B, *dims)``.
            t: ``s = sigma / alpha``, 0-d float64 tensor (> 0).

        Returns:
            ``(y - D(alpha y, t(s))) / s``, shape and dtype of ``x``.
        """
        schedule = self.term.schedule
        s = t.to(torch.float64)
        time = schedule.t_from_log_snr(-2.0 * torch.log(s)).to(torch.float64)
        alpha = schedule.alpha(time).to(torch.float64)
        x0 = self.term.denoise(coef(alpha, x) * x, time)
        return (x - x0) / coef(s, x)


class CountingTerm:
    """Base of the NFE-counting wrappers: ``nfe`` is the number of network evaluations so far.

    A wrapper exposes exactly the protocol ``protocol`` (and nothing else of the wrapped term),
    so a solver can only use what its ``term_type`` declares.
    """

    protocol: ClassVar[type]
    nfe: int

    def __init__(self, term: Any) -> None:
        self.nfe = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(nfe={self.nfe}, term={getattr(self, 'term', None)!r})"


class CountingODETerm(CountingTerm):
    """Counts ``velocity`` calls of an :class:`ODETermLike`."""

    protocol = ODETermLike

    def __init__(self, term: ODETermLike) -> None:
        super().__init__(term)
        self.term = term

    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """Forwarded ``velocity``; counts one evaluation."""
        self.nfe += 1
        return self.term.velocity(x, t)


class CountingSDETerm(CountingTerm):
    """Counts ``drift`` calls of an :class:`SDETermLike` (``diffusion`` is free)."""

    protocol = SDETermLike

    def __init__(self, term: SDETermLike) -> None:
        super().__init__(term)
        self.term = term

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forwarded ``drift``; counts one evaluation."""
        self.nfe += 1
        return self.term.drift(x, t)

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """Forwarded ``diffusion``; not counted (never calls the network)."""
        return self.term.diffusion(x, t)


class CountingDenoiserTerm(CountingTerm):
    """Counts ``denoise`` calls of a :class:`DenoiserTermLike`."""

    protocol = DenoiserTermLike

    def __init__(self, term: DenoiserTermLike) -> None:
        super().__init__(term)
        self.term = term

    @property
    def schedule(self) -> Schedule:
        """The wrapped term's schedule."""
        return self.term.schedule

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """Forwarded ``denoise``; counts one evaluation."""
        self.nfe += 1
        return self.term.denoise(x, t)


COUNTING_TERMS: dict[type, type[CountingTerm]] = {
    ODETermLike: CountingODETerm,
    SDETermLike: CountingSDETerm,
    DenoiserTermLike: CountingDenoiserTerm,
}
"""Term protocol -> its counting wrapper. A new term protocol adds one entry here."""


def protocol_members(protocol: type) -> list[str]:
    """Public member names a (runtime-checkable) protocol requires, sorted."""
    names: set[str] = set(getattr(protocol, "__annotations__", {}))
    for klass in protocol.__mro__:
        if klass is object or klass.__name__ in {"Protocol", "Generic"}:
            continue
        names.update(vars(klass))
        names.update(getattr(klass, "__annotations__", {}))
    return sorted(n for n in names if not n.startswith("_"))


def count_evaluations(term: Any, term_type: type) -> CountingTerm:
    """Wrap ``term`` in the counting wrapper of protocol ``term_type``.

    Args:
        term: a term satisfying ``term_type`` (checked by the caller).
        term_type: one of the keys of :data:`COUNTING_TERMS`.

    Returns:
        A fresh wrapper with ``nfe == 0`` exposing exactly ``term_type``'s members.

    Raises:
        TypeError: if ``term_type`` has no counting wrapper.
    """
    try:
        wrapper = COUNTING_TERMS[term_type]
    except KeyError:
        known = ", ".join(p.__name__ for p in COUNTING_TERMS)
        raise TypeError(
            f"no NFE-counting wrapper for term type {getattr(term_type, '__name__', term_type)!r}"
            f"; known term types: {known} (add one to solvers.terms.COUNTING_TERMS)"
        ) from None
    return wrapper(term)
