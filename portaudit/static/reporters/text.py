"""Rich stage tables (Stage | module | items | status | % (n/m)), a total line, and with ``-v``
a per-symbol drill-down of each rule's result and the finding messages."""

from __future__ import annotations

import io
from typing import Iterable

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from portaudit.static.findings import BASELINE, ERROR, OPEN, WAIVED
from portaudit.static.reporters.report import Report
from portaudit.static.results import (FAIL, INCOMPLETE, MISSING, OK, PASS, WAIVED_STATUS, ManifestResult,
                                      display_path)

ICON = {OK: ("✓", "green"), WAIVED_STATUS: ("✓", "yellow"), INCOMPLETE: ("✗", "red"),
        MISSING: ("✗", "red")}
RULE_STYLE = {PASS: "green", FAIL: "red", "waived": "yellow", "n/a": "dim", "off": "dim"}


def _pct(passed: int, total: int) -> str:
    pct = 100.0 * passed / total if total else 100.0
    return f"{pct:5.1f}% ({passed}/{total})"


def _status_cell(symbols) -> Text:
    missing = sum(1 for s in symbols if s.status == MISSING)
    incomplete = sum(1 for s in symbols if s.status == INCOMPLETE)
    waived = sum(1 for s in symbols if s.status == WAIVED_STATUS)
    if not missing and not incomplete:
        t = Text("complete", style="green")
        if waived:
            t.append(f" ({waived} waived)", style="yellow")
        return t
    parts = []
    if missing:
        parts.append(f"{missing} missing")
    if incomplete:
        parts.append(f"{incomplete} incomplete")
    if waived:
        parts.append(f"{waived} waived")
    return Text(", ".join(parts), style="red" if not (missing == 0 and incomplete == 0) else "green")


def stage_table(r: ManifestResult) -> Table:
    title = {s.id: s.title for s in r.manifest.stages}
    table = Table(show_lines=False, header_style="bold", pad_edge=False)
    table.add_column("Stage", no_wrap=True)
    widest = max((len(s.module) for s in r.symbols), default=6)
    table.add_column("module", overflow="fold", min_width=min(widest, 48))
    table.add_column("items", justify="right")
    table.add_column("status")
    table.add_column("% (n/m)", justify="right", no_wrap=True)
    last_stage = None
    for row in r.rows():
        syms = [s for s in r.symbols if s.stage == row.stage and s.module == row.module]
        stage_cell = f"{row.stage} {title.get(row.stage, '')}" if row.stage != last_stage else ""
        if row.stage != last_stage and last_stage is not None:
            table.add_section()
        last_stage = row.stage
        table.add_row(stage_cell, row.module, str(row.items), _status_cell(syms),
                      _pct(row.passed, row.items))
    return table


def total_line(report: Report, r: ManifestResult) -> Text:
    fs = r.findings
    n_err = sum(1 for f in fs if f.severity == ERROR and f.status != WAIVED)
    n_warn = sum(1 for f in fs if f.severity != ERROR and f.status != WAIVED)
    n_waived = sum(1 for f in fs if f.status == WAIVED)
    t = Text("Total: ", style="bold")
    t.append(f"{r.percent:.1f}% ({r.passed}/{r.total}) complete", style="green" if r.passed == r.total else "bold")
    t.append(f" · {n_err} error(s), {n_warn} warning(s), {n_waived} waived")
    gate = report.gates.get(r.manifest.name)
    if gate is not None:
        n_base = sum(1 for f in fs if f.status == BASELINE)
        t.append("\nGate: ", style="bold")
        if gate.ok:
            t.append("OK", style="green")
        else:
            t.append("REGRESSION", style="bold red")
        t.append(f" · baseline {gate.baseline.min_percent:.1f}% "
                 f"{'(' + str(gate.baseline.path) + ')' if gate.baseline.exists else '(none: strict)'}"
                 f" · {n_base} accepted finding(s) · {len(gate.regressions)} new · {len(gate.fixed)} fixed")
        if gate.fixed and gate.ok:
            t.append(" → tighten with --update-baseline", style="cyan")
        for label, items in (("new", gate.regressions), ("no longer listed", gate.dropped),
                             ("no longer checked as a copy", gate.no_longer_copies)):
            for item in items[:20]:
                t.append(f"\n  {label}: {item}", style="red")
            if len(items) > 20:
                t.append(f"\n  ... and {len(items) - 20} more", style="red")
        if gate.weakened:
            t.append("\n  (a smaller or weaker contract is a regression: if that is meant, record it with "
                     "`portaudit gate --update-baseline --force`)", style="red")
    why = report.manifest_failed(r)
    if why:
        t.append("\nFAIL: " + "; ".join(why), style="bold red")
    return t


