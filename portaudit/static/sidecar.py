"""The citation sidecar: provenance kept next to the manifest, for ports that will not edit vendored files.

A manifest with ``citations: {style: sidecar, file: vllm.citations.json}`` is checked against this
JSON record instead of ``Source:`` lines in docstrings; ``portaudit fix-citations --write`` writes
it. Schema ``portaudit.citations/1``::

    {"schema": "portaudit.citations/1", "manifest": "vllm-0.10.2",
     "upstream": {"label": "fla", "version": "<rev or release>"},
     "records": {"<port symbol>": {"symbol": "<upstream symbol>",
                                   "source": "fla/ops/common/chunk_o.py:L25-L103",
                                   "port_fingerprint": "<sha256 of the port's canonical body>"}}}

Keys are sorted and the file ends with a newline, so a rewrite that changes nothing is byte-equal.
The records become :class:`~portaudit.static.citations.Citation` objects and go through the same
citation rules (PA301-PA305) as docstring citations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from portaudit.errors import UsageError
from portaudit.static.citations import Citation

SCHEMA = "portaudit.citations/1"
_SOURCE_RE = re.compile(r"^(?P<path>[\w./-]+\.py):L(?P<start>\d+)-L(?P<end>\d+)$")


@dataclass
class Record:
    symbol: str
    source: str
    port_fingerprint: Optional[str] = None


@dataclass
class Sidecar:
    path: Path
    label: str
    version: Optional[str]
    manifest: str
    records: dict[str, Record] = field(default_factory=dict)
    exists: bool = False

    def citation(self, port_symbol: str) -> Optional[Citation]:
        rec = self.records.get(port_symbol)
        if rec is None:
            return None
        m = _SOURCE_RE.match(rec.source)
        if m is None:
            return None
        return Citation(m.group("path"), int(m.group("start")), int(m.group("end")), self.label,
                        self.version or "", 0, f"{rec.source} ({self.label} {self.version})")

    def malformed(self, port_symbol: str) -> list[str]:
        rec = self.records.get(port_symbol)
        return [rec.source] if rec is not None and not _SOURCE_RE.match(rec.source) else []

    def render(self) -> str:
        data = {"schema": SCHEMA, "manifest": self.manifest,
                "upstream": {"label": self.label, "version": self.version},
                "records": {k: {"symbol": r.symbol, "source": r.source,
                                **({"port_fingerprint": r.port_fingerprint} if r.port_fingerprint else {})}
                            for k, r in sorted(self.records.items())}}
        return json.dumps(data, indent=1, sort_keys=True) + "\n"


def load_sidecar(path: Path, manifest: str, label: str) -> Sidecar:
    """Read a sidecar; a missing file is an empty one (every record then reads as missing)."""
    if not path.is_file():
        return Sidecar(path, label, None, manifest)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ValueError(f"schema is {data.get('schema') if isinstance(data, dict) else None!r}, "
                             f"expected {SCHEMA!r}")
        up = data.get("upstream") or {}
        records = {}
        for port_symbol, rec in (data.get("records") or {}).items():
            if not isinstance(rec, dict) or not isinstance(rec.get("symbol"), str) \
                    or not isinstance(rec.get("source"), str):
                raise ValueError(f"record '{port_symbol}' needs 'symbol' and 'source' strings")
            records[str(port_symbol)] = Record(rec["symbol"], rec["source"], rec.get("port_fingerprint"))
        return Sidecar(path, str(up.get("label") or label), up.get("version"), manifest, records, True)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as exc:
        raise UsageError(f"{path}: invalid citation sidecar ({exc}); regenerate it with "
                         "`portaudit fix-citations --write`")


def planned_sidecars(manifest, upstream, port) -> dict[Path, str]:
    """The sidecar text each sidecar file of ``manifest`` should hold now: one record per entry (and
    port location) whose citation style is ``sidecar``. ``upstream``/``port`` are TreeIndexes."""
    from portaudit.static.body import Scope, canonical
    from portaudit.static.fidelity import SIDECAR

    out: dict[Path, Sidecar] = {}
    for entry in manifest.entries:
        policy = manifest.citation_policy(entry)
        if policy.style != SIDECAR:
            continue
        path = (manifest.path.parent / policy.file).resolve()
        car = out.setdefault(path, Sidecar(path, manifest.citation_label, manifest.citation_version,
                                           manifest.name))
        up = upstream.resolve(entry.symbol)
        if up is None:
            continue
        d = up.definition
        start = min(s for s, _ in d.spans or [(d.start, d.end)])
        end = max(e for _, e in d.spans or [(d.start, d.end)])
        source = f"{upstream.relpath(up.module.path)}:L{start}-L{end}"
        for psym in manifest.port_symbols(entry):
            res = port.resolve(psym)
            if res is None:
                continue
            canon = canonical(res.definition, Scope.of(res.module, port))
            car.records[psym] = Record(entry.symbol, source, canon.fingerprint if canon else None)
    return {p: car.render() for p, car in out.items()}
