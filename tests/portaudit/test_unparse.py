"""``portaudit.static.unparse`` prints the same text on every Python portaudit supports: canonical
bodies and their fingerprints (which key findings in a gate's baseline) must not change with the
Python that runs the audit. Python 3.10's ``ast.unparse`` printed tuple targets in parentheses and
``lambda : x`` (962 of fla 0.4.0's 2077 definitions differed from 3.11's text), 3.12's f-strings
with other quotes. The expected texts are 3.11's; CI runs this file on Python 3.10 and 3.13 too
(tools/check_python_versions.sh)."""

from __future__ import annotations

import ast

import pytest

from portaudit.static.unparse import unparse

CASES = [
    ("a, b = f(x)", "a, b = f(x)"),
    ("(a,) = f(x)", "a, = f(x)"),
    ("((a, b), c) = y", "(a, b), c = y"),
    ("x = a, b = f()", "x = a, b = f()"),
    ("for (i, x) in enumerate(y):\n    pass", "for i, x in enumerate(y):\n    pass"),
    ("async def g():\n    async for (i, x) in y:\n        pass", "async def g():\n    async for i, x in y:\n        pass"),
    ("z = [u + v for (u, v) in pairs]", "z = [u + v for u, v in pairs]"),
    ("z = {k: v for k, (v, w) in items}", "z = {k: v for k, (v, w) in items}"),
    ("def f():\n    return a, b", "def f():\n    return (a, b)"),
    ("x = ()", "x = ()"),
    ("x = 1,", "x = (1,)"),
    ("f(lambda : 1, lambda x: x, lambda *a, **k: 0)", "f(lambda: 1, lambda x: x, lambda *a, **k: 0)"),
    ("y = x[a, b]", "y = x[a, b]"),
    ("y = x[(a, b), c]", "y = x[(a, b), c]"),
    ("s = f'{a!r:>{w}}'", "s = f'{a!r:>{w}}'"),
    ("s = f\"{', '.join(x)}\"", "s = f\"{', '.join(x)}\""),
    ("s = f\"{x['k']}: {y!s}\\n\"", "s = f\"{x['k']}: {y!s}\\n\""),
    ("s = f'{x}'", "s = f'{x}'"),
    ("t = a if b else (c, d)", "t = a if b else (c, d)"),
    ("del a, b", "del a, b"),
    ("with f() as (a, b):\n    pass", "with f() as (a, b):\n    pass"),
]


@pytest.mark.parametrize("source, expected", CASES, ids=[c[1].splitlines()[0] for c in CASES])
def test_the_text_is_python_311s(source, expected):
    assert unparse(ast.parse(source)) == expected


def test_the_text_parses_to_the_same_tree():
    for source, _ in CASES:
        tree = ast.parse(source)
        assert ast.dump(ast.parse(unparse(tree))) == ast.dump(tree), source
