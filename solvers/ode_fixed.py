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
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from solvers.base import Solver
from solvers.broadcast import coef
from solvers.protocols import DenoiserTermLike, ODETermLike, Schedule
from solvers.terms import EDMVariablesTerm, noise_to_signal
from solvers.time_grids import schedule_kind

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
    "EDMVariables",
    "EDMVariablesState",
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
    default_grid_vp = "quadratic"

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
    Default grid (:meth:`~solvers.Solver.grid_for`, by measurement, ``bench/grid_sweep.py``):
    ``"quadratic"`` under VP-type schedules, ``"karras"`` (Karras et al. 2022, eq. 5) under VE
    and EDM. In EDM variables (:class:`EDMVariables`) it is DDIM.
    """

    order = 1
    evals_per_step = 1
    tableau = EULER
    edm_variables_grids = ("quadratic", "karras")


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
    (``nfe_for_steps(n) = 2n - 1``). State: :class:`HeunState`. Default grid ``"quadratic"``
    under VP-type schedules, ``"karras"`` (EDM, eq. 5 with ``rho = 7``) under VE and EDM (by
    measurement, ``bench/grid_sweep.py``). EDM's sampler for any schedule, in its variables
    ``x / alpha`` and ``sigma / alpha``, is ``EDMVariables(Heun())``.

    Args:
        euler_last: ``True`` (default, EDM's Algorithm 1): the last step is an Euler step.
            ``False``: every step is a Heun step (``2n`` evaluations; k-diffusion's
            ``sample_heun`` on a grid that ends at ``sigma > 0``), for a grid whose last point
            has a finite velocity.
    """

    order = 2
    term_type = ODETermLike
    evals_per_step = 2
    default_grid = "karras"
    default_grid_vp = "quadratic"
    edm_variables_grids = ("uniform", "karras")

    euler_last: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.euler_last, bool):
            raise TypeError(f"euler_last must be True or False, got {self.euler_last!r}")

    def init(self, term: ODETermLike, ts: Tensor, x: Tensor) -> HeunState:
        """Record the number of steps so that :meth:`step` knows which one is the last."""
        return HeunState(index=0, n_steps=ts.numel() - 1)

    def nfe_for_steps(self, n_steps: int) -> int:
        """``2 n - 1``: two evaluations per step, one on the last (Euler) step (``2 n`` with
        ``euler_last=False``)."""
        if n_steps <= 0:
            return 0
        return 2 * n_steps - 1 if self.euler_last else 2 * n_steps

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
        if self.euler_last and state.index == state.n_steps - 1:  # Euler (line 7)
            return rk_step(EULER, term, t0, t1, x), next_state
        # Euler predictor and trapezoidal corrector (Algorithm 1, lines 5-6 and 8-9)
        return rk_step(TRAPEZOID, term, t0, t1, x), next_state


@dataclass(frozen=True)
class Midpoint(_ExplicitRK):
    """Explicit midpoint rule (Runge 1895; Hairer et al., Solving ODEs I, sec. II.1, eq. 1.6).

    With ``h = t1 - t0``:

        x1 = x0 + h v(x0 + (h / 2) v(x0, t0), t0 + h / 2).

    ODE solver; order 2; 2 velocity evaluations per step; stateless. Default grid
    ``"quadratic"`` under VP-type schedules, ``"karras"`` under VE and EDM (by measurement,
    ``bench/grid_sweep.py``).
    """

    order = 2
    evals_per_step = 2
    tableau = MIDPOINT
    edm_variables_grids = ("quadratic", "karras")


@dataclass(frozen=True)
class RK4(_ExplicitRK):
    """The classical fourth-order Runge-Kutta method (Kutta 1901; Hairer et al., Solving ODEs I,
    sec. II.1, Table 1.2 left).

    With ``h = t1 - t0`` and ``tm = t0 + h / 2``:

        k1 = v(x0, t0),            k2 = v(x0 + h k1 / 2, tm),
        k3 = v(x0 + h k2 / 2, tm), k4 = v(x0 + h k3, t1),
        x1 = x0 + h (k1 + 2 k2 + 2 k3 + k4) / 6.

    ODE solver; order 4; 4 velocity evaluations per step; stateless. Default grid
    ``"quadratic"`` under VP-type schedules, ``"karras"`` under VE and EDM (see
    :class:`Midpoint`).
    """

    order = 4
    evals_per_step = 4
    tableau = CLASSICAL_RK4
    edm_variables_grids = ("karras", "karras")


@dataclass(frozen=True)
class EDMVariablesState:
    """State of :class:`EDMVariables`.

    Attributes:
        index: the step about to be taken (a Python int).
        s: ``(N + 1,)`` float64 noise-to-signal ratios ``sigma / alpha`` of the grid points.
        alpha: ``(N + 1,)`` float64 ``alpha`` at the grid points.
        inner: the wrapped solver's state.
    """

    index: int
    s: Tensor
    alpha: Tensor
    inner: Any


