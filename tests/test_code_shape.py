"""The shape the code keeps: short functions, and layers that import only downwards."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Longest function, from ``def`` to its last line (docstring and nested functions included).
MAX_FUNCTION_LINES = 80


def _functions(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("package", ["moopt", "moopt_lic"])
def test_no_function_is_longer_than_the_limit(package):
    too_long = [
        f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name, line, length in _functions(path)
        if length > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_the_length_check_sees_a_long_function(tmp_path):
    """The check above would catch one: it measures def to last line."""
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f'def long():\n    """Doc."""\n{body}\n')
    assert list(_functions(path)) == [("long", 1, MAX_FUNCTION_LINES + 2)]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("moopt_lic.evaluate", "moopt_lic.trainer"),
        ("moopt_lic.compare", "moopt_lic.trainer"),
        ("moopt_lic.convert_checkpoint", "moopt_lic.trainer"),
    ],
)
def test_evaluation_tools_do_not_import_the_trainer(module, forbidden):
    """Coding and comparing a checkpoint needs no training code (not even transitively)."""
    code = f"import sys, {module}\nassert {forbidden!r} not in sys.modules, 'imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True)
