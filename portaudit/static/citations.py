"""Provenance citations: ``Source: fla/ops/kda/chunk.py:L17-L69 (fla 0.4.0)``.

A ported definition carries one or more such lines in its docstring (the first covers the
upstream definition of the same name, the others the Triton kernels it replaces); a constant may
carry ``# Source: ...`` on the comment line(s) right above it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from portaudit.static.source import split_lines

CITATION_RE = re.compile(
    r"Source:\s*(?P<path>[\w./-]+\.py):L(?P<start>\d{1,9})(?:-L(?P<end>\d{1,9}))?\b"
    r"\s*\((?P<label>[\w.-]+)\s+(?P<version>[^\s)]+)\)")
# Anything that looks like an attempt at a citation, to report malformed ones.
LOOSE_RE = re.compile(r"\bSource:\s*\S")


@dataclass(frozen=True)
class Citation:
    path: str          # path inside the upstream root, e.g. fla/ops/kda/chunk.py
    start: int
    end: int
    label: str         # e.g. "fla"
    version: str       # e.g. "0.4.0"
    line: int = 0      # line of the citation in the port file (0 when unknown)
    raw: str = ""

    @property
    def ref(self) -> str:
        return f"{self.path}:L{self.start}-L{self.end}"

    def covers(self, path: str, start: int, end: int) -> bool:
        return self.path == path and self.start <= start and self.end >= end


def format_citation(path: str, start: int, end: int, label: str, version: str) -> str:
    return f"Source: {path}:L{start}-L{end} ({label} {version})"


def parse_citations(text: str, first_line: int = 0) -> list[Citation]:
    """All citations in ``text``; ``first_line`` is the file line of the text's first line."""
    out = []
    for offset, line in enumerate(split_lines(text)):
        for m in CITATION_RE.finditer(line):
            start = int(m.group("start"))
            end = int(m.group("end") or start)
            out.append(Citation(m.group("path"), start, end, m.group("label"), m.group("version"),
                                first_line + offset if first_line else 0, m.group(0)))
    return out


def malformed_lines(text: str) -> list[str]:
    """Lines that start a ``Source:`` citation the parser cannot read."""
    return [ln.strip() for ln in split_lines(text) if LOOSE_RE.search(ln) and not CITATION_RE.search(ln)]


def parse_one(text: str) -> Optional[Citation]:
    found = parse_citations(text)
    return found[0] if found else None
