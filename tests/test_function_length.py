"""No function in the engine, the proposals or the methods is longer than a screen (issue 10): 60 lines from its
``def`` line to its last line, decorators not counted."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import sslcli

MAX_LINES = 60
PACKAGES = ("engine", "proposals", "methods")
ROOT = Path(sslcli.__file__).parent


def long_functions(path: Path, base: Path, limit: int = MAX_LINES) -> list[str]:
    """``"file:line name (N lines)"`` (file relative to ``base``) for every function or method of ``path`` longer
    than ``limit`` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(f"{path.relative_to(base)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_check_sees_a_long_function(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(60))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n")
    assert long_functions(tmp_path / "m.py", tmp_path) == ["m.py:6 long (61 lines)"]
    assert long_functions(tmp_path / "m.py", tmp_path, limit=61) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_longer_than_a_screen(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules under {ROOT / package}"
    offenders = [hit for path in modules for hit in long_functions(path, ROOT.parent)]
    assert not offenders, f"functions over {MAX_LINES} lines: " + "; ".join(offenders)
