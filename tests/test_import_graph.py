"""The package's import graph has no cycles (every import counts: top level, inside functions and under
TYPE_CHECKING), so every module can be read, tested and typed from the bottom up."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parents[1] / "vkvtrain"


def module_graph(root: Path) -> nx.DiGraph:
    """Edges module -> vkvtrain module it imports (the package root itself excluded)."""
    modules = {}
    for file in root.rglob("*.py"):
        parts = file.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    up = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join(up + ([base] if base else []))
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                found = resolve(target) if target.split(".")[0] == root.name else None
                if found and found not in (name, root.name) and not name.startswith(found + "."):
                    graph.add_edge(name, found)
    return graph


def test_no_import_cycles() -> None:
    cycles = [sorted(c) for c in nx.strongly_connected_components(module_graph(PACKAGE)) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_the_check_finds_a_planted_cycle(tmp_path: Path) -> None:
    package = tmp_path / "vkvtrain"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from vkvtrain.b import x\n")
    (package / "b.py").write_text("def f():\n    from vkvtrain import a\n")  # inside a function counts too
    (package / "c.py").write_text("from . import d\n")
    (package / "d.py").write_text("from .c import y\n")  # relative imports count too
    components = [c for c in nx.strongly_connected_components(module_graph(package)) if len(c) > 1]
    assert sorted(map(sorted, components)) == [["vkvtrain.a", "vkvtrain.b"], ["vkvtrain.c", "vkvtrain.d"]]
