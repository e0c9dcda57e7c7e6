"""What a manifest audit yields: one result per entry (rule outcomes, findings, status) and their roll-up.

The runner (:mod:`portaudit.static.checks.runner`) fills these; the gate (:mod:`.baseline`) and the
reporters read only them. Kept apart from :mod:`.findings` because a result holds its
:class:`~.manifest.Manifest`, and the manifest loader reads the code table in :mod:`.findings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from portaudit.static.findings import BASELINE, ERROR, OPEN, WAIVED, Finding
from portaudit.static.manifest import Manifest

# outcome of one rule family for one entry
PASS, FAIL, SKIP = "pass", "fail", "n/a"

# symbol status
OK = "ok"
WAIVED_STATUS = "waived"
INCOMPLETE = "incomplete"
MISSING = "missing"


def display_path(path: str | Path) -> str:
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):   # RuntimeError: a link loop (Python < 3.13)
        return str(p)


@dataclass
class SymbolResult:
    symbol: str
    stage: str
    module: str                    # upstream module the entry belongs to (table row)
    kind: str
    port_symbol: str
    port_file: Optional[str] = None
    port_line: Optional[int] = None
    upstream_ref: Optional[str] = None
    rules: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    accounted_by: Optional[str] = None
    deviation: Optional[str] = None
    body: Optional[Any] = None     # checks.comparer.BodyFigure: how close the body is (copies, --bodies)

    @property
    def status(self) -> str:
        errors = [f for f in self.findings if f.severity == ERROR and f.status in (OPEN, BASELINE)]
        if any(f.code in ("PA101", "PA102", "PA105", "PA501") for f in errors):
            return MISSING
        if errors:
            return INCOMPLETE
        if any(f.status == WAIVED for f in self.findings):
            return WAIVED_STATUS
        return OK

    @property
    def complete(self) -> bool:
        return self.status in (OK, WAIVED_STATUS)


@dataclass
class ModuleRow:
    stage: str
    module: str
    items: int = 0
    passed: int = 0

    @property
    def percent(self) -> float:
        return 100.0 * self.passed / self.items if self.items else 100.0


@dataclass
class ManifestResult:
    manifest: Manifest
    upstream_root: Path
    port_root: Path
    symbols: list[SymbolResult] = field(default_factory=list)
    hygiene: list[Finding] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return [f for s in self.symbols for f in s.findings] + self.hygiene

    @property
    def total(self) -> int:
        return len(self.symbols)

    @property
    def passed(self) -> int:
        return sum(1 for s in self.symbols if s.complete)

    @property
    def percent(self) -> float:
        return 100.0 * self.passed / self.total if self.total else 100.0

    def rows(self) -> list[ModuleRow]:
        rows: dict[tuple[str, str], ModuleRow] = {}
        for s in self.symbols:
            row = rows.setdefault((s.stage, s.module), ModuleRow(s.stage, s.module))
            row.items += 1
            row.passed += int(s.complete)
        return list(rows.values())


def count_findings(findings: list[Finding]) -> dict[str, int]:
    out = {"error": 0, "warning": 0, "waived": 0, "baseline": 0, "open": 0}
    for f in findings:
        out[f.severity] += 1
        out[f.status] += 1
    return out
