"""The architecture walls hold, and they catch what they are for (issue 25): `lint-imports`, run with the project's own
pyproject.toml on a copy of the package, passes on the copy as it is and fails, naming the break, when the copy gets
(a) an import cycle between two modules of one package (one import inside a function, which grimp sees too) or
(b) a new top-level module that imports the CLI or (c) a new method home that imports another method. Plus the exception rules of the "everything but" contract type
(tools/import_contracts.py) on a hand-built import graph."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import grimp
import pytest
from importlinter.domain.imports import ModuleExpression

from tools.import_contracts import modules_except

ROOT = Path(__file__).resolve().parents[1]
# The console script `lint-imports` is this entry point; called through this interpreter so the test's venv runs it.
LINT_IMPORTS = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    """A folder holding a copy of sslcli/ (only the copy is changed)."""
    base = tmp_path_factory.mktemp("walls")
    shutil.copytree(ROOT / "sslcli", base / "sslcli", ignore=shutil.ignore_patterns("__pycache__"))
    return base


def lint(base: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with the repository's config on the copy in ``base``: the copy comes first on the path (the
    repository after it, for the contract type in tools/); one grimp cache for every run, so only changed files are
    parsed again."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(base), str(ROOT)])}
    command = [sys.executable, "-c", LINT_IMPORTS, "--config", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(base / ".import_linter_cache")]
    return subprocess.run(command, cwd=base, env=env, capture_output=True, text=True, timeout=300)


@contextmanager
def injected(base: Path, files: dict[str, str]):
    """New modules written into the copy of sslcli for the duration of the block."""
    paths = [base / "sslcli" / name for name in files]
    try:
        for path, text in zip(paths, files.values()):
            path.write_text(text)
        yield
    finally:
        for path in paths:
            path.unlink(missing_ok=True)


def test_the_walls_hold_on_the_package_as_it_is(package_copy):
    result = lint(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert str(package_copy) in _imported_sslcli(package_copy)  # the run read the copy, not the checkout


def test_a_cycle_inside_one_package_breaks_the_walls(package_copy):
    # eval/ is a package of sslcli below the top level; one side of the cycle imports inside a function.
    cycle = {"eval/cycle_a.py": "from sslcli.eval import cycle_b\n",
             "eval/cycle_b.py": "def late():\n    from sslcli.eval import cycle_a\n\n    return cycle_a\n"}
    with injected(package_copy, cycle):
        result = lint(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No cycles are allowed in sslcli.eval" in result.stdout
    assert "cycle_a" in result.stdout and "cycle_b" in result.stdout


def test_a_new_top_level_module_importing_the_cli_breaks_the_walls(package_copy):
    with injected(package_copy, {"newthing.py": "import sslcli.cli\n"}):
        result = lint(package_copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "sslcli.newthing is not allowed to import sslcli.cli" in result.stdout
    assert "Only the CLI imports the CLI" in result.stdout and "BROKEN" in result.stdout


def test_a_new_method_home_importing_another_method_breaks_the_walls(package_copy):
    # A home that is in no list: the independence wall covers every package under sslcli.methods but base.
    home = {"methods/newmethod/__init__.py": "", "methods/newmethod/method.py": "from sslcli.methods.moco import spec\n"}
    (package_copy / "sslcli" / "methods" / "newmethod").mkdir()
    try:
        with injected(package_copy, home):
            result = lint(package_copy)
    finally:
        (package_copy / "sslcli" / "methods" / "newmethod").rmdir()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Method homes import no other method" in result.stdout and "BROKEN" in result.stdout
    assert "sslcli.methods.newmethod is not allowed to import sslcli.methods.moco" in result.stdout


def _imported_sslcli(base: Path) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(base), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", "import sslcli; print(sslcli.__file__)"], cwd=base, env=env,
                          capture_output=True, text=True, check=True).stdout


def _graph() -> grimp.ImportGraph:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.cli", "pkg.models", "pkg.distributed", "pkg.newthing"):
        graph.add_module(name)
    return graph


def _names(expressions) -> list[str]:
    return sorted(str(expression) for expression in expressions)


def test_everything_but_is_the_wildcard_less_its_exceptions_and_covers_a_new_module():
    found = modules_except(_graph(), [ModuleExpression("pkg.*")], [ModuleExpression("pkg.distributed")], "forbidden")
    assert _names(found) == ["pkg.cli", "pkg.models", "pkg.newthing"]
    assert _names(modules_except(_graph(), [ModuleExpression("pkg.*")], None, "forbidden")) == [
        "pkg.cli", "pkg.distributed", "pkg.models", "pkg.newthing"]


def test_an_exception_that_matches_nothing_is_a_configuration_error():
    with pytest.raises(ValueError, match=r"forbidden_exceptions pkg\.distributd: not among the modules"):
        modules_except(_graph(), [ModuleExpression("pkg.*")], [ModuleExpression("pkg.distributd")], "forbidden")
