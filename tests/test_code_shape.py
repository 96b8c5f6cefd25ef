"""The house rules that keep modules readable, checked with `ast` on every module of the package:
no file over 400 lines and no function over 60 lines, apart from the exceptions named here with
their reason (none at present)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wsisum"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
# "<module path relative to wsisum/>:<function qualname>" -> why it stays longer
FUNCTION_EXCEPTIONS: dict[str, str] = {}
FILE_EXCEPTIONS: dict[str, str] = {}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def functions(tree: ast.AST, prefix: str = "") -> list[tuple[str, ast.AST]]:
    """Every function and method with its dotted qualname (nested ones included)."""
    found = []
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.append((prefix + node.name, node))
            found.extend(functions(node, f"{prefix}{node.name}."))
        elif isinstance(node, ast.ClassDef):
            found.extend(functions(node, f"{prefix}{node.name}."))
    return found


def function_lines(node: ast.AST) -> int:
    """From the `def` line to the last line of the body (decorators not counted)."""
    return node.end_lineno - node.lineno + 1  # type: ignore[attr-defined]


def test_the_checker_sees_long_functions_and_methods() -> None:
    src = "class A:\n    def f(self):\n" + "        x = 1\n" * 70 + "def g():\n    pass\n"
    found = {name: function_lines(node) for name, node in functions(ast.parse(src))}
    assert found == {"A.f": 71, "g": 2}


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
        and str(p.relative_to(PACKAGE)) not in FILE_EXCEPTIONS
    }
    assert not long, f"modules over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_over_60_lines() -> None:
    long = {}
    for path in modules():
        rel = str(path.relative_to(PACKAGE))
        for name, node in functions(ast.parse(path.read_text())):
            key = f"{rel}:{name}"
            if function_lines(node) > MAX_FUNCTION_LINES and key not in FUNCTION_EXCEPTIONS:
                long[key] = function_lines(node)
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_every_named_exception_still_exists() -> None:
    gone = [key for key in FILE_EXCEPTIONS if not (PACKAGE / key).exists()]
    for key in FUNCTION_EXCEPTIONS:
        rel, name = key.split(":")
        path = PACKAGE / rel
        if not path.exists() or name not in {n for n, _ in functions(ast.parse(path.read_text()))}:
            gone.append(key)
    assert not gone, f"listed as exceptions but no longer there (remove them): {gone}"
