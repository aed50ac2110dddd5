"""No import cycle inside src/vlaforge: every module's imports, top-level and inside functions, form a DAG.

The graph is read from the source (AST), not by importing: `import a.b`, `from a import b`, relative
imports resolved against the importing module, and "vlaforge.mod:Name" strings (what `_load` and other
lazy loaders import). Package `__init__` files are skipped: they re-export, and a cycle through one is not
a design cycle. A cycle hidden behind a function-local import is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "vlaforge"


def _modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        name = ".".join(path.relative_to(src).with_suffix("").parts)
        if not name.endswith(".__init__"):
            out[name] = path
    return out


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _targets(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The vlaforge modules `module` imports."""

    def known(name: str) -> str | None:
        while name and name not in modules:
            if "." not in name:
                return None
            name = name.rsplit(".", 1)[0]
        return name or None

    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {known(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = _package_of(module, path).split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                found.add(known(f"{base}.{a.name}") if f"{base}.{a.name}" in modules else known(base))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith(PACKAGE + ".") and ":" in text and " " not in text:
                found.add(known(text.split(":", 1)[0]))
    return {t for t in found if t is not None and t != module}


def import_cycles(src: Path = SRC, package: str = PACKAGE) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    modules = _modules(src, package)
    graph = {m: sorted(_targets(m, p, modules)) for m, p in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # iterative would be longer; the package is far below the recursion limit
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_the_finder_sees_function_local_relative_and_string_imports(tmp_path):
    pkg = tmp_path / "vlaforge"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from vlaforge import a\n")  # skipped: re-exports
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from vlaforge.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from . import c\n")
    (pkg / "sub" / "c.py").write_text("LOAD = 'vlaforge.a:f'\n")
    (pkg / "d.py").write_text("import vlaforge.a\n")
    assert import_cycles(tmp_path) == [["vlaforge.a", "vlaforge.sub.b", "vlaforge.sub.c"]]
    (pkg / "sub" / "c.py").write_text("LOAD = 'not vlaforge.a:f'\n")
    assert import_cycles(tmp_path) == []


def test_no_import_cycle_in_vlaforge():
    cycles = import_cycles()
    assert not cycles, "modules importing each other in a cycle:\n" + "\n".join(
        "  " + ", ".join(c) for c in cycles
    )
