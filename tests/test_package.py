"""The package's shape: its modules import each other without circles, counting imports deferred into functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "esrgan"


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_imports(source: str, modules: set[str]) -> set[str]:
    """The package modules a module's source imports anywhere: at the top, in try/if blocks, and deferred into
    functions and methods (a deferred import only hides a circle from import time: the modules still need each
    other). Without the bodies of `if TYPE_CHECKING:` blocks, which never run (annotations only)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "esrgan":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("esrgan."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("esrgan."))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return found & modules


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := dfs(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := dfs(module)):
            return found
    return None


def test_modules_import_each_other_without_circles() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {m: _module_imports((PACKAGE / f"{m}.py").read_text(), modules) - {m} for m in modules}
    assert len(graph) > 20 and graph["cli"], "the package was not read"  # a broken parse would find no edges
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph) or [])}"


def test_cycle_finder_finds_a_circle() -> None:
    """The check above is only as good as its cycle search."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_reader_sees_deferred_imports() -> None:
    """The check above counts imports deferred into functions and methods, in every spelling, and leaves out only
    those under `if TYPE_CHECKING:`; were it to read top-level imports alone again, a circle through a function's
    import would pass unseen."""
    source = """
from typing import TYPE_CHECKING

from . import a

if TYPE_CHECKING:
    from .b import B
else:
    from .f import F

def deferred():
    from .c import C

class Methods:
    def method(self):
        import esrgan.d
        from esrgan import e
        from esrgan.g import G
"""
    assert _module_imports(source, {"a", "b", "c", "d", "e", "f", "g"}) == {"a", "c", "d", "e", "f", "g"}


def test_dir_lists_the_lazy_exports_without_importing_them() -> None:
    """dir(esrgan) (tab completion, help()) shows the public API, which __getattr__ imports only when used: it
    listed none of it. In a fresh interpreter: listing must not import torch."""
    code = (
        "import sys, esrgan; names = dir(esrgan); "
        "assert set(esrgan.__all__) <= set(names), sorted(set(esrgan.__all__) - set(names)); "
        "assert 'torch' not in sys.modules, 'dir imported torch'; "
        "assert all(getattr(esrgan, n) is not None for n in esrgan.__all__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
