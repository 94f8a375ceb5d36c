"""``solvers/`` is the generic numerical layer: it must never import ``scoresde``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

import solvers

ROOT = Path(__file__).resolve().parents[1]
SOLVERS_DIR = ROOT / "solvers"
FORBIDDEN = "scoresde"


def _is_forbidden(module: str | None) -> bool:
    return module is not None and (module == FORBIDDEN or module.startswith(FORBIDDEN + "."))


def forbidden_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every way ``source`` imports ``scoresde``: import statements, ``from`` imports, relative
    imports escaping the package, and ``importlib.import_module`` / ``__import__`` calls."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}" for a in node.names if _is_forbidden(a.name)
            ]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _is_forbidden(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
            elif node.level > 1:  # solvers/ is a top-level package: '..' leaves it
                found.append(f"line {node.lineno}: relative import leaving the package")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in {"import_module", "__import__"} and node.args:
                arg = node.args[0]
                if (
                    isinstance(arg, ast.Constant)
                    and isinstance(arg.value, str)
                    and _is_forbidden(arg.value)
                ):
                    found.append(f"line {node.lineno}: {name}({arg.value!r})")
    return found


def _solver_modules() -> list[Path]:
    return sorted(SOLVERS_DIR.rglob("*.py"))


def test_solvers_package_is_the_one_imported() -> None:
    assert Path(solvers.__file__).resolve().parent == SOLVERS_DIR


def test_walks_every_module() -> None:
    names = {p.relative_to(SOLVERS_DIR).as_posix() for p in _solver_modules()}
    expected = {"__init__.py", "protocols.py", "base.py", "integrate.py", "registry.py"}
    assert expected <= names


@pytest.mark.parametrize("path", _solver_modules(), ids=lambda p: p.name)
def test_no_module_imports_scoresde(path: Path) -> None:
    found = forbidden_imports(path.read_text(encoding="utf-8"), str(path))
    assert found == [], f"{path.relative_to(ROOT)} imports scoresde: {found}"


@pytest.mark.parametrize(
    "source",
    [
        "import scoresde",
        "import os, scoresde.sde as s",
        "from scoresde import VPSDE",
        "from scoresde.schedules.vp import VPSDE",
        "def f():\n    from scoresde import sde\n",
        "import importlib\nimportlib.import_module('scoresde.sde')",
        "__import__('scoresde')",
        "from ..scoresde import sde",
    ],
)
def test_checker_detects_violations(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    ["import torch", "from solvers.base import Solver", "from . import base", "import scoresdex"],
)
def test_checker_accepts_clean_code(source: str) -> None:
    assert forbidden_imports(source) == []


def test_importing_solvers_does_not_load_scoresde() -> None:
    code = "import sys, solvers\nprint(sorted(m for m in sys.modules if m.startswith('scoresde')))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", _solver_modules(), ids=lambda p: p.name)
def test_tqdm_is_imported_lazily(path: Path) -> None:
    """Optional heavy imports (the progress bar) stay inside the functions that use them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    modules = [a.name for n in top_level if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module for n in top_level if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in modules if m.split(".")[0] == "tqdm"]
