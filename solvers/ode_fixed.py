"""Fixed-step explicit Runge-Kutta methods for ODE terms (``dx/dt = v(x, t)``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from solvers.base import Solver
from solvers.broadcast import append_dims
from solvers.protocols import ODETermLike

__all__ = ["Euler"]


@dataclass(frozen=True)
class Euler(Solver[ODETermLike, None]):
    """Explicit Euler: ``x1 = x0 + (t1 - t0) v(x0, t0)`` (Euler 1768; Hairer et al., Solving
    ODEs I, sec. II.1).

    ODE solver; order 1 (global error ``O(h)``); 1 velocity evaluation per step; stateless.
    """

    order = 1
    term_type = ODETermLike
    evals_per_step = 1

    def step(
        self,
        term: ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        """One Euler step from ``t0`` to ``t1`` (``dt = t1 - t0``, either sign)."""
        dt = append_dims(t1 - t0, x.ndim)
        return x + dt * term.velocity(x, t0), None
