"""The documentation site, built as CI builds it, shows what was written, without network:
no raw Sphinx or reStructuredText markup, every formula typeset as MathML, and nothing loaded
from outside the site."""

from __future__ import annotations

import ast
import importlib.util
import os
import posixpath
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Elements whose text is shown as it is written (code) or is not prose (MathML, scripts).
VERBATIM = {"code", "pre", "kbd", "samp", "script", "style", "math", "textarea"}
# Void elements never get an end tag, so they must not be pushed on the element stack.
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}  # fmt: skip
# Each verbatim element stands for this mark in the prose, so that ":class:" followed by a
# code span is still recognised as a role.
CODE = "\x00"

RAW_MARKUP = {
    "a Sphinx role": re.compile(rf":(?:py:)?[a-z]+:(?:`|{CODE})"),
    "a reStructuredText directive": re.compile(r"(?m)^\s*\.\. [a-z-]+::"),
    "a reStructuredText literal-block marker": re.compile(rf"(?:\w|\s)::(?=\s|{CODE}|$)"),
    "a double-backquoted literal": re.compile(r"``"),
    "an unresolved Markdown reference": re.compile(r"\]\[[\w.]*\]"),
    "untypeset inline math": re.compile(r"\\\(|\\\)|(?<![\\$])\$[^\s$][^$]*\$"),
    "untypeset display math": re.compile(r"\\\[|\\\]|\$\$"),
}

# Attributes by which an element makes the browser fetch something. The href of <a> and
# <area> is a link the reader may follow, and that of <link rel="canonical"> and the like is
# metadata: neither is a load.
LOADING_ATTRIBUTES = {"src", "srcset", "href", "xlink:href", "data", "poster", "background"}
NOT_LOADING_LINKS = {"canonical", "alternate", "author", "license", "help", "next", "prev"}
EXTERNAL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.I)
CSS_EXTERNAL = re.compile(r"""(?:@import\s+|url\(\s*)["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", re.I)


class Page(HTMLParser):
    """One built page: its prose (each verbatim element replaced by CODE), the addresses it
    loads, its inline CSS, its links and element ids, and how many math wrappers it has and
    how many hold MathML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.stack: list[tuple[str, list[str]]] = []  # open elements: tag, classes
        self.prose: list[str] = []
        self.loads: list[tuple[str, str]] = []  # what loads it, the address
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.css: list[str] = []
        self.math_wrappers = 0
        self.typeset = 0
        self.feed(html)
        self.close()

    def _verbatim(self) -> bool:
        return any(tag in VERBATIM for tag, _ in self.stack)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        classes = values.get("class", "").split()
        rel = set(values.get("rel", "").lower().split())
        for name, value in values.items():
            if name == "style":
                self.css.append(value)
            if name not in LOADING_ATTRIBUTES or not value:
                continue
            if name == "href" and (tag in ("a", "area") or (rel and rel <= NOT_LOADING_LINKS)):
                continue
            urls = (
                [c.split()[0] for c in value.split(",") if c.split()]
                if name == "srcset"
                else [value]
            )
            self.loads += [(f"<{tag} {name}>", url.strip()) for url in urls]
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        if values.get("id"):
            self.ids.add(values["id"])
        if "arithmatex" in classes:
            self.math_wrappers += 1
        if tag == "math" and self.stack and "arithmatex" in self.stack[-1][1]:
            self.typeset += 1
        if tag in VERBATIM and not self._verbatim():
            self.prose.append(CODE)
        if tag not in VOID:
            self.stack.append((tag, classes))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        # Close up to the matching element (HTML lets some end tags be left out).
        if any(open_tag == tag for open_tag, _ in self.stack):
            while self.stack.pop()[0] != tag:
                pass

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1][0] == "style":
            self.css.append(data)
        if not self._verbatim():
            self.prose.append(data)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Build the site once, as CI does (strict: a warning or unresolved reference fails)."""
    pytest.importorskip("mkdocs", reason="the site test needs the docs extra (pip install .[docs])")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stdout}{build.stderr}"
    pages = {
        str(path.relative_to(out)): Page(path.read_text(encoding="utf-8"))
        for path in sorted(out.rglob("*.html"))
    }
    assert pages, "the build wrote no page"
    return out, pages


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(RAW_MARKUP))
def test_no_page_shows_raw_markup(site, what):
    """No page's prose (outside code and math) holds `what`, e.g. `:class:` or `\\(`."""
    _, pages = site
    pattern = RAW_MARKUP[what]
    found = []
    for name, page in pages.items():
        prose = "".join(page.prose)
        for m in pattern.finditer(prose):
            context = prose[max(m.start() - 60, 0) : m.end() + 60].replace(CODE, "`…`")
            found.append(f"{name}: ...{' '.join(context.split())}...")
    assert not found, f"{len(found)} × {what}:\n" + "\n".join(found[:30])


@pytest.mark.slow
def test_every_formula_is_mathml(site):
    """Every math wrapper of arithmatex holds MathML, and the pages with math have it all."""
    _, pages = site
    untypeset = {
        n: p.math_wrappers - p.typeset for n, p in pages.items() if p.math_wrappers != p.typeset
    }
    assert not untypeset, f"math wrappers without MathML, per page: {untypeset}"
    # The method page is mostly formulas: a build that dropped its math would fail here.
    assert pages["method/index.html"].typeset > 100


