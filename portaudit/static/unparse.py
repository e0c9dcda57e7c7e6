"""``ast.unparse`` with the same text on every Python portaudit runs on (3.10 and later).

Canonical bodies, signatures and annotations are printed by ``ast.unparse``, and their fingerprints
key findings in a gate's baseline (``PA601:symbol:<hash>``), so the text must not depend on the
Python that prints it. The text is Python 3.11's:
- 3.10 prints a tuple that is an assignment or ``for`` target in parentheses (``(a, b) = f(x)``,
  ``for (i, x) in ...``) and a lambda without parameters as ``lambda : x``: 962 of fla 0.4.0's
  2077 definitions printed differently. Its printer below leaves the parentheses out where 3.11's
  does (where a bare tuple binds loosest: the targets of an assignment, a ``for`` loop or a
  comprehension) and prints ``lambda: x``.
- 3.12 and later let an f-string's replacement fields reuse its quotes (PEP 701) and print
  ``f'{', '.join(x)}'`` where 3.11 printed ``f"{', '.join(x)}"``: 2 of fla 0.6.0's 3319
  definitions, 230 of torch ``_inductor``'s 11,982. Their printer below picks the outer quotes as
  3.11 did, from those that appear in no part of the string.
Measured (torch's ``_inductor`` and ``_dynamo``, fla 0.6.0, portaudit: 22,531 definitions): the
same text on 3.10, 3.11, 3.12 and 3.13, except 7 definitions on 3.10 with a starred subscript
``x[(a, *b)]``, which 3.11 prints ``x[a, *b]``, syntax 3.10 cannot read back; every text parses
back to the tree it was printed from on each of them.
"""

from __future__ import annotations

import ast
import sys


# What the printers below use of Python's own (private) printer class: 3.12's f-string printer, and
# 3.10's tuple and lambda printers.
_USED = ("buffered", "_write_fstring_inner", "_str_literal_helper", "write") if sys.version_info >= (3, 12) \
    else ("set_precedence", "get_precedence", "delimit_if", "items_view", "require_parens", "traverse", "write")


def _printer_module():
    """The module of Python's own printer class (``ast``; ``_ast_unparse`` from 3.14), or None where
    neither has all this module uses (then ``ast.unparse`` as it is)."""
    for name in ("ast", "_ast_unparse"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        printer = getattr(module, "_Unparser", None)
        if printer is not None and hasattr(module, "_ALL_QUOTES") and hasattr(module, "_Precedence") \
                and all(hasattr(printer, used) for used in _USED):
            return module
    return None


_printer = _printer_module()

if _printer is None or sys.version_info[:2] == (3, 11):
    unparse = ast.unparse
elif sys.version_info >= (3, 12):
    _QUOTES = _printer._ALL_QUOTES

    class _Unparser(_printer._Unparser):
        """Python 3.12's printer, with an f-string's quotes chosen as 3.11 chose them."""

        def visit_JoinedStr(self, node):
            self.write("f")
            parts = []
            for value in node.values:
                with self.buffered() as buffer:
                    self._write_fstring_inner(value)
                parts.append(("".join(buffer), isinstance(value, ast.Constant)))
            # the outer quotes appear in no part, replacement fields included (3.12 lets a field
            # reuse them, which older Pythons cannot read)
            quotes, texts = list(_QUOTES), []
            for text, constant in parts:
                text, fitting = self._str_literal_helper(text, quote_types=quotes,
                                                         escape_special_whitespace=constant)
                if set(fitting).isdisjoint(quotes):
                    # no quote fits every part: each part as repr spells it, in triple single quotes
                    texts = [repr('"' + text)[2:-1] for text, _ in parts]
                    quotes = ["'''"]
                    break
                quotes = fitting
                texts.append(text)
            self.write(quotes[0] + "".join(texts) + quotes[0])

    def unparse(node: ast.AST) -> str:
        return _Unparser().visit(node)
else:
    _Precedence = _printer._Precedence

    class _Unparser(_printer._Unparser):
        """Python 3.10's printer, with bare tuples where a tuple needs no parentheses."""

        def visit_Assign(self, node):
            self.set_precedence(_Precedence.TUPLE, *node.targets)
            super().visit_Assign(node)

        def visit_For(self, node):
            self.set_precedence(_Precedence.TUPLE, node.target)
            super().visit_For(node)

        def visit_AsyncFor(self, node):
            self.set_precedence(_Precedence.TUPLE, node.target)
            super().visit_AsyncFor(node)

        def visit_Lambda(self, node):
            a = node.args
            if a.posonlyargs or a.args or a.vararg or a.kwonlyargs or a.kwarg:
                return super().visit_Lambda(node)
            with self.require_parens(_Precedence.TEST, node):      # 3.10: "lambda : x"
                self.write("lambda: ")
                self.set_precedence(_Precedence.TEST, node.body)
                self.traverse(node.body)

        def visit_Tuple(self, node):
            # (3.10's comprehensions already mark their targets with this precedence)
            with self.delimit_if("(", ")", not node.elts or self.get_precedence(node) > _Precedence.TUPLE):
                self.items_view(self.traverse, node.elts)

    def unparse(node: ast.AST) -> str:
        return _Unparser().visit(node)
