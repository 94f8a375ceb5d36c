"""The docs build's rewrite of reST markup in docstrings (``docs/_rst_roles.py``).

The text transformation needs only the standard library and is tested on small strings. The
griffe extension (scope resolution) needs the ``docs`` extra and is skipped without it; the full
``mkdocs build`` is marked slow.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]


def _load_roles_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_rst_roles", ROOT / "docs" / "_rst_roles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


roles = _load_roles_module()
rewrite = roles.rst_to_markdown


def ref(identifier: str, title: str) -> str:
    return f'<autoref identifier="{identifier}" optional>`{title}`</autoref>'


# --------------------------------------------------------------------------- roles


@pytest.mark.parametrize("role", roles.ROLES)
@pytest.mark.parametrize("domain", ["", "py:"])
def test_every_python_role_becomes_linked_inline_code(role: str, domain: str) -> None:
    text = f"See :{domain}{role}:`solvers.Euler` here."
    assert rewrite(text) == f"See {ref('solvers.Euler', 'solvers.Euler')} here."


def test_tilde_shows_the_last_component_and_links_the_whole_target() -> None:
    assert rewrite(":class:`~solvers.brownian.BrownianPath`") == ref(
        "solvers.brownian.BrownianPath", "BrownianPath"
    )
    assert rewrite(":meth:`~Solver.grid_for`") == ref("Solver.grid_for", "grid_for")
    assert rewrite(":func:`~integrate`") == ref("integrate", "integrate")


def test_several_roles_on_one_line_keep_their_order_and_the_text_between() -> None:
    text = "Use :func:`sd.sample` with :class:`~solvers.Euler`, :data:`solvers.GRIDS` or :attr:`x`."
    expected = (
        f"Use {ref('sd.sample', 'sd.sample')} with {ref('solvers.Euler', 'Euler')}, "
        f"{ref('solvers.GRIDS', 'solvers.GRIDS')} or {ref('x', 'x')}."
    )
    assert rewrite(text) == expected


def test_explicit_title_exclamation_mark_and_parentheses_follow_sphinx() -> None:
    assert rewrite(":func:`the sampler <scoresde.sample>`") == ref("scoresde.sample", "the sampler")
    # "!" suppresses the link: plain inline code
    assert rewrite(":exc:`!ValueError` is raised") == "`ValueError` is raised"
    # "()" is shown as written but is not part of the identifier
    assert rewrite(":class:`DemoOptions()`") == ref("DemoOptions", "DemoOptions()")
    # a leading "." (Sphinx: search the current scope first) is not shown
    assert rewrite(":meth:`.step`") == ref("step", "step")


def test_roles_next_to_literals_and_to_each_other_are_found() -> None:
    assert rewrite("``a``:class:`B`") == "``a``" + ref("B", "B")
    assert rewrite("(:class:`A`:func:`b`)") == "(" + ref("A", "A") + ref("b", "b") + ")"


def test_a_role_wrapped_onto_the_next_line_is_joined() -> None:
    text = "adds :meth:`~AdaptiveSolver.\nsolve` instead"
    assert rewrite(text) == f"adds {ref('AdaptiveSolver.solve', 'solve')} instead"


def test_the_resolver_chooses_the_identifier_and_falls_back_to_the_target() -> None:
    known = {"step": "solvers.base.Solver.step", "Solver.grid_for": "solvers.base.Solver.grid_for"}
    seen: list[str] = []

    def resolve(target: str) -> str | None:
        seen.append(target)
        return known.get(target)

    text = ":meth:`step`, :meth:`~Solver.grid_for` and :class:`~torch.Tensor`"
    assert rewrite(text, resolve) == (
        f"{ref('solvers.base.Solver.step', 'step')}, "
        f"{ref('solvers.base.Solver.grid_for', 'grid_for')} and {ref('torch.Tensor', 'Tensor')}"
    )
    # the resolver sees the target without "~"
    assert seen == ["step", "Solver.grid_for", "torch.Tensor"]


def test_the_identifier_is_escaped_as_an_html_attribute() -> None:
    out = rewrite(":obj:`x`", lambda target: 'a"b&c')
    assert out == '<autoref identifier="a&quot;b&amp;c" optional>`x`</autoref>'


@pytest.mark.parametrize(
    "text",
    [
        "Note: the ratio a:b is `x` and `y`.",  # a colon in prose, Markdown code
        "``sd.sample(model, method, nfe)`` and `code`",  # literals
        "Time 12:30 and key:`value`",  # a word glued to a role-like string
        "A :ref:`label`, a :math:`x^2` and :unknown:`role`",  # roles not rewritten
        "x:class:`Foo` and ``:class:`Foo```",  # glued to a word; inside a literal
        ":class:`` with nothing",  # empty interpreted text
        ":class:`~` and :meth:`!.`",  # no name after the prefixes
        "Args:\n    x: the input.\n\nReturns:\n    the output.",  # Google sections
        "dict[str, int]: a mapping; a::b in prose",  # "::" not ending a line
    ],
)
def test_text_without_roles_or_literal_markers_is_unchanged(text: str) -> None:
    assert rewrite(text) == text


def test_code_is_never_rewritten() -> None:
    fenced = "```python\nx = ':class:`Foo`'\n```"
    doctest = ">>> f(':class:`Foo`')\n... ':func:`bar`'"
    assert rewrite(fenced) == fenced
    assert rewrite(doctest) == doctest
    text = "Before :class:`A`.\n\n" + fenced + "\n\nAfter :class:`B`."
    assert rewrite(text) == f"Before {ref('A', 'A')}.\n\n{fenced}\n\nAfter {ref('B', 'B')}."


def test_markdown_indented_code_is_kept_but_google_section_items_are_rewritten() -> None:
    code = "    dy/ds = eps_hat    (:class:`solvers.EDMVariablesTerm`),"
    text = (
        f"state y, and\n\n{code}\n\nfor any :class:`S`.\n\n"
        "Args:\n    x: a :class:`A`.\n\n    y: a :class:`B`.\n\n        z :class:`C`"
    )
    assert rewrite(text) == (
        f"state y, and\n\n{code}\n\nfor any {ref('S', 'S')}.\n\n"
        f"Args:\n    x: a {ref('A', 'A')}.\n\n    y: a {ref('B', 'B')}.\n\n        z :class:`C`"
    )


# --------------------------------------------------------------------------- literal blocks


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("Example::", "Example:"),
        ("run it on a new schedule::", "run it on a new schedule:"),
        ("one folder per step ::", "one folder per step"),
        ("::", ""),
    ],
)
def test_literal_block_marker_is_reduced_as_rest_does(marker: str, expected: str) -> None:
    block = "\n\n    sd.sample(model, ':class:`Foo`')\n    x = 1\n\nAfter :class:`B`."
    assert rewrite(marker + block) == expected + block.replace(":class:`B`", ref("B", "B"))


def test_a_double_colon_without_a_following_indented_block_is_kept() -> None:
    for text in ["Ends with::", "Ends with::\nnext line", "Ends with::\n\nnot indented"]:
        assert rewrite(text) == text


def test_the_literal_block_ends_at_the_dedent_and_nested_indentation_stays_inside() -> None:
    text = "Args:\n    x: see::\n\n        a = ':func:`f`'\n\n    y: a :func:`g`.\nText :func:`h`."
    assert rewrite(text) == (
        "Args:\n    x: see:\n\n        a = ':func:`f`'\n\n"
        f"    y: a {ref('g', 'g')}.\nText {ref('h', 'h')}."
    )


# --------------------------------------------------------------------------- properties

_PIECES = st.sampled_from(
    [
        "plain words",
        " ",
        "\n",
        "\n\n",
        ":",
        "Note: ",
        "`code`",
        "``literal``",
        ":class:`solvers.Euler`",
        ":meth:`~Solver.grid_for`",
        ":py:func:`!integrate`",
        ":data:`title <solvers.GRIDS>`",
        "Example::\n\n    code :class:`X`\n",
    ]
)


@given(st.lists(_PIECES, max_size=12).map(" ".join))
def test_rewriting_is_idempotent_and_leaves_no_role_outside_code(text: str) -> None:
    once = rewrite(text)
    assert rewrite(once) == once
    prose = re.sub(r"``.*?``|^ {4}.*$", "", once, flags=re.M | re.S)
    assert not re.search(r"(?<!\w):(?:py:)?(?:class|meth|func|data):`", prose)


# --------------------------------------------------------------------------- griffe, mkdocs


def test_the_griffe_extension_resolves_names_in_the_docstring_owners_scope(
    tmp_path: Path,
) -> None:
    griffe = pytest.importorskip("griffe", reason="needs the docs extra (griffe)")
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""The package: :class:`~pkg.core.Solver` and :mod:`pkg.core`."""\n'
        "from pkg.core import Solver\n"
    )
    (package / "core.py").write_text(
        "from collections import OrderedDict\n\n\n"
        "class Solver:\n"
        '    """Steps with :meth:`step`; see :class:`OrderedDict` and :func:`missing`."""\n\n'
        "    def step(self):\n"
        '        """One step of :class:`Solver`, grid from :meth:`~Solver.grid`."""\n\n'
        "    def grid(self):\n"
        '        """The grid.\n\n        Example::\n\n            Solver().grid()\n        """\n'
    )
    loaded = griffe.load(
        "pkg", search_paths=[str(tmp_path)], extensions=griffe.load_extensions(roles.RstMarkup)
    )
    solver = loaded["core.Solver"]
    assert loaded.docstring.value == (
        f"The package: {ref('pkg.core.Solver', 'Solver')} and {ref('pkg.core', 'pkg.core')}."
    )
    assert solver.docstring.value == (
        f"Steps with {ref('pkg.core.Solver.step', 'step')}; see "
        f"{ref('collections.OrderedDict', 'OrderedDict')} and {ref('missing', 'missing')}."
    )
    assert solver["step"].docstring.value == (
        f"One step of {ref('pkg.core.Solver', 'Solver')}, grid from "
        f"{ref('pkg.core.Solver.grid', 'grid')}."
    )
    assert solver["grid"].docstring.value == "The grid.\n\nExample:\n\n    Solver().grid()"


@pytest.mark.slow
def test_the_built_api_pages_show_no_rest_markup(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="needs the docs extra (mkdocs)")
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent)) or "mkdocs"
    site = tmp_path / "site"
    subprocess.run(
        [mkdocs, "build", "--strict", "--quiet", "-d", str(site)],
        cwd=ROOT,
        check=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    pages = {p.parent.name: p.read_text() for p in (site / "api").glob("*/index.html")}
    assert set(pages) >= {"scoresde", "solvers"}
    for name, page in pages.items():
        text = re.sub(r"<pre.*?</pre>", "", page, flags=re.S)  # code blocks stay as written
        assert not re.search(r":(?:class|func|meth|data|attr|mod|exc|obj):", text), name
        assert not re.search(r"\w::</p>", page), name
        # every autoref was resolved (a link) or dropped (a span), none left in code blocks
        assert "<autoref" not in page and "&lt;autoref" not in page, name
    # a role whose target is rendered on the page links to it
    assert re.search(
        r'<a class="autorefs autorefs-internal"[^>]*href="#solvers\.integrate"><code>',
        pages["solvers"],
    )
    # the extension is build code, not part of the site
    assert not list(site.rglob("_rst_roles*")) and not list(site.rglob("__pycache__"))
