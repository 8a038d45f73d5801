"""Rules of the suite itself, read from its source with `ast`: every test says in its first
docstring line what it proves, fixtures come from pytest (never imported from conftest), and
shared helpers live in tests/support/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).resolve().parent
SUPPORT = TESTS / "support"


def _modules() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def _test_files() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(TESTS.parent)}:{getattr(node, 'lineno', 0)}"


def _tests(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, ast.AST]]:
    """The `test_*` functions of a module or class body, sync or async, and those of its
    classes (at any depth), each with its dotted name."""
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name.startswith("test_"):
                yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _tests(node.body, f"{prefix}{node.name}.")


def _first_line(node: ast.AST) -> str | None:
    """The first line of the function's docstring as written (None: no docstring)."""
    body = getattr(node, "body", [])
    if not body or not isinstance(body[0], ast.Expr):
        return None
    value = body[0].value
    if not isinstance(value, ast.Constant) or not isinstance(value.value, str):
        return None
    return value.value.split("\n", 1)[0].strip()


def test_every_test_has_a_docstring_whose_first_line_says_what_it_proves() -> None:
    """No `test_*` function or method lacks a docstring or opens it with an empty line."""
    found = []
    for path in _test_files():
        for name, node in _tests(ast.parse(path.read_text(), str(path)).body):
            line = _first_line(node)
            if line is None:
                found.append(f"{_where(path, node)} {name}: no docstring")
            elif not line:
                found.append(f"{_where(path, node)} {name}: the docstring's first line is empty")
    assert not found, "say in one line what each test proves:\n" + "\n".join(found)


def _conftest_imports(path: Path) -> Iterator[ast.AST]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            if any(alias.name.split(".")[-1] == "conftest" for alias in node.names):
                yield node
        elif isinstance(node, ast.ImportFrom):
            module = (node.module or "").split(".")
            if module[-1] == "conftest" or any(a.name == "conftest" for a in node.names):
                yield node


def test_nothing_imports_from_conftest() -> None:
    """Fixtures reach tests through pytest, helpers through tests.support: no module under
    tests/ imports conftest."""
    found = [_where(path, node) for path in _modules() for node in _conftest_imports(path)]
    assert not found, "imports of conftest (move the helper to tests/support/):\n" + "\n".join(
        found
    )


def test_helper_modules_live_in_support() -> None:
    """Every module under tests/ but the test files, conftest.py and package markers is a
    helper, and helpers are in tests/support/."""
    stray = [
        str(path.relative_to(TESTS.parent))
        for path in _modules()
        if not path.name.startswith("test_")
        and path.name not in {"conftest.py", "__init__.py"}
        and not path.is_relative_to(SUPPORT)
    ]
    assert not stray, "helpers outside tests/support/:\n" + "\n".join(stray)
