"""Import cycles among relaxrun's modules, read from the source (nothing is imported).

Every ``import`` / ``from ... import`` statement in every module of the package counts, at module
level and inside functions alike (a function-level import is still a dependency, only a later one).
``from pkg import name`` depends on ``pkg.name`` when that is a module, else on ``pkg``; importing a
module also runs its package's ``__init__``, so that counts as well. Prints the strongly connected
components with more than one module (each is a cycle) and exits with status 1 if there are any.

    python scripts/check_imports.py [package folder, default: relaxrun]
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports."""
    here = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # a name inside a module: the module
                t = t.rpartition(".")[0]
            if not t:
                continue
            found.add(t)
            parent = t.rpartition(".")[0]
            while parent:  # importing a.b.c runs a/__init__ and a/b/__init__
                if parent in modules:
                    found.add(parent)
                parent = parent.rpartition(".")[0]
    found.discard(name)
    # a package's own __init__ always runs before its submodules: not an edge back to it
    return {m for m in found if not name.startswith(m + ".")}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of size > 1 (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else Path(__file__).resolve().parents[1] / "relaxrun").resolve()
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(files)
    graph = {m: imports(p, m, p.name == "__init__.py", modules) & modules for m, p in files.items()}
    found = cycles(graph)
    edges = sum(len(v) for v in graph.values())
    if found:
        for comp in found:
            print("import cycle among: " + ", ".join(comp))
            for m in comp:
                print(f"  {m} -> {', '.join(sorted(graph[m] & set(comp)))}")
        return 1
    print(f"no import cycles: {len(modules)} modules, {edges} import edges (module- and function-level)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
