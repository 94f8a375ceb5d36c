"""reST markup in docstrings, rewritten for the Markdown-rendered API pages.

The docstrings of `scoresde` and `solvers` use the Python-domain roles of reStructuredText
(Sphinx), e.g. ``:class:`~solvers.Euler``` or ``:func:`solvers.integrate```, and end a
paragraph with ``::`` before a literal block. mkdocstrings renders docstrings as Markdown, which
knows neither: the role prefix and the backticks, and the double colon, would appear in the
page as typed. This module rewrites both before the docstrings are parsed.

* A role becomes the target in inline code, inside an ``<autoref optional>`` element of
  mkdocs-autorefs: the name is a link when the target is rendered somewhere in the site, and
  plain inline code (no warning, so ``mkdocs build --strict`` stays clean) when it is not
  (a private helper, a ``torch`` object). The title follows Sphinx (Python domain roles):
  ``~a.b.C`` shows ``C``, ``title <target>`` shows ``title``, ``!target`` is never a link.
  Unlike Sphinx, no ``()`` is appended to functions: the name is shown as written.
* A paragraph ending in ``::`` followed by a blank line introduces a literal block: ``text::``
  becomes ``text:``, ``text ::`` becomes ``text`` and a lone ``::`` disappears (reST's rules;
  the indented block itself is already a Markdown code block).

Nothing is rewritten inside code: fenced blocks, doctest lines (``>>>``, ``...``), indented
blocks that Markdown renders as code (the literal block after ``::`` among them) and inline
``double-backtick`` literals are left as they are.

Used by the documentation build as a griffe extension (``mkdocs.yml``: the ``extensions``
option of the mkdocstrings Python handler): :class:`RstMarkup` rewrites every docstring when
griffe has loaded a package, resolving a role's target in the scope of the object that owns
the docstring, so that ``:meth:`step``` in a docstring of ``solvers.Solver`` links to
``solvers.Solver.step``. :func:`rst_to_markdown` is the text transformation itself; it only
needs the standard library (``tests/test_docs_roles.py`` imports this file with or without the
docs extra installed).
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

try:
    from griffe import AliasResolutionError, CyclicAliasError, Extension, NameResolutionError
except ImportError:  # the docs extra is not installed: rst_to_markdown still works
    Extension = object  # type: ignore[assignment,misc]
    _RESOLUTION_ERRORS: tuple[type[Exception], ...] = ()
else:
    _RESOLUTION_ERRORS = (NameResolutionError, AliasResolutionError, CyclicAliasError)

__all__ = ["ROLES", "RstMarkup", "rst_to_markdown", "scope_resolver"]

ROLES = ("attr", "class", "const", "data", "exc", "func", "meth", "mod", "obj")
"""The Python-domain roles that are rewritten (with or without the ``py:`` domain prefix)."""

Resolver = Callable[[str], "str | None"]

# One match is either an inline literal (``...``, left as it is) or a role. The interpreted text
# of a role may wrap onto the next line, as reST allows; a role must not be glued to a preceding
# word (``x:class:`` is not a role).
_INLINE = re.compile(
    r"(?P<literal>``[^`]+(?:`[^`]+)*``)"
    r"|(?<!\w)"
    r":(?:py:)?(?P<role>" + "|".join(ROLES) + r"):"
    r"`(?P<content>[^`\n]+(?:\n[^`\n]+)?)`"
)
_EXPLICIT_TITLE = re.compile(r"(?P<title>.*?)\s*<(?P<target>[^<>]+)>", re.DOTALL)
_FENCE = re.compile(r"^\s*(?P<fence>```+|~~~+)")
_DOCTEST = re.compile(r"^\s*(?:>>>|\.\.\.)(?:\s|$)")


def rst_to_markdown(text: str, resolve: Resolver | None = None) -> str:
    """Rewrite the reST roles and ``::`` literal-block markers of a docstring as Markdown.

    Args:
        text: the docstring (already dedented, as griffe stores it).
        resolve: maps a role's target as written (``~``, ``!``, a leading ``.`` and a trailing
            ``()`` removed, e.g. ``"Solver.step"``) to the identifier to link (e.g.
            ``"solvers.base.Solver.step"``), or ``None`` when it does not know it; the
            target as written is then used. ``None``: always the target as written.

    Returns:
        The text with each role replaced by
        ``<autoref identifier="ID" optional>`TITLE`</autoref>`` (or ``` `TITLE` ``` for a
        ``!`` target) and each literal-block marker ``::`` reduced as reST does. Code is left
        as it is: fenced blocks, doctest lines, inline literals and any block that Markdown
        renders as code, such as the literal block after ``::`` (after a blank line, indented by
        4 spaces, or by 4 more than the line before the blank line when that line is itself
        indented by 4 or more, as in a Google section).
    """
    lines = text.split("\n")
    out: list[str] = []
    prose: list[str] = []  # consecutive non-code lines, rewritten together (roles may wrap)

    def flush() -> None:
        if prose:
            out.extend(_rewrite_roles("\n".join(prose), resolve).split("\n"))
            prose.clear()

    fence: str | None = None
    code_indent: int | None = None  # inside an indented code block: its minimum indentation
    last_indent = 0  # indentation of the last non-blank line
    for i, line in enumerate(lines):
        blank = not line.strip()
        if fence is not None:  # inside a fenced block, until its closing fence
            out.append(line)
            if line.strip().startswith(fence):
                fence = None
            continue
        if code_indent is not None:  # inside an indented block, until the dedent
            if blank or _indent(line) >= code_indent:
                out.append(line)
                continue
            code_indent = None
        if blank:
            prose.append(line)
            continue
        after_blank = i > 0 and not lines[i - 1].strip()
        # Markdown's indented code: 4 spaces, counted from the enclosing Google section
        # (indented 4 or more in the raw docstring) when there is one.
        code_threshold = last_indent + 4 if last_indent >= 4 else 4
        if match := _FENCE.match(line):
            flush()
            fence = match["fence"]
            out.append(line)
        elif _DOCTEST.match(line):
            flush()
            out.append(line)
        elif after_blank and _indent(line) >= code_threshold:
            flush()
            out.append(line)
            code_indent = code_threshold
        elif _opens_literal_block(lines, i):  # the block itself is Markdown's indented code
            prose.append(_strip_literal_marker(line))
        else:
            prose.append(line)
        last_indent = _indent(line)
    flush()
    return "\n".join(out)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _opens_literal_block(lines: list[str], i: int) -> bool:
    """Whether line ``i`` ends with ``::``, then a blank line, then a more indented line."""
    if not lines[i].rstrip().endswith("::"):
        return False
    rest = lines[i + 1 :]
    if not rest or rest[0].strip():
        return False
    following = next((line for line in rest if line.strip()), None)
    return following is not None and _indent(following) > _indent(lines[i])


def _strip_literal_marker(line: str) -> str:
    body = line.rstrip()[:-2]  # without the "::"
    if not body.strip():
        return ""  # a lone "::"
    if body[-1].isspace():
        return body.rstrip()  # "text ::" -> "text"
    return body + ":"  # "text::" -> "text:"


def _rewrite_roles(text: str, resolve: Resolver | None) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["literal"] is not None:
            return match[0]
        return _role_markdown(match["content"], resolve) or match[0]

    return _INLINE.sub(replace, text)


def _role_markdown(content: str, resolve: Resolver | None) -> str | None:
    """The Markdown of one role's interpreted text; ``None`` when it names nothing."""
    content = " ".join(content.split())  # a role wrapped onto the next line
    explicit = _EXPLICIT_TITLE.fullmatch(content)
    if explicit and explicit["title"]:
        title, target = explicit["title"], explicit["target"].strip()
    else:
        title, target = "", content
    target = re.sub(r"\s*\.\s*", ".", target)  # wrapped after a dot: "~Solver. step"
    link = not target.startswith("!")
    target = target.lstrip("!")
    short = target.startswith("~")
    shown = target.lstrip("~").lstrip(".")
    if not shown.strip("()"):
        return None
    if not title:
        title = shown.rsplit(".", 1)[-1] if short else shown
    target = shown.removesuffix("()")  # the identifier, without "()" (as in Sphinx)
    code = f"`{title}`"
    if not link:
        return code
    identifier = (resolve(target) if resolve is not None else None) or target
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


