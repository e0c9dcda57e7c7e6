"""Markdown for PR comments and the GitHub job summary."""

from __future__ import annotations

from portaudit.static.findings import BASELINE, OPEN, WAIVED
from portaudit.static.reporters.report import Report
from portaudit.static.results import INCOMPLETE, MISSING, WAIVED_STATUS


def _esc(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def render(report: Report) -> str:
    out = ["# portaudit report", ""]
    for r in report.results:
        m = r.manifest
        title = {s.id: s.title for s in m.stages}
        out += [f"## {m.name}", "",
                f"upstream `{m.citation_label} {m.citation_version}` · port `{m.port.package}` · "
                f"manifest `{m.path}`", "",
                "| Stage | module | items | status | % (n/m) |", "|---|---|---:|---|---:|"]
        for row in r.rows():
            syms = [s for s in r.symbols if s.stage == row.stage and s.module == row.module]
            miss = sum(s.status == MISSING for s in syms)
            inc = sum(s.status == INCOMPLETE for s in syms)
            wv = sum(s.status == WAIVED_STATUS for s in syms)
            status = "✅ complete" if not miss and not inc else "❌ " + ", ".join(
                x for x in (f"{miss} missing" if miss else "", f"{inc} incomplete" if inc else "") if x)
            if wv:
                status += f" ({wv} waived)"
            out.append(f"| {row.stage} {_esc(title.get(row.stage, ''))} | `{row.module}` | {row.items} | "
                       f"{status} | {row.percent:.1f}% ({row.passed}/{row.items}) |")
        why = report.manifest_failed(r)
        out += ["", f"**Total: {r.percent:.1f}% ({r.passed}/{r.total}) complete** · "
                    + ("❌ " + "; ".join(why) if why else "✅ pass"), ""]
        gate = report.gates.get(m.name)
        if gate is not None:
            out.append(f"Gate: {'OK' if gate.ok else 'REGRESSION'} · baseline {gate.baseline.min_percent:.1f}% · "
                       f"{len(gate.regressions)} new · {len(gate.fixed)} fixed")
            out += [f"- new: `{k}`" for k in gate.regressions[:50]]
            out += [f"- no longer listed: `{k}`" for k in gate.dropped[:50]]
            out += [f"- no longer checked as a copy: `{k}`" for k in gate.no_longer_copies[:50]]
            if gate.weakened and not (gate.dropped or gate.no_longer_copies):
                out.append(f"- {gate.weakened}")
            out.append("")
        groups = [("Open findings", lambda f: f.status == OPEN),
                  ("Accepted by the baseline", lambda f: f.status == BASELINE),
                  ("Waived", lambda f: f.status == WAIVED)]
        for label, pred in groups:
            fs = [f for f in r.findings if pred(f)]
            if not fs:
                continue
            out += [f"<details><summary>{label} ({len(fs)})</summary>", "",
                    "| code | severity | symbol | location | message |", "|---|---|---|---|---|"]
            for f in fs:
                msg = _esc(f.message) + (f" — waived: {_esc(f.reason or '')}" if f.status == WAIVED else "")
                out.append(f"| {f.code} | {f.severity} | `{f.symbol}` | `{f.file}:{f.line}` | {msg} |")
            out += ["", "</details>", ""]
            diffs = [f for f in fs if f.diff]
            if diffs:
                out += [f"<details><summary>{label}: body diffs ({len(diffs)})</summary>", ""]
                for f in diffs:
                    out += [f"`{f.symbol}` ({f.code})", "", "```diff", f.diff, "```", ""]
                out += ["</details>", ""]
    return "\n".join(out) + "\n"
