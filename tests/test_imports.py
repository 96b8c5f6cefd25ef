"""The package's layering, read from the source with `ast`: no module imports another module's
private name, and the module-level imports have no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wsisum"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(tree: ast.Module) -> list[ast.ImportFrom | ast.Import]:
    """Imports that run when the module is imported (not inside functions or `if TYPE_CHECKING`)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
    return found


def test_no_module_imports_another_modules_private_name() -> None:
    offences = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsisum") and node.module != name:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offences.append(f"{name} imports {node.module}.{alias.name}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "hasattr" and len(node.args) == 2:
                arg = node.args[1]
                if isinstance(arg, ast.Constant) and str(arg.value).startswith("_"):
                    offences.append(f"{name} asks hasattr(..., {arg.value!r})")
    assert not offences, "\n".join(offences)


def test_module_level_imports_have_no_cycle() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in _top_level_imports(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:  # `from wsisum.report import cost` runs the package's __init__, then the submodule
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [node.module or "", *(s for s in subs if s in modules)]
            graph[name] |= {t for t in targets if t in modules and t != name}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


STAGES = (
    "data",
    "sampling",
    "teachers",
    "models",
    "lit",
    "summarize",
    "evaluate",
    "retrieve",
    "report",
    "pipeline",
    "apps",
)


def test_a_stage_never_imports_a_later_stage_or_the_package() -> None:
    """Data flows one way (docs/architecture.md): a module of a stage imports only its own stage, earlier
    stages and the top-level helpers, never a later stage and never the `wsisum` package itself (whose
    `__init__` reaches into the stages), at module level or inside a function."""
    offences = []
    for name, tree in _modules().items():
        parts = name.split(".")
        if len(parts) < 2 or parts[1] not in STAGES:
            continue
        rank = STAGES.index(parts[1])
        for node in ast.walk(tree):
            targets = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            targets += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for target in filter(None, targets):
                t = target.split(".")
                if t == ["wsisum"] or (t[0] == "wsisum" and t[1] in STAGES and STAGES.index(t[1]) > rank):
                    offences.append(f"{name}:{node.lineno} imports {target}")
    assert offences == []
