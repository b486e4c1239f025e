"""Griffe extension for the API pages: render the reStructuredText bits of NumPy-style docstrings.

The project's docstrings follow the NumPy convention, which is reStructuredText: ``:math:`...```, ``.. math::``
blocks and roles such as ``:func:`hcl_loss```. mkdocstrings renders docstrings as Markdown, where those show up
verbatim. This extension rewrites them before rendering, leaving the docstrings themselves as ``help()`` shows
them:

- ``:math:`x``` becomes ``$x$`` and a ``.. math::`` block becomes a ``$$ ... $$`` block (pymdownx.arithmatex);
- ``:func:`name```, ``:class:``, ``:meth:``, ``:mod:``, ``:data:``, ``:attr:``, ``:exc:``, ``:obj:`` become
  inline code ``name`` (``~a.b`` shows ``b``; ``title <target>`` shows ``title``). They do not become links:
  a role may name an object outside the site (``torch.Tensor``), which would fail the strict build.
- a plain-text path to a documentation page, ``docs/backends/torch.md`` or ``docs/spec.md``, becomes a link to
  that page (the text stays the path, as ``help()`` shows it). The API pages all live in ``docs/api/``, so the
  link is ``../<path below docs/>``; ``mkdocs build --strict`` fails on a path to a page that does not exist.
  Paths inside inline code (````docs/spec.md````) stay code.

Before that, the shared docstring tokens (``{{hcl_loss.math}}``, :mod:`hardneg._docs`) are expanded as
``fill_doc`` expands them at import.
"""

from __future__ import annotations

import re

import griffe

from hardneg._docs import expand

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_XREF_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj):`([^`]+)`")
_MATH_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<inline>.*)$")
# "docs/<page>.md" in running text: not inside a word, a path, inline code or an existing link.
_DOCS_PATH = re.compile(r"(?<![\w/`\[.-])(?<!\]\()docs/(?P<page>(?:[\w-]+/)*[\w-]+\.md)(?![\w/`])")
#: Where the API pages are, relative to docs/ (links from them go up one level).
API_PAGES_DIR = "api"


def _xref_text(target: str) -> str:
    target = target.strip()
    titled = re.match(r"^(.*?)\s*<([^>]+)>$", target)
    if titled:
        return titled.group(1)
    if target.startswith("~"):
        return target[1:].rsplit(".", 1)[-1]
    return target


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out = []
    i = 0
    while i < len(lines):
        m = _MATH_BLOCK.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        indent = m.group("indent")
        body = [m.group("inline")] if m.group("inline").strip() else []
        i += 1
        block = []
        while i < len(lines) and (not lines[i].strip() or _indent_of(lines[i]) > len(indent)):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():  # trailing blank lines belong to the text after the block
            block.pop()
            i -= 1
        content = [ln for ln in block if ln.strip()]
        if content:
            cut = min(_indent_of(ln) for ln in content)
            body += [ln[cut:] for ln in content]
        out += [f"{indent}$$"] + [indent + ln for ln in body] + [f"{indent}$$"]
    return "\n".join(out)


def _link_docs_paths(text: str) -> str:
    """``docs/x/y.md`` in prose -> ``[docs/x/y.md](../x/y.md)``; code spans and fenced blocks untouched."""
    up = "../" * len(API_PAGES_DIR.split("/"))
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or line.lstrip().startswith((">>>", "...")):  # code: fenced blocks, doctest lines
            out.append(line)
            continue
        parts = re.split(r"(`+[^`]*`+)", line)  # odd items are inline code
        parts = [p if i % 2 else _DOCS_PATH.sub(lambda m: f"[docs/{m['page']}]({up}{m['page']})", p)
                 for i, p in enumerate(parts)]
        out.append("".join(parts))
    return "\n".join(out)


def rst_to_markdown(text: str) -> str:
    """The docstring ``text`` with reStructuredText math and cross-reference roles in Markdown, and paths to
    documentation pages as links."""
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: "$" + m.group(1).strip() + "$", text)
    text = _XREF_ROLE.sub(lambda m: "`" + _xref_text(m.group(1)) + "`", text)
    return _link_docs_paths(text)


class RstDocstrings(griffe.Extension):
    """Rewrite each docstring's reStructuredText math and roles before mkdocstrings parses it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            # the shared texts first ({{hcl_loss.math}} etc., hardneg/_docs.py): static analysis never sees
            # the __doc__ that fill_doc expands at import
            obj.docstring.value = rst_to_markdown(expand(obj.docstring.value))
