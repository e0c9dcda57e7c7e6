"""The normalised source of every definition's body, read with :mod:`ast` (nothing is executed).

This is the first half of body comparison (the second, naming and renames, is
:mod:`portaudit.static.body`): each definition is re-printed by ``ast.unparse`` with docstrings
removed, so comments, formatting, quoting and line breaks no longer count. What is kept:

* functions, methods and kernels: their decorators (``@...`` lines) and their body statements;
  the ``def`` line itself is left to the signature rules (PA2xx);
* classes: decorators, a ``class(<bases>)`` line and the class-level statements other than
  methods (every method is a definition of its own, ``Class.method``);
* module constants: ``= <value>``.

A name defined more than once (both branches of an ``if``) gets every variant, in source order.
The walk descends into ``if``/``try``/``with`` blocks the way the libcst indexer does, so the keys
equal :class:`~portaudit.static.index.model.Definition` names. Only the standard library is used,
which makes this cheap enough to run over many upstream versions (``portaudit provenance``).
"""

from __future__ import annotations

import ast
from typing import Iterator, Optional

from portaudit.static.index.model import ImportRef

# separates the variants of a name defined more than once
VARIANT_SEPARATOR = "# -- alternative definition --"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk_block(stmts: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a block, descending into if/else, try and with bodies (as the indexer does)."""
    for stmt in stmts:
        if isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _walk_block(stmt.body)
            yield from _walk_block(stmt.orelse)
        elif isinstance(stmt, ast.Try) or type(stmt).__name__ == "TryStar":
            yield from _walk_block(stmt.body)
            for h in stmt.handlers:
                yield from _walk_block(h.body)
            yield from _walk_block(stmt.orelse)
            yield from _walk_block(stmt.finalbody)
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            yield from _walk_block(stmt.body)
        else:
            yield stmt


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
        and isinstance(stmt.value.value, str)


class _StripDocstrings(ast.NodeTransformer):
    """Remove the docstring of every (nested) function and class."""

    def _strip(self, node):
        self.generic_visit(node)
        if node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


def _unparse_statements(stmts: list[ast.stmt]) -> str:
    if stmts and _is_docstring(stmts[0]):
        stmts = stmts[1:]
    module = _StripDocstrings().visit(ast.Module(body=list(stmts), type_ignores=[]))
    return ast.unparse(module)


def _decorators(node) -> list[str]:
    return ["@" + ast.unparse(d) for d in node.decorator_list]


def function_text(node) -> str:
    return "\n".join(_decorators(node) + [_unparse_statements(node.body)])


def class_text(node: ast.ClassDef) -> str:
    header = ", ".join([ast.unparse(b) for b in node.bases]
                       + [ast.unparse(k) for k in node.keywords])
    body = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if body and node.body and body[0] is node.body[0] and _is_docstring(body[0]):
        body = body[1:]
    lines = _decorators(node) + [f"class({header})"]
    if body:
        lines.append(_unparse_statements(body))
    return "\n".join(lines)


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for el in target.elts for n in _target_names(el)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


def definition_bodies(source: str) -> dict[str, str]:
    """Qualified definition name (``f``, ``Cls``, ``Cls.method``, ``CONST``) -> normalised body text.

    Raises SyntaxError when this interpreter cannot parse the source.
    """
    tree = ast.parse(source)
    found: dict[str, list[str]] = {}

    def add(name: str, text: str) -> None:
        found.setdefault(name, []).append(text)

    for stmt in _walk_block(tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            add(stmt.name, function_text(stmt))
        elif isinstance(stmt, ast.ClassDef):
            add(stmt.name, class_text(stmt))
            for inner in _walk_block(stmt.body):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    add(f"{stmt.name}.{inner.name}", function_text(inner))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            value = "= " + ast.unparse(stmt.value)
            for t in targets:
                for name in _target_names(t):
                    if name != "__all__":
                        add(name, value)
    return {name: f"\n{VARIANT_SEPARATOR}\n".join(texts) for name, texts in found.items()}


def module_imports(source_tree: ast.Module, module: str, is_package: bool) -> dict[str, ImportRef]:
    """Local name -> what it imports, for the module-level imports of an ``ast`` tree (the same
    shape :class:`~portaudit.static.index.model.ModuleInfo` records; ``TYPE_CHECKING`` blocks left out)."""
    out: dict[str, ImportRef] = {}
    for stmt in _walk_block(source_tree.body):
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname:
                    out[alias.asname] = ImportRef(alias.name)
                else:
                    top = alias.name.split(".")[0]
                    out.setdefault(top, ImportRef(top))
        elif isinstance(stmt, ast.ImportFrom):
            base = absolute_module(module, is_package, stmt.level, stmt.module)
            for alias in stmt.names:
                if alias.name == "*":
                    continue
                out[alias.asname or alias.name] = ImportRef(base, alias.name)
    return out


def absolute_module(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    if level == 0:
        return target or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))
