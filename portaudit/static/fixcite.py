"""Write or refresh provenance citations from the index (like transformers' `make fix-copies`).

For every manifest entry the port defines, the first citation must be
``Source: <upstream file>:L<start>-L<end> (<label> <version>)`` covering the same-named upstream
definition. This module plans line edits that make it so:

* a stale first citation (range, path, label or version) is rewritten in place;
* a missing citation is inserted: as the docstring's last line, as a new docstring, or for a
  constant as a ``# Source:`` comment above it;
* an extra (kernel) citation whose range no longer matches a definition is moved to the
  upstream definition it overlaps most;
* an upstream ``@triton.jit`` kernel that nothing accounts for gets a citation line in the port
  function that implements the upstream wrapper which launches it (when that function already
  carries a citation block).

Edits are planned for all files first, every edited file must still compile, and only then are
files replaced atomically: never half-written. Without ``write`` nothing is changed.

Only the bytes of the citations change: a file keeps its encoding (PEP 263, BOM), its line endings
(CRLF, CR, mixed: inserted lines take their neighbour's ending), its form feeds and U+2028/U+0085
inside strings (lines are counted as Python counts them, :mod:`portaudit.static.source`), its
permission bits, its symbolic link (the target is rewritten) and its hard links.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from portaudit.errors import UsageError
from portaudit.safe_io import is_regular_file, read_regular, write_file
from portaudit.static.citations import Citation, format_citation
from portaudit.static.fidelity import DOCSTRING
from portaudit.static.index.model import CONSTANT, KERNEL, Definition, ModuleInfo
from portaudit.static.index.tree import TreeIndex
from portaudit.static.manifest import Manifest
from portaudit.static.source import MAX_SOURCE_BYTES, line_ending, read_source, split_lines


@dataclass
class Edit:
    file: str
    line: int                  # 1-based line the edit applies to
    action: str                # "replace" (line -> new lines) or "insert" (new lines before line)
    new: list[str]
    symbol: str
    why: str


@dataclass
class FixPlan:
    edits: list[Edit] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    touched: set = field(default_factory=set)      # (file, line) already edited

    def files(self) -> list[str]:
        return sorted({e.file for e in self.edits})


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip())]


class _Planner:
    def __init__(self, manifest: Manifest, up: TreeIndex, port: TreeIndex, plan: FixPlan):
        self.m = manifest
        self.up = up
        self.port = port
        self.plan = plan
        self.label = manifest.citation_label
        self.version = manifest.citation_version
        if self.version is None:
            raise UsageError(f"{manifest.path}: cannot tell the upstream version for citations; "
                             "set upstream.version")
        self._lines: dict[str, list[str]] = {}

    def lines(self, path: str) -> list[str]:
        if path not in self._lines:
            self._lines[path] = split_lines(read_source(path).text)
        return self._lines[path]

    def add(self, edit: Edit) -> None:
        key = (edit.file, edit.line)
        if key in self.plan.touched:
            return
        self.plan.touched.add(key)
        self.plan.edits.append(edit)

    def cite(self, info: ModuleInfo, d: Definition) -> str:
        return format_citation(self.up.relpath(info.path), d.start, d.end, self.label, self.version)

    # -- per entry -------------------------------------------------------------------------
    def entry(self, symbol: str, port_symbol: str) -> None:
        up = self.up.resolve(symbol)
        pres = self.port.resolve(port_symbol)
        if up is None or pres is None:
            return
        if up.definition.kind == KERNEL and pres.definition.name != up.definition.name:
            return
        pd, path = pres.definition, pres.module.path
        want = self.cite(up.module, up.definition)
        if pd.citations:
            first = pd.citations[0]
            if not self.first_ok(pd.citations, self.up.relpath(up.module.path), up.definition):
                self.replace(path, first, want, symbol, "refresh the first citation")
            for c in pd.citations[1:]:
                self.refresh_extra(path, c, symbol)
        else:
            self.insert(path, pd, want, symbol)

    def in_file(self, c: Citation) -> bool:
        p = self.up.root / c.path
        if ".." in Path(c.path).parts or not is_regular_file(p):
            return False
        n = read_regular(p, MAX_SOURCE_BYTES, "cited upstream file").count(b"\n")
        return 1 <= c.start <= c.end <= n

    def first_ok(self, cits: list[Citation], target: str, d: Definition) -> bool:
        """The check's rule: right version, in the file, first covers the definition's first span
        and the citations of that file together cover every span. Wider citations are kept."""
        first = cits[0]
        spans = d.spans or [(d.start, d.end)]
        if first.label != self.label or first.version != self.version or first.path != target:
            return False
        if not self.in_file(first) or not (first.start <= spans[0][0] and first.end >= spans[0][1]):
            return False
        same = [c for c in cits if c.path == target]
        return all(any(c.start <= a and c.end >= b for c in same) for a, b in spans)

    @staticmethod
    def _same(c: Citation, want: str) -> bool:
        return format_citation(c.path, c.start, c.end, c.label, c.version) == want

    def replace(self, path: str, c: Citation, want: str, symbol: str, why: str) -> None:
        if not c.line:
            return
        line = self.lines(path)[c.line - 1]
        if c.raw not in line:
            self.plan.notes.append(f"{path}:{c.line}: cannot find the citation text to refresh it")
            return
        self.add(Edit(path, c.line, "replace", [line.replace(c.raw, want, 1)], symbol,
                      f"{why}: {c.ref} -> {want.split(' ')[1]}"))

    def refresh_extra(self, path: str, c: Citation, symbol: str) -> None:
        info = self.module_for_path(c.path)
        if info is None:
            return
        defs = [d for d in info.definitions.values() if "." not in d.name]
        if any(c.start <= a and c.end >= b for d in defs for a, b in (d.spans or [(d.start, d.end)])) \
                and c.label == self.label \
                and c.version == self.version and self.in_file(c):
            return
        best, overlap = None, 0
        for d in defs:
            ov = min(d.end, c.end) - max(d.start, c.start) + 1
            if ov > overlap:
                best, overlap = d, ov
        if best is None:
            self.plan.notes.append(f"{path}:{c.line}: citation {c.ref} overlaps no upstream definition; "
                                   "fix it by hand")
            return
        want = self.cite(info, best)
        if not self._same(c, want):
            self.replace(path, c, want, symbol, f"refresh the citation of {best.name}")

    def module_for_path(self, relpath: str) -> Optional[ModuleInfo]:
        if not relpath.endswith(".py"):
            return None
        mod = relpath[:-3].replace("/", ".")
        if mod.endswith(".__init__"):
            mod = mod[: -len(".__init__")]
        return self.up.module(mod)

    def insert(self, path: str, pd: Definition, want: str, symbol: str) -> None:
        lines = self.lines(path)
        if pd.kind == CONSTANT or not pd.body_start:
            indent = _indent(lines[pd.start - 1])
            self.add(Edit(path, pd.start, "insert", [f"{indent}# {want}"], symbol, "add the citation"))
            return
        if pd.doc_span is None:
            indent = " " * pd.body_indent
            self.add(Edit(path, pd.body_start, "insert", [f'{indent}"""{want}"""'], symbol,
                          "add a docstring with the citation"))
            return
        s, e = pd.doc_span
        indent = " " * pd.body_indent
        last = lines[e - 1]
        quote = '"""' if last.rstrip().endswith('"""') else ("'''" if last.rstrip().endswith("'''") else None)
        if quote is None:
            self.plan.notes.append(f"{path}:{e}: cannot place a citation in this docstring; add "
                                   f"'{want}' by hand")
            return
        body = last.rstrip()[: -3]
        if s == e:   # one-line docstring: """Summary."""
            self.add(Edit(path, e, "replace", [body, "", f"{indent}{want}", f"{indent}{quote}"], symbol,
                          "add the citation to the docstring"))
        elif body.strip():   # closing quotes after text
            self.add(Edit(path, e, "replace", [body, "", f"{indent}{want}", f"{indent}{quote}"], symbol,
                          "add the citation to the docstring"))
        else:
            prev_blank = not lines[e - 2].strip()
            new = ([] if prev_blank else [""]) + [f"{indent}{want}"]
            self.add(Edit(path, e, "insert", new, symbol, "add the citation to the docstring"))

    # -- kernels ---------------------------------------------------------------------------
    def kernel(self, symbol: str, port_citations: list[Citation]) -> None:
        up = self.up.resolve(symbol)
        if up is None or up.definition.kind != KERNEL:
            return
        kpath = self.up.relpath(up.module.path)
        k = up.definition
        if any(c.covers(kpath, k.start, k.end) for c in port_citations):
            return
        port_mod = self.m.port_name_for(up.module.module)
        if self.port.resolve(f"{port_mod}.{k.name}") is not None:
            return
        callers = [d for d in up.module.definitions.values()
                   if "." not in d.name and d.kind != KERNEL and k.name in d.uses]
        for caller in callers:
            pres = self.port.resolve(f"{port_mod}.{caller.name}")
            if pres is None or not pres.definition.citations:
                continue
            last = pres.definition.citations[-1]
            if not last.line:
                continue
            line = self.lines(pres.module.path)[last.line - 1]
            want = format_citation(kpath, k.start, k.end, self.label, self.version)
            self.add(Edit(pres.module.path, last.line + 1, "insert", [f"{_indent(line)}{want}"], symbol,
                          f"cite kernel {k.name} from {caller.name}"))
            return
        self.plan.notes.append(f"kernel {symbol} is not accounted for and no port function implementing "
                               "its launcher carries a citation block; cite it by hand")


def plan_fixes(manifest: Manifest, up: TreeIndex, port: TreeIndex, plan: Optional[FixPlan] = None) -> FixPlan:
    plan = plan if plan is not None else FixPlan()
    p = _Planner(manifest, up, port, plan)
    seen = set()
    kernels = []
    for entry in manifest.entries:
        if entry.symbol in seen or manifest.citation_policy(entry).style != DOCSTRING:
            continue     # a sidecar is written by sidecar.planned_sidecars; "off" needs nothing
        seen.add(entry.symbol)
        p.entry(entry.symbol, manifest.port_symbol(entry))
        if entry.kind == KERNEL:
            kernels.append(entry.symbol)
    port_mods = {port.split_symbol(manifest.port_symbol(e))[0] for e in manifest.entries}
    cits = [c for m in port_mods if m for info in [port.module(m)] if info
            for d in info.definitions.values() for c in d.citations]
    for k in kernels:
        p.kernel(k, cits)
    return plan


@dataclass
class FileChange:
    path: str
    old: str          # decoded text before and after (for the diff)
    new: str
    data: bytes       # the new bytes, in the file's own encoding


def _with_endings(bodies: list[str], last_ending: str, newline: str) -> list[str]:
    return [b + newline for b in bodies[:-1]] + [bodies[-1] + last_ending] if bodies else []


def apply_edits(edits: list[Edit]) -> dict[str, FileChange]:
    """The new content of every edited file; edits never overlap (one per line).

    A replaced line keeps its own ending; inserted lines take the ending of the line they are
    inserted before (or the file's first ending). Every new file must compile.
    """
    out: dict[str, FileChange] = {}
    by_file: dict[str, list[Edit]] = {}
    for e in edits:
        by_file.setdefault(e.file, []).append(e)
    for path, es in by_file.items():
        src = read_source(path)
        lines = split_lines(src.text, keepends=True)
        first_nl = next((line_ending(ln) for ln in lines if line_ending(ln)), "\n")
        for e in sorted(es, key=lambda x: (x.line, x.action == "replace"), reverse=True):
            i = e.line - 1
            if e.action == "replace":
                ending = line_ending(lines[i])
                lines[i:i + 1] = _with_endings(e.new, ending, ending or first_nl)
            else:
                if i == len(lines) and lines and not line_ending(lines[-1]):
                    lines[-1] += first_nl   # appending after an unterminated last line
                nl = line_ending(lines[i]) if i < len(lines) and line_ending(lines[i]) else first_nl
                lines[i:i] = [b + nl for b in e.new]
        new = "".join(lines)
        data = src.encode(new)
        try:
            compile(data, path, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise UsageError(f"{path}: the planned citation edits would not compile ({exc.msg} at line "
                             f"{exc.lineno}); nothing was written")
        except (ValueError, RecursionError, MemoryError) as exc:
            raise UsageError(f"{path}: the planned citation edits cannot be checked ({type(exc).__name__}); "
                             "nothing was written")
        out[path] = FileChange(path, src.text, new, data)
    return out


def unified_diff(changes: dict[str, FileChange]) -> str:
    chunks = []
    for path, ch in sorted(changes.items()):
        rel = os.path.relpath(path)
        chunks.extend(difflib.unified_diff(split_lines(ch.old, keepends=True), split_lines(ch.new, keepends=True),
                                           fromfile=f"a/{rel}", tofile=f"b/{rel}"))
    return "".join(chunks)


def write_changes(changes: dict[str, FileChange]) -> None:
    """Write every file (each atomically, through links, keeping its mode), after all new contents
    were built and compiled."""
    for path, ch in changes.items():
        write_file(path, ch.data, what="port module")
