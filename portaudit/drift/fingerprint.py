"""Content hashes and similarity tokens of definitions, normalised so pure line moves do not count.

A definition's source (every line span of it, decorators included) is dedented, comment-only
lines and trailing comments are dropped, runs of whitespace collapse to one space and blank lines
go: moving a definition, re-indenting it (into or out of a class or an ``if`` block) or editing
its comments leaves the hash unchanged; any change to its code, docstring, decorators, defaults or
annotations changes it. Tokens for body similarity come from the same normalised text.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from collections import Counter

from portaudit.errors import UsageError
from portaudit.static.index.model import Definition
from portaudit.static.source import read_source, split_lines

_TOKEN_RE = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|\S")
_WS_RE = re.compile(r"\s+")


class SourceCache:
    """File lines read once per path."""

    def __init__(self) -> None:
        self._lines: dict[str, list[str]] = {}

    def lines(self, path: str) -> list[str]:
        if path not in self._lines:
            try:
                self._lines[path] = split_lines(read_source(path).text)
            except UsageError:
                self._lines[path] = []
        return self._lines[path]

    def span(self, path: str, start: int, end: int) -> str:
        return "\n".join(self.lines(path)[start - 1:end])


def _drop_comment(line: str) -> str:
    """The line without a trailing ``# comment`` (left alone when a quote precedes the ``#``)."""
    i = line.find("#")
    if i < 0 or "'" in line[:i] or '"' in line[:i]:
        return line
    return line[:i]


def normalised(text: str) -> str:
    out = []
    for line in text.splitlines():
        code = _WS_RE.sub(" ", _drop_comment(line)).strip()
        if code:
            out.append(code)
    return "\n".join(out)


def definition_text(src: SourceCache, path: str, d: Definition) -> str:
    spans = d.spans or [(d.start, d.end)]
    return "\n\n".join(src.span(path, s, e) for s, e in spans)


def fingerprint(src: SourceCache, path: str, d: Definition) -> str:
    """sha256 of the normalised source of every span of the definition."""
    return hashlib.sha256(normalised(definition_text(src, path, d)).encode()).hexdigest()


def tokens(src: SourceCache, path: str, d: Definition) -> list[str]:
    """Code tokens of the normalised source, the definition's own name replaced by ``$``."""
    own = d.short
    return ["$" if t == own else t for t in _TOKEN_RE.findall(normalised(definition_text(src, path, d)))]


def bag_ratio(a: Counter, la: int, b: Counter, lb: int) -> float:
    """An upper bound of :func:`similarity` from token counts alone (difflib's quick_ratio)."""
    if not la or not lb:
        return 0.0
    small, big = (a, b) if len(a) < len(b) else (b, a)
    common = sum(min(n, big.get(t, 0)) for t, n in small.items())
    return 2.0 * common / (la + lb)


def similarity(a: list[str], b: list[str]) -> float:
    """Ratio of matching tokens in order (difflib), 0..1."""
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
