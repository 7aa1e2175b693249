"""MkDocs hooks: generated content inserted into pages at build time.

``<!-- moopt-lic-train-flags -->`` on a page becomes the flag table of
``python -m moopt_lic.train``, generated from its argument parser.
"""

from __future__ import annotations

from typing import Any

PLACEHOLDER = "<!-- moopt-lic-train-flags -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the flags placeholder with the table generated from the parser."""
    if PLACEHOLDER not in markdown:
        return markdown
    from moopt_lic.config import flags_markdown

    return markdown.replace(PLACEHOLDER, flags_markdown())