@pytest.mark.slow
def test_no_page_loads_anything_from_outside_the_site(site):
    """No script, style sheet, font, image or frame comes from another host."""
    out, pages = site
    found = [
        f"{name}: {element} {url}"
        for name, page in pages.items()
        for element, url in page.loads
        if EXTERNAL.match(url)
    ]
    found += [
        f"{name}: style {css.strip()[:80]!r}"
        for name, page in pages.items()
        for css in page.css
        if CSS_EXTERNAL.search(css)
    ]
    found += [
        f"{css.relative_to(out)}: {m[0]}"
        for css in out.rglob("*.css")
        for m in CSS_EXTERNAL.finditer(css.read_text(encoding="utf-8"))
    ]
    assert not found, "loaded from outside the site:\n" + "\n".join(found)


@pytest.mark.slow
def test_internal_links_resolve(site):
    """Every link inside the site (cross-references included) leads to an existing page and,
    if it names one, an existing anchor there."""
    out, pages = site
    broken = []
    for name, page in pages.items():
        for href in page.links:
            parts = urlsplit(href)
            if parts.scheme or parts.netloc:
                continue  # a link out of the site: the reader's to follow
            # 404.html links from the site's root: it is shown at any address.
            base = "" if parts.path.startswith("/") else posixpath.dirname(name)
            target = posixpath.normpath(posixpath.join(base, unquote(parts.path).lstrip("/")))
            if parts.path == "":
                target = name
            elif (out / target).is_dir():
                target = posixpath.join(target, "index.html")
            if target not in pages:
                if not (out / target).is_file():
                    broken.append(f"{name}: {href} (no such file)")
            elif parts.fragment and unquote(parts.fragment) not in pages[target].ids:
                broken.append(f"{name}: {href} (no such anchor)")
    assert not broken, "\n".join(broken)


@pytest.mark.slow
def test_docstring_references_are_links(site):
    """The docstrings' cross-references became links, e.g. the Balancer docstring's link to
    WeightedSumBalancer."""
    out, _ = site
    balancers = (out / "api" / "balancers" / "index.html").read_text(encoding="utf-8")
    link = r'<a class="autorefs autorefs-internal"[^>]* href="#moopt\.WeightedSumBalancer"'
    assert re.search(link, balancers)


# The same markup, in the source: docstrings that no page shows yet (private helpers, modules
# not in the API reference) must not hold it either, for the day a page shows them.
SOURCE_MARKUP = {
    "a Sphinx role": re.compile(r":(?:py:)?[a-z]+:`"),
    "a reStructuredText directive": re.compile(r"(?m)^\s*\.\. [a-z-]+::"),
    "a reStructuredText literal-block marker": re.compile(r"(?m)::[ \t]*$"),
}


def _docstrings(path: Path):
    """Every docstring of a module: of the module, classes, functions and attributes."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        for statement in body if isinstance(body, list) else []:
            if (
                isinstance(statement, ast.Expr)
                and isinstance(statement.value, ast.Constant)
                and isinstance(statement.value.value, str)
            ):
                yield statement.lineno, statement.value.value


def test_docstrings_hold_no_sphinx_markup():
    """Cross-references are Markdown links for autorefs, code examples fenced or doctests."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {what}"
        for package in ("moopt", "moopt_lic")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in _docstrings(path)
        for what, pattern in SOURCE_MARKUP.items()
        if pattern.search(text)
    ]
    assert not found, "\n".join(found)


def _hooks():
    pytest.importorskip("latex2mathml", reason="the docs hooks need the docs extra (.[docs])")
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_typesets_arithmatex_wrappers_only():
    """Inline and display wrappers become MathML; a code block's backslashes are untouched."""
    hooks = _hooks()
    html = (
        '<p>With <span class="arithmatex">\\(a &lt; \\mathbf{1}\\)</span>:</p>'
        '<div class="arithmatex">\\[\\sum_i w_i\\]</div>'
        '<pre><code>match=r"losses\\[1\\]" \\(x\\)</code></pre>'
    )
    out = hooks.typeset(html, "page.md")
    assert '<span class="arithmatex"><math' in out and 'display="inline"' in out
    assert '<div class="arithmatex"><math' in out and 'display="block"' in out
    assert "&#x0003C;" in out or "&lt;" in out  # the escaped < reached latex2mathml as <
    assert "\U0001d7cf" in out and 'mathvariant="bold"' not in out  # bold 1, for MathML Core
    assert out.endswith('<pre><code>match=r"losses\\[1\\]" \\(x\\)</code></pre>')


def test_hook_reports_math_it_cannot_typeset(caplog):
    """latex2mathml copies an unknown command into the output; the hook warns instead (which
    fails the strict build) and leaves the math as written."""
    hooks = _hooks()
    html = '<span class="arithmatex">\\(\\arg\\min_w f\\)</span>'
    with pytest.raises(hooks.MathError, match="unknown command"):
        hooks.tex_to_mathml("\\arg\\min_w f", display=False)
    assert hooks.typeset(html, "page.md") == html
    assert "page.md: cannot typeset" in caplog.text
