"""Solver registry: an explicit name -> class dict for built-ins (no import-order coupling,
as torchdiffeq's ``SOLVERS``), a decorator for user extensions, and lookups whose errors list
the known names."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from solvers import (
    adaptive,
    exponential,
    exponential_multistep,
    linear_multistep,
    ode_fixed,
    predictor_corrector,
    sde_adaptive,
    sde_fixed,
)
from solvers.base import Solver, check_solver_class

__all__ = [
    "SOLVERS",
    "register",
    "get_solver",
    "solvers_available",
    "SolverInfo",
    "UnknownSolverError",
]

SolverT = TypeVar("SolverT", bound=type[Solver[Any, Any]])

SOLVERS: dict[str, type[Solver[Any, Any]]] = {
    **ode_fixed.BUILTINS,
    **linear_multistep.BUILTINS,
    **exponential.BUILTINS,
    **exponential_multistep.BUILTINS,
    **adaptive.BUILTINS,
    **sde_fixed.BUILTINS,
    **predictor_corrector.BUILTINS,
    **sde_adaptive.BUILTINS,
}
"""Name -> solver class. Built-ins are listed here; :func:`register` adds user solvers."""

for _name, _cls in SOLVERS.items():
    check_solver_class(_cls)


class UnknownSolverError(ValueError, KeyError):
    """No solver of that name; the message lists the known names. A ``ValueError`` (invalid
    argument) and a ``KeyError`` (failed look-up), so either ``except`` works."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class SolverInfo:
    """One row of :func:`solvers_available`.

    Attributes:
        name: registry name (``get_solver(name)``).
        kind: ``"sde"`` for stochastic solvers, ``"ode"`` otherwise.
        order: deterministic convergence order.
        strong_order: strong order for SDEs, or ``None``.
        weak_order: weak order for SDEs, or ``None``.
        evals_per_step: network evaluations per step.
    """

    name: str
    kind: Literal["ode", "sde"]
    order: int
    strong_order: float | None = None
    weak_order: float | None = None
    evals_per_step: int = 1


def _known() -> str:
    return ", ".join(sorted(SOLVERS))


def register(name: str) -> Callable[[SolverT], SolverT]:
    """Class decorator adding a user solver to :data:`SOLVERS` under ``name``.

    Example::

        @solvers.register("my_heun")
        class MyHeun(solvers.Solver[solvers.ODETermLike, None]): ...

    Raises:
        ValueError: ``name`` is empty or already registered.
        TypeError: the class is not a concrete :class:`Solver` with its class attributes.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"solver name must be a non-empty str, got {name!r}")
    if name in SOLVERS:
        raise ValueError(
            f"a solver named {name!r} is already registered ({SOLVERS[name].__qualname__}); "
            f"known solvers: {_known()}"
        )

    def decorator(cls: SolverT) -> SolverT:
        check_solver_class(cls)
        if name in SOLVERS:  # registered between the call and the decoration
            raise ValueError(f"a solver named {name!r} is already registered")
        SOLVERS[name] = cls
        return cls

    return decorator


def get_solver(name: str, **kwargs: Any) -> Solver[Any, Any]:
    """Instantiate the solver registered as ``name`` with keyword arguments ``kwargs``.

    Raises:
        UnknownSolverError: (a ``ValueError`` and ``KeyError``) unknown ``name``; the message
            lists the known names.
        TypeError: ``kwargs`` do not match the solver's constructor (names the solver and
            its parameters).
    """
    try:
        cls = SOLVERS[name]
    except (KeyError, TypeError):
        raise UnknownSolverError(f"unknown solver {name!r}; known solvers: {_known()}") from None
    signature = inspect.signature(cls)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        params = ", ".join(signature.parameters) or "none"
        raise TypeError(
            f"invalid arguments for solver {name!r} ({cls.__qualname__}): {err}; "
            f"its parameters: {params}"
        ) from None
    return cls(**kwargs)


def solvers_available() -> list[SolverInfo]:
    """Every registered solver with its kind and orders, sorted by name."""
    return [
        SolverInfo(
            name=name,
            kind="sde" if cls.stochastic else "ode",
            order=get_solver(name).convergence_order,
            strong_order=cls.strong_order,
            weak_order=cls.weak_order,
            evals_per_step=cls.evals_per_step,
        )
        for name, cls in sorted(SOLVERS.items())
    ]


def adaptive_ode_names() -> list[str]:
    """Names of the registered step-size-controlled ODE solvers (adaptive and not stochastic),
    sorted: the methods that can solve a probability-flow ODE to a tolerance (references,
    likelihoods)."""
    return sorted(n for n, cls in SOLVERS.items() if cls.adaptive and not cls.stochastic)
