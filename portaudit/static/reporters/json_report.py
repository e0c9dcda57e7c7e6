"""JSON: every finding and the per-stage counts. Schema ``portaudit.check/1`` (docs/codes.md)."""

from __future__ import annotations

import json

from portaudit import __version__
from portaudit.static.reporters.report import Report
from portaudit.static.results import ManifestResult, count_findings

SCHEMA = "portaudit.check/1"


def manifest_dict(report: Report, r: ManifestResult) -> dict:
    m = r.manifest
    title = {s.id: s.title for s in m.stages}
    stages = []
    for st in m.stages:
        rows = [row for row in r.rows() if row.stage == st.id]
        items = sum(x.items for x in rows)
        passed = sum(x.passed for x in rows)
        stages.append({
            "id": st.id, "title": title[st.id], "items": items, "passed": passed,
            "percent": round(100.0 * passed / items, 2) if items else 100.0,
            "modules": [{"module": x.module, "items": x.items, "passed": x.passed,
                         "percent": round(x.percent, 2)} for x in rows]})
    gate = report.gates.get(m.name)
    return {
        "name": m.name, "path": str(m.path),
        "upstream": {"package": m.upstream.package, "distributions": m.upstream.distributions,
                     "git": m.upstream.git, "rev": m.upstream.rev, "archive": m.upstream.archive,
                     "version": m.citation_version, "root": str(r.upstream_root)},
        "port": {"package": m.port.package, "root": str(r.port_root), "fidelity": m.port.fidelity},
        "citations": {"style": m.citations.style, "file": m.citations.file, "reason": m.citations.reason},
        "summary": {"symbols": r.total, "passed": r.passed, "percent": round(r.percent, 2),
                    "findings": count_findings(r.findings),
                    "failed": bool(report.manifest_failed(r)), "why": report.manifest_failed(r)},
        "stages": stages,
        "symbols": [{"symbol": s.symbol, "stage": s.stage, "module": s.module, "kind": s.kind,
                     "status": s.status, "port_symbol": s.port_symbol, "port_file": s.port_file,
                     "port_line": s.port_line, "upstream_ref": s.upstream_ref, "rules": s.rules,
                     "accounted_by": s.accounted_by, "deviation": s.deviation,
                     "body": s.body.to_dict() if s.body is not None else None,
                     "findings": [f.key for f in s.findings]} for s in r.symbols],
        "findings": [f.to_dict() for f in r.findings],
        "waivers": [{"symbol": w.symbol, "code": w.code, "reason": w.reason} for w in m.waivers],
        "deviations": [{"symbol": d.symbol, "reason": d.reason, "fixed_upstream_in": d.fixed_upstream_in}
                       for d in m.deviations],
        "gate": gate.to_dict() if gate is not None else None,
    }


def report_dict(report: Report) -> dict:
    passed = sum(r.passed for r in report.results)
    total = sum(r.total for r in report.results)
    return {"schema": SCHEMA, "tool": {"name": "portaudit", "version": __version__},
            "summary": {"manifests": len(report.results), "symbols": total, "passed": passed,
                        "percent": round(100.0 * passed / total, 2) if total else 100.0,
                        "failed": report.failed, "fail_under": report.fail_under},
            "manifests": [manifest_dict(report, r) for r in report.results]}


def render(report: Report) -> str:
    return json.dumps(report_dict(report), indent=2) + "\n"
