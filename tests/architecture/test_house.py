"""The house rules of docs/architecture.md that import-linter does not check: module and function
size, no function-level import of a bncheck module except where an optional runtime is chosen
(marked ``# optional: <dependency>``), and ruff's lint (complexity, strict zip) over the package
and the tests."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "bncheck"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MODULES = sorted(PACKAGE.rglob("*.py"))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _own_imports(func: ast.AST):
    """bncheck imports inside ``func`` (nested functions included)."""
    for node in ast.walk(func):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "bncheck":
            yield node
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            yield node
        elif isinstance(node, ast.Import) and any(a.name.split(".")[0] == "bncheck" for a in node.names):
            yield node


def test_every_module_is_under_the_size_limit():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (cut them by concern): {long}"


def test_every_function_is_under_the_size_limit():
    long = {}
    for path in MODULES:
        for func in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = func.end_lineno - func.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(ROOT)}:{func.lineno} {func.name}"] = lines
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_function_level_imports_of_bncheck_only_choose_an_optional_runtime():
    hidden = []
    for path in MODULES:
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for func in _functions(ast.parse(text)):
            for node in _own_imports(func):
                span = lines[node.lineno - 1 : node.end_lineno]
                if not any("# optional:" in line for line in span):
                    hidden.append(f"{path.relative_to(ROOT)}:{node.lineno} in {func.name}()")
    assert not sorted(set(hidden)), (
        "function-level imports of bncheck modules hide the dependency graph; import at module level, "
        "or mark the line '# optional: <dependency>' where an optional runtime is chosen: " + ", ".join(sorted(set(hidden)))
    )


def test_the_house_check_sees_a_hidden_import(tmp_path):
    """The import check is not vacuous: it flags an unmarked import and accepts a marked one."""
    source = "def f():\n    from bncheck.errors import UsageError\n\ndef g():\n    import bncheck.data  # optional: torch\n"
    tree = ast.parse(source)
    flagged = [n.lineno for func in _functions(tree) for n in _own_imports(func) if "# optional:" not in source.splitlines()[n.lineno - 1]]
    assert flagged == [2]


def test_ruff_passes_on_the_package_and_the_tests():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed: pip install -r requirements/test.txt")
    result = subprocess.run([ruff, "check", "--no-cache", "bncheck", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
