"""When two annotations mean the same type although they are spelt differently.

A port that must import on an older Python than its upstream spells ``tuple[int, int]`` (PEP 585,
Python 3.9) as ``typing.Tuple[int, int]`` and ``X | None`` (PEP 604, Python 3.10) as
``Optional[X]``. For the signature check (PA207) those spellings are one type: both sides are
rewritten to one canonical text before they are compared.
"""

from __future__ import annotations

import ast
from typing import List, Optional

from portaudit.static.unparse import unparse

# PEP 585 builtin generics and their typing aliases (collections.abc ones keep their own names).
_BUILTIN_ALIASES = {"tuple": "Tuple", "list": "List", "dict": "Dict", "set": "Set",
                    "frozenset": "FrozenSet", "type": "Type"}
_TYPING_PREFIXES = ("typing.", "typing_extensions.")


class _Canonical(ast.NodeTransformer):
    """``typing.X`` -> ``X``, ``tuple[...]`` -> ``Tuple[...]``, ``A | B`` and ``Optional[A]`` ->
    ``Union[A, B]`` / ``Union[A, None]`` with nested unions flattened and members in a fixed order."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        self.generic_visit(node)
        text = unparse(node)
        for prefix in _TYPING_PREFIXES:
            if text.startswith(prefix) and "." not in text[len(prefix):]:
                return ast.Name(id=text[len(prefix):], ctx=ast.Load())
        return node

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.value, ast.Name):
            name = _BUILTIN_ALIASES.get(node.value.id, node.value.id)
            if name == "Optional":
                return _union([node.slice, ast.Constant(value=None)])
            if name == "Union":
                members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                return _union(members)
            node.value = ast.Name(id=name, ctx=ast.Load())
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.op, ast.BitOr):
            return _union([node.left, node.right])
        return node


def _members(node: ast.AST) -> List[ast.AST]:
    if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Union"):
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return [m for e in inner for m in _members(e)]
    return [node]


def _union(members: List[ast.AST]) -> ast.AST:
    flat = {unparse(m): m for e in members for m in _members(e)}
    ordered = [flat[k] for k in sorted(flat)]
    if len(ordered) == 1:
        return ordered[0]
    return ast.Subscript(value=ast.Name(id="Union", ctx=ast.Load()),
                         slice=ast.Tuple(elts=ordered, ctx=ast.Load()), ctx=ast.Load())


def canonical_annotation(text: Optional[str]) -> Optional[str]:
    """The canonical text of an annotation (None stays None; text that does not parse is kept)."""
    if text is None:
        return None
    source = text.strip()
    if len(source) >= 2 and source[0] == source[-1] and source[0] in "'\"":
        source = source[1:-1]  # a string annotation names the same type
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        return " ".join(text.split())
    return unparse(_Canonical().visit(tree))


def same_annotation(upstream: Optional[str], port: Optional[str]) -> bool:
    """True when the two annotations differ at most in spelling (see the module docstring)."""
    return canonical_annotation(upstream) == canonical_annotation(port)
