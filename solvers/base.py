"""The :class:`Solver` contract: one small object per method, with declared orders and a pure
``step`` (diffrax ``AbstractSolver``, torchdiffeq/torchsde step functions)."""

from __future__ import annotations

import abc
from typing import ClassVar, Generic, TypeVar, cast

from torch import Tensor

from solvers.protocols import Schedule
from solvers.time_grids import schedule_kind

__all__ = ["Solver", "check_solver_class", "check_nfe"]

TermT = TypeVar("TermT")
StateT = TypeVar("StateT")


class Solver(abc.ABC, Generic[TermT, StateT]):
    """Base class of every fixed-grid solver; :func:`solvers.integrate` is the only loop.

    A solver advances the state over one interval ``[t0, t1]`` of a time grid and nothing
    else: no loop, no hidden mutable counters, no randomness of its own. Whatever it must
    remember between steps (the history of a multistep method, a cached evaluation) lives in
    the explicit ``state`` returned by :meth:`init` and threaded through :meth:`step`.

    Class attributes (declared by every concrete subclass; checked by
    :func:`check_solver_class`):

    * ``order``: convergence order of the deterministic method (global error ``O(h^order)``).
    * ``strong_order`` / ``weak_order``: orders for SDEs (``None`` if not applicable).
    * ``stochastic``: if true, :func:`solvers.integrate` draws ``noise`` for every step.
    * ``term_type``: the protocol the solver consumes (e.g. :class:`solvers.ODETermLike`);
      ``integrate`` rejects other terms and hands the solver a wrapper exposing exactly it.
    * ``evals_per_step``: network evaluations per step (for NFE budgeting; an individual step
      may use fewer, e.g. the warm-up of a multistep method).

    Step contract (:meth:`step`):

    * ``t0`` and ``t1`` are 0-d ``float64`` tensors on ``x``'s device, consecutive points of
      the grid. ``dt = t1 - t0`` may be negative (a decreasing grid integrates backwards);
      solvers use ``t1 - t0`` as is and never negate it.
    * ``x`` has shape ``(B, *dims)``; the returned state has the same shape, dtype and device.
      Coefficients meet the state only through :func:`solvers.append_dims`.
    * ``noise`` is ``None`` for deterministic solvers. For stochastic ones it is a standard
      normal draw ``z ~ N(0, I)`` with ``x``'s shape, dtype and device; the Brownian increment
      over the step is ``dW = sqrt(|t1 - t0|) * z``.
    """

    order: ClassVar[int]
    strong_order: ClassVar[float | None] = None
    weak_order: ClassVar[float | None] = None
    stochastic: ClassVar[bool] = False
    term_type: ClassVar[type]
    evals_per_step: ClassVar[int]
    adaptive: ClassVar[bool] = False
    """True for step-size-controlled methods (:class:`solvers.adaptive.AdaptiveSolver`), which
    choose their own steps: ``integrate`` hands them the whole interval."""
    default_grid: ClassVar[str] = "uniform"
    """Name of the time grid (:data:`solvers.GRIDS`) this method runs on by default when the
    schedule does not scale the signal (VE, EDM; :func:`solvers.schedule_kind` ``"ve"``) or is
    unknown. See :meth:`grid_for`."""
    default_grid_vp: ClassVar[str | None] = None
    """Name of the default time grid under a schedule whose ``alpha`` decays (VP, sub-VP,
    cosine, a DDPM chain; :func:`solvers.schedule_kind` ``"vp"``); ``None``: ``default_grid``.
    See :meth:`grid_for`."""

    edm_variables_grids: ClassVar[tuple[str, str] | None] = None
    """ODE-term solvers only: the default grids ``(VP-type, VE-type)`` when the method runs in
    EDM variables (:class:`solvers.EDMVariables`); ``None``: the same as in ``t``."""

    def grid_for(self, schedule: Schedule | None, t_start: float, t_end: float) -> str:
        """The name of this method's default time grid for ``schedule`` on ``[t_end, t_start]``.

        ``default_grid_vp`` for a schedule of kind ``"vp"`` (when set), else ``default_grid``.
        The defaults were chosen by measurement (``bench/grid_sweep.py``; docs/solvers.md,
        "Default time grids"): steps uniform or quadratic in the time of a VP SDE are good, in
        a noise level (VE, EDM) the log-SNR and Karras grids are.

        Args:
            schedule: the schedule to sample (``None``: not known, ``default_grid``).
            t_start: start of the interval.
            t_end: end of the interval.

        Returns:
            A key of :data:`solvers.GRIDS`.
        """
        vp = type(self).default_grid_vp
        if (
            vp is not None
            and schedule is not None
            and schedule_kind(schedule, t_start, t_end) == "vp"
        ):
            return vp
        return type(self).default_grid

    def init(self, term: TermT, ts: Tensor, x: Tensor) -> StateT:
        """Initial solver state before the first step (default: ``None``, stateless).

        Solvers that need to know where they are on the grid (the last step of Heun, the
        warm-up of a multistep method) or that precompute per-step coefficients from the whole
        grid keep a Python-int step index and those tensors in their state; branching on the
        index needs no host synchronisation.

        Args:
            term: the (NFE-counting) term.
            ts: the whole grid, ``(N + 1,)`` ``float64`` on ``x``'s device.
            x: initial state, shape ``(B, *dims)``.

        Returns:
            The state passed to the first :meth:`step`. Stateful solvers override this.
        """
        return cast(StateT, None)

    @property
    def convergence_order(self) -> int:
        """Global order of this configured instance (default: the class's ``order``).

        Solvers whose order is an option (UniPC's p, DEIS's k) override it; the registry reports
        the default instance's value."""
        return type(self).order

    @property
    def cold_start_order(self) -> int:
        """The global order as the method is run from a single initial value.

        Multistep methods fill their history with lower-order steps; the first step's local
        error then caps the global order (for ``h -> 0``) below :attr:`convergence_order`.
        Sampling from high noise, where the solution is nearly straight, that cap usually only
        shows at very many steps. Default: :attr:`convergence_order`."""
        return self.convergence_order

    def nfe_for_steps(self, n_steps: int) -> int:
        """Network evaluations of a solve with ``n_steps`` steps (default
        ``n_steps * evals_per_step``; methods that save an evaluation somewhere override it)."""
        return n_steps * self.evals_per_step

    def for_budget(self, nfe: int) -> tuple[Solver[TermT, StateT], int]:
        """This solver configured to spend at most ``nfe`` evaluations, and its step count.

        The default keeps the solver as is and takes :meth:`steps_for_nfe` steps. Methods whose
        per-step cost can vary (single-step DPM-Solver of order k lowers the order of its last
        step to use the budget exactly; adaptive methods take ``nfe`` as their cap) override it.
        """
        return self, self.steps_for_nfe(nfe)

    def steps_for_nfe(self, nfe: int) -> int:
        """The largest step count whose :meth:`nfe_for_steps` is ``<= nfe``.

        Raises:
            ValueError: if even one step needs more than ``nfe`` evaluations.
        """
        check_nfe(nfe)
        if self.nfe_for_steps(1) > nfe:
            raise ValueError(
                f"{type(self).__name__} needs {self.nfe_for_steps(1)} network evaluations for "
                f"one step; nfe={nfe} is too small"
            )
        lo, hi = 1, 2
        while self.nfe_for_steps(hi) <= nfe:  # exponential then binary search: nfe_for_steps
            if hi > 2**24:  # is non-decreasing in the step count
                raise ValueError(f"{type(self).__name__} uses no evaluations: no budget applies")
            lo, hi = hi, 2 * hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.nfe_for_steps(mid) <= nfe else (lo, mid)
        return lo

    @abc.abstractmethod
    def step(
        self,
        term: TermT,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: StateT,
        noise: Tensor | None,
    ) -> tuple[Tensor, StateT]:
        """Advance ``x`` from ``t0`` to ``t1``.

        Args:
            term: the (NFE-counting) term, satisfying ``term_type``.
            t0: start of the step, 0-d ``float64`` tensor on ``x``'s device.
            t1: end of the step, same kind; ``t1 - t0`` may be negative.
            x: state at ``t0``, shape ``(B, *dims)``.
            state: solver state from :meth:`init` or the previous step.
            noise: ``None`` if not ``stochastic``; else ``z ~ N(0, I)`` of ``x``'s shape with
                ``dW = sqrt(|t1 - t0|) z``.

        Returns:
            ``(x1, state1)``: the state at ``t1`` (shape, dtype, device of ``x``) and the
            solver state for the next step.
        """


