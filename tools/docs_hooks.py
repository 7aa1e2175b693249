r"""MkDocs hooks: content generated or typeset at build time.

* ``<!-- moopt-lic-train-flags -->`` on a page becomes the flag table of
  ``python -m moopt_lic.train``, generated from its argument parser.
* Math is typeset into MathML while the site is built, so that no page needs a script (from
  a CDN or elsewhere) to show it: ``pymdownx.arithmatex`` (generic mode) finds the math of the
  Markdown and of the docstrings and wraps it, still as LaTeX, in
  ``<span class="arithmatex">\(…\)</span>`` or ``<div class="arithmatex">\[…\]</div>``;
  this hook replaces the LaTeX in those wrappers with ``latex2mathml``'s MathML, which current
  browsers render natively. Code blocks never reach it: arithmatex leaves them alone.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Iterable
from typing import Any

from latex2mathml.converter import convert

PLACEHOLDER = "<!-- moopt-lic-train-flags -->"

log = logging.getLogger(f"mkdocs.plugins.{__name__}")

# The wrappers arithmatex writes in generic mode; their text is HTML-escaped LaTeX.
WRAPPED_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', flags=re.DOTALL
)
DELIMITED = {
    "span": re.compile(r"\\\((.*)\\\)", flags=re.DOTALL),
    "div": re.compile(r"\\\[(.*)\\\]", flags=re.DOTALL),
}
# Heading text in the table of contents is plain text: arithmatex's wrapper is gone, its
# delimiters are not.
INLINE_IN_TITLE = re.compile(r"\\\((.+?)\\\)")

# MathML Core (what Chromium implements) ignores mathvariant="bold", so bold letters and
# digits become the Unicode mathematical bold characters, which every browser shows.
_BOLD = {
    **{chr(ord("A") + i): chr(0x1D400 + i) for i in range(26)},
    **{chr(ord("a") + i): chr(0x1D41A + i) for i in range(26)},
    **{chr(ord("0") + i): chr(0x1D7CE + i) for i in range(10)},
}
BOLD_TOKEN = re.compile(r'<(?P<tag>mi|mn|mo|mtext) mathvariant="bold">(?P<text>[A-Za-z0-9]+)</')


class MathError(ValueError):
    """LaTeX that latex2mathml cannot turn into MathML."""


def tex_to_mathml(tex: str, *, display: bool) -> str:
    r"""Return the MathML of ``tex`` (LaTeX without delimiters) as HTML.

    Raises
    ------
    MathError
        If latex2mathml fails, or would typeset something else than was written: it copies
        a command it does not know (such as ``\arg``) into the output as text, and quietly
        closes or drops unbalanced braces.
    """
    tex = tex.strip()
    braces = re.sub(r"\\.", "", tex)  # \{ and \} are characters, not groups
    if braces.count("{") != braces.count("}"):
        raise MathError(f"cannot typeset `{tex}`: unbalanced braces")
    try:
        mathml = convert(tex, display="block" if display else "inline")
    except Exception as err:  # latex2mathml's errors have no common base class
        why = f"{type(err).__name__} {err}".strip()
        raise MathError(f"cannot typeset `{tex}`: {why}") from err
    if "\\" in mathml:
        raise MathError(f"cannot typeset `{tex}`: unknown command left in the MathML")
    return BOLD_TOKEN.sub(lambda m: f"<{m['tag']}>{''.join(_BOLD[c] for c in m['text'])}</", mathml)


def typeset(content: str, where: str) -> str:
    """Replace the LaTeX in every arithmatex wrapper of ``content`` by MathML.

    Math that cannot be typeset is logged as a warning (which fails a strict build) and
    stays as it is.
    """

    def replace(match: re.Match[str]) -> str:
        tag = match["tag"]
        tex = DELIMITED[tag].fullmatch(html.unescape(match["tex"]).strip())
        try:
            if tex is None:
                raise MathError(f"math without its delimiters: {match['tex']!r}")
            mathml = tex_to_mathml(tex[1], display=tag == "div")
        except MathError as err:
            log.warning("%s: %s", where, err)
            return match[0]
        return f'<{tag} class="arithmatex">{mathml}</{tag}>'

    return WRAPPED_MATH.sub(replace, content)


def _anchors(toc: Iterable[Any]) -> Iterable[Any]:
    for anchor in toc:
        yield anchor
        yield from _anchors(anchor.children)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the flags placeholder with the table generated from the parser."""
    if PLACEHOLDER not in markdown:
        return markdown
    from moopt_lic.config import flags_markdown

    return markdown.replace(PLACEHOLDER, flags_markdown())


def on_page_content(content: str, page: Any, config: Any, files: Any) -> str:
    """Typeset the page's math, in its body and in its table of contents."""
    where = page.file.src_uri
    for anchor in _anchors(page.toc):
        # The theme inserts titles as HTML, so MathML in them renders too.
        anchor.title = INLINE_IN_TITLE.sub(
            lambda m: typeset(f'<span class="arithmatex">{m[0]}</span>', where), anchor.title
        )
    return typeset(content, where)
