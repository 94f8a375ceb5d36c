"""Fixed-step explicit Runge-Kutta methods for ODE terms (``dx/dt = v(x, t)``).

Every method works in the term's own time ``t`` (for a diffusion: the SDE's time, so the
probability-flow ODE velocity ``f(t) x - g(t)^2 score / 2``), on any monotone grid, with
``dt = t1 - t0`` of either sign. Coefficients are float64 0-d tensors cast to the state's dtype
where they meet it; no step synchronises with the device.

Methods: :class:`Euler` (order 1), :class:`Heun` (EDM's second-order sampler: trapezoidal
correction except on the last step), :class:`Midpoint` (order 2) and :class:`RK4` (order 4).
Reference: Hairer, Norsett & Wanner, *Solving Ordinary Differential Equations I*, sec. II.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from solvers.base import Solver
from solvers.broadcast import append_dims
from solvers.protocols import ODETermLike

__all__ = ["Euler", "Heun", "HeunState", "Midpoint", "RK4", "BUILTINS"]


def _coef(c: Tensor, x: Tensor) -> Tensor:
    """A float64 0-d/``(B,)`` coefficient, broadcastable to ``x`` and in ``x``'s dtype."""
    return append_dims(c, x.ndim).to(x.dtype)


@dataclass(frozen=True)
class Euler(Solver[ODETermLike, None]):
    """Explicit Euler: ``x1 = x0 + (t1 - t0) v(x0, t0)`` (Euler 1768; Hairer et al., Solving
    ODEs I, sec. II.1).

    ODE solver; order 1 (global error ``O(h)``); 1 velocity evaluation per step; stateless.
    Default grid ``"karras"`` (EDM's choice for its Euler and Heun samplers, Karras et al.
    2022, eq. 5).
    """

    order = 1
    term_type = ODETermLike
    evals_per_step = 1
    default_grid = "karras"

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
        dt = _coef(t1 - t0, x)
        return x + dt * term.velocity(x, t0), None


@dataclass(frozen=True)
class HeunState:
    """Where :class:`Heun` is on the grid: a Python int (branching on it needs no host sync).

    Attributes:
        index: the step about to be taken, ``0 <= index < n_steps``.
        n_steps: number of steps of the grid (``len(ts) - 1``).
    """

    index: int
    n_steps: int


@dataclass(frozen=True)
class Heun(Solver[ODETermLike, HeunState]):
    """Heun's method as EDM's deterministic sampler (Karras et al. 2022, Algorithm 1).

    With ``h = t1 - t0``, ``d0 = v(x0, t0)`` and the Euler predictor ``xe = x0 + h d0``:

        x1 = x0 + h (d0 + v(xe, t1)) / 2      (explicit trapezoidal rule)  on every step but
        x1 = xe                                (Euler)                      on the last one.

    EDM skips the correction on the last step because it ends at ``sigma = 0``, where the
    velocity is undefined; here the last step ends at the grid's last point and is an Euler
    step all the same, so the method is the one of the paper. One Euler step has local error
    ``O(h^2)``, so the global order stays 2.

    ODE solver; order 2; 2 velocity evaluations per step except 1 on the last step
    (``nfe_for_steps(n) = 2n - 1``). State: :class:`HeunState`. Default grid ``"karras"``
    (EDM, eq. 5 with ``rho = 7``).
    """

    order = 2
    term_type = ODETermLike
    evals_per_step = 2
    default_grid = "karras"

    def init(self, term: ODETermLike, ts: Tensor, x: Tensor) -> HeunState:
        """Record the number of steps so that :meth:`step` knows which one is the last."""
        return HeunState(index=0, n_steps=ts.numel() - 1)

    def nfe_for_steps(self, n_steps: int) -> int:
        """``2 n - 1``: two evaluations per step, one on the last (Euler) step."""
        return 2 * n_steps - 1 if n_steps > 0 else 0

    def step(
        self,
        term: ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: HeunState,
        noise: Tensor | None,
    ) -> tuple[Tensor, HeunState]:
        """One Heun step (an Euler step if it is the last step of the grid)."""
        h = _coef(t1 - t0, x)
        next_state = HeunState(index=state.index + 1, n_steps=state.n_steps)
        # Euler predictor (Algorithm 1, lines 5-6)
        d0 = term.velocity(x, t0)
        x_euler = x + h * d0
        if state.index == state.n_steps - 1:  # last step: no correction (line 7)
            return x_euler, next_state
        # trapezoidal corrector (lines 8-9)
        d1 = term.velocity(x_euler, t1)
        return x + (0.5 * h) * (d0 + d1), next_state


@dataclass(frozen=True)
class Midpoint(Solver[ODETermLike, None]):
    """Explicit midpoint rule (Runge 1895; Hairer et al., Solving ODEs I, sec. II.1, eq. 1.6).

    With ``h = t1 - t0``:

        x1 = x0 + h v(x0 + (h / 2) v(x0, t0), t0 + h / 2).

    ODE solver; order 2; 2 velocity evaluations per step; stateless. Default grid ``"karras"``
    (smallest error of the built-in grids on the Gaussian PF-ODE under VP, VE and EDM at
    10-50 evaluations; see the user docs).
    """

    order = 2
    term_type = ODETermLike
    evals_per_step = 2
    default_grid = "karras"

    def step(
        self,
        term: ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        """One midpoint step from ``t0`` to ``t1``."""
        half = 0.5 * (t1 - t0)  # float64
        k1 = term.velocity(x, t0)
        k2 = term.velocity(x + _coef(half, x) * k1, t0 + half)
        return x + _coef(t1 - t0, x) * k2, None


@dataclass(frozen=True)
class RK4(Solver[ODETermLike, None]):
    """The classical fourth-order Runge-Kutta method (Kutta 1901; Hairer et al., Solving ODEs I,
    sec. II.1, Table 1.2 left).

    With ``h = t1 - t0`` and ``tm = t0 + h / 2``:

        k1 = v(x0, t0),            k2 = v(x0 + h k1 / 2, tm),
        k3 = v(x0 + h k2 / 2, tm), k4 = v(x0 + h k3, t1),
        x1 = x0 + h (k1 + 2 k2 + 2 k3 + k4) / 6.

    ODE solver; order 4; 4 velocity evaluations per step; stateless. Default grid ``"karras"``
    (see :class:`Midpoint`).
    """

    order = 4
    term_type = ODETermLike
    evals_per_step = 4
    default_grid = "karras"

    def step(
        self,
        term: ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        """One RK4 step from ``t0`` to ``t1``."""
        dt = t1 - t0  # float64
        t_mid = t0 + 0.5 * dt
        h, h_half, h_sixth = _coef(dt, x), _coef(0.5 * dt, x), _coef(dt / 6.0, x)
        k1 = term.velocity(x, t0)
        k2 = term.velocity(x + h_half * k1, t_mid)
        k3 = term.velocity(x + h_half * k2, t_mid)
        k4 = term.velocity(x + h * k3, t1)
        return x + h_sixth * (k1 + 2.0 * (k2 + k3) + k4), None


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "euler": Euler,
    "heun": Heun,
    "midpoint": Midpoint,
    "rk4": RK4,
}
"""Registry entries of this module (wired into :data:`solvers.SOLVERS` by the registry)."""
