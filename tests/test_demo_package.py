"""Emulation and demo stay out of the product (issue 11: 5): no module outside phg.demo imports it, but the
CLI's demo, simulate and `ble --emulated` commands, and those only inside a function (lazily: `phg --help`
and every other command run without Bumble or the demo's peers)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _imports(tree: ast.AST) -> list[tuple[ast.AST, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _top_level(tree: ast.Module) -> set[ast.AST]:
    """Import nodes run when the module is imported (not inside a function)."""
    lazy = {inner for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            for inner in ast.walk(node)}
    return {node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)} - lazy


def test_only_the_cli_imports_phg_demo_and_only_lazily():
    offenders = []
    for path in sorted((SRC / "phg").rglob("*.py")):
        module = ".".join(path.relative_to(SRC).with_suffix("").parts)
        if module.startswith("phg.demo"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        eager = _top_level(tree)
        for node, name in _imports(tree):
            if name == "phg.demo" or name.startswith("phg.demo."):
                if not module.startswith("phg.cli") or node in eager:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno} imports {name}")
    assert offenders == []
