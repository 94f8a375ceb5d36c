"""Fixed-step explicit Runge-Kutta methods for ODE terms (``dx/dt = v(x, t)``).

Every method works in the term's own time ``t`` (for a diffusion: the SDE's time, so the
probability-flow ODE velocity ``f(t) x - g(t)^2 score / 2``), on any monotone grid, with
``dt = t1 - t0`` of either sign. Coefficients are float64 0-d tensors cast to the state's dtype
where they meet it; no step synchronises with the device.

Methods: :class:`Euler` (order 1), :class:`Heun` (EDM's second-order sampler: trapezoidal
correction except on the last step), :class:`Midpoint` (order 2) and :class:`RK4` (order 4).
They are one algorithm, the explicit Runge-Kutta step :func:`rk_step`, with different Butcher
tableaux (:class:`ButcherTableau`); Heun switches from the trapezoidal tableau to Euler's on the
last step. Reference: Hairer, Norsett & Wanner, *Solving Ordinary Differential Equations I*,
sec. II.1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from solvers.base import Solver
from solvers.broadcast import coef
from solvers.protocols import ODETermLike

__all__ = [
    "ButcherTableau",
    "EULER",
    "TRAPEZOID",
    "MIDPOINT",
    "CLASSICAL_RK4",
    "rk_step",
    "Euler",
    "Heun",
    "HeunState",
    "Midpoint",
    "RK4",
    "BUILTINS",
]


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method with ``s`` stages (Hairer et al., Solving ODEs I, sec.
    II.1, eq. 1.8): with ``h = t1 - t0``,

        k_i = v(x0 + h sum_{j < i} a[i][j] k_j, t0 + c[i] h),    x1 = x0 + h sum_i b[i] k_i.

    Attributes:
        c: the ``s`` nodes (``c[0] = 0``).
        a: ``s`` rows, row ``i`` holding the ``i`` coefficients ``a[i][j]``, ``j < i``.
        b: the ``s`` weights.
    """

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]

    @property
    def stages(self) -> int:
        """Number of stages = velocity evaluations per step."""
        return len(self.c)


EULER = ButcherTableau(c=(0.0,), a=((),), b=(1.0,))
TRAPEZOID = ButcherTableau(c=(0.0, 1.0), a=((), (1.0,)), b=(0.5, 0.5))  # Heun's corrector
MIDPOINT = ButcherTableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0.0, 1.0))
CLASSICAL_RK4 = ButcherTableau(
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1.0 / 6.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 6.0),
)


def _weighted_sum(weights: Sequence[float], ks: Sequence[Tensor]) -> Tensor:
    """``sum_j weights[j] ks[j]`` over the non-zero weights (a weight 1 costs no product)."""
    total: Tensor | None = None
    for w, k in zip(weights, ks):
        if w == 0.0:
            continue
        term = k if w == 1.0 else w * k
        total = term if total is None else total + term
    assert total is not None, "a tableau row with no non-zero weight"
    return total


def rk_step(
    tableau: ButcherTableau, term: ODETermLike, t0: Tensor, t1: Tensor, x: Tensor
) -> Tensor:
    """One explicit Runge-Kutta step ``t0 -> t1`` (``h = t1 - t0``, either sign) of ``tableau``.

    Stage times are ``t0 + c h`` in float64 (``t1`` itself for ``c = 1``); ``h`` meets the state
    through :func:`solvers.broadcast.coef`, so a float32 state stays float32. No host sync.

    Args:
        tableau: the method's Butcher tableau.
        term: the ODE term (``tableau.stages`` velocity evaluations).
        t0, t1: 0-d float64 times.
        x: the state at ``t0``, shape ``(B, *dims)``.

    Returns:
        The state at ``t1``, shape and dtype of ``x``.
    """
    dt = t1 - t0  # float64
    h = coef(dt, x)
    ks: list[Tensor] = []
    for c_i, a_i in zip(tableau.c, tableau.a):
        x_i = x if not any(a_i) else x + h * _weighted_sum(a_i, ks)
        t_i = t0 if c_i == 0.0 else t1 if c_i == 1.0 else t0 + c_i * dt
        ks.append(term.velocity(x_i, t_i))
    return x + h * _weighted_sum(tableau.b, ks)


@dataclass(frozen=True)
class _ExplicitRK(Solver[ODETermLike, None]):
    """A stateless explicit Runge-Kutta method: :func:`rk_step` with the class's ``tableau``."""

    tableau: ClassVar[ButcherTableau]
    term_type = ODETermLike
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
        """One step of the tableau from ``t0`` to ``t1`` (``dt = t1 - t0``, either sign)."""
        return rk_step(type(self).tableau, term, t0, t1, x), None


@dataclass(frozen=True)
class Euler(_ExplicitRK):
    """Explicit Euler: ``x1 = x0 + (t1 - t0) v(x0, t0)`` (Euler 1768; Hairer et al., Solving
    ODEs I, sec. II.1).

    ODE solver; order 1 (global error ``O(h)``); 1 velocity evaluation per step; stateless.
    Default grid ``"karras"`` (EDM's choice for its Euler and Heun samplers, Karras et al.
    2022, eq. 5).
    """

    order = 1
    evals_per_step = 1
    tableau = EULER


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
        next_state = HeunState(index=state.index + 1, n_steps=state.n_steps)
        if state.index == state.n_steps - 1:  # last step: Euler, no correction (line 7)
            return rk_step(EULER, term, t0, t1, x), next_state
        # Euler predictor and trapezoidal corrector (Algorithm 1, lines 5-6 and 8-9)
        return rk_step(TRAPEZOID, term, t0, t1, x), next_state


@dataclass(frozen=True)
class Midpoint(_ExplicitRK):
    """Explicit midpoint rule (Runge 1895; Hairer et al., Solving ODEs I, sec. II.1, eq. 1.6).

    With ``h = t1 - t0``:

        x1 = x0 + h v(x0 + (h / 2) v(x0, t0), t0 + h / 2).

    ODE solver; order 2; 2 velocity evaluations per step; stateless. Default grid ``"karras"``
    (smallest error of the built-in grids on the Gaussian PF-ODE under VP, VE and EDM at
    10-50 evaluations; see the user docs).
    """

    order = 2
    evals_per_step = 2
    tableau = MIDPOINT


@dataclass(frozen=True)
class RK4(_ExplicitRK):
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
    evals_per_step = 4
    tableau = CLASSICAL_RK4


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "euler": Euler,
    "heun": Heun,
    "midpoint": Midpoint,
    "rk4": RK4,
}
"""Registry entries of this module (wired into :data:`solvers.SOLVERS` by the registry)."""