def check_nfe(nfe: object) -> None:
    """Validate an evaluation budget (the one check behind every ``for_budget``/``steps_for_nfe``).

    Raises:
        ValueError: ``nfe`` is not an int >= 1 (a bool is not an int here).
    """
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be an int >= 1, got nfe={nfe!r}")


def check_solver_class(cls: type) -> None:
    """Check that ``cls`` is a concrete :class:`Solver` declaring its class attributes.

    Raises:
        TypeError: naming the class and the missing/invalid attribute.
    """
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"expected a subclass of solvers.Solver, got {cls!r}")
    name = cls.__qualname__
    if getattr(cls, "__abstractmethods__", None):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise TypeError(f"solver {name} is abstract (does not implement: {missing})")
    order = getattr(cls, "order", None)
    if isinstance(order, bool) or not isinstance(order, int) or order < 1:
        raise TypeError(f"solver {name} must declare a class attribute order: int >= 1")
    evals = getattr(cls, "evals_per_step", None)
    if isinstance(evals, bool) or not isinstance(evals, int) or evals < 0:
        raise TypeError(f"solver {name} must declare a class attribute evals_per_step: int >= 0")
    if not isinstance(getattr(cls, "term_type", None), type):
        raise TypeError(
            f"solver {name} must declare a class attribute term_type (a term protocol such as "
            f"solvers.ODETermLike)"
        )
    if not isinstance(cls.stochastic, bool):
        raise TypeError(f"solver {name}: class attribute stochastic must be a bool")
    for attr in ("strong_order", "weak_order"):
        value = getattr(cls, attr)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise TypeError(f"solver {name}: class attribute {attr} must be a float or None")