@dataclass(frozen=True)
class EDMVariables(Solver[DenoiserTermLike, EDMVariablesState]):
    """Run a fixed-step ODE solver on the probability-flow ODE in EDM variables (Karras et al.
    2022, sec. 4): state ``y = x / alpha(t)``, time ``s = sigma(t) / alpha(t)``, and

        dy/ds = (y - D(alpha y, t)) / s = eps_hat        (:class:`solvers.EDMVariablesTerm`),

    for any Gaussian schedule ``(alpha, sigma)``. The grid is given in the schedule's own time
    ``t`` as usual; the solver steps between the ``s`` of consecutive grid points and hands back
    ``x = alpha y`` after every step, so the loop, the callbacks and the trajectory see ``x``
    and ``t``. Under EDM (``alpha = 1``, ``sigma = t``) this is the wrapped solver itself; under
    VP and VE it is how k-diffusion and diffusers' ``EulerDiscreteScheduler`` /
    ``HeunDiscreteScheduler`` integrate. ``EDMVariables(Euler())`` is DDIM (Song et al. 2021)
    exactly, ``EDMVariables(Heun())`` EDM's Algorithm 1 and ``EDMVariables(IPNDMVariable())``
    k-diffusion's ``sample_lms`` on any schedule.

    Consumes a :class:`solvers.DenoiserTermLike` (``sd.sample`` builds it from any model); the
    wrapped solver's order, evaluations per step and budget rule are kept
    (:attr:`convergence_order`, :meth:`nfe_for_steps`, :meth:`for_budget`). Intermediate stage
    times (midpoint, RK4) are mapped back to ``t`` through the schedule's ``t_from_log_snr``.

    Args:
        solver: a deterministic fixed-step solver of ODE terms (``Euler()``, ``Heun()``,
            ``Midpoint()``, ``RK4()``, ``IPNDM()``, ``IPNDMVariable()``, or a user solver).

    Raises:
        TypeError: ``solver`` is not such a solver.
    """

    solver: Solver[Any, Any]

    order: ClassVar[int] = 1  # the registry default; instances report the wrapped solver's
    term_type = DenoiserTermLike
    evals_per_step: ClassVar[int] = 1
    default_grid = "karras"

    def __post_init__(self) -> None:
        inner = self.solver
        if not isinstance(inner, Solver):
            raise TypeError(
                f"EDMVariables: solver must be a solvers.Solver instance, got "
                f"{type(inner).__name__}"
            )
        cls = type(inner)
        if cls.term_type is not ODETermLike or cls.stochastic or cls.adaptive:
            raise TypeError(
                f"EDMVariables: solver must be a deterministic fixed-step solver of ODE terms "
                f"(term_type ODETermLike, e.g. solvers.Heun()), got {cls.__name__} "
                f"(term_type {cls.term_type.__name__}, stochastic={cls.stochastic}, "
                f"adaptive={cls.adaptive})"
            )
        # an instance reports the wrapped solver's order and cost per step (the class
        # attributes are the registry's defaults for the wrapper itself)
        object.__setattr__(self, "order", cls.order)
        object.__setattr__(self, "evals_per_step", cls.evals_per_step)

    @property
    def convergence_order(self) -> int:
        """The wrapped solver's order (a change of variables keeps it)."""
        return self.solver.convergence_order

    @property
    def cold_start_order(self) -> int:
        """The wrapped solver's cold-start order."""
        return self.solver.cold_start_order

    def nfe_for_steps(self, n_steps: int) -> int:
        """The wrapped solver's cost of ``n_steps`` steps."""
        return self.solver.nfe_for_steps(n_steps)

    def grid_for(self, schedule: Schedule | None, t_start: float, t_end: float) -> str:
        """The wrapped solver's ``edm_variables_grids`` (VP-type, VE-type), measured in these
        variables by ``bench/grid_sweep.py``; without them its own :meth:`grid_for`."""
        grids = type(self.solver).edm_variables_grids
        if grids is None:
            return self.solver.grid_for(schedule, t_start, t_end)
        if schedule is not None and schedule_kind(schedule, t_start, t_end) == "vp":
            return grids[0]
        return grids[1]

    def for_budget(self, nfe: int) -> tuple[EDMVariables, int]:
        """The wrapped solver's :meth:`~solvers.Solver.for_budget`, wrapped again."""
        inner, n_steps = self.solver.for_budget(nfe)
        return replace(self, solver=inner), n_steps

    def init(self, term: DenoiserTermLike, ts: Tensor, x: Tensor) -> EDMVariablesState:
        """``s`` and ``alpha`` at the grid points (float64) and the wrapped solver's state on
        the grid ``s(ts)`` from ``y = x / alpha(ts[0])``."""
        schedule = term.schedule
        ts64 = ts.to(torch.float64)
        s = noise_to_signal(schedule, ts64)
        alpha = schedule.alpha(ts64).to(torch.float64)
        inner = self.solver.init(EDMVariablesTerm(term), s, x / coef(alpha[0], x))
        return EDMVariablesState(index=0, s=s, alpha=alpha, inner=inner)

    def step(
        self,
        term: DenoiserTermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: EDMVariablesState,
        noise: Tensor | None,
    ) -> tuple[Tensor, EDMVariablesState]:
        """One step of the wrapped solver from ``s(t0)`` to ``s(t1)`` on ``y = x / alpha``."""
        i = state.index
        y = x / coef(state.alpha[i], x)
        y1, inner = self.solver.step(
            EDMVariablesTerm(term), state.s[i], state.s[i + 1], y, state.inner, None
        )
        x1 = y1 * coef(state.alpha[i + 1], x)
        return x1, replace(state, index=i + 1, inner=inner)


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "euler": Euler,
    "heun": Heun,
    "midpoint": Midpoint,
    "rk4": RK4,
}
"""Registry entries of this module (wired into :data:`solvers.SOLVERS` by the registry)."""
