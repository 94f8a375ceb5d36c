"""Solver registry, public API surface and the Solver class contract."""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import Tensor

import solvers
from solvers import SOLVERS, Solver, SolverInfo, get_solver, register, solvers_available


@dataclass(frozen=True)
class _Doubler(Solver[solvers.ODETermLike, None]):
    """Test-only solver (x1 = 2 x0), with one constructor parameter."""

    scale: float = 2.0

    order = 1
    term_type = solvers.ODETermLike
    evals_per_step = 0

    def step(
        self,
        term: solvers.ODETermLike,
        t0: Tensor,
        t1: Tensor,
        x: Tensor,
        state: None,
        noise: Tensor | None,
    ) -> tuple[Tensor, None]:
        return self.scale * x, None


@pytest.fixture
def scratch_name():
    """A registry name that is removed again after the test."""
    name = "test_only_solver"
    assert name not in SOLVERS
    yield name
    SOLVERS.pop(name, None)


def test_public_names_resolve() -> None:
    assert len(set(solvers.__all__)) == len(solvers.__all__)
    for name in solvers.__all__:
        assert hasattr(solvers, name), name


def test_py_typed_is_shipped() -> None:
    assert (Path(solvers.__file__).parent / "py.typed").is_file()


def test_unknown_solver_lists_known_names() -> None:
    with pytest.raises(ValueError, match="euler") as info:
        get_solver("nope")
    assert isinstance(info.value, KeyError)
    assert "'nope'" in str(info.value)
    assert not str(info.value).startswith('"')  # not KeyError's repr-quoting


def test_get_solver_instantiates() -> None:
    solver = get_solver("euler")
    assert isinstance(solver, solvers.Euler)


def test_get_solver_bad_kwargs_names_solver() -> None:
    with pytest.raises(TypeError, match="euler"):
        get_solver("euler", eta=1.0)


def test_solvers_available_lists_euler() -> None:
    infos = solvers_available()
    assert all(isinstance(i, SolverInfo) for i in infos)
    euler = {i.name: i for i in infos}["euler"]
    assert (euler.kind, euler.order, euler.evals_per_step) == ("ode", 1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        euler.order = 2  # type: ignore[misc]
    assert [i.name for i in infos] == sorted(SOLVERS)


def test_register_adds_and_instantiates_with_kwargs(scratch_name: str) -> None:
    assert register(scratch_name)(_Doubler) is _Doubler
    assert SOLVERS[scratch_name] is _Doubler
    assert get_solver(scratch_name, scale=3.0) == _Doubler(scale=3.0)
    info = {i.name: i for i in solvers_available()}[scratch_name]
    assert (info.kind, info.order, info.evals_per_step) == ("ode", 1, 0)


def test_register_duplicate_raises(scratch_name: str) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("euler")
    register(scratch_name)(_Doubler)
    with pytest.raises(ValueError, match=scratch_name):
        register(scratch_name)(_Doubler)
    assert SOLVERS["euler"] is solvers.Euler


@pytest.mark.parametrize("name", ["", None, 3])
def test_register_bad_name(name: object) -> None:
    with pytest.raises(ValueError, match="non-empty str"):
        register(name)  # type: ignore[arg-type]


def test_register_rejects_non_solvers(scratch_name: str) -> None:
    with pytest.raises(TypeError, match="subclass of solvers.Solver"):
        register(scratch_name)(int)  # type: ignore[type-var]
    assert scratch_name not in SOLVERS


def test_register_rejects_abstract_solver(scratch_name: str) -> None:
    class NoStep(Solver[solvers.ODETermLike, None]):
        order = 1
        term_type = solvers.ODETermLike
        evals_per_step = 1

    with pytest.raises(TypeError, match="abstract.*step"):
        register(scratch_name)(NoStep)


@pytest.mark.parametrize("missing", ["order", "term_type", "evals_per_step"])
def test_solver_class_must_declare_attributes(missing: str) -> None:
    def step(self, term, t0, t1, x, state, noise):
        return x, state

    namespace = {
        "order": 1,
        "term_type": solvers.ODETermLike,
        "evals_per_step": 1,
        "step": step,
    }
    solvers.check_solver_class(
        types.new_class("Complete", (Solver,), {}, lambda ns: ns.update(namespace))
    )
    del namespace[missing]
    cls = types.new_class("Partial", (Solver,), {}, lambda ns: ns.update(namespace))
    with pytest.raises(TypeError, match=missing):
        solvers.check_solver_class(cls)


def test_builtin_solvers_satisfy_contract() -> None:
    for name, cls in SOLVERS.items():
        solvers.check_solver_class(cls)
        assert cls.__doc__ and "order" in cls.__doc__.lower(), name
        assert isinstance(get_solver(name), Solver)
