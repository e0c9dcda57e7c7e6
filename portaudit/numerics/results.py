"""Result rows of numeric checks and their renderings (rich table, JSON, markdown, JUnit XML)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional
from xml.sax.saxutils import escape, quoteattr

PASS, FAIL, ERROR, MISSING, SKIP = "pass", "fail", "error", "missing", "skip"
# n/a: the implementation declares it lacks what the check needs (no varlen, no float64, ...).
# Neither a failure nor a pass; always shown with its reason.
NA = "n/a"
FAILING = {FAIL, ERROR, MISSING}


@dataclass
class ResultRow:
    group: str            # the op / module / layer the row belongs to
    check: str            # invariant name, or "golden"
    case: str             # case label (shape, dtype, options)
    output: str           # which output / gradient
    max_abs: float
    rms_ratio: float
    tol: float
    status: str
    message: str = ""
    reason: str = ""      # why this tolerance (for looser values)

    @property
    def failed(self) -> bool:
        return self.status in FAILING


def _num(x: float) -> Optional[float]:
    return None if x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x))) else x


def summary(rows: Iterable[ResultRow]) -> Dict[str, int]:
    s = {PASS: 0, FAIL: 0, ERROR: 0, MISSING: 0, SKIP: 0, NA: 0}
    for r in rows:
        s[r.status] = s.get(r.status, 0) + 1
    s["total"] = sum(v for k, v in s.items() if k != "total")
    return s


def summary_line(s: Dict[str, int]) -> str:
    """``12 passed, 0 failed, 0 errors, 0 missing, 0 skipped[, 3 n/a]``."""
    line = f"{s[PASS]} passed, {s[FAIL]} failed, {s[ERROR]} errors, {s[MISSING]} missing, {s[SKIP]} skipped"
    return line + (f", {s[NA]} n/a" if s.get(NA) else "")


def to_json(rows: List[ResultRow], meta: Optional[dict] = None, notes: Optional[List[str]] = None) -> str:
    doc = {"meta": meta or {}, "summary": summary(rows), "notes": notes or [],
           "results": [{**asdict(r), "max_abs": _num(r.max_abs), "rms_ratio": _num(r.rms_ratio)} for r in rows]}
    return json.dumps(doc, indent=1)


def _fmt(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2e}"


def to_markdown(rows: List[ResultRow], title: str = "Numerics", notes: Optional[List[str]] = None) -> str:
    s = summary(rows)
    lines = [f"## {title}", "", summary_line(s), ""]
    lines.append("| op | invariant | case | output | max-abs | RMS ratio | tolerance | status |")
    lines.append("|---|---|---|---|---:|---:|---:|---|")
    for r in rows:
        status = r.status.upper() if r.failed else r.status
        msg = f" ({r.message})" if r.message else ""
        lines.append(f"| {r.group} | {r.check} | {r.case} | {r.output} | {_fmt(r.max_abs)} | {_fmt(r.rms_ratio)} "
                     f"| {_fmt(r.tol)} | {status}{msg.replace('|', '/')} |")
    for n in notes or []:
        lines.append(f"\n> {n}")
    return "\n".join(lines) + "\n"


def to_junit(rows: List[ResultRow], suite: str = "portaudit.numerics") -> str:
    s = summary(rows)
    out = ['<?xml version="1.0" encoding="UTF-8"?>',
           f'<testsuite name={quoteattr(suite)} tests="{s["total"]}" failures="{s[FAIL] + s[MISSING]}" '
           f'errors="{s[ERROR]}" skipped="{s[SKIP] + s[NA]}">']
    for r in rows:
        name = quoteattr(f"{r.check}[{r.case}].{r.output}")
        out.append(f'  <testcase classname={quoteattr(r.group)} name={name}>')
        detail = f"max_abs={_fmt(r.max_abs)} rms_ratio={_fmt(r.rms_ratio)} tol={_fmt(r.tol)} {r.message}"
        if r.status in (FAIL, MISSING):
            out.append(f'    <failure message={quoteattr(r.message or r.status)}>{escape(detail)}</failure>')
        elif r.status == ERROR:
            out.append(f'    <error message={quoteattr(r.message or "error")}>{escape(detail)}</error>')
        elif r.status in (SKIP, NA):
            out.append(f'    <skipped message={quoteattr(r.message)}/>')
        out.append("  </testcase>")
    out.append("</testsuite>")
    return "\n".join(out) + "\n"


def print_rich(rows: List[ResultRow], console=None, title: str = "numerics", notes: Optional[List[str]] = None,
               failures_only: bool = False) -> None:
    """One table per group (op): invariant | case | output | max-abs | RMS ratio | tolerance | status."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    groups: Dict[str, List[ResultRow]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    style = {PASS: "green", FAIL: "bold red", ERROR: "bold red", MISSING: "bold red", SKIP: "yellow", NA: "cyan"}
    for group, grows in groups.items():
        shown = [r for r in grows if r.failed] if failures_only else grows
        n_bad = sum(r.failed for r in grows)
        n_na = sum(r.status == NA for r in grows)
        na_note = f", {n_na} n/a" if n_na else ""
        table = Table(title=f"{group}  ({len(grows) - n_bad - n_na}/{len(grows)} ok{na_note})",
                      title_justify="left", show_lines=False)
        for col, just in (("invariant", "left"), ("case", "left"), ("output", "left"), ("max-abs", "right"),
                          ("RMS ratio", "right"), ("tolerance", "right"), ("status", "left")):
            table.add_column(col, justify=just, overflow="fold")
        for r in shown:
            status = f"[{style.get(r.status, '')}]{r.status}[/]"
            if r.message:
                status += f" {escape_markup(r.message)}"
            table.add_row(r.check, r.case, r.output, _fmt(r.max_abs), _fmt(r.rms_ratio), _fmt(r.tol), status)
        if shown:
            console.print(table)
    s = summary(rows)
    color = "red" if s[FAIL] + s[ERROR] + s[MISSING] else "green"
    console.print(f"[bold {color}]{title}: {summary_line(s)} ({s['total']} checks)[/]")
    for n in notes or []:
        console.print(f"[yellow]note:[/] {escape_markup(n)}")


def escape_markup(text: str) -> str:
    from rich.markup import escape as _escape
    return _escape(text)
