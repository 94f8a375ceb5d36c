"""Reverse-time SDE and probability-flow ODE: where a forward SDE and a score become terms.

For the forward SDE ``dx = f(t) x dt + g(t) dw`` and the score ``s(x, t) = grad log p_t(x)``:

    reverse SDE (Anderson 1982; Song et al. 2021, eq. 6):
        dx = [f(t) x - g(t)^2 s(x, t)] dt + g(t) dw_bar
    probability-flow ODE (Song et al. 2021, eq. 13):
        dx/dt = f(t) x - g(t)^2 s(x, t) / 2

Both are integrated from T down to t_min (``dt < 0``); the solvers in :mod:`solvers` see them
only as terms (:class:`ReverseSDE` satisfies ``solvers.SDETermLike``, :class:`ProbabilityFlowODE`
satisfies ``solvers.ODETermLike``) and never know they are solving a diffusion. This module is
the one place where the two drifts are written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

import solvers
from scoresde.sde import SDE, TimeLike, _check_state

__all__ = ["ScoreFn", "reverse_drift", "ReverseSDE", "ProbabilityFlowODE", "solver_term"]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""A score ``s(x, t)``: x of shape (B, ...), t of shape () or (B,); returns x's shape."""


def reverse_drift(
    sde: SDE, score: ScoreFn, x: Tensor, t: TimeLike, *, probability_flow: bool = False
) -> Tensor:
    """``f(t) x - c g(t)^2 s(x, t)`` with c = 1 (reverse SDE) or 1/2 (probability-flow ODE).

    Args:
        sde: the forward SDE.
        score: the score function, called once.
        x: state, shape (B, ...).
        t: time, shape () or (B,), in [t_min, T].
        probability_flow: the ODE drift (True) or the reverse-SDE drift (False).

    Returns:
        The drift, shape and dtype of ``x``.
    """
    _check_state(x, "x")
    t64, _ = sde._time(t)
    s = score(x, t if isinstance(t, Tensor) else t64.to(x.device))
    if s.shape != x.shape:
        raise ValueError(
            f"the score returned shape {tuple(s.shape)} for x of shape {tuple(x.shape)}"
        )
    c = 0.5 if probability_flow else 1.0
    f = sde._batch_coef(sde._f(t64), x)
    g2 = sde._batch_coef(sde._g2(t64), x)
    return f * x - (c * g2) * s


@dataclass(frozen=True)
class ReverseSDE:
    """The reverse-time SDE of ``sde`` with score ``score``, as an SDE term for :mod:`solvers`.

    ``drift(x, t) = f x - g^2 s`` is the coefficient of dt (with dt < 0 when integrating from T
    to t_min) and ``diffusion(x, t) = g(t)`` multiplies the reverse Brownian increment.
    """

    sde: SDE
    score: ScoreFn

    def drift(self, x: Tensor, t: TimeLike) -> Tensor:
        """Reverse-time drift ``f(t) x - g(t)^2 score(x, t)``, x's shape (B, ...); ``t`` of
        shape () or (B,)."""
        return reverse_drift(self.sde, self.score, x, t, probability_flow=False)

    def diffusion(self, x: Tensor, t: TimeLike) -> Tensor:
        """Diffusion ``g(t)``, shaped () or (B, 1, ..., 1) to broadcast against x (B, ...)."""
        t64, _ = self.sde._time(t)
        return self.sde._batch_coef(self.sde._g2(t64).sqrt(), x)


@dataclass(frozen=True)
class ProbabilityFlowODE:
    """The probability-flow ODE of ``sde`` with score ``score``, as an ODE term for :mod:`solvers`.

    ``velocity(x, t) = f(t) x - g(t)^2 s(x, t) / 2``; its flow transports p_T to p_t_min exactly
    when ``score`` is exact, deterministically.
    """

    sde: SDE
    score: ScoreFn

    def velocity(self, x: Tensor, t: TimeLike) -> Tensor:
        """Probability-flow velocity ``f(t) x - g(t)^2 score(x, t) / 2``, x's shape (B, ...);
        ``t`` of shape () or (B,)."""
        return reverse_drift(self.sde, self.score, x, t, probability_flow=True)


_TERM_BUILDERS: dict[type, Callable[[Any], object]] = {
    solvers.ODETermLike: lambda model: ProbabilityFlowODE(model.sde, model.score),
    solvers.SDETermLike: lambda model: ReverseSDE(model.sde, model.score),
    solvers.DenoiserTermLike: lambda model: solvers.DenoiserTerm(model.x0, model.sde),
}


def solver_term(model: Any, term_type: type) -> object:
    """The term a solver declaring ``term_type`` consumes, built from a score model.

    ``ODETermLike`` -> :class:`ProbabilityFlowODE` (velocity from ``model.score``);
    ``SDETermLike`` -> :class:`ReverseSDE`; ``DenoiserTermLike`` -> ``solvers.DenoiserTerm``
    with ``model.x0`` and the SDE as its log-SNR schedule (for exponential integrators).

    Args:
        model: anything with ``sde``, ``score(x, t)`` and ``x0(x, t)`` (a ScoreModel, an oracle).
        term_type: a solver's ``term_type`` protocol.
    """
    try:
        build = _TERM_BUILDERS[term_type]
    except KeyError:
        known = ", ".join(t.__name__ for t in _TERM_BUILDERS)
        raise TypeError(
            f"no term for solvers of term_type {getattr(term_type, '__name__', term_type)}; "
            f"scoresde builds {known}"
        ) from None
    return build(model)
