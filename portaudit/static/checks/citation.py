"""Citations: the port definition cites the upstream definition it ports (codes PA301-PA306)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from portaudit.static.checks.site import Site
from portaudit.static.citations import Citation
from portaudit.static.findings import Finding
from portaudit.static.index.model import CONSTANT


@dataclass
class UpstreamFile:
    """What the citation rule needs to know about one upstream file."""
    path: str
    exists: bool
    line_count: int = 0


def check_citations(site: Site, citations: list[Citation], malformed: list[str], label: str,
                    version: Optional[str], target_path: str, target_spans: list[tuple[int, int]],
                    files: dict[str, UpstreamFile], upstream_ref: str) -> list[Finding]:
    """Present, right version, file exists, range inside it, the first covers the target."""
    out = [site.finding("PA306", f"cannot read citation '{m}'; write 'Source: path:Lx-Ly "
                                 f"({label} {version})'", detail=m[:60]) for m in malformed]
    ref = dict(upstream_ref=upstream_ref)
    if not citations:
        where = ("as a '# Source:' comment above it" if site.definition is not None
                 and site.definition.kind == CONSTANT else "to the docstring")
        out.append(site.finding("PA301", f"no citation; add 'Source: {upstream_ref} ({label} {version})' "
                                         f"{where} (or run `portaudit fix-citations --write`)", **ref))
        return out
    for c in citations:
        line = c.line or None
        if c.label != label or (version is not None and c.version != version):
            out.append(site.finding("PA302", f"citation '{c.raw}' names {c.label} {c.version}, the manifest "
                                             f"pins {label} {version}", line=line, detail=c.ref, **ref))
        f = files.get(c.path)
        if f is None or not f.exists:
            out.append(site.finding("PA303", f"cited file {c.path} does not exist in the upstream tree",
                                    line=line, detail=c.ref, **ref))
            continue
        if c.start < 1 or c.end < c.start or c.end > f.line_count:
            out.append(site.finding("PA304", f"citation range L{c.start}-L{c.end} is outside {c.path} "
                                             f"({f.line_count} lines)", line=line, detail=c.ref, **ref))
    same_file = [c for c in citations if c.path == target_path]
    first = citations[0]
    uncovered = [s for s in target_spans if not any(c.start <= s[0] and c.end >= s[1] for c in same_file)]
    if first.path != target_path or uncovered or not any(
            first.start <= s[0] and first.end >= s[1] for s in target_spans[:1]):
        out.append(site.finding("PA305", f"first citation {first.ref} does not cover the upstream "
                                         f"definition {upstream_ref}; run `portaudit fix-citations`",
                                line=first.line or None, **ref))
    return out
