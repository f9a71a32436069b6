"""Import edges of the ``medtune`` package: how many, at two granularities, and any import circle.

Issue 22's measure of the layout. Every ``import`` / ``from ... import`` of ``medtune`` inside
``src/medtune`` counts, deferred ones (inside a function) and ``TYPE_CHECKING`` ones included: a
deferred import hides a circle from Python, not from the reader. Each edge is a distinct
(importer, imported) pair, never counted twice for two imported names.

- module edges: module -> module (``from medtune.data import cocoio`` is an edge to
  ``medtune.data.cocoio``; ``from medtune.data import SOMETHING`` that is no module, to the package);
- unit edges: between the entries directly in ``src/medtune/`` (a flat module or a folder taken
  whole, the "files and folders" the issue counts); imports inside one folder are no unit edge.

Each edge has the strongest kind of its imports: ``top`` (run when the module loads), ``deferred``
(inside a function) or ``types`` (under ``if TYPE_CHECKING:``, never run). A circle of top or
deferred edges between modules is an import circle (exit status 1); one that needs a ``types`` edge
is printed as a note (annotations only). Circles between files and folders (one stage leaning on a
later one) are printed with the module edges that make them, not an error.

Reads the source only (``ast``), imports nothing: ``--src`` can point at another checkout or an old
commit's tree (``git archive <commit> src/medtune | tar -x -C /tmp/old``).

Usage: ``python benchmarks/import_edges.py [--src src/medtune] [--list]``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = "medtune"
DEFAULT_SRC = Path(__file__).resolve().parent.parent / "src" / PACKAGE
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
RANK = {"top": 0, "deferred": 1, "types": 2}  # an edge is as strong as its strongest import


def module_names(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``src`` (a package is its ``__init__``)."""
    names = {}
    for path in sorted(src.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(src).with_suffix("").parts)
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(tree: ast.Module, importer: str, is_package: bool) -> Iterator[tuple[str, list[str], str]]:
    """(imported module, names taken from it, kind) for each import statement anywhere in ``tree``.

    kind: ``top`` (run when the module loads), ``deferred`` (inside a function) or ``types``
    (under ``if TYPE_CHECKING:``, never run).
    """
    for node, kind in _nodes(tree, "top"):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], kind
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, up level - 1 more
                package = importer.split(".") if is_package else importer.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            yield base, [alias.name for alias in node.names], kind


def _nodes(parent: ast.AST, kind: str) -> Iterator[tuple[ast.AST, str]]:
    """Every node below ``parent`` with the kind an import there would be (see :func:`imported`)."""
    for child in ast.iter_child_nodes(parent):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            branches = [(node, "types") for node in child.body] + [(node, kind) for node in child.orelse]
        else:
            branches = [(child, kind)]
        for node, node_kind in branches:
            yield node, node_kind
            inner = "deferred" if node_kind == "top" and isinstance(node, FUNCTIONS) else node_kind
            yield from _nodes(node, inner)


def module_edges(src: Path) -> dict[str, dict[str, str]]:
    """Importer -> {imported ``medtune`` module: the strongest kind of import of it} (itself excluded)."""
    modules = module_names(src)
    edges: dict[str, dict[str, str]] = {name: {} for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for base, names, kind in imported(tree, name, path.name == "__init__.py"):
            if base != PACKAGE and not base.startswith(PACKAGE + "."):
                continue
            # ``from pkg import mod`` names a module; ``from pkg import thing`` names the package itself.
            targets = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
            if len(targets) < len(names) or not names:
                targets.append(_nearest_module(base, modules))
            for target in targets:
                if target != name and (target not in edges[name] or RANK[kind] < RANK[edges[name][target]]):
                    edges[name][target] = kind
    return edges


def _nearest_module(dotted: str, modules: dict[str, Path]) -> str:
    """``dotted`` if it is a module, else its closest enclosing one (``import medtune.x.y`` of a name)."""
    while dotted not in modules and "." in dotted:
        dotted = dotted.rsplit(".", 1)[0]
    return dotted


def unit_of(module: str) -> str:
    """The entry directly in ``src/medtune/`` that holds ``module``: ``medtune.data.cocoio`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph(edges: dict[str, dict[str, str]], kinds: tuple[str, ...]) -> dict[str, set[str]]:
    """The module edges of the given kinds, as importer -> imported modules."""
    return {source: {t for t, kind in targets.items() if kind in kinds} for source, targets in edges.items()}


def unit_edges(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module edges between different top-level entries, merged per entry."""
    units: dict[str, set[str]] = {unit_of(m): set() for m in modules}
    for source, targets in modules.items():
        units[unit_of(source)].update(unit_of(t) for t in targets if unit_of(t) != unit_of(source))
    return units


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted: every circle lies in one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(1000, 4 * len(graph)))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the medtune package folder (src/medtune)")
    parser.add_argument("--list", action="store_true", help="also print every unit edge")
    args = parser.parse_args(argv)
    if not (args.src / "__init__.py").is_file():
        print(f"error: --src {args.src}: no __init__.py there (expected the medtune package folder)", file=sys.stderr)
        return 2
    edges = module_edges(args.src)
    every, runtime = graph(edges, tuple(RANK)), graph(edges, ("top", "deferred"))
    units, runtime_units = unit_edges(every), unit_edges(runtime)
    flat = sorted(u for u in units if (args.src / f"{u}.py").is_file())
    kinds = {kind: sum(list(t.values()).count(kind) for t in edges.values()) for kind in RANK}
    print(f"{args.src}: {len(edges)} modules")
    print(f"files and folders in {PACKAGE}/: {len(units)} ({len(flat)} flat modules, {len(units) - len(flat)} folders)")
    print(f"module edges: {sum(kinds.values())} ({', '.join(f'{n} {kind}' for kind, n in kinds.items())})")
    print(f"unit edges (between files and folders): {sum(len(t) for t in units.values())}")
    if args.list:
        for unit in sorted(units):
            print(f"  {unit} -> {', '.join(sorted(units[unit])) or '-'}")
    module_circles = cycles(runtime)
    for circle in module_circles:
        print(f"module circle: {' <-> '.join(circle)}")
    for circle in cycles(every):
        if not any(set(circle) & set(c) for c in module_circles):
            print(f"module circle through TYPE_CHECKING imports only (never run): {' <-> '.join(circle)}")
    for circle in cycles(runtime_units):
        print(f"unit circle: {' <-> '.join(circle)}")
        for source in sorted(m for m in runtime if unit_of(m) in circle):
            across = sorted(t for t in runtime[source] if unit_of(t) in circle and unit_of(t) != unit_of(source))
            if across:
                print(f"  {source} -> {', '.join(across)}")
    if not module_circles:
        print("no module import circle")
    return 1 if module_circles else 0


if __name__ == "__main__":
    sys.exit(main())