def drill_down(r: ManifestResult) -> Iterable[RenderableType]:
    for s in r.symbols:
        icon, style = ICON[s.status]
        head = Text(f"{icon} ", style=style)
        head.append(s.symbol, style="bold")
        head.append(f" [{s.kind}] → {s.port_symbol}")
        if s.port_file:
            head.append(f"  {s.port_file}:{s.port_line}", style="dim")
        yield head
        rules = Text("    ")
        for fam, outcome in s.rules.items():
            rules.append(f"{fam} ", style="dim")
            rules.append(outcome, style=RULE_STYLE.get(outcome, ""))
            rules.append("  ")
        yield rules
        if s.accounted_by:
            yield Text(f"    kernel accounted for: {s.accounted_by}", style="dim")
        if s.deviation:
            yield Text(f"    deviation: {s.deviation}", style="cyan")
        for f in s.findings:
            line = Text(f"    {f.code} ", style="red" if f.severity == ERROR and f.status == OPEN else "yellow")
            line.append(f"{f.message}")
            line.append(f"  ({f.file}:{f.line})", style="dim")
            if f.status == WAIVED:
                line.append(f"  [waived: {f.reason}]", style="yellow")
            elif f.status == BASELINE:
                line.append("  [baseline]", style="dim")
            yield line
            if f.diff:
                yield diff_text(f.diff)


def diff_text(diff: str) -> Text:
    t = Text()
    for ln in diff.splitlines():
        style = "bold" if ln.startswith(("---", "+++")) else "red" if ln.startswith("-") else \
            "green" if ln.startswith("+") else "cyan" if ln.startswith("@@") else "dim"
        t.append(f"      {ln}\n", style=style)
    t.rstrip()
    return t


def body_summary(r: ManifestResult, per_entry: bool) -> list[RenderableType]:
    """How close the port's bodies are to the upstream's: a figure, never a gate."""
    figs = [(s, s.body) for s in r.symbols if s.body is not None]
    if not figs:
        return []
    out: list[RenderableType] = []
    for label, sel in (("plain-Python definitions", [x for x in figs if x[1].plain_python]),
                       ("kernel-launching definitions", [x for x in figs if not x[1].plain_python])):
        if not sel:
            continue
        sims = sorted(b.similarity for _, b in sel)
        same = sum(1 for _, b in sel if b.identical)
        median = sims[len(sims) // 2] if len(sims) % 2 else (sims[len(sims) // 2 - 1] + sims[len(sims) // 2]) / 2
        out.append(Text(f"Bodies ({label}): {same} of {len(sel)} identical to the upstream's after "
                        f"normalisation · median similarity {median:.2f} · mean {sum(sims) / len(sims):.2f}",
                        style="bold"))
    if per_entry:
        table = Table(header_style="bold", pad_edge=False)
        table.add_column("symbol", overflow="fold")
        table.add_column("kind")
        table.add_column("plain", justify="center")
        table.add_column("similarity", justify="right")
        for s, b in sorted(figs, key=lambda x: (-x[1].similarity, x[0].symbol)):
            table.add_row(s.symbol, s.kind, "yes" if b.plain_python else "no",
                          "identical" if b.identical else f"{b.similarity:.2f}")
        out.append(table)
    return out


def renderables(report: Report) -> list[RenderableType]:
    out: list[RenderableType] = []
    for r in report.results:
        m = r.manifest
        head = Text(f"{m.name}", style="bold")
        source = ", ".join(m.upstream.distributions) or (
            f"{m.upstream.package} at {m.upstream.rev} ({m.upstream.git})" if m.upstream.git else str(r.upstream_root))
        port_at = display_path(r.port_root) or "."
        head.append(f"  {m.path} · upstream {source} · port {m.port.package} ({port_at})", style="dim")
        out.append(head)
        if report.verbose:
            out.extend(drill_down(r))
        out.append(stage_table(r))
        if r.hygiene:
            out.append(Text("Manifest hygiene:", style="bold"))
            for f in r.hygiene:
                style = "yellow" if f.status != OPEN else "red"
                out.append(Text(f"  {f.code} {f.message} ({f.file}:{f.line})", style=style))
        out.extend(body_summary(r, report.bodies))
        offs = sorted({(s.id, s.citations.reason) for s in m.stages
                       if s.citations is not None and s.citations.off})
        if m.citations.off:
            out.append(Text(f"Citations: off for this manifest: {m.citations.reason}", style="yellow"))
        for sid, reason in offs:
            out.append(Text(f"Citations: off for stage {sid}: {reason}", style="yellow"))
        if m.deviations:
            out.append(Text("Deviations (intentional, documented differences):", style="bold"))
            for d in m.deviations:
                fixed = f" (as fla {d.fixed_upstream_in})" if d.fixed_upstream_in else ""
                out.append(Text(f"  {d.symbol}{fixed}: {d.reason}", style="cyan"))
        out.append(total_line(report, r))
        out.append(Text(""))
    if len(report.results) > 1:
        passed = sum(r.passed for r in report.results)
        total = sum(r.total for r in report.results)
        t = Text("All manifests: ", style="bold")
        t.append(_pct(passed, total).strip() + " complete")
        t.append(" · " + ("FAIL" if report.failed else "PASS"),
                 style="bold red" if report.failed else "bold green")
        out.append(t)
    return out


def print_report(report: Report, console: Console) -> None:
    console.print(Group(*renderables(report)))


def render(report: Report) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=130, color_system=None, force_terminal=False, no_color=True)
    print_report(report, console)
    return buf.getvalue()
