"""The shape of the code: function lengths and import cycles of the imrec package.

    python scripts/code_shape.py            # median length, functions over 60 lines, the longest
    python scripts/code_shape.py --top 20

Lengths count every line of a ``def``, docstring included. Cycles are strongly connected
components of the graph of imports between imrec modules, function-level imports included
(``make lint`` enforces the layers with import-linter; this says how far from them a tree is).
"""

from __future__ import annotations

import argparse
import ast
import statistics
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "imrec"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    names = {}
    for path in SRC.rglob("*.py"):
        parts = ("imrec", *path.relative_to(SRC).with_suffix("").parts)
        names[".".join(parts).removesuffix(".__init__")] = path
    return names


def function_lengths(files: dict[str, Path]) -> list[tuple[int, str]]:
    """(lines, "file:line name") for every function and method, shortest first."""
    rows = []
    for path in files.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.relative_to(SRC.parent)}:{node.lineno} {node.name}"
                rows.append((node.end_lineno - node.lineno + 1, where))
    return sorted(rows)


def _targets(node: ast.AST, package: str, files: dict[str, Path]) -> list[str]:
    """The imrec modules an import statement reaches (``from x import module`` included)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
    else:
        return []
    found = []
    for name in names:
        while name not in files and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in files and name.startswith("imrec"):
            found.append(name)
    return found


def import_graph(files: dict[str, Path]) -> tuple[dict[str, set[str]], int]:
    """Module -> the imrec modules it imports, and how many imports sit inside functions."""
    edges: dict[str, set[str]] = defaultdict(set)
    inner = 0
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            edges[name].update(t for t in _targets(node, package, files) if t != name)
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                inner += sum(bool(_targets(n, package, files)) for n in ast.walk(fn))
    return edges, inner


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--top", type=int, default=10, help="how many of the longest functions")
    args = p.parse_args(argv)
    files = modules()
    rows = function_lengths(files)
    over = [r for r in rows if r[0] > 60]
    median = statistics.median(n for n, _ in rows)
    print(f"{len(rows)} functions, median {median:g} lines, {len(over)} over 60 lines")
    for n, where in rows[-args.top :][::-1]:
        print(f"  {n:4d}  {where}")
    edges, inner = import_graph(files)
    found = cycles(edges)
    print(f"import cycles: {len(found)}; imports of imrec modules inside functions: {inner}")
    for component in found:
        print("  " + " <-> ".join(component))
    return 0


if __name__ == "__main__":
    sys.exit(main())
