"""The package layout: no import cycles in portaudit, and every internal import names a real module.

The graph is built with ``ast`` from the source files, so it sees imports inside functions too (a
lazy import still ties two modules together); only imports under ``if TYPE_CHECKING:`` are left
out. ``from pkg import name`` counts as importing ``pkg/__init__.py``, plus ``pkg.name`` when that
is a module. ``import a.b.c`` and ``from a.b.c import x`` count as importing ``a.b.c`` only, not
the parent packages whose ``__init__`` Python runs first: otherwise a package ``__init__`` that
imports its own submodules (``portaudit.cli``, ``portaudit.drift``) would always be a cycle. Such an
``__init__`` must then import only downward, which this graph does check.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "portaudit"

Edge = Tuple[str, str, int]   # (target module, file, line)


def module_files(root: Path, package: str) -> Dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.stmt]:
    """Every import statement, at any depth, except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(root: Path, module: str, path: Path,
                 modules: Dict[str, Path]) -> Tuple[List[Edge], List[str]]:
    """Internal imports of one file as edges (self-imports left out), and those that name no module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: List[Edge] = []
    unresolved: List[str] = []
    rel = path.relative_to(root).as_posix()

    def internal(name: str) -> bool:
        return name == PACKAGE or name.startswith(PACKAGE + ".")

    for node in _imports(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            source = _absolute(module, is_package, node)
            targets = [source] + [f"{source}.{a.name}" for a in node.names
                                  if f"{source}.{a.name}" in modules]
        for target in targets:
            if not internal(target) or target == module:   # `from pkg import sub` inside pkg
                continue
            if target in modules:
                edges.append((target, rel, node.lineno))
            else:
                unresolved.append(f"{rel}:{node.lineno}: {target}")
    return edges, unresolved


def import_graph(root: Path = ROOT, package: str = PACKAGE):
    modules = module_files(root, package)
    graph: Dict[str, List[Edge]] = {}
    unresolved: List[str] = []
    for mod, path in modules.items():
        graph[mod], bad = import_edges(root, mod, path, modules)
        unresolved += bad
    return graph, unresolved


def strongly_connected(graph: Dict[str, List[Edge]]) -> List[List[str]]:
    """Tarjan's algorithm (iterative); components with more than one module."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    out: List[List[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted({e[0] for e in graph[start]})))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({e[0] for e in graph[child]}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def one_cycle(graph: Dict[str, List[Edge]], component: List[str]) -> List[Edge]:
    """A shortest cycle through the component's first module, as the import lines that close it."""
    members = set(component)
    start = component[0]
    prev: Dict[str, Optional[Tuple[str, Edge]]] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for edge in graph[node]:
                target = edge[0]
                if target not in members:
                    continue
                if target == start:
                    path = [edge]
                    while prev[node] is not None:
                        node, e = prev[node]
                        path.append(e)
                    return path[::-1]
                if target not in prev:
                    prev[target] = (node, edge)
                    nxt.append(target)
        frontier = nxt
    return []


def describe_cycles(graph: Dict[str, List[Edge]]) -> List[str]:
    lines = []
    for comp in strongly_connected(graph):
        cycle = one_cycle(graph, comp)
        steps = " -> ".join([comp[0]] + [e[0] for e in cycle])
        where = "; ".join(f"{e[1]}:{e[2]}" for e in cycle)
        lines.append(f"{steps}  (imports at {where}; component: {', '.join(comp)})")
    return lines


def test_portaudit_has_no_import_cycles():
    graph, _ = import_graph()
    cycles = describe_cycles(graph)
    assert not cycles, "import cycles in portaudit:\n" + "\n".join(cycles)


def test_every_internal_import_names_a_module():
    """A lazy import of a moved module fails only when its code path runs; catch it here."""
    _, unresolved = import_graph()
    assert not unresolved, "imports of portaudit modules that do not exist:\n" + "\n".join(unresolved)


def test_users_import_only_existing_portaudit_modules():
    """Tests, benchmarks and tools import portaudit lazily too (skipped tests, benchmarks never run here)."""
    modules = module_files(ROOT, PACKAGE)
    unresolved = []
    for folder in ("tests", "benchmarks", "tools"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            unresolved += import_edges(ROOT, name, path, modules)[1]
    assert not unresolved, "imports of portaudit modules that do not exist:\n" + "\n".join(unresolved)


def test_the_cycle_finder_sees_function_level_cycles(tmp_path):
    """The detector itself: a cycle closed by a lazy import is found, a TYPE_CHECKING one is not."""
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from portaudit.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import portaudit.a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                              "    from portaudit import e\n")
    (pkg / "e.py").write_text("from portaudit.d import x\n")
    graph, unresolved = import_graph(tmp_path)
    assert unresolved == []
    assert strongly_connected(graph) == [["portaudit.a", "portaudit.c", "portaudit.sub.b"]]
    cycle = one_cycle(graph, ["portaudit.a", "portaudit.c", "portaudit.sub.b"])
    assert [e[0] for e in cycle] == ["portaudit.sub.b", "portaudit.c", "portaudit.a"]
    assert describe_cycles(graph)[0].startswith(
        "portaudit.a -> portaudit.sub.b -> portaudit.c -> portaudit.a  (imports at portaudit/a.py:1;")


def test_unresolved_imports_are_reported(tmp_path):
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from portaudit.gone import x\n")
    _, unresolved = import_graph(tmp_path)
    assert unresolved == ["portaudit/a.py:2: portaudit.gone"]
