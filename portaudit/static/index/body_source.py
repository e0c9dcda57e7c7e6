"""The normalised source of every definition's body, read with :mod:`ast` (nothing is executed).

This is the first half of body comparison (the second, naming and renames, is
:mod:`portaudit.static.body`): each definition is re-printed by ``ast.unparse`` (through
``portaudit.static.unparse``, the same text on Python 3.10 as on 3.11) with docstrings removed, so
comments, formatting, quoting and line breaks no longer count. The text is valid
Python, with the definition's own name replaced by ``_``:

* functions, methods and kernels: their decorators and body as ``def _():`` (the parameters are
  left to the signature rules, PA2xx);
* classes: decorators, bases and the class-level statements other than methods, as
  ``class _(<bases>):`` (every method is a definition of its own, ``Class.method``);
* module constants: ``_ = <value>``.

A name defined more than once (both branches of an ``if``) gets every variant, in source order.
The walk descends into ``if``/``try``/``with`` blocks the way the libcst indexer does, so the keys
equal :class:`~portaudit.static.index.model.Definition` names. Only the standard library is used,
which makes this cheap enough to run over many upstream versions (``portaudit provenance``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Iterator, Optional

from portaudit.static.index.model import ImportRef
from portaudit.static.unparse import unparse

# separates the variants of a name defined more than once (a statement, so the text stays Python)
VARIANT_SEPARATOR = "..."


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


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _strip_docstrings(root: ast.AST) -> None:
    """Remove the docstring of every (nested) function and class, in place."""
    for node in ast.walk(root):
        if isinstance(node, _SCOPES) and node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]


_NO_ARGS = dict(posonlyargs=[], args=[], vararg=None, kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[])


def _body(stmts: list[ast.stmt]) -> list[ast.stmt]:
    if stmts and _is_docstring(stmts[0]):
        stmts = stmts[1:]
    return list(stmts) or [ast.Pass()]


def _text(node: ast.stmt) -> str:
    _strip_docstrings(node)
    return unparse(node)


def function_text(node) -> str:
    cls = ast.AsyncFunctionDef if isinstance(node, ast.AsyncFunctionDef) else ast.FunctionDef
    return _text(ast.copy_location(cls(name="_", args=ast.arguments(**_NO_ARGS), body=_body(node.body),
                                       decorator_list=list(node.decorator_list), returns=None,
                                       type_comment=None), node))


def class_text(node: ast.ClassDef) -> str:
    body = [s for s in node.body if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if body and _is_docstring(body[0]) and body[0] is node.body[0]:
        body = body[1:]
    return _text(ast.copy_location(ast.ClassDef(name="_", bases=list(node.bases), keywords=list(node.keywords),
                                                body=body or [ast.Pass()],
                                                decorator_list=list(node.decorator_list)), node))


def value_text(value: ast.expr) -> str:
    return _text(ast.copy_location(ast.Assign(targets=[ast.Name(id="_", ctx=ast.Store())], value=value), value))


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for el in target.elts for n in _target_names(el)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []


@dataclass
class BodySource:
    """One definition's normalised source and its parameter names (locals of the body)."""
    text: str
    params: tuple = ()
    methods: tuple = ()      # for a class: its method names in source order


def _param_names(node) -> tuple:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args]
    if a.vararg:
        names.append(a.vararg.arg)
    names += [x.arg for x in a.kwonlyargs]
    if a.kwarg:
        names.append(a.kwarg.arg)
    return tuple(names)


def extract(source: str) -> dict[str, BodySource]:
    """Qualified definition name (``f``, ``Cls``, ``Cls.method``, ``CONST``) -> its normalised source.

    Raises SyntaxError when this interpreter cannot parse the source.
    """
    return extract_tree(ast.parse(source))


def extract_tree(tree: ast.Module, names: Optional[set] = None) -> dict[str, BodySource]:
    """As :func:`extract`, from a parsed module (modified in place: docstrings are dropped);
    ``names``: only these definitions (and, for a class, its methods) are re-printed."""
    found: dict[str, list[BodySource]] = {}

    def add(name: str, body) -> None:
        if names is None or name in names or name.split(".")[0] in names:
            found.setdefault(name, []).append(body() if callable(body) else body)

    for stmt in _walk_block(tree.body):
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            add(stmt.name, lambda s=stmt: BodySource(function_text(s), _param_names(s)))
        elif isinstance(stmt, ast.ClassDef):
            methods = []
            for inner in _walk_block(stmt.body):
                if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    add(f"{stmt.name}.{inner.name}", lambda s=inner: BodySource(function_text(s), _param_names(s)))
                    methods.append(inner.name)
            add(stmt.name, lambda s=stmt, ms=tuple(dict.fromkeys(methods)): BodySource(class_text(s), (), ms))
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for t in targets:
                for name in _target_names(t):
                    if name != "__all__":
                        add(name, lambda v=stmt.value: BodySource(value_text(v)))
    out = {}
    for name, variants in found.items():
        first = variants[0]
        out[name] = BodySource(f"\n{VARIANT_SEPARATOR}\n".join(v.text for v in variants), first.params,
                               first.methods)
    return out


def definition_bodies(source: str) -> dict[str, str]:
    """Qualified definition name -> normalised body text (see :func:`extract`)."""
    return {name: b.text for name, b in extract(source).items()}


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
