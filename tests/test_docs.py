"""The documentation's examples run: every ```python block of the README and docs/, and the
example script, whose numbers are checked."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", [p for p in PAGES if _python_blocks(p)], ids=lambda p: p.name)
def test_page_examples_run(page):
    """The page's python blocks run in order, in one namespace, and their asserts hold."""
    namespace: dict[str, object] = {}
    for block in _python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)


def _load_example():
    spec = importlib.util.spec_from_file_location(
        "two_objectives", ROOT / "examples" / "two_objectives.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_script_shows_the_balancing():
    """In the example, the weighted sum lets the 100× larger objective dominate (L1 hardly
    moves) while EqQP lowers both log-losses by the same factor."""
    example = _load_example()
    start, _ = example.losses_and_gradients(np.array([0.0, 0.0, 1.0]))
    weighted, _ = example.train(example.WeightedSumBalancer([1.0, 1.0]))
    balanced, weights = example.train(example.EqQPBalancer())
    assert weighted[0] > 0.95 * start[0] and weighted[1] < 0.05 * start[1]
    np.testing.assert_allclose(start[0] / balanced[0], start[1] / balanced[1], rtol=1e-3)
    assert start[0] / balanced[0] > 3
    np.testing.assert_allclose(weights.sum(), 1.0)


def test_example_script_prints_a_row_per_balancer(capsys):
    _load_example().main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 + 5