def scope_resolver(obj: Any) -> Resolver:
    """A resolver for :func:`rst_to_markdown` that looks names up in ``obj``'s scope.

    The first component of the target is resolved like a name used in ``obj``'s code (its
    members, then its parents', imports included: griffe's ``Object.resolve``); the remaining
    components are appended. A name griffe cannot resolve gives ``None``.

    Args:
        obj: a griffe object (module, class, function or attribute).

    Returns:
        The resolver.
    """

    def resolve(target: str) -> str | None:
        head, dot, rest = target.partition(".")
        try:
            base = obj.resolve(head)
        except _RESOLUTION_ERRORS:
            return None
        return f"{base}{dot}{rest}"

    return resolve


class RstMarkup(Extension):  # type: ignore[misc]
    """Griffe extension: rewrite every loaded docstring with :func:`rst_to_markdown`."""

    def on_package(self, *, pkg: Any, **kwargs: Any) -> None:
        """Rewrite the package's own docstring (its members come through `on_object`)."""
        _rewrite_docstring(pkg)

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        """Rewrite the docstring of a module, class, function or attribute."""
        _rewrite_docstring(obj)


def _rewrite_docstring(obj: Any) -> None:
    docstring = obj.docstring
    if docstring is None:
        return
    value = rst_to_markdown(docstring.value, scope_resolver(obj))
    if value != docstring.value:
        docstring.value = value
        docstring.__dict__.pop("parsed", None)  # drop a parse of the old text, if cached
