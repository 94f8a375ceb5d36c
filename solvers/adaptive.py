"""Adaptive step-size ODE solvers: torchdiffeq's embedded Runge-Kutta pairs and scipy's
``solve_ivp`` integrators, behind the :class:`solvers.Solver` contract.

An adaptive method chooses its own steps from an error estimate, so it does not fit the
one-step contract of :meth:`Solver.step`. :class:`AdaptiveSolver` adds :meth:`~AdaptiveSolver.
solve` instead, and :func:`solvers.integrate` dispatches to it: the grid ``ts`` is then the list
of *output times* (``ts[0]`` start, ``ts[-1]`` end, intermediate points where the trajectory is
saved), not the steps.

Every method is an embedded Runge-Kutta pair (Hairer, Norsett & Wanner, *Solving Ordinary
Differential Equations I*, 2nd ed., sec. II.4-II.5): a step of size ``h`` from ``(t0, x0)``
computes the stages ``k_i = v(x0 + h sum_j a_ij k_j, t0 + c_i h)``, the solution
``x1 = x0 + h sum_i b_i k_i`` (order ``p``) and the error estimate
``e = h sum_i (b_i - bhat_i) k_i`` (from the embedded lower-order formula). With the
mixed error norm

    err = RMS_i( e_i / (atol + rtol * max(|x0_i|, |x1_i|)) )

the step is accepted when ``err <= 1`` and the next step is
``h_new = h * clip(0.9 * err^(-1/q), fmin, fmax)`` (torchdiffeq: ``q = p``, ``fmin = 0.2``,
``fmax = 10``; scipy: ``q = p_hat + 1``, ``fmin = 0.2``, ``fmax = 10``). The first step comes
from the Hairer-Norsett-Wanner heuristic (sec. II.4, "Starting step size"), which costs one
evaluation besides ``v(x0, t0)``.

Bookkeeping shared by all methods (:class:`AdaptiveSolver`):

* NFE: every velocity call is counted, the rejected steps', the initial step-size
  heuristic's and the dense-output evaluations included.
* ``max_nfe`` caps the evaluations; the call that would exceed it is not made and the solve
  ends with :class:`AdaptiveStepError` ("raise nfe or loosen rtol/atol").
* ``max_steps`` caps the accepted steps (a safety net; default 100,000).
* Minimum step guard: a step smaller than ``rel_min_step * max(|t_start|, |t_end|,
  |t_end - t_start|)`` ends the solve with :class:`AdaptiveStepError` naming the time reached,
  rtol, atol and the NFE so far (torchdiffeq would fail later with an "underflow in dt"
  ``AssertionError``; it is converted too, in case).
* The last step is clipped to end exactly at ``ts[-1]``: the velocity is never evaluated
  beyond the interval (a diffusion model is undefined below ``t_min``); times handed to the
  velocity are 0-d float64 tensors clamped to the interval.
* Host synchronisation: adaptive stepping decides on the host whether to accept every step, so
  these solvers synchronise several times per step (torchdiffeq) or copy the state to the host
  on every evaluation (scipy). They are reference integrators and likelihood workhorses, not
  the fast path of a sampling loop.

Precision: torchdiffeq keeps the state in its own dtype and device (step times in float64;
for a float32 state it rounds the stage times to float32 before calling the velocity). In
float32 the error estimate itself carries round-off ``~ 1e-7 |x|``: use ``rtol, atol >=
~1e-6`` (1e-5, the default, is safe). Tighter tolerances buy nothing (the error floor is the
float32 round-off of the state, ~4e-6 on the unit-scale Gaussian PF-ODE) and make the
controller waste steps fighting round-off (dopri8, VP: 132 NFE at 1e-7, 6,918 at 1e-9) or, at
worst, end in :class:`AdaptiveStepError`. The scipy methods integrate in float64 on the CPU
whatever the state: the state is flattened and copied to the host on every evaluation and
back (the velocity itself is evaluated in the state's dtype and device).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor

from solvers.base import Solver, check_nfe
from solvers.integrate import NonFiniteError
from solvers.protocols import ODETermLike
from solvers.time_grids import check_grid

__all__ = [
    "AdaptiveSolver",
    "AdaptiveStepError",
    "Dopri5",
    "Bosh3",
    "AdaptiveHeun",
    "Dopri8",
    "ScipyRK45",
    "ScipyDOP853",
    "BUILTINS",
]

_F64 = torch.float64


class AdaptiveStepError(RuntimeError):
    """An adaptive solve could not reach the end of its interval.

    Raised when the step size falls below the minimum step (finite-time blow-up, a stiff or
    non-smooth velocity, tolerances too tight for the dtype), when the evaluation cap
    ``max_nfe`` or the step cap ``max_steps`` is reached, or when the integrator itself gives
    up. The message names the solver, the time reached, rtol, atol and the NFE so far.

    Attributes:
        t: the last time reached (end of the last accepted step).
        nfe: velocity evaluations made so far.
        rtol, atol: the tolerances of the solve.
    """

    def __init__(self, message: str, *, t: float, nfe: int, rtol: float, atol: float) -> None:
        super().__init__(message)
        self.t = t
        self.nfe = nfe
        self.rtol = rtol
        self.atol = atol


def _positive_float(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    ok = value >= 0.0 if allow_zero else value > 0.0
    if not (math.isfinite(value) and ok):
        allowed = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {allowed}, got {name}={value}")
    return value


def _optional_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1 or None, got {name}={value!r}")


@dataclass(frozen=True)
class AdaptiveSolver(Solver[ODETermLike, None]):
    """Base of the adaptive step-size ODE solvers (see the module docstring).

    Subclasses implement :meth:`_run` for one backend; :meth:`solve` validates, sets up the
    bookkeeping (:class:`_Run`) and calls it. :func:`solvers.integrate` calls :meth:`solve`
    instead of stepping over the grid; :meth:`step` is not supported.

    Args:
        rtol: relative tolerance of the local error (> 0).
        atol: absolute tolerance of the local error (>= 0). In float32, ``rtol`` and ``atol``
            below ~1e-6 are under the round-off of the error estimate.
        max_nfe: cap on the velocity evaluations (``None``: no cap). :meth:`for_budget` sets
            it to the budget.
        max_steps: cap on the accepted steps (``None``: no cap), a safety net against a
            solve that crawls.
        rel_min_step: the minimum step, relative to ``max(|t_start|, |t_end|, |t_end -
            t_start|)``; a smaller step ends the solve with :class:`AdaptiveStepError`.
        first_step: size of the first step attempt, ``> 0`` (``None``: the
            Hairer-Norsett-Wanner heuristic, one extra evaluation).
        max_step: largest step size, ``> 0`` (``None``: unbounded).
    """

    rtol: float = 1e-5
    atol: float = 1e-5
    max_nfe: int | None = None
    max_steps: int | None = 100_000
    rel_min_step: float = 1e-12
    first_step: float | None = None
    max_step: float | None = None

    adaptive: ClassVar[bool] = True
    """Marks solvers that choose their own steps (``nfe`` is a cap, the grid the output
    times); :func:`scoresde.sample` reads it."""
    term_type = ODETermLike
    default_grid = "uniform"

    def __post_init__(self) -> None:
        _positive_float("rtol", self.rtol)
        _positive_float("atol", self.atol, allow_zero=True)
        _optional_count("max_nfe", self.max_nfe)
        _optional_count("max_steps", self.max_steps)
        rel = _positive_float("rel_min_step", self.rel_min_step)
        if rel >= 1.0:
            raise ValueError(f"rel_min_step must be < 1, got rel_min_step={rel}")
        for name in ("first_step", "max_step"):
            value = getattr(self, name)
            if value is not None:
                _positive_float(name, value)

    # ---------------------------------------------------------------- budget
    def nfe_for_steps(self, n_steps: int) -> int:
        """Not defined: an adaptive solve's cost is known only after the solve.

        Raises:
            TypeError: always; use ``max_nfe`` (:meth:`for_budget`) to bound the cost.
        """
        raise TypeError(
            f"{type(self).__name__} chooses its own steps: its cost is not a function of a step "
            f"count; bound it with max_nfe (for_budget(nfe)) and read Solution.nfe"
        )

    def for_budget(self, nfe: int) -> tuple[AdaptiveSolver, int]:
        """This solver with the evaluation cap ``max_nfe = nfe`` (the smaller of the two if it
        already has one), and one "step": the output grid is ``[t_start, t_end]``.

        Raises:
            ValueError: ``nfe`` is not an int >= 1.
        """
        check_nfe(nfe)
        cap = nfe if self.max_nfe is None else min(nfe, self.max_nfe)
        return replace(self, max_nfe=cap), 1

    # ---------------------------------------------------------------- solve
    def step(
        self,
        term: ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        """Not supported: adaptive solvers choose their own steps.

        Raises:
            TypeError: always; call :func:`solvers.integrate` (or :meth:`solve`).
        """
        raise TypeError(
            f"{type(self).__name__} is adaptive and has no fixed step; call "
            f"solvers.integrate(solver, term, x0, ts) with ts the output times"
        )

    def solve(
        self,
        term: ODETermLike,
        x0: Tensor,
        ts: Tensor,
        *,
        max_nfe: int | None = None,
        save_path: bool = False,
        progress: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Integrate ``dx/dt = term.velocity(x, t)`` from ``ts[0]`` to ``ts[-1]``.

        Args:
            term: an :class:`ODETermLike` (``solvers.integrate`` passes its NFE counter).
            x0: initial state ``x(ts[0])``, shape ``(B, *dims)``, floating dtype.
            ts: output times ``(M + 1,)`` float64, strictly monotone (either direction),
                ``M >= 1``; the solver's steps are its own.
            max_nfe: evaluation cap for this call (``None``: the solver's ``max_nfe``; if
                both are set, the smaller one).
            save_path: also return the states at every output time.
            progress: show a tqdm bar (percentage of the interval covered).

        Returns:
            ``(x_end, path)``: the state at ``ts[-1]`` (shape, dtype, device of ``x0``) and,
            if ``save_path``, the ``(M + 1, *x0.shape)`` states at ``ts`` (``path[0] = x0``),
            else ``None``.

        Raises:
            AdaptiveStepError: minimum step, ``max_nfe`` or ``max_steps`` reached.
            NonFiniteError: the velocity returned NaN/inf.
        """
        _optional_count("max_nfe", max_nfe)
        check_grid(ts, name="ts")
        caps = [c for c in (max_nfe, self.max_nfe) if c is not None]
        ts = ts.to(device=x0.device, dtype=_F64)
        run = _Run(self, term, ts, min(caps) if caps else None, progress)
        try:
            x_end, path = self._run(run, x0, ts, save_path)
        finally:
            run.close()
        return x_end, path

    @abc.abstractmethod
    def _run(
        self, run: _Run, x0: Tensor, ts: Tensor, save_path: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Backend: integrate with ``run.velocity`` and report steps to ``run``."""


class _Run:
    """Bookkeeping of one adaptive solve: NFE count and cap, accepted steps, time reached,
    minimum-step guard, finiteness of the velocity, progress bar, error messages."""

    def __init__(
        self,
        solver: AdaptiveSolver,
        term: ODETermLike,
        ts: Tensor,
        max_nfe: int | None,
        progress: bool,
    ) -> None:
        self.solver = solver
        self.name = type(solver).__name__
        self.term = term
        self.max_nfe = max_nfe
        self.nfe = 0
        self.steps = 0
        self.t_start, self.t_end = float(ts[0]), float(ts[-1])
        self.direction = 1.0 if self.t_end > self.t_start else -1.0
        self.t_reached = self.t_start
        scale = max(abs(self.t_start), abs(self.t_end), abs(self.t_end - self.t_start))
        self.min_step = solver.rel_min_step * scale
        self.lo, self.hi = ts.min(), ts.max()  # 0-d float64 on the device: clamp bounds
        # finiteness of every velocity so far, kept on the device (no host sync per call)
        self.finite = torch.ones((), dtype=torch.bool, device=ts.device)
        self.bad_t = torch.full((), math.nan, dtype=_F64, device=ts.device)
        self.bar: Any = None
        self.shown = 0
        if progress:
            from tqdm import tqdm  # lazy: only needed for the bar

            self.bar = tqdm(total=100, desc=self.name, unit="%")

    # ---------------------------------------------------------------- evaluations
    def velocity(self, x: Tensor, t: Tensor) -> Tensor:
        """One counted evaluation ``v(x, t)``; ``t`` is clamped to the interval, float64."""
        if self.max_nfe is not None and self.nfe >= self.max_nfe:
            raise self.error(
                f"the evaluation budget max_nfe={self.max_nfe} is used up before the end of the "
                f"interval",
                "raise nfe (max_nfe) or loosen rtol/atol",
            )
        t = torch.clamp(t.to(_F64), self.lo, self.hi)
        self.nfe += 1
        v = self.term.velocity(x, t)
        ok = torch.isfinite(v).all()
        self.bad_t = torch.where(self.finite & ~ok, t, self.bad_t)
        self.finite = self.finite & ok
        return v

    # ---------------------------------------------------------------- steps
    def attempt(self, h: float) -> None:
        """Before a step attempt of size ``|h|``: the step and minimum-step guards."""
        if self.solver.max_steps is not None and self.steps >= self.solver.max_steps:
            raise self.error(
                f"max_steps={self.solver.max_steps} accepted steps were taken before the end "
                f"of the interval",
                "raise max_steps or loosen rtol/atol",
            )
        h = abs(h)
        if not h >= self.min_step:  # also catches NaN
            self.raise_if_non_finite()
            raise self.error(
                f"the step size {h:.3g} fell below the minimum step {self.min_step:.3g} "
                f"(rel_min_step={self.solver.rel_min_step:g} times the time scale of the "
                f"interval)",
                "the solution may blow up in finite time near there, or the velocity is too "
                "stiff or not smooth enough for this method; loosen rtol/atol (float32 states "
                "need rtol, atol >= ~1e-6), stop the integration earlier, or check the velocity",
            )

    def accept(self, t_new: float) -> None:
        """After an accepted step ending at ``t_new``."""
        self.steps += 1
        self.t_reached = t_new
        if self.bar is not None:
            done = int(100 * abs(t_new - self.t_start) / abs(self.t_end - self.t_start))
            if done > self.shown:
                self.bar.update(done - self.shown)
                self.shown = done
            self.bar.set_postfix(nfe=self.nfe, refresh=False)

    # ---------------------------------------------------------------- errors
    def raise_if_non_finite(self) -> None:
        if not bool(self.finite):
            raise NonFiniteError(
                f"{self.name}: the velocity returned NaN or inf (first at t = "
                f"{float(self.bad_t)!r}; integrating {self.t_start!r} -> {self.t_end!r}, time "
                f"reached {self.t_reached!r}, {self.nfe} evaluations so far)"
            )

    def error(self, reason: str, hint: str) -> AdaptiveStepError:
        s = self.solver
        return AdaptiveStepError(
            f"{self.name} stopped at t = {self.t_reached!r} (integrating {self.t_start!r} -> "
            f"{self.t_end!r}; rtol={s.rtol:g}, atol={s.atol:g}, {self.nfe} evaluations so far): "
            f"{reason}; {hint}",
            t=self.t_reached,
            nfe=self.nfe,
            rtol=s.rtol,
            atol=s.atol,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ==================================================================== torchdiffeq
class _TorchdiffeqFunc:
    """The ``(t, y)`` adapter torchdiffeq calls, with its step callbacks.

    torchdiffeq integrates a decreasing grid as ``-t`` internally; its callbacks receive the
    original time ``t0`` and the (positive) step size of the negated problem.
    """

    def __init__(self, run: _Run) -> None:
        self.run = run

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        return self.run.velocity(y, t)

    def callback_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.run.attempt(float(dt.detach()))

    def callback_accept_step(self, t0: Tensor, y0: Tensor, dt: Tensor) -> None:
        self.run.accept(float(t0.detach()) + self.run.direction * float(dt.detach()))


@dataclass(frozen=True)
class _TorchdiffeqSolver(AdaptiveSolver):
    """An adaptive method of torchdiffeq 0.2.5 (``torchdiffeq.odeint(method=...)``)."""

    method: ClassVar[str]

    def _run(
        self, run: _Run, x0: Tensor, ts: Tensor, save_path: bool
    ) -> tuple[Tensor, Tensor | None]:
        import torchdiffeq  # lazy: importing solvers should not require it

        options: dict[str, Any] = {"step_t": ts[-1:]}  # clip the last step to end at ts[-1]
        if self.first_step is not None:
            options["first_step"] = self.first_step
        if self.max_step is not None:
            options["max_step"] = self.max_step
        try:
            sol = torchdiffeq.odeint(
                _TorchdiffeqFunc(run),
                x0,
                ts,
                rtol=self.rtol,
                atol=self.atol,
                method=self.method,
                options=options,
            )
        except AssertionError as err:  # torchdiffeq reports failures by assert
            message = str(err)
            if message.startswith("underflow in dt"):
                run.raise_if_non_finite()
                raise run.error(
                    f"torchdiffeq: {message}", "loosen rtol/atol or stop the integration earlier"
                ) from None
            if message.startswith("non-finite values in state"):
                run.raise_if_non_finite()
                raise NonFiniteError(
                    f"{run.name}: the state became NaN or inf after t = {run.t_reached!r} "
                    f"({run.nfe} evaluations so far)"
                ) from None
            raise
        return sol[-1], (sol if save_path else None)


@dataclass(frozen=True)
class Dopri5(_TorchdiffeqSolver):
    """Dormand-Prince 5(4) (Dormand & Prince 1980, "A family of embedded Runge-Kutta
    formulae", J. Comput. Appl. Math. 6; Hairer et al., Solving ODEs I, Table II.5.2), via
    torchdiffeq ``method="dopri5"``.

    ``x1 = x0 + h sum_{i=1..7} b_i k_i`` (order 5), error from the embedded order-4 weights;
    FSAL: the last stage ``k_7 = v(x1, t1)`` is the next step's first. ODE solver; order 5;
    6 velocity evaluations per step attempt (+2 at the start); dense output of order 4 at the
    output times. Shapes: any ``(B, *dims)`` state, kept in its dtype and device.
    """

    method = "dopri5"
    order = 5
    evals_per_step = 6


@dataclass(frozen=True)
class Bosh3(_TorchdiffeqSolver):
    """Bogacki-Shampine 3(2) (Bogacki & Shampine 1989, "A 3(2) pair of Runge-Kutta formulas",
    Appl. Math. Lett. 2(4); MATLAB ``ode23``), via torchdiffeq ``method="bosh3"``.

    ``x1 = x0 + h (2 k_1 + 3 k_2 + 4 k_3) / 9`` with ``k_1 = v(x0, t0)``, ``k_2 = v(x0 + h k_1
    / 2, t0 + h / 2)``, ``k_3 = v(x0 + 3 h k_2 / 4, t0 + 3 h / 4)`` (order 3); the error uses
    ``k_4 = v(x1, t1)`` (FSAL). ODE solver; order 3; 3 velocity evaluations per step attempt
    (+2 at the start). Shapes: any ``(B, *dims)`` state.
    """

    method = "bosh3"
    order = 3
    evals_per_step = 3


@dataclass(frozen=True)
class AdaptiveHeun(_TorchdiffeqSolver):
    """Heun-Euler 2(1) (Heun 1900; Hairer et al., Solving ODEs I, sec. II.1 and II.4), via
    torchdiffeq ``method="adaptive_heun"``.

    ``x1 = x0 + h (k_1 + k_2) / 2`` with ``k_2 = v(x0 + h k_1, t1)`` (order 2); the error is
    ``h (k_1 - k_2) / 2`` (Heun minus Euler). torchdiffeq 0.2.5 treats the pair as FSAL and
    reuses ``k_2`` (the velocity at the Euler predictor, not at ``x1``) as the next step's
    ``k_1``; this perturbs ``k_1`` by ``O(h^2)`` and keeps global order 2 (measured in the
    tests). ODE solver; order 2; 1 velocity evaluation per step attempt (+2 at the start).
    Mostly for cheap, loose solves and as a low-order cross-check.
    """

    method = "adaptive_heun"
    order = 2
    evals_per_step = 1


@dataclass(frozen=True)
class Dopri8(_TorchdiffeqSolver):
    """Prince-Dormand 8(7) RK8(7)13M (Prince & Dormand 1981, "High order embedded Runge-Kutta
    formulae", J. Comput. Appl. Math. 7(1)), via torchdiffeq ``method="dopri8"``.

    ``x1 = x0 + h sum_i b_i k_i`` over 13 stages (order 8), error from the embedded order-7
    weights; torchdiffeq appends ``v(x1, t1)`` (FSAL). ODE solver; order 8; 13 velocity
    evaluations per step attempt (+2 at the start). For tight tolerances (rtol <= 1e-8) in
    float64: the tightest reference at the fewest evaluations.
    """

    method = "dopri8"
    order = 8
    evals_per_step = 13


# ==================================================================== scipy
@dataclass(frozen=True)
class _ScipySolver(AdaptiveSolver):
    """A ``scipy.integrate.solve_ivp`` method, driven step by step.

    The ``scipy.integrate`` ``OdeSolver`` class is stepped exactly as ``solve_ivp`` steps it
    (same steps, same results), but by this loop, so that the step count, the step size and
    the evaluation cap are checked between steps. Intermediate output times are read from the
    method's dense output (DOP853: 3 extra evaluations per step that crosses one); the end
    point is the last step's end (the last step is clipped to ``ts[-1]``).

    Host round trip: scipy integrates a flat float64 numpy vector on the CPU. Each evaluation
    copies the state to ``x0``'s device and dtype, calls the velocity and copies the result
    back (one host synchronisation per evaluation). No gradient flows through the solve. It is
    the reference integrator for tests, not the fast path.
    """

    scipy_method: ClassVar[str]

    def _run(
        self, run: _Run, x0: Tensor, ts: Tensor, save_path: bool
    ) -> tuple[Tensor, Tensor | None]:
        import numpy as np
        import scipy.integrate  # lazy: importing solvers should not require it

        shape, dtype, device = x0.shape, x0.dtype, x0.device

        def fun(t: float, y: Any) -> Any:
            x = torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)
            v = run.velocity(x, torch.tensor(t, dtype=_F64, device=device))
            run.raise_if_non_finite()  # the copy below synchronises anyway
            return v.detach().to("cpu", _F64).numpy().reshape(-1)

        t_out = ts.cpu().numpy()
        y0 = x0.detach().to("cpu", _F64).numpy().reshape(-1).copy()
        kwargs: dict[str, Any] = {"rtol": self.rtol, "atol": self.atol}
        if self.first_step is not None:  # scipy rejects a first step beyond the interval
            kwargs["first_step"] = min(self.first_step, abs(run.t_end - run.t_start))
        if self.max_step is not None:
            kwargs["max_step"] = self.max_step
        integrator_cls = getattr(scipy.integrate, self.scipy_method)
        integrator = integrator_cls(fun, float(t_out[0]), y0, float(t_out[-1]), **kwargs)
        outputs = [y0]
        j = 1  # next output time
        while integrator.status == "running":
            run.attempt(min(integrator.h_abs, integrator.max_step))  # the next step's try
            message = integrator.step()
            if integrator.status == "failed":
                run.raise_if_non_finite()
                raise run.error(f"scipy {self.scipy_method}: {message}", "loosen rtol/atol")
            run.accept(float(integrator.t))
            dense = None
            while j < len(t_out) and run.direction * (t_out[j] - integrator.t) <= 0:
                if t_out[j] == integrator.t:
                    outputs.append(integrator.y.copy())
                else:
                    if dense is None:
                        dense = integrator.dense_output()
                    outputs.append(np.asarray(dense(t_out[j])))
                j += 1
        assert j == len(t_out), "scipy stopped before the last output time"

        def to_state(y: Any) -> Tensor:
            return torch.from_numpy(y).reshape(shape).to(device=device, dtype=dtype)

        x_end = to_state(outputs[-1])
        path = torch.stack([x0] + [to_state(y) for y in outputs[1:]]) if save_path else None
        return x_end, path


@dataclass(frozen=True)
class ScipyRK45(_ScipySolver):
    """Dormand-Prince 5(4) as ``scipy.integrate.solve_ivp(method="RK45")`` (Dormand & Prince
    1980; dense output of Shampine 1986, "Some practical Runge-Kutta formulas", Math. Comp.
    46).

    Same pair as :class:`Dopri5` (``x1 = x0 + h sum b_i k_i``, order 5, FSAL) with scipy's
    step-size control (``h_new = h min(10, 0.9 err^(-1/5))``). ODE solver; order 5; 6
    evaluations per step attempt (+2 at the start). Float64 on the CPU (see
    :class:`_ScipySolver`): the reference integrator of the tests.
    """

    scipy_method = "RK45"
    order = 5
    evals_per_step = 6


@dataclass(frozen=True)
class ScipyDOP853(_ScipySolver):
    """DOP853, Dormand-Prince 8(5,3) as ``scipy.integrate.solve_ivp(method="DOP853")``
    (Hairer, Norsett & Wanner, Solving ODEs I, sec. II.10; after Hairer's Fortran DOP853).

    ``x1 = x0 + h sum_{i=1..12} b_i k_i`` (order 8) with a combined 5th/3rd-order error
    estimate; FSAL. ODE solver; order 8; 12 evaluations per step attempt (+2 at the start; +3
    per step that crosses an intermediate output time, for the order-7 dense output). Float64
    on the CPU (see :class:`_ScipySolver`): the tight-tolerance reference of the tests.
    """

    scipy_method = "DOP853"
    order = 8
    evals_per_step = 12


BUILTINS: dict[str, type[Solver[Any, Any]]] = {
    "dopri5": Dopri5,
    "bosh3": Bosh3,
    "adaptive_heun": AdaptiveHeun,
    "dopri8": Dopri8,
    "rk45": ScipyRK45,
    "dop853": ScipyDOP853,
}
"""Registry name -> class of the adaptive solvers (the registry merges it)."""
