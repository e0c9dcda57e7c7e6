"""Signature parts compared by meaning: annotations as types, defaults as values.

* Annotations: ``Optional[X]``, ``Union[X, None]`` and ``X | None`` are one type; ``Tuple``,
  ``List``, ``Dict``, ``Set``, ``FrozenSet``, ``Type`` equal their builtin forms; quoted forward
  references are read; union members are order-free; names are spelled through the module's
  imports (``Tensor`` imported from torch is ``torch.Tensor``). ``Any`` stays ``Any``.
* Defaults: a default that names a module constant with a static literal value
  (``chunk_size=FLA_CHUNK_SIZE`` with ``FLA_CHUNK_SIZE = 64``, in the module or imported from the
  tree) is compared as that value.

Both work on the normalised source text the index stores, so nothing new is cached.
"""

from __future__ import annotations

import ast
from typing import Callable, Optional

from portaudit.static.index.model import CONSTANT, ModuleInfo
from portaudit.static.unparse import unparse

Spell = Callable[[str], Optional[str]]   # a module-level name -> its canonical dotted spelling

_BUILTIN_ALIASES = {"Tuple": "tuple", "List": "list", "Dict": "dict", "Set": "set",
                    "FrozenSet": "frozenset", "Type": "type"}
_TYPING_NAMES = set(_BUILTIN_ALIASES) | {"Optional", "Union", "Any", "Callable", "Sequence",
                                          "Iterable", "Mapping", "Literal"}


def _dotted(node: ast.expr) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


class _TypeForm(ast.NodeTransformer):
    def __init__(self, spell: Spell):
        self.spell = spell

    def name_of(self, node: ast.expr) -> Optional[str]:
        """``typing.X`` / ``X`` (typing) -> ``X``; other names spelled through the imports."""
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        spelled = self.spell(head)
        full = (f"{spelled}.{rest}" if rest else spelled) if spelled else dotted
        for prefix in ("typing.", "typing_extensions."):
            if full.startswith(prefix):
                return full[len(prefix):]
        if full in _TYPING_NAMES and spelled is None:
            return full                  # an unimported typing name (quoted annotation)
        return full

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        if isinstance(node.value, str):
            try:
                inner = ast.parse(node.value.strip(), mode="eval").body
            except SyntaxError:
                return node
            return self.visit(inner)
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        name = self.name_of(node)
        if name is None:
            return self.generic_visit(node)
        return ast.Name(id=_BUILTIN_ALIASES.get(name, name), ctx=ast.Load())

    visit_Attribute = visit_Name

    def visit_Subscript(self, node: ast.Subscript) -> ast.AST:
        base = self.name_of(node.value)
        args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "Optional" and len(args) == 1:
            return self.union([self.visit(args[0]), ast.Constant(None)])
        if base == "Union":
            return self.union([self.visit(a) for a in args])
        node.value = self.visit(node.value)
        node.slice = self.visit(node.slice)
        return node

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        if isinstance(node.op, ast.BitOr):
            return self.union([self.visit(node.left), self.visit(node.right)])
        return self.generic_visit(node)

    @staticmethod
    def _members(node: ast.expr) -> list[ast.expr]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return _TypeForm._members(node.left) + _TypeForm._members(node.right)
        return [node]

    def union(self, parts: list[ast.expr]) -> ast.expr:
        members: dict[str, ast.expr] = {}
        for p in parts:
            for m in self._members(p):
                members.setdefault(unparse(m), m)
        keys = sorted(members, key=lambda k: (k == "None", k))
        node = members[keys[0]]
        for k in keys[1:]:
            node = ast.BinOp(left=node, op=ast.BitOr(), right=members[k])
        return node


def canonical_annotation(text: Optional[str], spell: Spell) -> Optional[str]:
    if text is None:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return text
    return unparse(_TypeForm(spell).visit(tree.body))


def constant_value(index, info: ModuleInfo, name: str, depth: int = 0) -> Optional[str]:
    """The literal value of a module constant named in ``info`` (followed through imports inside the
    tree), or None when it is not a static literal."""
    if depth > 5 or not name.isidentifier():
        return None
    d = info.definitions.get(name)
    if d is not None:
        return d.facts.literal_value if d.kind == CONSTANT and len(d.spans) <= 1 else None
    ref = info.imports.get(name)
    if ref is None or ref.name is None or index is None:
        return None
    target = index.module(ref.module)
    if target is None:
        return None
    return constant_value(index, target, ref.name, depth + 1)


def canonical_default(text: Optional[str], index, info: ModuleInfo) -> Optional[str]:
    if text is None:
        return None
    value = constant_value(index, info, text)
    return value if value is not None else text
