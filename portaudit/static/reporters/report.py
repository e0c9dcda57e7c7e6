"""The input of every reporter: the manifests' results, their gate outcomes and the pass/fail rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from portaudit.static.baseline import GateResult
from portaudit.static.findings import ERROR, OPEN
from portaudit.static.results import ManifestResult


@dataclass
class Report:
    results: list[ManifestResult]
    gates: dict[str, GateResult] = field(default_factory=dict)   # manifest name -> gate outcome
    fail_under: Optional[float] = None
    verbose: bool = False
    bodies: bool = False          # print the per-entry body-similarity table (--bodies)

    def manifest_failed(self, r: ManifestResult) -> list[str]:
        """Why this manifest fails (empty when it passes)."""
        why = []
        gate = self.gates.get(r.manifest.name)
        if gate is not None:
            if gate.completeness_drop:
                why.append(f"completeness {r.percent:.1f}% fell below the baseline "
                           f"{gate.baseline.min_percent:.1f}%")
            if gate.regressions:
                why.append(f"{len(gate.regressions)} new finding(s) not in the baseline")
            if gate.weakened:
                why.append(gate.weakened)
        if self.fail_under is not None and r.percent + 1e-9 < self.fail_under:
            why.append(f"completeness {r.percent:.1f}% is under --fail-under {self.fail_under:g}%")
        if gate is None and self.fail_under is None:
            n = sum(1 for f in r.findings if f.status == OPEN and f.severity == ERROR)
            if n:
                why.append(f"{n} open error finding(s)")
        return why

    @property
    def failed(self) -> bool:
        return any(self.manifest_failed(r) for r in self.results)
