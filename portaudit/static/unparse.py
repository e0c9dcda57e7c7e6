"""``ast.unparse`` with the same text on every Python portaudit runs on (3.10 and later).

Canonical bodies, signatures and annotations are printed by ``ast.unparse``, and their fingerprints
key findings in a gate's baseline (``PA601:symbol:<hash>``), so the text must not depend on the
Python that prints it. Python 3.10 prints a tuple that is an assignment or ``for`` target in
parentheses (``(a, b) = f(x)``, ``for (i, x) in ...``), 3.11 and later without (``a, b = f(x)``),
and a lambda without parameters as ``lambda : x`` (3.11: ``lambda: x``); on fla 0.4.0, 962 of its
2077 definitions printed differently. On 3.10 the printer below prints these two as 3.11 does (a
tuple bare where a bare tuple binds loosest: the targets of an assignment, a ``for`` loop or a
comprehension); everything else is Python's own printer. With it, all of fla 0.4.0's definitions
print the same on 3.10, 3.11 and 3.13, and all of fla 0.6.0's but two. Two differences remain: a
subscript with a starred element, ``x[(a, *b)]``, which 3.11 prints ``x[a, *b]`` (syntax 3.10 cannot
read back); and f-strings with quotes inside their replacement fields, whose outer quotes Python
3.12 and later choose differently (``f"{', '.join(x)}"`` on 3.11, ``f'{', '.join(x)}'`` from 3.12:
those 2 of fla 0.6.0's 3319 definitions, 2% of those of torch's ``_inductor``).
"""

from __future__ import annotations

import ast
import sys

if sys.version_info >= (3, 11):
    unparse = ast.unparse
else:
    _Precedence = ast._Precedence

    class _Unparser(ast._Unparser):
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
