"""Every public name has a docstring, public callables that take tensors state their shapes,
and the API reference documents every public name.

"Public" is ``scoresde.__all__`` and ``solvers.__all__``; for classes, their public methods
defined in this project. The shape check is a heuristic: a docstring of a function with a
``Tensor`` parameter must mention a shape (``shape``, ``(B, ...)``, ``(N,)``, ``0-d``,
``1-D``, ``x's shape``...). A method that overrides a documented contract (``Solver.step``,
``NoiseSource.normal``, ...) may leave the shapes to the contract's docstring in a base class.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import scoresde
import solvers

ROOT = Path(__file__).resolve().parents[1]
MODULES = (scoresde, solvers)

SHAPE = re.compile(
    r"shape"
    r"|\(\s*\)"  # ()
    r"|\([^()]*\b(?:B|N|K|D|M|n|b|m|k|batch|dims)\b[^()]*\)"  # (B, ...), (N,), (n, D)
    r"|\(\*"  # (*lead,)
    r"|\b[0-9]-[dD]\b"  # 0-d, 1-D, 2-D
    r"|\bscalar\b",
    re.I,
)


def _public_objects() -> Iterator[tuple[str, object]]:
    for mod in MODULES:
        for name in mod.__all__:
            yield f"{mod.__name__}.{name}", getattr(mod, name)


def _ours(fn: object) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module.split(".")[0] in ("scoresde", "solvers")


def _tensor_params(fn: Callable[..., object]) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    found = []
    for name, p in sig.parameters.items():
        ann = p.annotation if isinstance(p.annotation, str) else repr(p.annotation)
        if re.search(r"\bTensor\b", ann) and not re.search(r"dict|Mapping|Sequence|list", ann):
            found.append(name)
    return found


def _public_methods(cls: type) -> Iterator[tuple[str, Callable[..., object]]]:
    for name, member in vars(cls).items():
        if name.startswith("_"):
            continue
        fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        if isinstance(fn, property):
            continue
        if inspect.isfunction(fn) and _ours(fn):
            yield name, fn


def _contract_docs(cls: type, name: str) -> list[str]:
    """The docstrings of ``name`` along the MRO (the method's own first)."""
    docs = []
    for base in cls.__mro__:
        member = vars(base).get(name)
        fn = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
        doc = getattr(fn, "__doc__", None)
        if doc:
            docs.append(inspect.cleandoc(doc))
    return docs


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for qual, obj in _public_objects():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # constants (SOLVERS, GRIDS, ...) and type aliases
        if not inspect.getdoc(obj):
            missing.append(qual)
        if inspect.isclass(obj):
            for name, _ in _public_methods(obj):
                if not _contract_docs(obj, name):
                    missing.append(f"{qual}.{name}")
    assert not missing, f"no docstring: {missing}"


def test_docstrings_of_callables_taking_tensors_state_shapes() -> None:
    vague = []
    for qual, obj in _public_objects():
        if inspect.isfunction(obj):
            if _tensor_params(obj) and not SHAPE.search(inspect.getdoc(obj) or ""):
                vague.append(f"{qual} {_tensor_params(obj)}")
        elif inspect.isclass(obj):
            for name, fn in _public_methods(obj):
                params = _tensor_params(fn)
                if params and not any(SHAPE.search(d) for d in _contract_docs(obj, name)):
                    vague.append(f"{qual}.{name} {params}")
            if not dataclasses.is_dataclass(obj) and "__init__" in vars(obj):
                init = vars(obj)["__init__"]
                params = _tensor_params(init)
                doc = (inspect.getdoc(obj) or "") + (init.__doc__ or "")
                if params and not SHAPE.search(doc):
                    vague.append(f"{qual}(...) {params}")
    assert not vague, "docstrings that do not state the shapes of their tensors:\n" + "\n".join(
        vague
    )


@pytest.mark.parametrize(
    "module, page", [(scoresde, "docs/api/scoresde.md"), (solvers, "docs/api/solvers.md")]
)
def test_the_api_reference_lists_every_public_name(module: object, page: str) -> None:
    text = (ROOT / page).read_text()
    documented = set(re.findall(rf"^::: {module.__name__}\.(\w+)$", text, re.M))
    public = set(module.__all__)
    assert not public - documented, f"add to {page}: {sorted(public - documented)}"
    assert not documented - public, f"not public any more, remove from {page}: " + str(
        sorted(documented - public)
    )


def test_the_shape_heuristic_tells_apart() -> None:
    assert SHAPE.search("x: data, shape (B, *dims).")
    assert SHAPE.search("t: (B,) times")
    assert SHAPE.search("a 0-d float64 tensor")
    assert not SHAPE.search("The denoised data (Tweedie), one network evaluation.")
